"""Oracle: on plain Conv2d/Linear networks the evidence equals laplace-torch's KronLaplace.

laplace-torch 0.3 uses the curvlinops backend by default (``CurvlinopsGGN``: KFAC with the exact type-2
GGN, KFAC-expand for convolutions, weight and bias as separate Kronecker blocks); its per-layer prior
precision is one value per parameter tensor, our ``prior_structure="parameterwise"``.
"""
from __future__ import annotations

import pytest
import torch
from laplace import KronLaplace

from escnn_soft.laplace import LaplaceEvidence, structures
from tests.laplace import loader

RTOL = 1e-4


def _cnn(n_out: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Tanh(),
        torch.nn.Conv2d(3, 4, 3, stride=2, padding="valid"), torch.nn.Tanh(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 2 * 2, 6), torch.nn.Tanh(),
        torch.nn.Linear(6, n_out)).double()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=RTOL, atol=RTOL * float(b.abs().max()))


@pytest.mark.parametrize("n_out", [5, 10])  # 10 classes > 6 head inputs: columns compressed at the head
@pytest.mark.parametrize("batch_size", [24, 7])
def test_classification_matches_kronlaplace(batch_size, n_out):
    model = _cnn(n_out)
    x = torch.randn(24, 2, 6, 6, dtype=torch.float64)
    y = torch.randint(0, n_out, (24,))
    data = loader(x, y, batch_size)
    la = KronLaplace(model, "classification")
    la.fit(data)
    ev = LaplaceEvidence(model, "classification", prior_structure="parameterwise").fit(data)
    delta = torch.rand(8, dtype=torch.float64) + 0.2
    d_la = delta.clone().requires_grad_()
    d_ev = delta.clone().requires_grad_()
    lml_la = la.log_marginal_likelihood(d_la)
    lml_ev = ev.log_marginal_likelihood(d_ev)
    _close(lml_ev.detach(), lml_la.detach())
    _close(torch.autograd.grad(lml_ev, d_ev)[0], torch.autograd.grad(lml_la, d_la)[0])


def test_head_bottleneck_gives_the_same_curvature(monkeypatch):
    """With more classes (10) than head inputs (6) the loss-Hessian columns are carried to the head's input and
    compressed there: 6 backward passes through the network per batch instead of 10, and the same curvature as
    one pass per class (which the differentiable fit keeps)."""
    passes = []
    backprop = structures._backprop

    def counting(out, cols, *args):
        passes.append(cols.shape[-1])
        backprop(out, cols, *args)

    monkeypatch.setattr(structures, "_backprop", counting)
    model = _cnn(10)
    data = loader(torch.randn(20, 2, 6, 6, dtype=torch.float64), torch.randint(0, 10, (20,)), 8)
    compressed = LaplaceEvidence(model, "classification").fit(data)
    assert passes == [6, 6, 6]
    per_class = LaplaceEvidence(model, "classification").fit(data, differentiable=True)
    assert passes[3:] == [10, 10, 10]
    for (_, blocks_a), (_, blocks_b) in zip(compressed.curvature.spectra, per_class.curvature.spectra):
        for factors_a, factors_b in zip(blocks_a, blocks_b):
            for a, b in zip(factors_a, factors_b):
                b = b.detach()
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * float(b.abs().max()))


def test_layerwise_precision_is_shared_by_weight_and_bias():
    model = _cnn(5)
    data = loader(torch.randn(16, 2, 6, 6, dtype=torch.float64), torch.randint(0, 5, (16,)), 16)
    la = KronLaplace(model, "classification")
    la.fit(data)
    ev = LaplaceEvidence(model, "classification").fit(data)
    assert ev.groups == ["0", "2", "5", "7"]
    delta = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    per_tensor = delta.repeat_interleave(2)
    d_la = per_tensor.detach().clone().requires_grad_()
    lml_la = la.log_marginal_likelihood(d_la)
    lml_ev = ev.log_marginal_likelihood(delta)
    _close(lml_ev.detach(), lml_la.detach())
    grad_la = torch.autograd.grad(lml_la, d_la)[0].reshape(4, 2).sum(1)
    _close(torch.autograd.grad(lml_ev, delta)[0], grad_la)


def test_regression_matches_kronlaplace_with_noise_gradient():
    """Values and prior-precision gradients against laplace-torch's autograd; the noise gradient against
    central differences of laplace-torch's value (its own autograd gradient w.r.t. ``sigma_noise`` misses
    the log-determinant term: ``KronDecomposed.__mul__`` turns the noise factor into a Python float)."""
    model = _cnn(2)
    x = torch.randn(20, 2, 6, 6, dtype=torch.float64)
    y = torch.randn(20, 2, dtype=torch.float64)
    data = loader(x, y, 8)
    la = KronLaplace(model, "regression")
    la.fit(data)
    ev = LaplaceEvidence(model, "regression", prior_structure="parameterwise").fit(data)
    delta = torch.rand(8, dtype=torch.float64) + 0.2
    sigma = torch.tensor(0.7, dtype=torch.float64)
    d_la = delta.clone().requires_grad_()
    d_ev, s_ev = delta.clone().requires_grad_(), sigma.clone().requires_grad_()
    lml_la = la.log_marginal_likelihood(d_la, sigma)
    lml_ev = ev.log_marginal_likelihood(d_ev, s_ev)
    _close(lml_ev.detach(), lml_la.detach())
    grad_d, grad_s = torch.autograd.grad(lml_ev, [d_ev, s_ev])
    _close(grad_d, torch.autograd.grad(lml_la, d_la)[0])
    eps = 1e-6
    fd = (la.log_marginal_likelihood(delta, sigma + eps) - la.log_marginal_likelihood(delta, sigma - eps)) / (2 * eps)
    _close(grad_s, fd.detach())


def test_scalar_prior_and_learnable_precision():
    model = _cnn(3)
    data = loader(torch.randn(12, 2, 6, 6, dtype=torch.float64), torch.randint(0, 3, (12,)), 12)
    la = KronLaplace(model, "classification")
    la.fit(data)
    ev = LaplaceEvidence(model, "classification", prior_structure="scalar", prior_precision=0.3).fit(data)
    _close(ev.log_marginal_likelihood().detach(), la.log_marginal_likelihood(torch.tensor([0.3])).detach())
    (-ev.log_marginal_likelihood()).backward()
    assert ev.log_prior_precision.grad.shape == (1,)
