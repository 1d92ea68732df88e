"""``LaplaceEvidence.evidence_gradient``: the gradient of the evidence from two passes holding one batch's graph
each, against autograd through the one-graph fit (``fit(..., differentiable=True)``), and ``marglik_training``'s
``low_memory`` against its default path."""
from __future__ import annotations

import pytest
import torch

from escnn_soft.laplace import LaplaceEvidence, marglik_training
from tests.laplace import loader
from tests.laplace.test_laplace_escnn import SoftNet


def _model(kind: str) -> SoftNet:
    torch.manual_seed(0)
    model = SoftNet(kind)
    with torch.no_grad():  # relaxations and λ away from their strict start, so the hyperparameters matter
        for name, p in model.named_parameters():
            if any(k in name for k in ("free", "relaxed_weights", "bank_weights", "pathways", "likelihood")):
                p.normal_(0, 0.3)
    return model.double()


def _data(n: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 7, 7, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _exclude(kind: str):
    return ["a.bias", "a.bank_coefficients", "b.bias", "b.bank_coefficients"] if kind.startswith("relaxed") else "default"


@pytest.mark.parametrize("stochastic", [False, True], ids=["exact GGN", "Monte-Carlo GGN"])
@pytest.mark.parametrize("kind,hessian", [("probabilistic", "kron"), ("relaxed", "kron"),
                                          ("relaxed, bank_fraction 0.5", "kron"),
                                          ("probabilistic", "full")])
def test_two_pass_gradient_equals_autograd_through_the_one_graph_fit(kind, hessian, stochastic):
    """Value and gradient w.r.t. every hyperparameter (prior precisions and the layers' own) agree to 1e-8 in
    float64, over three batches of a subset scaled by N/M; the Monte-Carlo columns are replayed, so the stochastic
    GGN gives the same gradient as well."""
    model = _model(kind)
    x, y = _data()
    data = loader(x, y, 3)
    ev = LaplaceEvidence(model, hessian=hessian, exclude=_exclude(kind), stochastic=stochastic)
    hyper = ev.hyperparameters()
    assert len(ev.network_hyperparameters) >= 2
    torch.manual_seed(5)
    ev.fit(data, differentiable=True, n_data=30)
    value = ev.log_marginal_likelihood()
    expected = torch.autograd.grad(value, hyper, allow_unused=True)

    torch.manual_seed(5)
    got_value, got = ev.evidence_gradient(data, hyper, n_data=30)
    torch.testing.assert_close(got_value, value.detach(), rtol=1e-10, atol=0)
    assert len(got) == len(hyper)
    checked = 0
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)
            checked += int(float(e.abs().max()) > 1e-6)
    assert checked >= 3  # prior precisions and network hyperparameters with non-zero gradients were compared
    # the object is left fitted, without graph, as by fit(): the same evidence and per-layer rows
    after = torch.autograd.grad(ev.log_marginal_likelihood(), ev.network_hyperparameters, allow_unused=True)
    assert all(g is None for g in after)
    torch.testing.assert_close(ev.log_marginal_likelihood().detach(), value.detach(), rtol=1e-10, atol=0)
    assert len(ev.per_layer()) == len(ev.groups)


def test_the_second_pass_is_what_carries_the_data_dependence():
    """Guard against a gradient that only has the direct part: without the second pass (the fit's statistics
    treated as constants) the gradient w.r.t. λ differs from the true one, which the two-pass result matches."""
    model = _model("probabilistic")
    x, y = _data()
    ev = LaplaceEvidence(model)
    lam = ev.network_hyperparameters
    ev.fit(loader(x, y, 3), differentiable=True)
    true = torch.autograd.grad(ev.log_marginal_likelihood(), lam, allow_unused=True)
    ev.fit(loader(x, y, 3))  # statistics without graph: only the planned bases depend on λ
    direct = torch.autograd.grad(ev.log_marginal_likelihood(), lam, allow_unused=True)
    _, two_pass = ev.evidence_gradient(loader(x, y, 3), lam)
    gap = max(float((t - (d if d is not None else 0)).abs().max()) for t, d in zip(true, direct) if t is not None)
    assert gap > 1e-3
    for t, g in zip(true, two_pass):
        if t is not None:
            torch.testing.assert_close(g, t, rtol=1e-8, atol=1e-10)


def test_marglik_training_low_memory_takes_the_same_steps():
    """Two epochs with two evidence updates on a subset: the same evidence values, prior precisions and weights
    with ``low_memory=True`` as with the one-graph fit (float64)."""
    x, y = _data(12)
    runs = []
    for low in (False, True):
        model = _model("probabilistic")
        torch.manual_seed(3)
        _, hist = marglik_training(model, loader(x, y, 4), n_epochs=2, n_epochs_burnin=0, marglik_frequency=1,
                                   n_hypersteps=2, lr=1e-2, lr_hyp=0.1, marglik_batch_size=8, seed=0,
                                   hyperparameters="likelihoods", progress=False, low_memory=low)
        runs.append((hist, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    (h0, s0), (h1, s1) = runs
    assert len(h0["marglik"]) == 2
    torch.testing.assert_close(torch.tensor(h1["marglik"]), torch.tensor(h0["marglik"]), rtol=1e-7, atol=0)
    torch.testing.assert_close(torch.tensor(h1["prior_precision"]), torch.tensor(h0["prior_precision"]),
                               rtol=1e-7, atol=0)
    for k in s0:
        torch.testing.assert_close(s1[k], s0[k], rtol=1e-6, atol=1e-9, msg=k)


def test_low_memory_bad_input_and_nothing_to_do():
    x, y = _data(6)
    with pytest.raises(TypeError, match="low_memory: expected True or False"):
        marglik_training(_model("probabilistic"), loader(x, y, 3), n_epochs=1, low_memory="yes", progress=False)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(49, 3)).double()
    with pytest.warns(UserWarning, match="low_memory=True has nothing to do"):
        marglik_training(plain, loader(x, y, 3), n_epochs=1, n_epochs_burnin=0, n_hypersteps=1, low_memory=True,
                         progress=False)
    with pytest.raises(TypeError, match="loader: expected an iterable"):
        LaplaceEvidence(_model("probabilistic")).evidence_gradient(3, [])
