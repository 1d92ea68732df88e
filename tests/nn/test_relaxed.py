"""RelaxedR2Conv: what only the relaxed layer has (full-group and stationary relaxations, per-pixel reference,
fitting, hyperparameter gradients, its penalty, bad arguments); the common contract is in
test_soft_conv_contract.py."""
from __future__ import annotations

import pytest
import torch
from escnn import nn as enn

import escnn_soft as es
from escnn_soft.nn.relaxed import bank_fields
from escnn_soft.subgroups import subgroup_test_elements
from escnn_soft.testing import assert_equivariant, random_input
from tests.nn.relaxed_common import (
    relative_fit_loss,
    soft_and_strict,
)
from tests.registry import conv_types as _types
from tests.registry import gspace


def _layer(name: str, sid, **kwargs) -> tuple[es.nn.RelaxedR2Conv, enn.R2Conv]:
    return soft_and_strict(es.nn.RelaxedR2Conv, name, sid, **kwargs)


def _randomise(layer: es.nn.RelaxedR2Conv) -> es.nn.RelaxedR2Conv:
    with torch.no_grad():
        layer.relaxed_weights.normal_(0, 0.3)
    return layer


def test_full_group_relaxation_breaks_only_translations():
    layer, _ = _layer("D4", (0, 4))
    _randomise(layer)
    assert_equivariant(layer)
    degree = layer.degree()
    assert degree["translation_error"] > 1e-2
    assert degree["relative_norm"] < 1e-6 < degree["nonstationary_norm"]


def test_infinite_lengthscale_is_stationary_and_exports_a_conv2d():
    layer, _ = _layer("C4", None, lengthscale=float("inf"))
    _randomise(layer)
    assert not layer.log_lengthscale.requires_grad
    assert isinstance(layer.export(), torch.nn.Conv2d)
    degree = layer.degree()
    assert degree["lengthscale"] is None and degree["nonstationary_norm"] == 0.0
    assert degree["translation_error"] < 1e-12
    assert degree["relative_norm"] > 1e-2


def test_stride_padding_output_shape_and_equivariance():
    torch.manual_seed(0)
    in_type, out_type = _types("D4")
    layer = es.nn.RelaxedR2Conv(in_type, out_type, 3, relaxed_subgroup=(None, 4), padding=2, stride=2).double()
    _randomise(layer)
    x = random_input(layer, size=15)
    assert tuple(layer(x).shape) == layer.evaluate_output_shape(x.shape) == (2, 8, 9, 9)
    assert_equivariant(layer, x, elements=subgroup_test_elements(layer.in_type.gspace, (None, 4)))
    with torch.no_grad():
        torch.testing.assert_close(layer.export()(x.tensor), layer(x).tensor)


def test_matches_per_pixel_filters_with_groups_stride_dilation():
    """Reference: y(u) = [K(u, .) * x](u) with K(u, .) = K_G + aR_0 + sum_l g_l(u) aR_l built pixel by pixel."""
    torch.manual_seed(0)
    gs = gspace("D4")
    t = enn.FieldType(gs, 2 * [gs.regular_repr])
    layer = es.nn.RelaxedR2Conv(t, t, 3, relaxed_subgroup=(None, 4), num_banks=2, groups=2, stride=2, dilation=2,
                                padding=1).double()
    _randomise(layer)
    x = random_input(layer, size=11)
    with torch.no_grad():
        y = layer(x).tensor
        banks = layer._bank_filters()
        gains = layer.gains(*y.shape[-2:])
        ref = torch.empty_like(y)
        for i in range(y.shape[-2]):
            for j in range(y.shape[-1]):
                filt = banks[0] + torch.einsum("l,loikw->oikw", gains[:, i, j], banks[1:])
                out = torch.nn.functional.conv2d(x.tensor, filt, layer.strict_bias(), stride=2, padding=1, dilation=2,
                                                 groups=2)
                ref[..., i, j] = out[..., i, j]
    torch.testing.assert_close(y, ref)


def test_default_fractions_are_a_quarter_and_every_field_for_a_grouped_convolution():
    """``bank_fraction``/``bank_in_fraction`` not given: ¼ of the fields of each type (the cheap setting, one of
    four regular fields here), 1 under ``groups > 1``; ``1`` given: the paper's layer (every field modulated)."""
    gs = gspace("C4")
    t = enn.FieldType(gs, 4 * [gs.regular_repr])
    layer = es.nn.RelaxedR2Conv(t, t, 3)
    assert (layer.bank_fraction, layer.bank_in_fraction) == (es.nn.relaxed.DEFAULT_BANK_FRACTION,) * 2 == (0.25, 0.25)
    assert layer.bank_channels.tolist() == list(range(4)) and layer.bank_in_channels.tolist() == list(range(4))
    grouped = es.nn.RelaxedR2Conv(t, t, 3, groups=2)
    assert (grouped.bank_fraction, grouped.bank_in_fraction) == (1.0, 1.0) and grouped.bank_weights is None
    paper = es.nn.RelaxedR2Conv(t, t, 3, bank_fraction=1, bank_in_fraction=1)
    assert paper.bank_weights is None and paper.bank_in_channels is None
    assert paper.relaxed_weights.shape[0] == paper.num_banks + 1  # R_0 .. R_L over every field


def test_bank_fields_take_the_first_share_of_every_field_type():
    gs = gspace("D4")
    t = enn.FieldType(gs, [gs.trivial_repr] * 3 + [gs.irrep(1, 1)] * 4 + [gs.regular_repr] * 2 + [gs.trivial_repr])
    assert bank_fields(t, 1.0) == list(range(10))
    assert bank_fields(t, 0.5) == [0, 1, 3, 4, 7]            # trivial 2 of 4, irrep 2 of 4, regular 1 of 2
    assert bank_fields(t, 0.01) == [0, 3, 7]                 # at least one field of each type


@pytest.mark.parametrize("fraction, in_fraction", [(0.5, 1.0), (0.1, 1.0), (0.5, 0.5), (1.0, 0.2)])
def test_bank_fraction_matches_per_pixel_filters_and_keeps_the_subgroup(fraction, in_fraction):
    """With bank_fraction < 1 the modulated filters R_1..R_L reach only bank_fields(out_type, ...), with
    bank_in_fraction < 1 they read only bank_fields(in_type, ...): the layer still computes
    y(u) = [K(u, .) * x](u) with K(u, .) = K_G + aR_0 + sum_l g_l(u) aR_l (R_l zero on the other channels), stays
    S-equivariant, exports exactly, and is the strict layer with zero relaxation."""
    torch.manual_seed(0)
    gs = gspace("D4")
    in_type = enn.FieldType(gs, 2 * [gs.regular_repr] + [gs.trivial_repr] * 3)
    out_type = enn.FieldType(gs, [gs.trivial_repr] * 3 + [gs.irrep(1, 1)] * 4 + [gs.regular_repr] * 2)
    layer = es.nn.RelaxedR2Conv(in_type, out_type, 5, relaxed_subgroup=(None, 4), num_banks=2,
                                bank_fraction=fraction, bank_in_fraction=in_fraction).double()
    strict = layer.to_r2conv()
    x = random_input(layer, size=11)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).tensor, strict(x).tensor, rtol=0, atol=1e-12)
        layer.relaxed_weights.normal_(0, 0.3)
        layer.bank_weights.normal_(0, 0.3)
        y = layer(x).tensor
        fields = bank_fields(out_type, fraction)
        reached = torch.zeros(out_type.size, dtype=torch.bool)
        for f in fields:
            reached[out_type.fields_start[f]:out_type.fields_end[f]] = True
        assert layer.bank_weights.shape[0] == 2 and layer.bank_channels.tolist() == reached.nonzero()[:, 0].tolist()
        banks = layer._bank_filters()
        read = torch.zeros(in_type.size, dtype=torch.bool)
        for f in bank_fields(in_type, in_fraction):
            read[in_type.fields_start[f]:in_type.fields_end[f]] = True
        assert (layer.bank_in_channels is None) == (in_fraction == 1) == bool(read.all())
        if in_fraction < 1:
            assert layer.bank_in_channels.tolist() == read.nonzero()[:, 0].tolist()
            assert banks[1:, :, ~read].abs().max() == 0                   # zero off the read inputs
        assert reached.all() == (fraction == 1)
        if fraction < 1:
            assert banks[1:, ~reached].abs().max() == 0                   # zero off the reached channels
        assert banks[1:, reached].abs().amax((0, 2, 3, 4)).min() > 0     # non-zero on every reached channel
        assert banks[1:, :, read].abs().amax((0, 1, 3, 4)).min() > 0     # and from every read input
        gains = layer.gains(*y.shape[-2:])
        ref = torch.empty_like(y)
        for i in range(y.shape[-2]):
            for j in range(y.shape[-1]):
                filt = banks[0] + torch.einsum("l,loikw->oikw", gains[:, i, j], banks[1:])
                ref[..., i, j] = torch.nn.functional.conv2d(x.tensor, filt, layer.strict_bias())[..., i, j]
        torch.testing.assert_close(y, ref)
        torch.testing.assert_close(layer.export()(x.tensor), y)
    assert_equivariant(layer, x, elements=subgroup_test_elements(gs, (None, 4)))
    assert layer.degree()["nonstationary_norm"] > 1e-3
    expected = 0.5 * layer.penalty_weight * (layer.relaxed_weights.pow(2).sum() + layer.bank_weights.pow(2).sum()
                                             + layer.bank_coefficients.pow(2).sum() + 1.0 + 1.0)
    torch.testing.assert_close(layer.penalty(), expected)
    (layer(x).tensor.pow(2).sum()).backward()
    assert layer.bank_weights.grad.abs().sum() > 0 and layer.bank_coefficients.grad.abs().sum() > 0


def test_bank_fraction_eval_cache_follows_the_bank_weights_and_state_dict_round_trips():
    torch.manual_seed(0)
    gs = gspace("D4")
    t = enn.FieldType(gs, 4 * [gs.regular_repr])
    layer = es.nn.RelaxedR2Conv(t, t, 3, bank_fraction=0.5).double()
    with torch.no_grad():
        layer.bank_weights.normal_(0, 0.3)
    x = random_input(layer, size=9)
    with torch.no_grad():
        first = layer(x).tensor
        layer.eval()
        torch.testing.assert_close(layer(x).tensor, first)
        layer.bank_weights.add_(0.1)                         # in place, in eval mode: the cache must notice
        changed = layer(x).tensor
        layer.train()
        torch.testing.assert_close(layer(x).tensor, changed)
    assert not torch.allclose(first, changed)
    other = es.nn.RelaxedR2Conv(t, t, 3, bank_fraction=0.5).double()
    other.load_state_dict(layer.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x).tensor, changed)


def test_fits_a_target_the_strict_layer_cannot():
    """Target: a random unconstrained (trivial-group) filter whose response grows to the left."""
    torch.manual_seed(0)
    gs = gspace("C4")
    in_type, out_type = enn.FieldType(gs, [gs.regular_repr]), enn.FieldType(gs, [gs.trivial_repr])
    x = in_type(torch.randn(8, 4, 11, 11, dtype=torch.float64))
    free = enn.R2Conv(in_type.restrict(1), out_type.restrict(1), 5, recompute=True).double()
    with torch.no_grad():
        ramp = torch.linspace(1.5, 0.5, 7, dtype=torch.float64).reshape(1, 1, 1, 7)
        target = free(in_type.restrict(1)(x.tensor)).tensor * ramp

    strict = relative_fit_loss(es.nn.RelaxedR2Conv(in_type, out_type, 5, amplitude=0.0), x, target)
    relaxed = relative_fit_loss(es.nn.RelaxedR2Conv(in_type, out_type, 5), x, target)
    assert strict > 0.5 and relaxed < 0.01


def test_hyperparameters_receive_gradients():
    layer, _ = _layer("D4", None)
    _randomise(layer)
    hp = layer.hyperparameters()
    assert set(hp) == {"amplitude", "lengthscale"}
    assert set(layer.hyperparameter_parameters()) == {"log_amplitude", "log_lengthscale"}
    x = random_input(layer, size=11)
    (layer(x).tensor.pow(2).sum() + layer.penalty()).backward()
    for p in layer.hyperparameter_parameters().values():
        assert p.grad is not None and p.grad.abs() > 0


@pytest.mark.parametrize("name,sid", [("C4", None), ("SO2", -1), ("O2", (0.0, 2))])
def test_hyperparameter_gradcheck(name, sid):
    """Finite differences of the output w.r.t. log-amplitude and log-lengthscale (Bessel features for SO(2))."""
    in_type, out_type = _types(name)
    torch.manual_seed(0)
    layer = _randomise(es.nn.RelaxedR2Conv(in_type, out_type, 3, relaxed_subgroup=sid, num_features=4).double())
    x = random_input(layer, batch=1, size=7).tensor

    def f(log_a, log_l):
        params = {"log_amplitude": log_a, "log_lengthscale": log_l}
        return torch.func.functional_call(layer, params, (in_type(x),)).tensor

    args = (torch.tensor(-0.3, dtype=torch.float64, requires_grad=True),
            torch.tensor(-0.5, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(f, args)


def test_eval_mode_with_grad_enabled_backpropagates():
    layer, _ = _layer("C4", None)
    _randomise(layer)
    layer.eval()
    x = random_input(layer, size=11)
    layer(x).tensor.sum().backward()
    assert layer.relaxed_weights.grad is not None and layer.relaxed_weights.grad.abs().sum() > 0


def test_degree_amplitude_and_penalty():
    """The common part of degree() is in test_soft_conv_contract.py."""
    layer, _ = _layer("D4", (None, 4))
    assert layer.degree()["amplitude"] == 1.0
    _randomise(layer)
    expected = 0.5 * layer.penalty_weight * (layer.relaxed_weights.pow(2).sum() + layer.bank_coefficients.pow(2).sum()
                                             + 1.0 + 1.0)
    torch.testing.assert_close(layer.penalty(), expected)


def test_from_r2conv_and_to_r2conv_round_trip():
    layer, strict = _layer("O2", (None, -1))
    back = layer.to_r2conv()
    torch.testing.assert_close(back.weights, strict.weights)
    x = random_input(layer, size=11)
    strict.train()
    with torch.no_grad():
        torch.testing.assert_close(back(x).tensor, strict(x).tensor)


def test_bad_input():
    in_type, out_type = _types("C4")
    d4_in, d4_out = _types("D4")
    with pytest.raises(ValueError, match=r"relaxed_subgroup: 2 .*D4.*\(None, M\)"):
        es.nn.RelaxedR2Conv(d4_in, d4_out, 5, relaxed_subgroup=2)
    with pytest.raises(ValueError, match=r"lengthscale: -1.0 .*positive"):
        es.nn.RelaxedR2Conv(in_type, out_type, 5, lengthscale=-1.0)
    with pytest.raises(ValueError, match=r"amplitude: -0.5 .*positive"):
        es.nn.RelaxedR2Conv(in_type, out_type, 5, amplitude=-0.5)
    for fraction in (0, 1.5, True):
        for name in ("bank_fraction", "bank_in_fraction"):
            with pytest.raises(ValueError, match=rf"{name}: {fraction!r} .*\(0, 1\]"):
                es.nn.RelaxedR2Conv(in_type, out_type, 5, **{name: fraction})
    reg = enn.FieldType(in_type.gspace, 2 * [in_type.gspace.regular_repr])
    with pytest.raises(ValueError, match=r"bank_fraction: 0.5 needs groups=1 \(got groups=2\)"):
        es.nn.RelaxedR2Conv(reg, reg, 3, groups=2, bank_fraction=0.5)
    with pytest.raises(ValueError, match=r"bank_in_fraction: 0.5 needs groups=1 \(got groups=2\)"):
        es.nn.RelaxedR2Conv(reg, reg, 3, groups=2, bank_in_fraction=0.5)
    layer = es.nn.RelaxedR2Conv(in_type, out_type, 5)
    with pytest.raises(ValueError, match=r"input: its field type"):
        layer(out_type(torch.randn(1, out_type.size, 9, 9)))
    with pytest.raises(ValueError, match=r"conv: its steerable basis differs"):
        es.nn.RelaxedR2Conv.from_r2conv(enn.R2Conv(in_type, out_type, 5, frequencies_cutoff=1.0))
