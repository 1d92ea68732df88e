"""RPPR2Conv: what only RPP has (groups and padding modes, fitting, its Gaussian prior penalty, learned
variances, bad arguments); the common contract is in test_soft_conv_contract.py."""
from __future__ import annotations

import pytest
import torch
from escnn import nn as enn

import escnn_soft as es
from escnn_soft.testing import random_input
from tests.nn.relaxed_common import (
    relative_fit_loss,
    soft_and_strict,
)
from tests.registry import conv_types as _types
from tests.registry import gspace


def _layer(name: str, sid, **kwargs) -> tuple[es.nn.RPPR2Conv, enn.R2Conv]:
    return soft_and_strict(es.nn.RPPR2Conv, name, sid, **kwargs)


def _randomise(layer: es.nn.RPPR2Conv) -> es.nn.RPPR2Conv:
    with torch.no_grad():
        layer.free_weights.normal_(0, 0.3)
    return layer


def test_stride_padding_groups():
    torch.manual_seed(0)
    gs = gspace("C4")
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
    gs = gspace("C4")
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
    """The common part of degree() is in test_soft_conv_contract.py."""
    layer, _ = _layer("O2", (None, -1))
    assert layer.degree()["free_to_equivariant_ratio"] == 0.0
    _randomise(layer)
    degree = layer.degree()
    assert degree["translation_error"] < 1e-12
    assert degree["variance_equivariant"] == pytest.approx(1e5) and degree["variance_free"] == pytest.approx(1e3)


def test_bad_input():
    in_type, out_type = _types("SO2")
    with pytest.raises(ValueError, match=r"variance_free: -1.0"):
        es.nn.RPPR2Conv(in_type, out_type, 5, variance_free=-1.0)
    with pytest.raises(TypeError, match=r"in_type: expected an escnn FieldType"):
        es.nn.RPPR2Conv(torch.zeros(3), out_type, 5)
