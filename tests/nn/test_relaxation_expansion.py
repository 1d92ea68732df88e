"""The block-sparse expansion of relaxation bases (``factorize_``) gives the dense expansion's filters."""
from __future__ import annotations

import pytest
import torch

from escnn_soft._escnn import expansion_blocks, expansion_shape
from escnn_soft.nn import RelaxedR2Conv
from escnn_soft.nn._relaxation import expand_blocks
from tests.registry import conv_types as field_types


def _dense(expansion, coefficients):
    """The dense contraction over every basis element, block by block (the reference)."""
    out = coefficients.new_zeros(coefficients.shape[0], *expansion_shape(expansion), expansion.S)
    f = coefficients.shape[0]
    for blk in expansion_blocks(expansion):
        b, o, i, p = blk.basis.shape
        c = coefficients[:, blk.start:blk.stop].reshape(f, blk.out_count * blk.in_count, b)
        k = torch.einsum("boip,fkb->fkoip", blk.basis, c).reshape(f, blk.out_count, blk.in_count, o, i, p)
        k = k.transpose(2, 3)
        if isinstance(blk.out_index, slice):
            out[:, blk.out_index, blk.in_index] = k.reshape(f, blk.out_count * o, blk.in_count * i, p)
        else:
            out[:, blk.out_index, blk.in_index] = k.reshape(f, -1, p)
    return out


@pytest.mark.parametrize("name,sid", [("O2", None), ("O2", (None, 4)), ("SO2", None), ("D4", (0, 2)),
                                      ("C4", None)])
def test_factorized_expansion_equals_dense(name, sid):
    in_type, out_type = field_types(name)
    in_type = in_type + in_type
    layer = RelaxedR2Conv(in_type, out_type, 5, relaxed_subgroup=sid).double()
    exp = layer._relaxation_expansion
    torch.manual_seed(0)
    c = torch.randn(3, exp.dimension(), dtype=torch.float64, requires_grad=True)
    fast, ref = expand_blocks(exp, c), _dense(exp, c)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    (g_fast,) = torch.autograd.grad((fast * g).sum(), c)
    (g_ref,) = torch.autograd.grad((ref * g).sum(), c)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-12, atol=1e-12)


def test_trivial_subgroup_basis_is_factorized():
    """The trivial-subgroup basis splits into one component per channel entry: the fast path is taken."""
    in_type, out_type = field_types("O2")
    layer = RelaxedR2Conv(in_type, out_type, 5)
    exp = layer._relaxation_expansion
    assert any(k.startswith("_factor_gather_") for k in exp._buffers)
    assert not any(k.startswith("_factor") for k in layer.state_dict())


def test_bank_combine_gradients_and_double_backward():
    """The custom backward of the per-pixel bank combination is right to first and second order."""
    from escnn_soft.nn.relaxed import _BankCombine

    torch.manual_seed(0)
    y = torch.randn(2, 2, 3, 4, 5, dtype=torch.float64, requires_grad=True)   # (B, G, L+1, O, P)
    g = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)             # (L, P)
    assert torch.autograd.gradcheck(_BankCombine.apply, (y, g))
    assert torch.autograd.gradgradcheck(_BankCombine.apply, (y, g))
    expected = y[:, :, 0] + g[0] * y[:, :, 1] + g[1] * y[:, :, 2]
    torch.testing.assert_close(_BankCombine.apply(y, g), expected, rtol=1e-14, atol=1e-14)


def test_partial_bank_combine_gradients_and_double_backward():
    """The banks added into a subset of the output channels: right to first and second order."""
    from escnn_soft.nn.relaxed import _PartialBankCombine

    torch.manual_seed(0)
    channels = torch.tensor([3, 0])
    y0 = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)         # (B, C, P)
    yb = torch.randn(2, 2 * 2, 6, dtype=torch.float64, requires_grad=True)     # (B, L C_b, P), L = 2 banks
    g = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)             # (L, P)

    def f(y0, yb, g):
        return _PartialBankCombine.apply(y0, yb, g, channels)

    assert torch.autograd.gradcheck(f, (y0, yb, g))
    assert torch.autograd.gradgradcheck(f, (y0, yb, g))
    expected = y0.clone()
    expected[:, 3] += g[0] * yb[:, 0] + g[1] * yb[:, 2]
    expected[:, 0] += g[0] * yb[:, 1] + g[1] * yb[:, 3]
    torch.testing.assert_close(f(y0, yb, g), expected, rtol=1e-14, atol=1e-14)
