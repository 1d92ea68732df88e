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


# -- a chain of pathways (pathways=[S_1, ..., S_n]) ------------------------------------------------------------

F32 = {"rtol": 1e-4, "atol": 1e-5}


def _chain(dtype=torch.float64, **kwargs) -> tuple[es.nn.RPPR2Conv, enn.R2Conv]:
    """D4 layer with pathways C4 ⊃ trivial (plain weights), built from a strict R2Conv."""
    return _layer("D4", None, pathways=[(None, 4), None], **kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_chain_levels_keep_their_subgroups(dtype):
    """Zero pathways = the strict layer; the C4 pathway alone keeps C4 exactly and breaks the flips; the trivial
    pathway breaks C4 too; export() computes the layer in every state."""
    from escnn_soft.metrics.equivariance import equivariance_error, grid_exact_elements
    from escnn_soft.subgroups import subgroup_test_elements
    from escnn_soft.testing import assert_equivariant

    layer, strict = _chain()
    layer, strict = layer.to(dtype), strict.to(dtype)
    tol = {} if dtype == torch.float64 else F32
    x = random_input(layer, dtype=dtype)
    gs = layer.in_type.gspace
    c4 = subgroup_test_elements(gs, (None, 4))
    with torch.no_grad():
        torch.testing.assert_close(layer(x).tensor, strict(x).tensor, **tol)
        layer.chain[0].weights.normal_(0, 0.3)
    assert_equivariant(layer, x, elements=c4, dtype=dtype, **tol)
    assert max(equivariance_error(layer, x, grid_exact_elements(gs)).values()) > 1e-2
    with torch.no_grad():
        torch.testing.assert_close(layer.export()(x.tensor), layer(x).tensor, **tol)
        layer.chain[1].weights.normal_(0, 0.1)
        assert max(equivariance_error(layer, x, c4).values()) > 1e-2
        torch.testing.assert_close(layer.export()(x.tensor), layer(x).tensor, **tol)
        torch.testing.assert_close(layer.free_filter(), sum(layer.pathway_filters()))


def test_chain_penalty_degree_and_hyperparameters():
    layer, _ = _chain(variance_equivariant=10.0, variance_free=[0.5, 2.0])
    with torch.no_grad():
        layer.chain[0].weights.normal_(0, 0.3)
        layer.chain[1].weights.normal_(0, 0.3)
    expected = (layer.weights.pow(2).sum() / 20.0 + layer.chain[0].weights.pow(2).sum() / 1.0
                + layer.chain[1].weights.pow(2).sum() / 4.0)
    torch.testing.assert_close(layer.penalty(), expected)
    torch.testing.assert_close(layer.hyperparameters()["variance_free"], torch.tensor([0.5, 2.0], dtype=torch.float64))
    degree = layer.degree()
    paths = degree["pathways"]
    assert [p["subgroup"] for p in paths] == ["(None, 4)", None]
    assert paths[0]["parameters"] == layer.chain[0].weights.numel() < paths[1]["parameters"] == layer.chain[1].weights.numel()
    strict_norm = float(layer.strict_filter().detach().norm())
    for p, filt in zip(paths, layer.pathway_filters()):
        assert p["norm_ratio"] == pytest.approx(float(filt.detach().norm()) / strict_norm)
    assert degree["variance_free"] == pytest.approx([0.5, 2.0])
    assert degree["relaxed_subgroup"] is None and "C4" in degree["equivariance_error"]


def test_chain_of_one_is_the_single_pathway():
    a, _ = _layer("D4", (None, 4))
    b, _ = _layer("D4", None, pathways=[(None, 4)])
    """A chain of one level spans the same filters as the single free path minus the strict span: the same
    layer functions, one parameter for each direction that breaks the group."""
    a, _ = _layer("D4", (None, 4))
    b, _ = _layer("D4", None, pathways=[(None, 4)])
    assert len(b.chain) == 1 and b.chain[0].weights.numel() == a.free_weights.numel() - a.weights.numel()
    with torch.no_grad():
        a.free_weights.normal_(0, 0.3)
    # the part of a's free filter outside the D4 span, written in b's orthonormal basis: same filters
    free = a.free_filter().detach().reshape(a.out_type.size, a.in_type.size, -1)
    with torch.no_grad():
        for s0, out_idx, in_idx, basis in b.chain[0].blocks():
            block = free[out_idx[:, None, :, None], in_idx[None, :, None, :]]   # (n_o, n_i, o, a, P)
            n_o, n_i = out_idx.shape[0], in_idx.shape[0]
            coeff = block.reshape(n_o * n_i, -1) @ basis.reshape(basis.shape[0], -1).T
            b.chain[0].weights[s0:s0 + coeff.numel()] = coeff.reshape(-1)
    strict_part = a.free_filter().detach() - b.free_filter().detach()
    assert a._nonequivariant_fraction(strict_part) < 1e-6          # what is left is D4-steerable


def test_chain_in_3d_keeps_so3():
    """O(3) with pathways SO(3) ⊃ trivial: the SO(3) pathway breaks the reflections only."""
    from escnn import gspaces

    from escnn_soft.metrics.equivariance import equivariance_error
    from escnn_soft.subgroups import subgroup_test_elements

    torch.manual_seed(0)
    gs = gspaces.flipRot3dOnR3()
    t = enn.FieldType(gs, [gs.trivial_repr, gs.irrep(1, 1), gs.irrep(0, 1)])
    layer = es.nn.RPPR3Conv(t, t, 3, pathways=["so3", None], padding=1).double()
    x = random_input(layer, size=7)
    with torch.no_grad():
        layer.chain[0].weights.normal_()
        so3 = equivariance_error(layer, x, subgroup_test_elements(gs, "so3"))
        o3 = equivariance_error(layer, x, subgroup_test_elements(gs, None))
    # the 3D basis is sampled in float32 (then cast): 1e-6, not float64's 1e-12
    assert max(so3.values()) < 1e-6
    assert max(o3.values()) > 1e-2


def test_chain_bad_input():
    in_type, out_type = _types("D4")
    for kwargs, pattern in (
            ({"pathways": (None, 4)}, r"pathways: \(None, 4\); pass a non-empty list"),
            ({"pathways": []}, r"pathways: \[\]; pass a non-empty list"),
            ({"pathways": [None, (None, 4)]}, r"pathways: \[None, \(None, 4\)\]; None .* last"),
            ({"pathways": [(None, 4)], "relaxed_subgroup": (0, 1)}, r"relaxed_subgroup: \(0, 1\) given with pathways"),
            ({"pathways": [(0, 1), (None, 4)]}, r"pathways: \(0, 1\) \(.*\) does not contain \(None, 4\) \(C4\); list the pathways from the largest"),
            ({"pathways": [(None, 4), None], "variance_free": [1.0]}, r"variance_free: \[1.0\] has 1 values for 2"),
            ({"pathways": [(None, 3)]}, r"pathways: \(None, 3\) is not a subgroup id")):
        with pytest.raises(ValueError, match=pattern):
            es.nn.RPPR2Conv(in_type, out_type, 5, **kwargs)


def test_soften_and_harden_with_a_chain():
    """soften(method='rpp', pathways=...) builds chains from R2Conv layers; harden keeps C4 where only the C4
    pathway moved."""
    torch.manual_seed(0)
    in_type, out_type = _types("D4")
    net = enn.SequentialModule(enn.R2Conv(in_type, out_type, 5))
    soft = es.soften(net, method="rpp", pathways=[(None, 4), None])
    layer = soft[0] if isinstance(soft, enn.SequentialModule) else soft
    assert isinstance(layer, es.nn.RPPR2Conv) and layer.pathways == [(None, 4), None]
    with torch.no_grad():
        layer.chain[0].weights.normal_(0, 0.3)
    _, log = es.harden(soft, return_log=True)
    assert [entry["subgroup"] for entry in log.values()] == ["C4"]


def test_chain_levels_are_orthogonal():
    """Every level is orthogonal to the strict span and to the other levels (on the sampled grid), so each level's
    norm is the part of the filter that leaves S_{k-1} and keeps S_k."""
    from escnn_soft.nn._relaxation import projection_gram

    layer, _ = _layer("D4", None, pathways=[(None, 4), (None, 2), None])
    with torch.no_grad():
        for level in layer.chain:
            level.weights.normal_()
    filters = torch.stack([f.detach().reshape(f.shape[0], f.shape[1], -1) for f in layer.pathway_filters()])
    gram = torch.einsum("kabp,jabp->kj", filters, filters)
    off = gram - torch.diag(torch.diagonal(gram))
    assert float(off.abs().max()) < 1e-5 * float(torch.diagonal(gram).min())
    inside_strict = torch.diagonal(projection_gram(layer._basisexpansion, filters))
    assert float((inside_strict / torch.diagonal(gram)).max()) < 1e-6
    # orthonormal bases: the squared norm of a level's filter is the squared norm of its weights
    for level, g in zip(layer.chain, torch.diagonal(gram)):
        assert float(g) == pytest.approx(float(level.weights.detach().pow(2).sum()), rel=1e-5)


def test_chain_checkpoint_carries_its_basis():
    """A level's orthonormal basis is one choice among many: the state dict holds it, so a layer loading the
    checkpoint computes the saved function even where its own basis came out rotated."""
    layer, _ = _layer("D4", None, pathways=[(None, 4), None])
    with torch.no_grad():
        for level in layer.chain:
            level.weights.normal_()
    state = layer.state_dict()
    assert {"chain.0.basis_0", "chain.1.basis_0"} <= set(state)
    other, _ = _layer("D4", None, pathways=[(None, 4), None])
    with torch.no_grad():                 # another orthonormal basis of the same level: rotate the basis vectors
        basis = other.chain[1].basis_0
        q, _ = torch.linalg.qr(torch.randn(basis.shape[0], basis.shape[0], dtype=basis.dtype))
        basis.copy_((q @ basis.reshape(basis.shape[0], -1)).reshape(basis.shape))
    x = random_input(layer)
    with torch.no_grad():
        for mine, theirs in zip(other.chain, layer.chain):
            mine.weights.copy_(theirs.weights)
        assert (other(x).tensor - layer(x).tensor).abs().max() > 1e-3   # the same weights in another basis
        other.load_state_dict(state)
        torch.testing.assert_close(other(x).tensor, layer(x).tensor)


def test_chain_eval_cache_follows_the_levels():
    """In eval mode the filter is cached; a change of a level's weights (a submodule's parameter) or of its basis (a
    checkpoint) must reach the output."""
    layer, _ = _layer("D4", None, pathways=[(None, 4), None])
    layer.eval()
    x = random_input(layer)
    with torch.no_grad():
        before = layer(x).tensor.clone()
        layer.chain[1].weights.normal_()
        after = layer(x).tensor.clone()
        assert (after - before).abs().max() > 1e-3
        layer.chain[1].basis_0.mul_(2.0)
        torch.testing.assert_close(layer(x).tensor - before, 2 * (after - before))
