"""Test isolation.

escnn hands the *same* cached sampled-basis module to every strict ``R2Conv``/``R3Conv``/``Linear`` with
the same representations and grid (``_stored_filters``), so a test that casts a strict escnn layer to
float64 (or moves it to CUDA) changes the bases of every strict layer built later in the process.
escnn_soft's own layers keep private copies (``escnn_soft.nn.basis``); for the strict escnn layers that
tests build as references, the cache is emptied before each test.
"""
import os

import pytest
from escnn.nn.modules.basismanager import basisexpansion_singleblock
from hypothesis import HealthCheck, Phase, settings

# Hypothesis profiles (tests/test_properties.py): "escnn_soft" is small and reproducible, for CI;
# HYPOTHESIS_PROFILE=thorough draws many more, fresh examples.
settings.register_profile("escnn_soft", max_examples=15, deadline=None, derandomize=True, print_blob=True,
                          phases=[p for p in Phase if p is not Phase.explain],
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", settings.get_profile("escnn_soft"), max_examples=200, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "escnn_soft"))


@pytest.fixture(autouse=True)
def _fresh_escnn_basis_cache():
    basisexpansion_singleblock._stored_filters.clear()
    yield
