"""escnn_soft._escnn, the one adapter to escnn's private internals: it reads escnn's block layout right for every
supported group (the filter rebuilt block by block is escnn's own), and no other module of escnn_soft reaches
into escnn's private names."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from escnn import group, gspaces
from escnn import nn as enn
from escnn.kernels import EmptyBasisException

from escnn_soft import _escnn as adapter
from escnn_soft.nn._strict import SteerableConv

PACKAGE = Path(__file__).resolve().parents[1] / "escnn_soft"


# ---------------------------------------------------------------------------------------------------
# the block layout, for every supported group


def _c4():
    gs = gspaces.rot2dOnR2(4)
    r, t, i1 = gs.regular_repr, gs.trivial_repr, gs.irrep(1)
    return gs, [t, r, t, r, i1], [i1, i1, t, r, r]


def _d4():
    gs = gspaces.flipRot2dOnR2(4)
    r, t, i11 = gs.regular_repr, gs.trivial_repr, gs.irrep(1, 1)
    return gs, [r, t, r, i11, t], [t, t, i11, r]


def _so2():
    gs = gspaces.rot2dOnR2(-1, maximum_frequency=4)
    i0, i1, i2 = gs.irrep(0), gs.irrep(1), gs.irrep(2)
    return gs, [i0, i1, i0, i2, i1], [i1, i1, i0, i2]


def _o2():
    gs = gspaces.flipRot2dOnR2(-1, maximum_frequency=4)
    t, s, i1, i2 = gs.irrep(0, 0), gs.irrep(1, 0), gs.irrep(1, 1), gs.irrep(1, 2)
    return gs, [i1, t, i1, s, i2], [t, t, i1, s, i2, s]


def _so3():
    gs = gspaces.rot3dOnR3(maximum_frequency=2)
    i0, i1, i2 = gs.irrep(0), gs.irrep(1), gs.irrep(2)
    return gs, [i0, i1, i0, i2], [i1, i1, i0, i2]


def _o3():
    gs = gspaces.flipRot3dOnR3(maximum_frequency=2)
    t, i1, p1 = gs.irrep(0, 0), gs.irrep(0, 1), gs.irrep(1, 1)
    return gs, [t, i1, t, p1], [i1, i1, t, p1]


GROUPS = {"C4": _c4, "D4": _d4, "SO2": _so2, "O2": _o2, "SO3": _so3, "O3": _o3}


def _conv(name: str, **kwargs):
    """A strict escnn conv (float64, own sampled basis) between mixed field types of group ``name``."""
    gs, reprs_in, reprs_out = GROUPS[name]()
    conv_cls, k = (enn.R2Conv, 5) if gs.dimensionality == 2 else (enn.R3Conv, 3)
    conv = conv_cls(enn.FieldType(gs, reprs_in), enn.FieldType(gs, reprs_out), k, recompute=True, **kwargs)
    return conv.to(torch.float64)


def _assembled(expansion, weights: torch.Tensor, by_channels: bool) -> torch.Tensor:
    """The filter rebuilt block by block: basis einsum coefficients, placed at the block's channels."""
    filt = weights.new_zeros(*adapter.expansion_shape(expansion), expansion.S)
    for blk in adapter.expansion_blocks(expansion):
        b, d_o, d_i, p = blk.basis.shape
        c = weights[blk.start:blk.stop].reshape(blk.out_count, blk.in_count, b)
        k = torch.einsum("boip,nmb->nomip", blk.basis, c).reshape(blk.out_count * d_o, blk.in_count * d_i, p)
        if by_channels:
            rows, cols = blk.out_channels.reshape(-1), blk.in_channels.reshape(-1)
            filt[rows[:, None], cols[None, :]] = k
        elif isinstance(blk.out_index, slice):
            filt[blk.out_index, blk.in_index] = k
        else:  # escnn's flattened (out channel x in channel) grid, field pairs in (out, in) order
            k = k.reshape(blk.out_count, d_o, blk.in_count, d_i, p)
            filt[blk.out_index, blk.in_index] = k.reshape(-1, p)
    return filt


@pytest.mark.parametrize("name", list(GROUPS))
def test_blocks_rebuild_escnn_filter(name):
    torch.manual_seed(0)
    conv = _conv(name)
    expansion = conv.basisexpansion
    weights = torch.randn(expansion.dimension(), dtype=torch.float64)
    expected = expansion(weights)
    blocks = adapter.expansion_blocks(expansion)

    assert adapter.expansion_shape(expansion) == tuple(expected.shape[:2]) == (conv.out_type.size, conv.in_type.size)
    contiguous = {isinstance(blk.out_index, slice) for blk in blocks}
    assert contiguous == {True, False}, "the field types should give contiguous and non-contiguous blocks"
    assert blocks[0].start == 0 and blocks[-1].stop == expansion.dimension()
    assert [blk.start for blk in blocks[1:]] == [blk.stop for blk in blocks[:-1]]
    for blk in blocks:
        assert blk.basis is blk.module.sampled_basis
        assert blk.stop - blk.start == blk.module.dimension() * blk.out_count * blk.in_count
        assert blk.out_channels.shape == (blk.out_count, blk.basis.shape[1])
        assert blk.in_channels.shape == (blk.in_count, blk.basis.shape[2])

    for by_channels in (False, True):
        got = _assembled(expansion, weights, by_channels)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    stds = adapter.he_stds(expansion)
    assert stds.shape == (expansion.dimension(),) and bool((stds > 0).all())


@pytest.mark.parametrize("name", ["C4", "SO3"])
def test_channels_are_the_fields_positions(name):
    """``out_channels`` / ``in_channels`` list, field by field, where each field of the block's representations
    sits in the field type."""
    conv = _conv(name)
    for blk in adapter.expansion_blocks(conv.basisexpansion):
        for ftype, rep_name, channels in ((conv.in_type, blk.pair[0], blk.in_channels),
                                          (conv.out_type, blk.pair[1], blk.out_channels)):
            starts = np.cumsum([0] + [r.size for r in ftype.representations])
            fields = [list(range(starts[j], starts[j] + r.size))
                      for j, r in enumerate(ftype.representations) if r.name == rep_name]
            assert channels.tolist() == fields


def test_privatize_keeps_the_filter_and_shares_nothing():
    gs, reprs_in, reprs_out = _c4()
    t_in, t_out = enn.FieldType(gs, reprs_in), enn.FieldType(gs, reprs_out)
    shared, mine = enn.R2Conv(t_in, t_out, 5), enn.R2Conv(t_in, t_out, 5)
    before = mine.basisexpansion(mine.weights).detach().clone()
    adapter.privatize_(mine.basisexpansion)
    for a, b in zip(adapter.expansion_blocks(shared.basisexpansion), adapter.expansion_blocks(mine.basisexpansion)):
        assert a.basis.data_ptr() != b.basis.data_ptr()
        torch.testing.assert_close(a.basis, b.basis, rtol=0, atol=0)
        if isinstance(b.out_index, slice):
            assert all(type(v) is int for v in (b.out_index.start, b.out_index.stop, b.in_index.start,
                                                 b.in_index.stop))
    torch.testing.assert_close(mine.basisexpansion(mine.weights), before, rtol=0, atol=0)


def test_private_blocks_expansion_and_sampled_basis_are_escnn_s():
    conv = _conv("D4").float()
    gen = SteerableConv(conv.in_type, conv.out_type, 5, initialize=False).kernel_basis(conv.space)
    bf, rings, sigma, _ = adapter.compute_basis_params_2d(5)
    assert adapter.conv_basis_kwargs(conv) == {"sigma": sigma, "rings": rings}
    points = adapter.grid_coords(2, 5)
    np.testing.assert_array_equal(points, conv.basisexpansion.points)
    fresh = adapter.private_blocks_expansion(conv.in_type.representations, conv.out_type.representations, gen, points,
                                             basis_filter=bf)
    for a, b in zip(adapter.expansion_blocks(conv.basisexpansion), adapter.expansion_blocks(fresh)):
        assert a.pair == b.pair
        torch.testing.assert_close(b.basis, a.basis, rtol=0, atol=0)
        r_in = next(r for r in conv.in_type.representations if r.name == a.pair[0])
        r_out = next(r for r in conv.out_type.representations if r.name == a.pair[1])
        torch.testing.assert_close(adapter.private_sampled_basis(gen(r_in, r_out), points, bf), a.basis,
                                   rtol=0, atol=0)
    _, rings3, sigma3, _ = adapter.compute_basis_params_3d(3)
    assert adapter.conv_basis_kwargs(_conv("SO3")) == {"sigma": sigma3, "rings": rings3}
    assert adapter.grid_coords(3, 3).shape == (27, 3)
    assert adapter.conv_basis_kwargs(torch.nn.Linear(1, 1), missing_ok=True) == {}
    with pytest.raises(AttributeError):
        adapter.conv_basis_kwargs(torch.nn.Linear(1, 1))


def test_interpolate_transform_basespace_is_geometric_tensor_transform():
    gs = gspaces.rot2dOnR2(4)
    t = enn.FieldType(gs, [gs.trivial_repr])
    x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    g = gs.fibergroup.element(1)
    moved = adapter.interpolate_transform_basespace(gs, x.numpy(), g, order=2)
    np.testing.assert_array_equal(np.asarray(moved), t(x).transform(g).tensor.numpy())
    np.testing.assert_array_equal(np.asarray(moved)[0, 0], np.rot90(x.numpy()[0, 0], 1))


def test_empty_basis_errors():
    gs = gspaces.rot2dOnR2(-1, maximum_frequency=8)
    with pytest.raises(ValueError) as info:
        enn.R2Conv(enn.FieldType(gs, [gs.irrep(0)]), enn.FieldType(gs, [gs.irrep(6)]), 3)
    assert adapter.is_empty_basis_error(info.value)
    assert adapter.is_empty_basis_error(EmptyBasisException())
    assert not adapter.is_empty_basis_error(ValueError("in_type: something else"))
    assert not adapter.is_empty_basis_error(RuntimeError("The basis for the steerable filter is empty!"))


def test_mode_dependent_buffers_are_escnn_s():
    """The buffers escnn's layers add in eval mode (and drop in train mode) are exactly the adapter's names."""
    gs = gspaces.rot2dOnR2(4)
    t = enn.FieldType(gs, [gs.regular_repr])
    g0 = gspaces.no_base_space(group.cyclic_group(4))
    t0 = enn.FieldType(g0, [g0.regular_repr])
    for layer in (enn.R2Conv(t, t, 3), enn.Linear(t0, t0)):
        assert adapter.keeps_mode_dependent_buffers(layer)
        train_keys = set(layer.train().state_dict())
        eval_keys = set(layer.eval().state_dict())
        added = eval_keys - train_keys
        assert added and added <= set(adapter.MODE_DEPENDENT_BUFFERS) and train_keys <= eval_keys
        assert set(layer.train().state_dict()) == train_keys
    assert not adapter.keeps_mode_dependent_buffers(torch.nn.Conv2d(1, 1, 3))


# ---------------------------------------------------------------------------------------------------
# the rule: nothing else in escnn_soft touches escnn's private names

#: escnn's private names and module paths; only escnn_soft/_escnn.py may contain them
PRIVATE = [
    r"\._representations_pairs\b", r"\._weights_ranges\b", r"\._escape_pair\b", r"\._contiguous\b",
    r"\._in_count\b", r"\._out_count\b", r"\._in_reprs\b", r"\._out_reprs\b", r"\._output_size\b",
    r"\._input_size\b", r"\._n_pairs\b", r"\._mask\b", r"\._interpolate_transform_basespace\b",
    r"\b_build_kernel_basis\b", r"\b_stored_filters\b", r"\b_RdConv\b", r"\b_generalized_he_init_variances\b",
    r"block_expansion_", r"\bin_indices_", r"\bout_indices_", r"\bescnn\.nn\.modules\b", r"\bbasismanager\b",
    r"\bblock_basisexpansion\b", r"\bSingleBlockBasisExpansion\b", r"\bretrieve_indices\b",
    r"\bcompute_basis_params\b", r"\bget_grid_coords\b", r"\bEmptyBasisException\b", r"filter is empty",
    r"[\"']expanded_bias[\"']",
]
#: attributes of escnn's R2Conv / R3Conv that escnn_soft's relaxed layers (SoftConvBase) also define for themselves:
#: ``self.<name>`` is allowed in the modules of those layers, any other use anywhere is a reach into escnn
OWN = ["_sigma", "_rings", "_maximum_frequency", "_reversed_padding_repeated_twice", "_basisexpansion"]
OWNERS = {"nn/_strict.py", "nn/_relaxation.py", "nn/relaxed.py", "nn/rpp.py", "nn/rsteer.py"}
ADAPTER = "_escnn.py"


def _violations(text: str, relpath: str) -> list[str]:
    """``["line: pattern"]`` for every private escnn name in ``text`` (the source of ``escnn_soft/<relpath>``)."""
    if relpath == ADAPTER:
        return []
    patterns = list(PRIVATE)
    for name in OWN:
        patterns.append(rf"(?<!\bself)\.{name}\b|[\"']{name}[\"']" if relpath in OWNERS else rf"\b{name}\b")
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        out += [f"{lineno}: {p}" for p in patterns if re.search(p, line)]
    return out


def test_no_module_but_the_adapter_touches_escnn_privates():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if hits := _violations(path.read_text(), rel):
            found[rel] = hits
    assert (PACKAGE / ADAPTER).is_file()
    assert not found, f"escnn private names outside escnn_soft/_escnn.py (move the access into the adapter): {found}"


@pytest.mark.parametrize("line,relpath,flagged", [
    ("start, stop = expansion._weights_ranges[pair]", "laplace/curvature.py", True),
    ("from escnn.nn.modules.basismanager import BlocksBasisExpansion", "ordering.py", True),
    ("moved = gspace._interpolate_transform_basespace(x, g)", "nn/doubly_stochastic.py", True),
    ("kw = dict(sigma=conv._sigma, rings=conv._rings)", "nn/_relaxation.py", True),
    ("if hasattr(layer, '_sigma'):", "convert.py", True),
    ("x = F.pad(x, self._reversed_padding_repeated_twice)", "nn/probabilistic.py", True),
    ("for key in ('filter', 'matrix', 'expanded_bias'):", "checkpoint.py", True),
    ("except EmptyBasisException:", "nn/probabilistic.py", True),
    ("start, stop = expansion._weights_ranges[pair]", "_escnn.py", False),
    ("filt, self._rings, self._sigma, _ = compute(k)", "nn/_relaxation.py", False),
    ("return projection_gram(self._basisexpansion, flat)", "nn/relaxed.py", False),
    ("filt, bias = self.expand_filter(), self.expanded_bias()", "nn/doubly_stochastic.py", False),
])
def test_the_rule_flags_private_names(line, relpath, flagged):
    assert bool(_violations(line, relpath)) == flagged
