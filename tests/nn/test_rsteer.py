"""RSteerR2Conv: what only R-steer has (orbit classes, radial tying, fitting, its smoothness penalty,
interleaved field types, bad arguments); the common contract is in test_soft_conv_contract.py."""
from __future__ import annotations

import pytest
import torch
from escnn import nn as enn

import escnn_soft as es
from escnn_soft.testing import assert_equivariant, random_input
from tests.nn.relaxed_common import (
    relative_fit_loss,
    soft_and_strict,
)
from tests.registry import conv_types as _types
from tests.registry import gspace


def _layer(name: str, sid, **kwargs) -> tuple[es.nn.RSteerR2Conv, enn.R2Conv]:
    return soft_and_strict(es.nn.RSteerR2Conv, name, sid, **kwargs)


def _randomise(layer: es.nn.RSteerR2Conv) -> es.nn.RSteerR2Conv:
    with torch.no_grad():
        layer.relaxed_weights.normal_(0, 0.3)
    return layer


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
    gs = gspace("C4")
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


def test_position_variation_and_gradients():
    """The common part of degree() is in test_soft_conv_contract.py."""
    layer, _ = _layer("D4", (None, 4), learn_smoothness=True)
    assert layer.degree()["position_variation"] < 1e-12
    _randomise(layer)
    assert layer.degree()["position_variation"] > 1e-2
    x = random_input(layer, size=11)
    (layer(x).tensor.pow(2).sum() + layer.penalty()).backward()
    assert layer.relaxed_weights.grad.abs().sum() > 0 and layer.log_smoothness.grad.abs() > 0


def test_bad_input():
    in_type, out_type = _types("O2")
    with pytest.raises(ValueError, match=r"smoothness: 0"):
        es.nn.RSteerR2Conv(in_type, out_type, 5, smoothness=0)


def test_interleaved_field_types_match_escnn_expansion():
    """Non-contiguous representation blocks: the per-position expansion and the projection used by
    degree()/to_r2conv() agree with escnn's own expansion."""
    torch.manual_seed(0)
    gs = gspace("C4")
    in_type = enn.FieldType(gs, [gs.regular_repr, gs.trivial_repr, gs.regular_repr])
    out_type = enn.FieldType(gs, [gs.trivial_repr, gs.regular_repr, gs.trivial_repr])
    strict = enn.R2Conv(in_type, out_type, 3, recompute=True).double()
    layer = es.nn.RSteerR2Conv.from_r2conv(strict).double()
    x = random_input(layer, size=9)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).tensor, strict(x).tensor)
    assert layer.degree()["relative_norm"] < 1e-6
    torch.testing.assert_close(layer.to_r2conv().weights, strict.weights)
