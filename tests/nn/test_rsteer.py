"""RSteerR2Conv: strict limit, subgroup equivariance (orbit tying), fitting, smoothness penalty, export."""
from __future__ import annotations

import json

import pytest
import torch
from escnn import gspaces
from escnn import nn as enn

import escnn_soft as es
from escnn_soft.testing import assert_equivariant, random_input
from tests.nn.relaxed_common import (
    check_subgroup_equivariance_breaks_group_and_export,
    relative_fit_loss,
    soft_and_strict,
)
from tests.nn.relaxed_common import field_types as _types

# (group, relaxed subgroup id); None = one coefficient per kernel pixel (Wang et al.). Tying over
# SO(2) orbits (circles) would keep all of O(2), so O(2) is relaxed to C4 here.
CASES = [("C4", None), ("C4", 2), ("D4", None), ("D4", (None, 4)), ("D4", (0, 1)),
         ("SO2", None), ("SO2", 2), ("O2", None), ("O2", (None, 4))]


def _layer(name: str, sid, **kwargs) -> tuple[es.nn.RSteerR2Conv, enn.R2Conv]:
    return soft_and_strict(es.nn.RSteerR2Conv, name, sid, **kwargs)


def _randomise(layer: es.nn.RSteerR2Conv) -> es.nn.RSteerR2Conv:
    with torch.no_grad():
        layer.relaxed_weights.normal_(0, 0.3)
    return layer


@pytest.mark.parametrize("name,sid", CASES)
def test_constant_coefficients_equal_strict(name, sid):
    layer, strict = _layer(name, sid)
    x = random_input(layer)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).tensor, strict(x).tensor, rtol=1e-10, atol=1e-10)
        layer.relaxed_weights.add_(torch.randn(layer.relaxed_weights.shape[0], 1, dtype=torch.float64))
        layer.weights.sub_(layer.relaxed_weights[:, 0])       # still constant over positions
        torch.testing.assert_close(layer(x).tensor, strict(x).tensor, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,sid", CASES)
def test_subgroup_equivariance_breaks_group_and_export(name, sid):
    layer, strict = _layer(name, sid)
    check_subgroup_equivariance_breaks_group_and_export(_randomise(layer), strict, sid)
    assert isinstance(layer.export(), torch.nn.Conv2d)


def test_orbit_classes():
    layer, _ = _layer("C4", None)
    assert layer.relaxed_weights.shape[1] == 25                    # one class per pixel
    assert _layer("C4", 4)[0].relaxed_weights.shape[1] == 7        # 5x5 orbits under C4: 1 + 24 / 4
    assert _layer("SO2", -1)[0].relaxed_weights.shape[1] == 6      # radii 0, 1, √2, 2, √5, √8
    assert _layer("D4", (0, 4))[0].relaxed_weights.shape[1] == 6   # D4 orbits: 1 + 1 + 1 + 1 + 1 + 1


def test_radial_tying_keeps_reflections():
    """Circles are unions of O(2) orbits too: tying over SO(2) relaxes only the radial profile."""
    layer, _ = _layer("O2", (None, -1))
    _randomise(layer)
    assert_equivariant(layer)
    assert layer.degree()["position_variation"] > 1e-2


def test_fits_a_target_the_strict_layer_cannot():
    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(4)
    in_type, out_type = enn.FieldType(gs, [gs.regular_repr]), enn.FieldType(gs, [gs.trivial_repr])
    x = in_type(torch.randn(8, 4, 11, 11, dtype=torch.float64))
    free = enn.R2Conv(in_type.restrict(1), out_type.restrict(1), 5, recompute=True).double()
    with torch.no_grad():
        target = free(in_type.restrict(1)(x.tensor)).tensor        # a random, non-equivariant filter

    # tied over C4 orbits: strict
    strict = relative_fit_loss(es.nn.RSteerR2Conv(in_type, out_type, 5, relaxed_subgroup=4), x, target)
    relaxed = relative_fit_loss(es.nn.RSteerR2Conv(in_type, out_type, 5), x, target)
    assert strict > 0.5 and relaxed < 0.3 * strict


def test_smoothness_penalty():
    layer, _ = _layer("C4", None, smoothness=0.5)
    assert layer.penalty().item() == 0.0
    with torch.no_grad():
        layer.relaxed_weights[:, 12] = 1.0                         # the centre pixel of the 5x5 kernel
    d = layer.relaxed_weights.shape[0]
    torch.testing.assert_close(layer.penalty(), torch.tensor(0.5 * 4 * d, dtype=torch.float64))
    assert set(layer.hyperparameters()) == {"smoothness"}


def test_degree_and_gradients():
    layer, _ = _layer("D4", (None, 4), learn_smoothness=True)
    degree = layer.degree()
    json.dumps(degree)
    assert degree["relative_norm"] < 1e-6 and degree["position_variation"] < 1e-12
    _randomise(layer)
    degree = layer.degree()
    errors = degree["equivariance_error"]
    assert errors["C4"] < 1e-5 < errors["flips"]
    assert degree["relative_norm"] > 1e-2 and degree["position_variation"] > 1e-2
    x = random_input(layer, size=11)
    (layer(x).tensor.pow(2).sum() + layer.penalty()).backward()
    assert layer.relaxed_weights.grad.abs().sum() > 0 and layer.log_smoothness.grad.abs() > 0


def test_eval_cache_and_state_dict():
    layer, _ = _layer("SO2", 2)
    _randomise(layer)
    x = random_input(layer, size=11)
    layer.eval()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    with torch.no_grad():
        first = layer(x).tensor
    layer.train()
    layer(x).tensor.sum().backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        second = layer(x).tensor
        layer.train()
        torch.testing.assert_close(layer(x).tensor, second)
    assert not torch.allclose(first, second)
    other, _ = _layer("SO2", 2)
    other.eval()
    other.load_state_dict(layer.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(x).tensor, second)


def test_bad_input():
    in_type, out_type = _types("O2")
    with pytest.raises(ValueError, match=r"relaxed_subgroup: \(1, 2\) .*O\(2\)"):
        es.nn.RSteerR2Conv(in_type, out_type, 5, relaxed_subgroup=(1, 2))
    with pytest.raises(ValueError, match=r"smoothness: 0"):
        es.nn.RSteerR2Conv(in_type, out_type, 5, smoothness=0)
    c4_in, _ = _types("C4")
    with pytest.raises(ValueError, match=r"out_type: .*gspace"):
        es.nn.RSteerR2Conv(c4_in, out_type, 5)


def test_interleaved_field_types_match_escnn_expansion():
    """Non-contiguous representation blocks: the per-position expansion and the projection used by
    degree()/to_r2conv() agree with escnn's own expansion."""
    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(4)
    in_type = enn.FieldType(gs, [gs.regular_repr, gs.trivial_repr, gs.regular_repr])
    out_type = enn.FieldType(gs, [gs.trivial_repr, gs.regular_repr, gs.trivial_repr])
    strict = enn.R2Conv(in_type, out_type, 3, recompute=True).double()
    layer = es.nn.RSteerR2Conv.from_r2conv(strict).double()
    x = random_input(layer, size=9)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).tensor, strict(x).tensor)
    assert layer.degree()["relative_norm"] < 1e-6
    torch.testing.assert_close(layer.to_r2conv().weights, strict.weights)
