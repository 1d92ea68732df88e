"""The one strict part every soft layer with a steerable basis owns (escnn_soft/nn/_strict.py).

Every such layer — probabilistic (2D, 3D, Linear), relaxed, RPP and R-steer (2D and 3D) — holds escnn's strict
layer inside it under escnn's own names: the train-mode state dict of the escnn layer loads into the soft layer
with nothing unexpected, the strict filter and bias are then escnn's, bit for bit, and the filter cache of the
strict part behaves the same in every layer.
"""
from __future__ import annotations

import pytest
import torch
from escnn import gspaces
from escnn import nn as enn

import escnn_soft as es
from escnn_soft.nn._strict import StrictSteerable
from tests.registry import gspace, mixed_types


def _types(dim: int):
    """Mixed field types (scalars and a hidden part) on D4 (R²), SO(3) (R³) or D4 with no base space."""
    if dim == 0:
        gs = gspaces.no_base_space(gspace("D4").fibergroup)
        return enn.FieldType(gs, [gs.regular_repr]), enn.FieldType(gs, [gs.regular_repr, gs.trivial_repr])
    return mixed_types("D4" if dim == 2 else "SO3")


# (soft class, dimension of the base space)
LAYERS = [
    (es.nn.ProbabilisticR2Conv, 2), (es.nn.RelaxedR2Conv, 2), (es.nn.RPPR2Conv, 2), (es.nn.RSteerR2Conv, 2),
    (es.nn.ProbabilisticR3Conv, 3), (es.nn.RelaxedR3Conv, 3), (es.nn.RPPR3Conv, 3), (es.nn.RSteerR3Conv, 3),
    (es.nn.ProbabilisticLinear, 0),
]
IDS = [cls.__name__ for cls, _ in LAYERS]


def _pair(cls, dim: int):
    """(escnn's strict layer, the soft layer with the same arguments), float64, seeded."""
    t_in, t_out = _types(dim)
    torch.manual_seed(0)
    if dim == 0:
        strict, soft = enn.Linear(t_in, t_out, recompute=True), cls(t_in, t_out)
    else:
        k = 5 if dim == 2 else 3
        conv = enn.R2Conv if dim == 2 else enn.R3Conv
        strict, soft = conv(t_in, t_out, k, padding=1, recompute=True), cls(t_in, t_out, k, padding=1)
    with torch.no_grad():
        strict.bias.normal_()
    return strict.double().train(), soft.double()


@pytest.mark.parametrize("cls,dim", LAYERS, ids=IDS)
def test_escnn_state_dict_loads_into_the_strict_part(cls, dim):
    strict, soft = _pair(cls, dim)
    assert isinstance(soft, StrictSteerable) and isinstance(soft, enn.EquivariantModule)
    result = soft.load_state_dict(strict.state_dict(), strict=False)
    assert result.unexpected_keys == []                       # every strict entry has escnn's name in the soft layer
    assert not any(k in ("weights", "bias", "bias_expansion") or k.startswith("_basisexpansion.")
                   for k in result.missing_keys)              # ... and only the soft layer's own entries are missing
    expected_filter, expected_bias = strict.expand_parameters()
    torch.testing.assert_close(soft.strict_filter(), expected_filter, rtol=0, atol=0)
    torch.testing.assert_close(soft.strict_bias(), expected_bias, rtol=0, atol=0)
    torch.testing.assert_close(soft.basisexpansion(soft.weights), strict.basisexpansion(strict.weights), rtol=0,
                               atol=0)


@pytest.mark.parametrize("cls,dim", LAYERS, ids=IDS)
def test_initial_soft_layer_is_the_strict_layer(cls, dim):
    """Built with escnn's strict weights (loaded), every soft layer starts as the strict layer (uniform λ, zero
    relaxation): the same output, and its export holds the same filter."""
    strict, soft = _pair(cls, dim)
    soft.load_state_dict(strict.state_dict(), strict=False)
    if hasattr(soft, "relaxed_weights"):
        with torch.no_grad():
            soft.relaxed_weights.zero_()
    t_in = strict.in_type
    x = t_in(torch.randn(2, t_in.size, *(9,) * dim, dtype=torch.float64))
    torch.testing.assert_close(soft(x).tensor, strict(x).tensor, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(soft.export()(x.tensor), strict(x).tensor, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls,dim", LAYERS, ids=IDS)
def test_one_filter_cache_in_every_layer(cls, dim):
    """Evaluation mode reuses the filter while nothing changed; a parameter change, ``.train()`` and ``.to()``
    each drop it; no cached tensor is ever in the state dict."""
    _, soft = _pair(cls, dim)
    train_keys = list(soft.state_dict())
    soft.eval()
    with torch.no_grad():
        first = soft._expanded()
        assert list(soft.state_dict()) == train_keys          # the state dict does not depend on the mode
        assert soft._expanded()[0] is first[0]
        soft.weights.add_(0.1)
        changed = soft._expanded()
        assert changed[0] is not first[0]
        torch.testing.assert_close(changed[0], soft._expand()[0], rtol=0, atol=0)
    assert soft._filter_cache.tensors()
    soft.float()
    assert not soft._filter_cache.tensors()
    with torch.no_grad():
        soft._expanded()
    soft.train()
    assert not soft._filter_cache.tensors()
