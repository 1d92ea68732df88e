"""The contract every relaxed 2D convolution (RelaxedR2Conv, RPPR2Conv, RSteerR2Conv) keeps, one check for all.

Each check runs in float64 (the tolerance the method-specific suites had) and in float32 (``F32``):

* with its relaxation switched off the layer computes the strict escnn ``R2Conv`` it was built from;
* a relaxation over a subgroup S stays S-equivariant on grid-exact elements, breaks the full group where the
  strict layer does not, and ``export()`` computes the layer's output;
* ``degree()`` is JSON-serialisable, sees the relaxation and names the subgroups it keeps and breaks;
  ``penalty()`` is a scalar; ``hyperparameter_parameters()`` and ``plot()`` follow :class:`escnn_soft.nn.SoftModule`;
* the eval-mode filter cache follows in-place changes and optimiser steps; the state dict holds no cache and
  round-trips into a layer in either mode;
* a relaxed subgroup the group does not have and an output type on another gspace are rejected by name.

What only one method has (fitting, its penalty's formula, its hyperparameters, its bad arguments) is in
``test_relaxed.py``, ``test_rpp.py`` and ``test_rsteer.py``; the 3D layers are in ``test_soft_r3conv.py``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import escnn_soft as es
from escnn_soft.metrics.equivariance import equivariance_error, grid_exact_elements
from escnn_soft.nn.relaxed import RelaxedConvExport
from escnn_soft.subgroups import subgroup_test_elements
from escnn_soft.testing import assert_equivariant, random_input
from tests.nn.relaxed_common import soft_and_strict
from tests.registry import conv_types

F32 = {"rtol": 1e-4, "atol": 1e-5}          # float32: rounding of the 32-bit filter and convolution
DTYPES = [torch.float64, torch.float32]


def _relaxed_off(layer) -> None:
    """Relaxed: a random relaxation with amplitude 0."""
    with torch.no_grad():
        layer.relaxed_weights.normal_(0, 0.3)
        layer.log_amplitude.fill_(-math.inf)


def _rsteer_constant(layer) -> None:
    """R-steer: coefficients that vary between classes of pixels by a constant only."""
    with torch.no_grad():
        layer.relaxed_weights.add_(torch.randn(layer.relaxed_weights.shape[0], 1, dtype=torch.float64)
                                   .to(layer.relaxed_weights.dtype))
        layer.weights.sub_(layer.relaxed_weights[:, 0])


@dataclass(frozen=True)
class Spec:
    cls: type
    relaxation: str                                  # the parameter that carries the relaxation (zero at first)
    cases: tuple                                     # (group, relaxed subgroup id)
    strict_rtol: float                               # float64 tolerance of the strict limit
    still_strict: Callable | None                    # a non-trivial change that keeps the strict layer
    exports: tuple                                   # the classes export() returns
    degree_case: tuple                               # (group, sid, kept subgroup, broken subgroups)
    cache_case: tuple                                # (group, sid)
    bad_subgroup: tuple                              # (group, sid, message)
    bad_out_type: tuple                              # (in group, out group)

    def __repr__(self) -> str:
        return self.cls.__name__


# a non-trivial subgroup for each group; R-steer ties over SO(2) orbits (circles) would keep all of O(2), so
# O(2) is relaxed to C4 there
_CASES = (("C4", None), ("C4", 2), ("D4", None), ("D4", (None, 4)), ("D4", (0, 1)), ("SO2", None), ("SO2", 2),
          ("O2", None))
SPECS = [
    Spec(es.nn.RelaxedR2Conv, "relaxed_weights", _CASES + (("O2", (None, -1)),), 1e-12, _relaxed_off,
         (torch.nn.Conv2d, RelaxedConvExport), ("D4", (None, 4), "C4", ("flips", "D4")), ("C4", 2),
         ("C4", 3, r"relaxed_subgroup: 3 .*C4"), ("C4", "D4")),
    Spec(es.nn.RPPR2Conv, "free_weights", _CASES + (("O2", (None, -1)),), 1e-12, None, (torch.nn.Conv2d,),
         ("O2", (None, -1), "SO2", ("flips",)), ("D4", (0, 1)),
         ("SO2", (None, 2), r"relaxed_subgroup: \(None, 2\) .*SO\(2\)"), ("SO2", "O2")),
    Spec(es.nn.RSteerR2Conv, "relaxed_weights", _CASES + (("O2", (None, 4)),), 1e-10, _rsteer_constant,
         (torch.nn.Conv2d,), ("D4", (None, 4), "C4", ("flips",)), ("SO2", 2),
         ("O2", (1, 2), r"relaxed_subgroup: \(1, 2\) .*O\(2\)"), ("C4", "O2")),
]
CASES = [(spec, name, sid) for spec in SPECS for name, sid in spec.cases]
CASE_IDS = [f"{spec.cls.__name__}-{name}-{sid}".replace(" ", "") for spec, name, sid in CASES]
_dtype_id = {torch.float64: "float64", torch.float32: "float32"}.get


def _layer(spec: Spec, name: str, sid, dtype: torch.dtype):
    layer, strict = soft_and_strict(spec.cls, name, sid)
    return layer.to(dtype), strict.to(dtype)


def _randomise(spec: Spec, layer):
    with torch.no_grad():
        getattr(layer, spec.relaxation).normal_(0, 0.3)
    return layer


def _tol(dtype: torch.dtype, rtol: float) -> dict[str, float]:
    return {"rtol": rtol, "atol": rtol} if dtype == torch.float64 else F32


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("spec,name,sid", CASES, ids=CASE_IDS)
def test_zero_relaxation_equals_strict(spec, name, sid, dtype):
    layer, strict = _layer(spec, name, sid, dtype)
    x = random_input(layer, dtype=dtype)
    tol = _tol(dtype, spec.strict_rtol)
    with torch.no_grad():
        ref = strict(x).tensor
        torch.testing.assert_close(layer(x).tensor, ref, **tol)        # zero-initialised relaxation
        if spec.still_strict is not None:
            spec.still_strict(layer)
            torch.testing.assert_close(layer(x).tensor, ref, **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("spec,name,sid", CASES, ids=CASE_IDS)
def test_subgroup_equivariance_breaks_group_and_export(spec, name, sid, dtype):
    """A random relaxation over ``sid`` stays exactly equivariant to it, breaks the full group where the strict
    layer does not, and ``export()`` (a plain convolution) computes the layer's output."""
    layer, strict = _layer(spec, name, sid, dtype)
    _randomise(spec, layer)
    x = random_input(layer, dtype=dtype)
    f64 = dtype == torch.float64
    if sid is not None:
        assert_equivariant(layer, x, elements=subgroup_test_elements(layer.in_type.gspace, sid), dtype=dtype,
                           **({} if f64 else F32))
    elements = grid_exact_elements(layer.in_type.gspace)
    assert max(equivariance_error(layer, x, elements).values()) > 1e-2
    assert max(equivariance_error(strict, x, elements).values()) < (1e-5 if f64 else 1e-4)
    plain = layer.export()
    assert isinstance(plain, spec.exports)
    with torch.no_grad():
        torch.testing.assert_close(plain(x.tensor), layer(x).tensor, **({} if f64 else F32))


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_degree_penalty_and_the_soft_module_contract(spec, dtype):
    name, sid, kept, broken = spec.degree_case
    layer, _ = _layer(spec, name, sid, dtype)
    degree = layer.degree()
    json.dumps(degree)
    assert {"method", "group", "relaxed_subgroup", "relative_norm", "equivariance_error"} <= set(degree)
    assert degree["relative_norm"] < 1e-6
    _randomise(spec, layer)
    degree = layer.degree()
    errors = degree["equivariance_error"]
    assert errors[kept] < (1e-5 if dtype == torch.float64 else 1e-4)
    assert all(errors[b] > 1e-2 for b in broken), errors
    assert degree["relative_norm"] > 1e-2
    penalty = layer.penalty()
    assert isinstance(penalty, torch.Tensor) and penalty.dim() == 0 and penalty.dtype == dtype
    # the soft-layer contract (escnn_soft.nn.base): own hyperparameters among the parameters, nothing to plot
    hyper = layer.hyperparameter_parameters()
    assert isinstance(hyper, dict)
    assert all(any(p is q for q in layer.parameters()) for p in hyper.values())
    assert isinstance(layer, es.nn.SoftModule) and layer.plot() is None


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_eval_cache_follows_parameters_and_state_dict_round_trips(spec, dtype):
    name, sid = spec.cache_case
    layer, _ = _layer(spec, name, sid, dtype)
    _randomise(spec, layer)
    x = random_input(layer, size=11, dtype=dtype)
    tol = _tol(dtype, 1e-7)
    relaxation = getattr(layer, spec.relaxation)
    with torch.no_grad():
        first = layer(x).tensor
        layer.eval()
        torch.testing.assert_close(layer(x).tensor, first, **tol)
        relaxation.add_(0.1)                                 # in place, in eval mode: the cache must notice
        changed = layer(x).tensor
        layer.train()
        torch.testing.assert_close(layer(x).tensor, changed, **tol)
    assert not torch.allclose(first, changed)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)        # an optimiser step in train mode
    layer(x).tensor.sum().backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        stepped = layer(x).tensor
        layer.train()
        torch.testing.assert_close(layer(x).tensor, stepped, **tol)
    assert not torch.allclose(changed, stepped)
    state = layer.state_dict()
    assert not any("cached" in k for k in state)
    for mode in (True, False):
        other, _ = _layer(spec, name, sid, dtype)
        other.train(mode)
        other.load_state_dict(state)
        with torch.no_grad():
            torch.testing.assert_close(other(x).tensor, stepped, **tol)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_bad_subgroup_and_out_type(spec):
    """Field types and arguments are checked before any dtype is involved, so once."""
    name, sid, match = spec.bad_subgroup
    in_type, out_type = conv_types(name)
    with pytest.raises(ValueError, match=match):
        spec.cls(in_type, out_type, 5, relaxed_subgroup=sid)
    in_name, out_name = spec.bad_out_type
    with pytest.raises(ValueError, match=r"out_type: .*gspace"):
        spec.cls(conv_types(in_name)[0], conv_types(out_name)[1], 5)
