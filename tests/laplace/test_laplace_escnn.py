"""Curvature of escnn layers: exact mode vs brute force, Kronecker structure vs exact GGN, patches."""
from __future__ import annotations

import math

import pytest
import torch
from escnn import gspaces
from escnn import nn as enn
from torch.func import jacrev

from escnn_soft.laplace import LaplaceEvidence
from escnn_soft.laplace.curvature import BlocksTerm, KronTerm
from escnn_soft.laplace.hooks import OpRecorder, unfold_patches
from tests.laplace import EscnnNet, ModulatedR2Conv, c4_types, loader

#: stated accuracy of the Kronecker structure (see docs/laplace.md): per layer, at prior precision 1,
#: |log-det ratio (kron) / log-det ratio (exact GGN) - 1| stays below this on the tiny networks below
#: (measured: regular -0.30, +0.10; mixed +0.07, +0.22; the mixed second layer was +0.40 before the pairs
#: sharing their output fields got one joint block)
KRON_VS_EXACT = 0.35


def _data(n: int, types, size: int = 7, conv: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, types[0].size, size, size) if conv else (n, types[0].size)
    return torch.randn(*shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _net(kind: str = "regular", **kwargs) -> EscnnNet:
    torch.manual_seed(0)
    return EscnnNet(c4_types(kind), **kwargs).double()


def _brute_force_ggn(model, ev, x) -> torch.Tensor:
    """:math:`\\sum_n J_n^\\top (\\mathrm{diag}(p) - pp^\\top) J_n` with :math:`J_n` from ``torch.func.jacrev``.

    ``torch.func.functional_call`` cannot be used: it lists the modules inside the transform, which
    hashes escnn's bases, and their ``__hash__`` reads tensor storage. The parameters are swapped by hand.
    """
    modules = dict(model.named_modules())
    slots = [(modules[name.rpartition(".")[0]], name.rpartition(".")[2]) for name in (p.name for p in ev.params)]
    values = tuple(p.tensor.detach() for p in ev.params)
    model.train()  # escnn layers expand their filter from the weights in training mode

    def f(xi, *vals):
        saved = [m._parameters.pop(attr) for m, attr in slots]
        try:
            for (m, attr), v in zip(slots, vals):
                setattr(m, attr, v)
            return model(xi[None])[0]
        finally:
            for (m, attr), p in zip(slots, saved):
                delattr(m, attr)
                m._parameters[attr] = p

    h = 0
    for xi in x:
        jac = jacrev(f, argnums=tuple(range(1, len(values) + 1)))(xi, *values)
        j = torch.cat([t.reshape(t.shape[0], -1) for t in jac], dim=1)
        p = f(xi, *values).softmax(-1)
        h = h + j.T @ (torch.diag(p) - torch.outer(p, p)) @ j
    model.eval()
    return h


def test_full_mode_equals_brute_force_jacobians():
    model = _net("mixed")
    x, y = _data(6, model.types)
    ev = LaplaceEvidence(model, "classification", "full").fit(loader(x, y, 4))
    h = _brute_force_ggn(model, ev, x)
    for delta in (0.1, 1.0):
        expected = torch.logdet(h + delta * torch.eye(h.shape[0], dtype=h.dtype))
        torch.testing.assert_close(ev.log_det_posterior_precision(delta), expected, rtol=1e-9, atol=1e-9)


def test_kfac_is_exact_for_one_sample_without_weight_sharing():
    """One sample, escnn Linear layers, no bias: G ⊗ A is the exact GGN of each layer's weights."""
    torch.manual_seed(0)
    model = EscnnNet(c4_types("regular", planar=False), conv=False, bias=False).double()
    x, y = _data(1, model.types, conv=False)
    kfac = LaplaceEvidence(model, "classification", "kfac").fit(loader(x, y, 1)).per_layer(0.3)
    full = LaplaceEvidence(model, "classification", "full").fit(loader(x, y, 1)).per_layer(0.3)
    for a, b in zip(kfac, full):
        assert a["log_det"] == pytest.approx(b["log_det"], rel=1e-9, abs=1e-9)


def test_kron_equals_kfac_with_one_field_per_layer():
    """With one input and one output field the field Kronecker factors are scalars: kron is exact KFAC."""
    model = _net("single")
    x, y = _data(10, model.types)
    data = loader(x, y, 5)
    kron = LaplaceEvidence(model, "classification", "kron").fit(data)
    kfac = LaplaceEvidence(model, "classification", "kfac").fit(data)
    assert {type(t) for t in kron.curvature.terms if kron.params[t.param_index].name.endswith("weights")} == {BlocksTerm}
    for delta in (0.01, 1.0):
        for a, b in zip(kron.per_layer(delta), kfac.per_layer(delta)):
            assert a["log_det"] == pytest.approx(b["log_det"], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("kind", ["regular", "mixed"])
def test_kron_log_det_vs_exact_ggn(kind):
    """The stated tolerance of the (out fields) x (in fields) x (basis) structure, per escnn layer."""
    model = _net(kind)
    x, y = _data(20, model.types)
    data = loader(x, y, 10)
    kron = LaplaceEvidence(model, "classification", "kron").fit(data).per_layer(1.0)
    full = LaplaceEvidence(model, "classification", "full").fit(data).per_layer(1.0)
    for a, b in zip(kron[:2], full[:2]):
        assert abs(a["log_det_ratio"] / b["log_det_ratio"] - 1) < KRON_VS_EXACT, (a, b)


def test_probed_basis_equals_sampled_basis():
    """A filter that depends on a hyperparameter makes the engine read the basis off the filter by
    forward-mode products; at alpha = 0 it must equal escnn's sampled basis."""
    types = c4_types("regular")
    torch.manual_seed(0)
    plain = EscnnNet(types).double()
    torch.manual_seed(0)
    modulated = EscnnNet(types, layer=ModulatedR2Conv).double()
    modulated.load_state_dict({**plain.state_dict(), "c1.alpha": torch.tensor(0.0), "c2.alpha": torch.tensor(0.0)},
                              strict=False)
    x, y = _data(8, types)
    a = LaplaceEvidence(plain, "classification").fit(loader(x, y, 8)).log_marginal_likelihood()
    hyper = [modulated.c1.alpha, modulated.c2.alpha]
    ev = LaplaceEvidence(modulated, "classification", hyperparameters=hyper).fit(loader(x, y, 8), differentiable=True)
    torch.testing.assert_close(ev.log_marginal_likelihood(), a, rtol=1e-10, atol=1e-10)


def test_torch_layers_get_kron_terms_and_escnn_layers_block_terms():
    model = _net("regular")
    x, y = _data(4, model.types)
    ev = LaplaceEvidence(model, "classification").fit(loader(x, y, 4))
    kinds = {ev.params[t.param_index].name: type(t).__name__ for t in ev.curvature.terms}
    assert kinds == {"c1.weights": "BlocksTerm", "c1.bias": "BiasTerm", "c2.weights": "BlocksTerm",
                     "c2.bias": "BiasTerm", "out.weight": "KronTerm", "out.bias": "BiasTerm"}
    assert isinstance(ev.curvature.terms[-2], KronTerm) and float(ev.curvature.terms[-2].c) == 1.0


@pytest.mark.parametrize("d,kernel,stride,padding,dilation", [
    (1, 3, 2, 1, 1), (2, 3, 1, "same", 2), (2, 4, 2, 1, 1), (3, 3, 2, 1, 1)])
def test_patches_reproduce_the_convolution(d, kernel, stride, padding, dilation):
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[d](
        2, 3, kernel, stride=stride, padding=padding, dilation=dilation, bias=False).double()
    x = torch.randn((2, 2) + (7,) * d, dtype=torch.float64)
    with OpRecorder({conv: "conv"}) as rec:
        y = conv(x)
    cols = unfold_patches(rec.calls[0], x)
    torch.testing.assert_close(conv.weight.reshape(3, -1) @ cols, y.flatten(2))


def test_r3conv_kron_equals_kfac_with_one_field_per_layer():
    g = gspaces.rot3dOnR3(maximum_frequency=1)
    t0 = enn.FieldType(g, [g.trivial_repr])
    t1 = enn.FieldType(g, [g.irrep(1)])
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = enn.R3Conv(t0, t1, 3, padding=1, recompute=True)
            self.c2 = enn.R3Conv(t1, t0, 3, recompute=True)
            self.out = torch.nn.Linear(27, 2)

        def forward(self, x):
            z = self.c1(enn.GeometricTensor(x, t0))
            z = self.c2(enn.GeometricTensor(torch.tanh(z.tensor), t1))
            return self.out(z.tensor.flatten(1))

    model = Net().double()
    x = torch.randn(4, 1, 5, 5, 5, dtype=torch.float64)
    data = loader(x, torch.randint(0, 2, (4,)), 2)
    kron = LaplaceEvidence(model, "classification").fit(data).per_layer()
    kfac = LaplaceEvidence(model, "classification", "kfac").fit(data).per_layer()
    for a, b in zip(kron, kfac):
        assert a["log_det"] == pytest.approx(b["log_det"], rel=1e-9)
        assert math.isfinite(a["log_det"])


def _soft_layers(kind: str):
    import escnn_soft as es

    t = c4_types("regular")
    g = t[0].gspace
    if kind == "rpp":
        return es.nn.RPPR2Conv(t[0], t[1], 3), es.nn.RPPR2Conv(t[1], t[2], 3, relaxed_subgroup=2)
    if kind == "rpp, pathways":    # C4 ⊃ C2 ⊃ plain pixel weights, and C2 ⊃ trivial (escnn basis)
        return (es.nn.RPPR2Conv(t[0], t[1], 3, pathways=[2, None]),
                es.nn.RPPR2Conv(t[1], t[2], 3, pathways=[2, 1]))
    if kind == "rsteer":
        return es.nn.RSteerR2Conv(t[0], t[1], 3), es.nn.RSteerR2Conv(t[1], t[2], 3, relaxed_subgroup=2)
    if kind == "relaxed":
        return es.nn.RelaxedR2Conv(t[0], t[1], 3), es.nn.RelaxedR2Conv(t[1], t[2], 3, relaxed_subgroup=2)
    if kind == "relaxed, bank_fraction 0.5":
        return (es.nn.RelaxedR2Conv(t[0], t[1], 3, bank_fraction=0.5),
                es.nn.RelaxedR2Conv(t[1], t[2], 3, relaxed_subgroup=2, bank_fraction=0.5))
    if kind == "relaxed, bank_in_fraction 0.5":   # the modulated convolution reads half of the input channels
        return (es.nn.RelaxedR2Conv(t[0], t[1], 3, bank_in_fraction=0.5),
                es.nn.RelaxedR2Conv(t[1], t[2], 3, relaxed_subgroup=2, bank_fraction=0.5, bank_in_fraction=0.5))
    if kind == "probabilistic":
        return es.nn.ProbabilisticR2Conv(t[0], t[1], 3), es.nn.ProbabilisticR2Conv(t[1], t[2], 3)
    lifting = es.nn.DSLiftingConv(enn.FieldType(g, [g.trivial_repr]), 3, 3)
    return lifting, es.nn.DSGroupConv(lifting.out_type, 2, 3)


class SoftNet(torch.nn.Module):
    """The two soft layers of :func:`_soft_layers` on 7x7 single-channel images, tanh between, a linear head."""

    def __init__(self, kind: str):
        super().__init__()
        self.a, self.b = _soft_layers(kind)
        self.out = torch.nn.Linear(self.b.out_type.size * 9, 3)

    def forward(self, x):
        y = self.a(self.a.in_type(x))
        y = self.b(enn.GeometricTensor(torch.tanh(y.tensor), self.b.in_type))
        return self.out(torch.tanh(y.tensor).flatten(1))


@pytest.mark.parametrize("kind", ["rpp", "rpp, pathways", "rsteer", "relaxed", "relaxed, bank_fraction 0.5",
                                  "relaxed, bank_in_fraction 0.5", "probabilistic", "ds"])
def test_soft_layers_get_structured_curvature(kind):
    """Every trained tensor of the soft layers gets a structured term (no dense fallback), the evidence is
    finite and differentiable w.r.t. the layers' hyperparameters."""
    torch.manual_seed(0)
    model = SoftNet(kind)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("free", "relaxed_weights", "bank_weights", "pathways")):
                p.normal_(0, 0.1)
    model = model.double()
    x = torch.randn(6, 1, 7, 7, dtype=torch.float64)
    exclude = ["a.bias", "a.bank_coefficients", "b.bias", "b.bank_coefficients"] if kind.startswith("relaxed") \
        else None
    ev = LaplaceEvidence(model, exclude=exclude or "default")
    ev.fit(loader(x, torch.randint(0, 3, (6,)), 3), differentiable=True)
    kinds = {ev.params[t.param_index].name: type(t).__name__ for t in ev.curvature.terms}
    assert "DenseTerm" not in kinds.values(), kinds
    expected = {n: "BiasTerm" if n.endswith("bias") else "BlocksTerm" for n in kinds if n[:2] in ("a.", "b.")}
    if kind == "relaxed, bank_fraction 0.5":
        assert {"a.bank_weights", "b.bank_weights"} <= set(kinds)
    if kind == "relaxed, bank_in_fraction 0.5":   # layer a reads one input field: nothing to restrict there
        assert model.a.bank_in_channels is None and model.b.bank_in_channels.numel() < model.b.in_type.size
        assert "b.bank_weights" in kinds
    if kind == "rpp":
        expected["a.free_weights"] = "KronTerm"  # an unconstrained pathway: W = weights + free_weights
    if kind == "rpp, pathways":                  # one block term per level of the chain
        assert {"a.chain.0.weights", "a.chain.1.weights", "b.chain.0.weights", "b.chain.1.weights"} <= set(kinds)
    assert {n: k for n, k in kinds.items() if n in expected} == expected
    lml = ev.log_marginal_likelihood()
    assert torch.isfinite(lml)
    hyper = ev.network_hyperparameters
    if hyper:
        grads = torch.autograd.grad(lml, hyper, allow_unused=True)
        assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_probabilistic_pathways_of_irrep_fields_get_their_declared_block_structure():
    """Pathways on SO(2) irrep fields (the thesis network's gated fields, where no escnn expansion describes the
    pathway weights) get block terms from the layout they declare (``coefficient_blocks()``), not the dense
    fallback (which the thesis network's larger layers exceed); their log-determinants agree with the dense
    per-op pull-back ("kfac") to the tolerance of the output-field factorisation, and exactly where each pair has
    one output field."""
    import escnn_soft as es

    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(-1, maximum_frequency=4)
    t0 = enn.FieldType(gs, [gs.trivial_repr])
    t1 = enn.FieldType(gs, [gs.irrep(0), gs.irrep(1), gs.irrep(2)])

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = es.nn.ProbabilisticR2Conv(t0, t1, 3, L=2)
            self.b = es.nn.ProbabilisticR2Conv(t1, t0, 3, L=2)
            self.out = torch.nn.Linear(9, 3)

        def forward(self, x):
            y = self.a(t0(x))
            y = self.b(enn.GeometricTensor(torch.tanh(y.tensor), t1))
            return self.out(torch.tanh(y.tensor).flatten(1))

    model = Net()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pathways" in name or "likelihood" in name:  # a non-uniform λ: the pathways reach the filter
                p.normal_(0, 0.5)
    model = model.double()
    data = loader(torch.randn(6, 1, 7, 7, dtype=torch.float64), torch.randint(0, 3, (6,)), 3)
    kron = LaplaceEvidence(model, "classification", "kron", prior_structure="parameterwise").fit(data)
    kfac = LaplaceEvidence(model, "classification", "kfac", prior_structure="parameterwise").fit(data)
    kinds = {kron.params[t.param_index].name: type(t).__name__ for t in kron.curvature.terms}
    pathways = [n for n in kinds if "pathways" in n]
    assert len(pathways) == 4 and all(kinds[n] == "BlocksTerm" for n in pathways), kinds
    rows = {a["name"]: (a["log_det"], b["log_det"]) for a, b in zip(kron.per_layer(), kfac.per_layer())}
    for name in pathways:
        structured, dense = rows[name]
        assert dense > 0.01  # the pathway has curvature: the comparison measures something
        tol = 1e-9 if name.startswith("b.") else 1e-3  # b: one output field; a: three, factorised per field
        assert structured == pytest.approx(dense, rel=tol), name


def test_declared_pathway_kernels_give_the_probed_evidence_and_gradients(monkeypatch):
    """The kernels a probabilistic layer declares (with their graph to λ) give the same evidence and the same
    gradients with respect to λ as the generic path without them (here: kernels read off the filter by forward-mode
    probing), on a layer with one input and one output field."""
    import escnn_soft as es
    from escnn_soft.nn.probabilistic import ProbabilisticR2Conv

    torch.manual_seed(1)
    gs = gspaces.rot2dOnR2(-1, maximum_frequency=4)
    t0 = enn.FieldType(gs, [gs.trivial_repr])
    t1 = enn.FieldType(gs, [gs.irrep(1)])

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = es.nn.ProbabilisticR2Conv(t0, t1, 3, L=2)
            self.out = torch.nn.Linear(t1.size * 9, 3)

        def forward(self, x):
            return self.out(torch.tanh(self.conv(t0(x)).tensor).flatten(1))

    model = Net()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pathways" in name or "likelihood" in name:
                p.normal_(0, 0.5)
    model = model.double()
    data = loader(torch.randn(6, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (6,)), 3)

    def evidence(kind: str):
        ev = LaplaceEvidence(model, "classification", hyperparameters="likelihoods").fit(data, differentiable=True)
        kinds = {ev.params[t.param_index].name: type(t).__name__ for t in ev.curvature.terms}
        assert kinds["conv.pathways.0.weights"] == kind, kinds
        lml = ev.log_marginal_likelihood()
        return lml, torch.autograd.grad(lml, ev.network_hyperparameters)[0]

    declared = evidence("BlocksTerm")
    monkeypatch.setattr(ProbabilisticR2Conv, "coefficient_blocks", lambda self, param: None)
    probed = evidence("BlocksTerm")  # a layout of the strict expansion fits here; its kernels are probed
    assert float(declared[1].abs().max()) > 0
    torch.testing.assert_close(declared[0], probed[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(declared[1], probed[1], rtol=1e-8, atol=1e-10)
