"""The parts LaplaceEvidence is made of, each against an independent computation.

* likelihoods: the loss-Hessian square root against ``torch.autograd.functional.hessian`` of the loss, the
  Monte-Carlo one in expectation, the log likelihood against ``torch.distributions``;
* the parameter registry: prior groups, sizes and norms against a hand count over ``named_parameters()``;
* the curvature structures: ``"full"``'s log-determinants against a dense GGN built from per-sample Jacobians
  (``torch.func.jacrev``), and ``"kron"`` equal to ``"full"`` where the Kronecker factorisation is exact (a
  single linear layer on one sample);
* ``map_loss`` (what ``marglik_training`` trains the weights on) against the formula.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call, jacrev

from escnn_soft.laplace import (
    Categorical,
    FullCurvature,
    Gaussian,
    KFACCurvature,
    KronCurvature,
    LaplaceEvidence,
    ParameterRegistry,
)
from tests.laplace import loader

DT = torch.float64


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 5)).double()


@pytest.mark.parametrize("lik", [Categorical(DT, torch.device("cpu")), Gaussian(DT, torch.device("cpu"), 1.0)],
                         ids=["categorical", "gaussian"])
def test_hessian_sqrt_squares_to_the_loss_hessian(lik):
    torch.manual_seed(1)
    f = torch.randn(4, 5, dtype=DT)
    y = torch.randint(0, 5, (4,)) if isinstance(lik, Categorical) else torch.randn(4, 5, dtype=DT)
    s = lik.hessian_sqrt(f, y)
    for n in range(4):
        hess = torch.autograd.functional.hessian(lambda fn, yn=y[n:n + 1]: lik.loss(fn[None], yn), f[n])
        torch.testing.assert_close(s[n] @ s[n].T, hess, rtol=1e-12, atol=1e-12)


def test_monte_carlo_hessian_sqrt_is_unbiased():
    torch.manual_seed(2)
    lik = Categorical(DT, torch.device("cpu"))
    f = torch.randn(1, 4, dtype=DT)
    s = lik.hessian_sqrt(f, torch.zeros(1, dtype=torch.long), stochastic=True, mc_samples=200_000)
    exact = lik.hessian_sqrt(f, torch.zeros(1, dtype=torch.long))
    # 200,000 samples of entries bounded by 1 in magnitude: standard error < 1/sqrt(200,000) ~ 0.0022
    torch.testing.assert_close(s[0] @ s[0].T, exact[0] @ exact[0].T, rtol=0, atol=0.01)


def test_log_likelihoods_match_torch_distributions():
    torch.manual_seed(3)
    f, y = torch.randn(6, 3, dtype=DT), torch.randn(6, 3, dtype=DT)
    gauss = Gaussian(DT, torch.device("cpu"), sigma_noise=0.7)
    expected = torch.distributions.Normal(f, 0.7).log_prob(y).sum()
    torch.testing.assert_close(gauss.log_likelihood(gauss.loss(f, y), 6, 3), expected)
    labels = torch.randint(0, 3, (6,))
    cat = Categorical(DT, torch.device("cpu"))
    expected = torch.distributions.Categorical(logits=f).log_prob(labels).sum()
    torch.testing.assert_close(cat.log_likelihood(cat.loss(f, labels), 6, 3), expected)
    with pytest.raises(ValueError, match="sigma_noise applies only"):
        cat.log_likelihood(cat.loss(f, labels), 6, 3, sigma_noise=1.0)


@pytest.mark.parametrize("structure, groups", [("layerwise", ["0", "2"]), ("parameterwise",
                                                ["0.weight", "0.bias", "2.weight", "2.bias"]), ("scalar", ["all"])])
def test_registry_groups_sizes_and_norms(structure, groups):
    model = _mlp()
    reg = ParameterRegistry(model, prior_structure=structure)
    assert reg.groups == groups
    assert [p.name for p in reg.params] == [n for n, _ in model.named_parameters()]
    sizes, norms = torch.zeros(len(groups), dtype=DT), torch.zeros(len(groups), dtype=DT)
    for name, p in model.named_parameters():
        key = {"layerwise": name.split(".")[0], "parameterwise": name, "scalar": "all"}[structure]
        sizes[groups.index(key)] += p.numel()
        norms[groups.index(key)] += p.detach().pow(2).sum()
    assert reg.group_sizes(torch.zeros((), dtype=DT)).tolist() == sizes.tolist()
    torch.testing.assert_close(reg.squared_norms().detach(), norms)


def _dense_ggn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_n J_nᵀ Λ_n J_n for cross-entropy, from the per-sample Jacobians of torch.func."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    total = None
    for n in range(len(x)):
        jac = jacrev(lambda ps, xn=x[n:n + 1]: functional_call(model, ps, (xn,))[0])(params)
        j = torch.cat([jac[k].reshape(jac[k].shape[0], -1) for k in params], dim=1)
        p = functional_call(model, params, (x[n:n + 1],))[0].softmax(-1)
        lam = torch.diag(p) - torch.outer(p, p)
        total = j.T @ lam @ j if total is None else total + j.T @ lam @ j
    return total


def test_full_structure_log_dets_match_a_dense_ggn():
    model = _mlp()
    torch.manual_seed(4)
    x, y = torch.randn(10, 3, dtype=DT), torch.randint(0, 5, (10,))
    ev = LaplaceEvidence(model, "classification", "full", prior_structure="parameterwise").fit(loader(x, y, 4))
    assert isinstance(ev.curvature, FullCurvature)
    h = _dense_ggn(model, x, y)
    torch.testing.assert_close(ev.curvature.H, h, rtol=1e-10, atol=1e-12)
    delta = torch.rand(4, dtype=DT) + 0.5
    one = torch.ones((), dtype=DT)
    diag = torch.cat([d.expand(p.numel()) for d, p in zip(delta, model.parameters())])
    torch.testing.assert_close(ev.curvature.log_det(delta, one), torch.logdet(h + torch.diag(diag)))
    offsets = [0]
    for p in model.parameters():
        offsets.append(offsets[-1] + p.numel())
    blocks = torch.stack([torch.logdet(h[a:b, a:b] + d * torch.eye(b - a, dtype=DT))
                          for d, a, b in zip(delta, offsets, offsets[1:])])
    torch.testing.assert_close(ev.curvature.group_log_dets(delta, one), blocks)


@pytest.mark.parametrize("hessian, cls", [("kron", KronCurvature), ("kfac", KFACCurvature)])
def test_kronecker_structures_are_exact_on_one_linear_layer_and_one_sample(hessian, cls):
    """For ``f = W x + b`` on one sample, the GGN of the weight is exactly ``Λ ⊗ x xᵀ``: the Kronecker structures'
    log-determinants equal the dense one, per tensor."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4)).double()
    x, y = torch.randn(1, 3, dtype=DT), torch.randint(0, 4, (1,))
    kron = LaplaceEvidence(model, "classification", hessian, prior_structure="parameterwise").fit(loader(x, y, 1))
    full = LaplaceEvidence(model, "classification", "full", prior_structure="parameterwise").fit(loader(x, y, 1))
    assert isinstance(kron.curvature, cls)
    delta, one = torch.tensor([0.7, 1.3], dtype=DT), torch.ones((), dtype=DT)
    torch.testing.assert_close(kron.curvature.group_log_dets(delta, one), full.curvature.group_log_dets(delta, one))


def test_map_loss_is_the_map_objective():
    model = _mlp()
    torch.manual_seed(6)
    x, y = torch.randn(8, 3, dtype=DT), torch.randint(0, 5, (8,))
    ev = LaplaceEvidence(model, "classification", prior_precision=torch.tensor([0.5, 2.0], dtype=DT))
    loss = ev.map_loss(model(x), y, n_data=100)
    weights = {"0": 0.5, "2": 2.0}
    prior = sum(0.5 * weights[n.split(".")[0]] * p.pow(2).sum() for n, p in model.named_parameters())
    expected = torch.nn.functional.cross_entropy(model(x), y) + prior / 100
    torch.testing.assert_close(loss, expected)
    loss.backward()  # reaches the weights, not the prior precisions
    assert ev.log_prior_precision.grad is None
    assert all(p.grad is not None for p in model.parameters())
    gauss = LaplaceEvidence(model, "regression", sigma_noise=2.0)
    targets = torch.randn(8, 5, dtype=DT)
    expected = 0.5 * (model(x) - targets).pow(2).sum() / (4.0 * 8) + sum(
        0.5 * p.pow(2).sum() for p in model.parameters()) / 100
    torch.testing.assert_close(gauss.map_loss(model(x), targets, n_data=100), expected)
    assert math.isclose(float(gauss.sigma_noise.detach()), 2.0)


def test_curvature_eigenvalues_of_float32_blocks_are_computed_in_float64():
    """float32 curvature blocks are decomposed in float64 (float32 eigvalsh fails to converge on ill-conditioned,
    degenerate Gram matrices of trained layers): the eigenvalues of a float32 matrix with a 1e8 dynamic range and
    many repeated eigenvalues equal the float64 ones of the same matrix, and gradients reach it."""
    from escnn_soft.laplace.curvature import _eigvals

    torch.manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64))
    spectrum = torch.cat([torch.full((150,), 1e-8), torch.logspace(-4, 0, 50)]).double()
    m = ((q * spectrum) @ q.T).float().requires_grad_()
    values = _eigvals(m)
    assert values.dtype == torch.float32
    expected = torch.linalg.eigvalsh(0.5 * (m.detach().double() + m.detach().double().T)).clamp_min(0)
    torch.testing.assert_close(values.double(), expected, rtol=0, atol=1e-12 + 1e-6 * float(expected.max()))
    values.sum().backward()
    torch.testing.assert_close(m.grad, torch.eye(200), rtol=0, atol=1e-5)  # d(trace)/dm = I
