"""torch.compile on probabilistic and relaxed networks: one graph (no graph break), the eager numbers.

The default tests use the ``aot_eager`` backend (dynamo + AOTAutograd, no code generation: ~5 s per network on
one core); the ``inductor`` test (C++ code generation, 30-50 s per network) is marked slow.
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
from escnn import gspaces
from escnn import nn as enn

import escnn_soft as es


def _network(kind: str) -> tuple[torch.nn.Module, enn.FieldType]:
    """conv -> ReLU -> conv on C4 (trivial -> 2 regular -> 2 regular fields), off its initialisation."""
    gs = gspaces.rot2dOnR2(4)
    t0, t1 = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, [gs.regular_repr] * 2)
    conv = {"probabilistic": es.nn.ProbabilisticR2Conv, "relaxed": es.nn.RelaxedR2Conv}[kind]
    torch.manual_seed(0)
    net = enn.SequentialModule(conv(t0, t1, 3, padding=1), enn.ReLU(t1), conv(t1, t1, 3, padding=1))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, es.GroupLikelihood):
                m.coefficients.normal_()
            if isinstance(m, es.nn.RelaxedR2Conv):
                m.relaxed_weights.normal_()
    return net, t0


def _check(kind: str, backend: str, rtol: float) -> None:
    torch._dynamo.reset()
    net, t0 = _network(kind)
    x = torch.randn(2, 1, 9, 9, generator=torch.Generator().manual_seed(1))

    def f(t: torch.Tensor) -> torch.Tensor:
        return net(enn.GeometricTensor(t, t0)).tensor

    compiled = torch.compile(f, backend=backend)
    expected = f(x)
    expected.pow(2).sum().backward()
    expected_grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    net.zero_grad()
    got = compiled(x)
    got.pow(2).sum().backward()
    grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    scale = float(expected.detach().abs().max())
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * scale)
    assert len(grads) == len(expected_grads)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=rtol, atol=rtol * float(e.abs().max()))
    # eval mode (the filters come from the eval caches) and after an update the caches must notice
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), f(x), rtol=rtol, atol=rtol * scale)
        for p in net.parameters():
            p.add_(0.1)
        after = compiled(x)
        torch.testing.assert_close(after, f(x), rtol=rtol, atol=rtol * scale)
        assert not torch.allclose(after, expected)


@pytest.mark.parametrize("kind", ["probabilistic", "relaxed"])
def test_compile_traces_one_graph_without_breaks(kind):
    """escnn keeps block ranges as 0-dim tensors, which cost a graph break (Tensor.item()) per block until
    escnn_soft.nn.basis.privatize_ turned them into ints; the eval caches (keyed by data_ptr and version
    counters) trace too."""
    net, t0 = _network(kind)
    x = torch.randn(2, 1, 9, 9)
    for training in (True, False):
        net.train(training)
        torch._dynamo.reset()
        with torch.set_grad_enabled(training):
            explanation = torch._dynamo.explain(lambda t: net(enn.GeometricTensor(t, t0)).tensor)(x)
        assert explanation.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explanation.break_reasons]
        assert explanation.graph_count == 1


@pytest.mark.parametrize("kind", ["probabilistic", "relaxed"])
def test_compile_aot_eager_matches_eager(kind):
    """Same operations, so the same numbers up to float32 rounding of regrouped sums."""
    _check(kind, "aot_eager", rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["probabilistic", "relaxed"])
def test_compile_inductor_matches_eager(kind):
    """Generated C++ kernels fuse and reorder float32 sums: measured 2.6e-7 (outputs) and 3.5e-7 (gradients)
    relative to the largest entry; asserted at 1e-5. First call 30-50 s (forward and backward) on one core."""
    _check(kind, "inductor", rtol=1e-5)
