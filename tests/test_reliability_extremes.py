"""Numerical extremes: huge likelihood coefficients and Sinkhorn logits, zero and constant inputs, float16 and
bfloat16 autocast, and Laplace evidence on a single batch or a near-singular curvature."""
from __future__ import annotations

import pytest
import torch
from escnn import group, gspaces
from escnn import nn as enn

import escnn_soft as es
from escnn_soft.laplace import LaplaceEvidence
from escnn_soft.likelihood import GroupLikelihood
from escnn_soft.models import METHODS, build_model
from escnn_soft.nn.base import iter_modules
from tests.laplace import loader

GROUPS = {"C4": lambda: group.cyclic_group(4), "D4": lambda: group.dihedral_group(4),
          "SO2": lambda: group.so2_group(), "O2": lambda: group.o2_group()}


def _finite_grads(module: torch.nn.Module) -> list[str]:
    """Names of the parameters whose gradient is not finite."""
    return [n for n, p in module.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]


def _set_coefficients(lik: GroupLikelihood, pattern: str) -> None:
    with torch.no_grad():
        c = lik.coefficients
        if pattern == "alternating":
            c.copy_(1e4 * (-1.0) ** torch.arange(c.numel(), dtype=c.dtype))
        else:
            c.fill_(float(pattern))


# --- likelihood coefficients of size 1e4 --------------------------------------------------------------------

@pytest.mark.parametrize("name", list(GROUPS))
@pytest.mark.parametrize("pattern", ["1e4", "-1e4", "alternating"])
def test_likelihood_with_huge_coefficients_is_finite_with_finite_gradients(name, pattern):
    """λ collapses onto a few grid points (most of the softmax underflows to 0): every read-out and regulariser
    stays finite, λ stays >= 0 with mean 1, and so do the gradients (λ log λ at λ = 0 used to give NaN)."""
    G = GROUPS[name]()
    lik = GroupLikelihood(G, L=2)
    other = GroupLikelihood(G, L=2)
    _set_coefficients(lik, pattern)
    _set_coefficients(other, "1e4" if pattern != "1e4" else "-1e4")
    grid = lik.density().detach()
    assert bool(torch.isfinite(grid).all()) and float(grid.min()) >= 0.0
    assert float(grid.mean()) == pytest.approx(1.0, abs=1e-9)
    elements = [G.identity] + list(G.testing_elements())[:5]
    terms = {"density(elements)": lik.density(elements).sum(), "kl()": lik.kl(), "kl(other)": lik.kl(other),
             "alignment_loss": lik.alignment_loss(torch.Generator().manual_seed(0)), "entropy": lik.entropy()}
    coeffs = lik.fourier_coefficients()
    terms["fourier_coefficients"] = sum((c * torch.randn(c.shape, dtype=c.dtype, generator=torch.Generator()
                                                         .manual_seed(1))).sum() for c in coeffs.values())
    for term, value in terms.items():
        assert bool(torch.isfinite(value)), term
        lik.coefficients.grad = None
        value.backward(retain_graph=True)
        assert bool(torch.isfinite(lik.coefficients.grad).all()), term
    assert float(lik.kl().detach()) >= 0.0 and float(lik.kl(other).detach()) >= 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [1e4, -1e4])
def test_probabilistic_layer_with_huge_likelihood_coefficients(dtype, value):
    gs = gspaces.rot2dOnR2(-1, maximum_frequency=4)
    t = enn.FieldType(gs, [gs.irrep(0), gs.irrep(1), gs.irrep(2)])
    torch.manual_seed(0)
    layer = es.nn.ProbabilisticR2Conv(t, t, 3, padding=1, L=2).to(dtype)
    with torch.no_grad():
        layer.likelihood.coefficients.fill_(value)
    x = t(torch.randn(2, t.size, 9, 9, dtype=dtype))
    y = layer(x).tensor
    assert bool(torch.isfinite(y).all())
    (y.pow(2).mean() + es.regularization_loss(layer)).backward()
    assert not _finite_grads(layer)
    with torch.no_grad():
        assert bool(torch.isfinite(layer.eval()(x).tensor).all())
    degree = layer.degree()
    assert all(torch.isfinite(torch.tensor(v)) for v in (degree["entropy"], degree["nonequivariant_fraction"]))


# --- Sinkhorn logits of size 1e4 ----------------------------------------------------------------------------

def _ds_layer(kind: str, **kwargs):
    gs = gspaces.rot2dOnR2(4)
    if kind == "lifting":
        return es.nn.DSLiftingConv(enn.FieldType(gs, [gs.trivial_repr]), 2, 3, padding=1, **kwargs)
    return es.nn.DSGroupConv(enn.FieldType(gs, [gs.regular_repr]), 2, 3, padding=1, **kwargs)


@pytest.mark.parametrize("kind", ["lifting", "group"])
@pytest.mark.parametrize("pattern", ["1e4", "-1e4", "random", "signs"])
def test_ds_layers_with_huge_logits_are_finite_and_doubly_stochastic(kind, pattern):
    torch.manual_seed(0)
    layer = _ds_layer(kind, entropy_weight=0.1)
    with torch.no_grad():
        L = layer.logits
        if pattern == "random":
            L.copy_(1e4 * torch.randn_like(L))
        elif pattern == "signs":
            L.copy_(1e4 * torch.sign(torch.randn_like(L)))
        else:
            L.fill_(float(pattern))
    x = layer.in_type(torch.randn(2, layer.in_type.size, 9, 9))
    y = layer(x).tensor
    assert bool(torch.isfinite(y).all())
    penalty = layer.penalty()
    assert bool(torch.isfinite(penalty))
    (y.pow(2).mean() + penalty).backward()
    assert not _finite_grads(layer)
    P = layer.representations().detach()
    assert float(P.min()) >= 0.0
    assert float((P.sum(-1) - 1).abs().max()) < 1e-5 and float((P.sum(-2) - 1).abs().max()) < 1e-5


# --- zero and constant inputs -------------------------------------------------------------------------------

def _soft_layers() -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    """Every soft layer type, with the shape of one input (without the batch dimension)."""
    c4 = gspaces.rot2dOnR2(4)
    reg, triv = enn.FieldType(c4, [c4.regular_repr]), enn.FieldType(c4, [c4.trivial_repr])
    so2 = gspaces.rot2dOnR2(-1, maximum_frequency=3)
    t2 = enn.FieldType(so2, [so2.trivial_repr, so2.irrep(1)])
    so3 = gspaces.rot3dOnR3(maximum_frequency=1)
    t3 = enn.FieldType(so3, [so3.trivial_repr, so3.irrep(1)])
    g0 = gspaces.no_base_space(so2.fibergroup)
    t0 = enn.FieldType(g0, [g0.trivial_repr, g0.irrep(1), g0.irrep(2)])
    return {
        "ProbabilisticR2Conv": (es.nn.ProbabilisticR2Conv(t2, t2, 3, padding=1), (t2.size, 9, 9)),
        "ProbabilisticR3Conv": (es.nn.ProbabilisticR3Conv(t3, t3, 3, padding=1, L=1), (t3.size, 5, 5, 5)),
        "ProbabilisticLinear": (es.nn.ProbabilisticLinear(t0, t0), (t0.size,)),
        "RelaxedR2Conv": (es.nn.RelaxedR2Conv(reg, reg, 3, padding=1), (reg.size, 9, 9)),
        "RelaxedR2Conv SO2": (es.nn.RelaxedR2Conv(t2, t2, 3, padding=1, relaxed_subgroup=-1), (t2.size, 9, 9)),
        "RPPR2Conv": (es.nn.RPPR2Conv(reg, reg, 3, padding=1), (reg.size, 9, 9)),
        "RSteerR2Conv": (es.nn.RSteerR2Conv(reg, reg, 3, padding=1), (reg.size, 9, 9)),
        "DSLiftingConv": (es.nn.DSLiftingConv(triv, 2, 3, padding=1), (1, 9, 9)),
        "DSGroupConv": (es.nn.DSGroupConv(reg, 2, 3, padding=1), (reg.size, 9, 9)),
        "SharedLinear": (es.nn.SharedLinear(6, 3, n_shared=4, entropy_weight=0.1, usage_weight=0.1), (6,)),
    }


@pytest.mark.parametrize("value", [0.0, 1.0, 1e4])
def test_every_soft_layer_is_finite_on_constant_inputs(value):
    """Zero and constant inputs (also huge ones), in train and eval mode: finite outputs, penalties and gradients."""
    torch.manual_seed(0)
    for name, (layer, shape) in _soft_layers().items():
        for training in (True, False):
            layer.train(training)
            layer.zero_grad()
            t = torch.full((2, *shape), value)
            x = t if isinstance(layer, es.nn.SharedLinear) else layer.in_type(t)
            out = layer(x)
            y = out if isinstance(out, torch.Tensor) else out.tensor
            assert bool(torch.isfinite(y).all()), (name, training)
            loss = y.pow(2).mean() / (1 + value ** 2) + layer.penalty()
            assert bool(torch.isfinite(loss)), (name, training)
            loss.backward()
            assert not _finite_grads(layer), (name, training)


@pytest.mark.parametrize("method", METHODS)
def test_doublemnist_net_is_finite_on_zero_and_constant_images(method):
    torch.manual_seed(0)
    model = build_model(method, group="C4", width=1, n_classes=10)
    target = torch.tensor([1, 2])
    for value in (0.0, 1.0, 1e4):
        for training in (True, False):
            model.train(training)
            model.zero_grad()
            logits = model(torch.full((2, 1, 56, 56), value))
            assert bool(torch.isfinite(logits).all()), (value, training)
            loss = torch.nn.functional.cross_entropy(logits, target) + es.regularization_loss(model)
            loss.backward()
            assert not _finite_grads(model), (value, training)


# --- float16 / bfloat16 autocast ----------------------------------------------------------------------------

def _autocast_case(device: str, dtype: torch.dtype) -> None:
    """Soft DoubleMNIST nets (probabilistic with likelihood coefficients of size 1e4) and the DS layers under
    autocast: finite outputs, losses and gradients; in eval mode within 3% of the float32 output (bfloat16 keeps
    8 bits of mantissa: ~0.4% per rounding)."""
    x = torch.rand(2, 1, 56, 56, generator=torch.Generator().manual_seed(0)).to(device)
    target = torch.tensor([1, 2], device=device)
    for method, kwargs in (("strict", {}), ("probabilistic", {}), ("relaxed", {}), ("rpp", {}), ("rsteer", {}),
                           ("relaxed", {"bank_fraction": 1.0, "bank_in_fraction": 1.0})):  # default ¼; every field
        torch.manual_seed(0)
        model = build_model(method, group="SO2" if method == "probabilistic" else "C4", width=1, n_classes=10,
                            **kwargs)
        model.to(device).eval()
        with torch.no_grad():
            reference = model(x)
            with torch.autocast(device, dtype=dtype):
                low = model(x)
        assert low.dtype == dtype, method
        err = float((low.float() - reference).abs().max() / reference.abs().max())
        assert err < 3e-2, (method, err)
        for m in iter_modules(model):
            if isinstance(m, GroupLikelihood):
                _set_coefficients(m, "1e4")
        model.train()
        with torch.autocast(device, dtype=dtype):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, target) + es.regularization_loss(model)
        assert bool(torch.isfinite(logits).all()) and bool(torch.isfinite(loss)), method
        loss.backward()
        assert not _finite_grads(model), method
    for kind in ("lifting", "group"):
        layer = _ds_layer(kind, entropy_weight=0.1).to(device)
        with torch.no_grad():
            layer.logits.copy_(1e4 * torch.randn_like(layer.logits))
        with torch.autocast(device, dtype=dtype):
            y = layer(layer.in_type(torch.randn(2, layer.in_type.size, 9, 9, device=device))).tensor
            loss = y.float().pow(2).mean() + layer.penalty()
        assert bool(torch.isfinite(loss)), kind
        loss.backward()
        assert not _finite_grads(layer), kind


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_cpu(dtype):
    _autocast_case("cpu", dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_on_cuda(dtype):
    _autocast_case("cuda", dtype)


# --- Laplace evidence on a single batch and a near-singular curvature ---------------------------------------

def _mlp(dead: bool = False) -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    if dead:
        with torch.no_grad():
            model[0].weight.zero_()
            model[0].bias.zero_()
    return model


class _SoftNet(torch.nn.Module):
    """Probabilistic conv -> ELU -> relaxed conv -> flatten -> Linear, on C4."""

    def __init__(self):
        super().__init__()
        gs = gspaces.rot2dOnR2(4)
        self.t0, self.t1 = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, [gs.regular_repr])
        self.c1 = es.nn.ProbabilisticR2Conv(self.t0, self.t1, 3, padding=1)
        self.c2 = es.nn.RelaxedR2Conv(self.t1, self.t1, 3, num_banks=0)
        self.out = torch.nn.Linear(self.t1.size * 9, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(self.t0(x)).tensor
        return self.out(self.c2(self.t1(torch.nn.functional.elu(y))).tensor.flatten(1))


def _cases():
    x, y = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2])
    return {"single sample": (_mlp, loader(x[:1], y[:1], 1)),
            "dead layer": (lambda: _mlp(dead=True), loader(x, y, 6)),
            "zero inputs": (_mlp, loader(torch.zeros(6, 2), y, 6)),
            "soft net, zero images": (lambda: (torch.manual_seed(0), _SoftNet())[1],
                                      loader(torch.zeros(4, 1, 5, 5), torch.tensor([0, 1, 2, 0]), 4))}


@pytest.mark.parametrize("case", ["single sample", "dead layer", "zero inputs", "soft net, zero images"])
@pytest.mark.parametrize("hessian", ["kron", "kfac"])
def test_laplace_kron_is_finite_for_near_singular_curvature_and_tiny_prior(case, hessian):
    make, data = _cases()[case]
    ev = LaplaceEvidence(make(), hessian=hessian, prior_precision=1e-12).fit(data)
    for prior in (None, 1e-30, 1e-12, 1.0):
        assert bool(torch.isfinite(ev.log_marginal_likelihood(prior))), prior
    ev.log_marginal_likelihood().backward()
    assert bool(torch.isfinite(ev.log_prior_precision.grad).all())
    assert all(torch.isfinite(torch.tensor(row["contribution"])) for row in ev.per_layer())


@pytest.mark.parametrize("case", ["dead layer", "zero inputs", "single sample"])
def test_laplace_full_names_the_layer_when_the_posterior_precision_is_singular(case):
    make, data = _cases()[case]
    ev = LaplaceEvidence(make(), hessian="full").fit(data)
    assert bool(torch.isfinite(ev.log_marginal_likelihood(1.0)))
    # which block's leading minor float32 Cholesky fails at first is platform-dependent (the rounding of the
    # near-zero pivots): what is guaranteed is an error naming one of the model's parameters, its layer, and the fix
    named = r"at '([02])\.(weight|bias)' at layer '\1'.*larger prior_precision"
    with pytest.raises(ValueError, match=r"not positive definite in torch.float32 " + named):
        ev.log_marginal_likelihood(1e-12)
    with pytest.raises(ValueError, match=named):
        ev.per_layer(1e-12)


@pytest.mark.parametrize("hessian", ["kron", "full"])
def test_laplace_zero_prior_precision_is_a_clear_error(hessian):
    """δ = 0 with a singular curvature is log(0) - log(0): NaN before, now an error naming the group."""
    make, data = _cases()["dead layer"]
    ev = LaplaceEvidence(make(), hessian=hessian).fit(data)
    with pytest.raises(ValueError, match="prior_precision: 0.0 for group '0'.*finite and > 0"):
        ev.log_marginal_likelihood(0.0)
    with pytest.raises(ValueError, match="for group '2'"):
        ev.log_marginal_likelihood(torch.tensor([1.0, float("inf")]))
    with torch.no_grad():
        ev.log_prior_precision.fill_(-1e4)  # the learnable precision underflows to 0
    with pytest.raises(ValueError, match=r"exp\(log_prior_precision\)"):
        ev.log_marginal_likelihood()
