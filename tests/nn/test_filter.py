"""The one filter cache and the one export path of the soft layers (escnn_soft/nn/_filter.py)."""
from __future__ import annotations

import pytest
import torch

from escnn_soft.nn._filter import FilterCache, conv_output_shape, convolve, plain_conv, plain_linear


def test_cache_reuses_only_while_nothing_changed():
    w = torch.nn.Parameter(torch.randn(3))
    calls = []

    def expand():
        calls.append(1)
        return w * 2

    cache: FilterCache[torch.Tensor] = FilterCache()
    with torch.no_grad():
        a = cache.get(False, [w], expand)
        assert cache.get(False, [w], expand) is a and len(calls) == 1      # eval, unchanged: reused
        w.add_(1.0)                                                        # an optimiser step bumps the version
        torch.testing.assert_close(cache.get(False, [w], expand), w * 2)
        assert len(calls) == 2
        cache.get(False, [w], expand, extra=(5, 5))                        # another output shape: another key
        assert len(calls) == 3
        cache.get(True, [w], expand)                                       # training: always rebuilt
        assert len(calls) == 4
    out = cache.get(False, [w], expand)                                    # autograd needs the graph: rebuilt
    assert out.requires_grad and len(calls) == 5
    cache.clear()
    with torch.no_grad():
        cache.get(False, [w], expand)
    assert len(calls) == 6


@pytest.mark.parametrize("d", [1, 2, 3])
def test_plain_conv_computes_the_functional_convolution(d):
    torch.manual_seed(0)
    filt, bias = torch.randn(6, 2, *(3,) * d, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    x = torch.randn(2, 4, *(7,) * d, dtype=torch.float64)
    conv = plain_conv(filt, bias, stride=2, padding=1, groups=2)
    functional = getattr(torch.nn.functional, f"conv{d}d")
    torch.testing.assert_close(conv(x), functional(x, filt, bias, stride=2, padding=1, groups=2))
    assert conv.weight.dtype == torch.float64 and not conv.training


def test_plain_linear_computes_the_functional_linear():
    matrix, x = torch.randn(3, 5), torch.randn(4, 5)
    torch.testing.assert_close(plain_linear(matrix, None)(x), x @ matrix.T)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect"])
def test_convolve_and_its_output_shape_are_torch_s_conv(d, mode):
    """The soft convolutions apply their filter as ``torch.nn.Conv{d}d`` with the same arguments does, padding
    modes and per-dimension padding included, and predict its output shape."""
    torch.manual_seed(0)
    padding = (1, 2) if d == 2 else (1, 2, 0)
    conv = getattr(torch.nn, f"Conv{d}d")(4, 6, 3, stride=2, padding=padding, dilation=1, groups=2, padding_mode=mode)
    x = torch.randn(2, 4, *(9,) * d)
    y = convolve(x, conv.weight, conv.bias, stride=2, padding=padding, groups=2, padding_mode=mode)
    torch.testing.assert_close(y, conv(x), rtol=1e-6, atol=1e-6)
    assert conv_output_shape(tuple(x.shape), 4, 6, 3, stride=2, padding=padding, d=d) == tuple(y.shape)
    with pytest.raises(ValueError, match=r"input_shape: expected \(batch, 4, "):
        conv_output_shape((2, 5, *(9,) * d), 4, 6, 3, d=d)
