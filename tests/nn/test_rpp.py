"""RPPR2Conv: strict limit, subgroup equivariance, fitting, prior penalty, export, bad input."""
from __future__ import annotations

import json

import pytest
import torch
from escnn import gspaces
from escnn import nn as enn

import escnn_soft as es
from escnn_soft.testing import random_input
from tests.nn.relaxed_common import (
    check_subgroup_equivariance_breaks_group_and_export,
    relative_fit_loss,
    soft_and_strict,
)
from tests.nn.relaxed_common import field_types as _types

# (group, relaxed subgroup id); None = unconstrained pixel weights in the free path
CASES = [("C4", None), ("C4", 2), ("D4", None), ("D4", (None, 4)), ("D4", (0, 1)),
         ("SO2", None), ("SO2", 2), ("O2", None), ("O2", (None, -1))]


def _layer(name: str, sid, **kwargs) -> tuple[es.nn.RPPR2Conv, enn.R2Conv]:
    return soft_and_strict(es.nn.RPPR2Conv, name, sid, **kwargs)


def _randomise(layer: es.nn.RPPR2Conv) -> es.nn.RPPR2Conv:
    with torch.no_grad():
        layer.free_weights.normal_(0, 0.3)
    return layer


@pytest.mark.parametrize("name,sid", CASES)
def test_zero_free_path_equals_strict(name, sid):
    layer, strict = _layer(name, sid)
    x = random_input(layer)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).tensor, strict(x).tensor, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,sid", CASES)
def test_subgroup_equivariance_breaks_group_and_export(name, sid):
    layer, strict = _layer(name, sid)
    check_subgroup_equivariance_breaks_group_and_export(_randomise(layer), strict, sid)
    assert isinstance(layer.export(), torch.nn.Conv2d)


def test_stride_padding_groups():
    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(4)
    in_type = enn.FieldType(gs, 2 * [gs.regular_repr])
    layer = _randomise(es.nn.RPPR2Conv(in_type, in_type, 3, padding=2, stride=2, groups=2, padding_mode="reflect")
                       .double())
    x = random_input(layer, size=15)
    assert tuple(layer(x).shape) == layer.evaluate_output_shape(x.shape) == (2, 8, 9, 9)
    assert layer.free_weights.shape == (8, 4, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(layer.export()(x.tensor), layer(x).tensor)


def test_fits_a_target_the_strict_layer_cannot():
    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(4)
    in_type, out_type = enn.FieldType(gs, [gs.regular_repr]), enn.FieldType(gs, [gs.trivial_repr])
    x = in_type(torch.randn(8, 4, 11, 11, dtype=torch.float64))
    with torch.no_grad():
        target = torch.nn.Conv2d(4, 1, 5).double()(x.tensor)     # a random, non-equivariant filter

    # the free path switched off by its prior, and on
    strict = relative_fit_loss(es.nn.RPPR2Conv(in_type, out_type, 5, variance_free=1e-12), x, target, penalty=True)
    relaxed = relative_fit_loss(es.nn.RPPR2Conv(in_type, out_type, 5), x, target, penalty=True)
    assert strict > 0.5 and relaxed < 0.01


def test_penalty_is_the_gaussian_prior():
    layer, _ = _layer("D4", None, variance_equivariant=10.0, variance_free=0.5)
    _randomise(layer)
    expected = layer.weights.pow(2).sum() / 20.0 + layer.free_weights.pow(2).sum() / 1.0
    torch.testing.assert_close(layer.penalty(), expected)
    hp = layer.hyperparameters()
    torch.testing.assert_close(hp["variance_free"], torch.tensor(0.5, dtype=torch.float64))
    assert not any(p.requires_grad for p in layer.hyperparameter_parameters().values())


def test_learned_variances_receive_gradients():
    layer, _ = _layer("C4", 2, learn_variances=True)
    _randomise(layer)
    layer.penalty().backward()
    for p in layer.hyperparameter_parameters().values():
        assert p.grad is not None and p.grad.abs() > 0


def test_degree():
    layer, _ = _layer("O2", (None, -1))
    degree = layer.degree()
    json.dumps(degree)
    assert degree["relative_norm"] < 1e-6 and degree["free_to_equivariant_ratio"] == 0.0
    _randomise(layer)
    degree = layer.degree()
    errors = degree["equivariance_error"]
    assert errors["SO2"] < 1e-5 < errors["flips"]
    assert degree["relative_norm"] > 1e-2 and degree["translation_error"] < 1e-12
    assert degree["variance_equivariant"] == pytest.approx(1e5) and degree["variance_free"] == pytest.approx(1e3)


def test_eval_cache_and_state_dict():
    layer, _ = _layer("D4", (0, 1))
    _randomise(layer)
    x = random_input(layer, size=11)
    layer.eval()
    with torch.no_grad():
        first = layer(x).tensor
        layer.free_weights.mul_(2.0)
        second = layer(x).tensor
    assert not torch.allclose(first, second)
    other, _ = _layer("D4", (0, 1))
    other.load_state_dict(layer.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(x).tensor, second)


def test_bad_input():
    in_type, out_type = _types("SO2")
    with pytest.raises(ValueError, match=r"relaxed_subgroup: \(None, 2\) .*SO\(2\)"):
        es.nn.RPPR2Conv(in_type, out_type, 5, relaxed_subgroup=(None, 2))
    with pytest.raises(ValueError, match=r"variance_free: -1.0"):
        es.nn.RPPR2Conv(in_type, out_type, 5, variance_free=-1.0)
    o2_in, _ = _types("O2")
    with pytest.raises(ValueError, match=r"out_type: .*gspace"):
        es.nn.RPPR2Conv(in_type, o2_in, 5)
    with pytest.raises(TypeError, match=r"in_type: expected an escnn FieldType"):
        es.nn.RPPR2Conv(torch.zeros(3), out_type, 5)
