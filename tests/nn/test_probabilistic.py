"""Probabilistic layers: the acceptance criteria of METHODS section 1 / issue 3."""
import io

import pytest
import torch
from escnn import group, gspaces, nn

import escnn_soft as es
from escnn_soft.metrics import equivariance_error, grid_exact_elements
from escnn_soft.nn import ProbabilisticLinear, ProbabilisticR2Conv, ProbabilisticR3Conv
from escnn_soft.testing import assert_equivariant, random_input
from tests.registry import GSPACES_2D, gspace, mixed_types


@pytest.mark.parametrize("name", list(GSPACES_2D))
def test_initial_layer_is_the_strict_r2conv(name):
    """(a) uniform λ: filters in escnn's strict kernel space, output equal to R2Conv with the same weights."""
    gs = gspace(name)
    in_type, out_type = mixed_types(gs)
    layer = ProbabilisticR2Conv(in_type, out_type, 5, padding=2, L=2)
    assert len(layer.pathways) > 0
    assert_equivariant(layer)
    strict = nn.R2Conv(in_type, out_type, 5, padding=2)
    strict.weights.data.copy_(layer.weights.data)
    strict.bias.data.copy_(layer.bias.data)
    x = random_input(layer, dtype=torch.float32)
    torch.testing.assert_close(layer(x).tensor, strict(x).tensor, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", list(GSPACES_2D))
def test_idle_parameters_are_exactly_the_pathways_the_output_ignores(name):
    """``idle_parameters()``: at the uniform λ every pathway's weights, and the output (float64) is unchanged
    bit for bit when they are redrawn; once λ has a component on an irrep, that pathway is no longer idle and
    redrawing its weights changes the output."""
    in_type, out_type = mixed_types(gspace(name))
    layer = ProbabilisticR2Conv(in_type, out_type, 5, padding=2, L=2).double()
    x = random_input(layer, dtype=torch.float64)
    assert {id(t) for t in layer.idle_parameters()} == {id(p.weights) for p in layer.pathways}
    before = layer(x).tensor
    torch.manual_seed(0)
    with torch.no_grad():
        for t in layer.idle_parameters():
            t.normal_()
    assert torch.equal(layer(x).tensor, before)
    with torch.no_grad():
        layer.likelihood.coefficients.add_(0.3 * torch.randn_like(layer.likelihood.coefficients))
    coeffs = layer.likelihood.fourier_coefficients()
    opened = [p for p in layer.pathways if coeffs[p.irrep_id].any()]
    assert opened, "the perturbed λ should have a component on some pathway's irrep"
    assert not {id(p.weights) for p in opened} & {id(t) for t in layer.idle_parameters()}
    before = layer(x).tensor
    with torch.no_grad():
        opened[0].weights.normal_()
    assert not torch.allclose(layer(x).tensor, before)


def _he_cases():
    so2 = gspace("SO2")
    so3 = gspace("SO3", 1)
    c4 = gspaces.no_base_space(group.cyclic_group(4))
    t3 = nn.FieldType(so3, [so3.trivial_repr, so3.irrep(1)])
    t0 = nn.FieldType(c4, [c4.regular_repr] * 2)
    return {"R2Conv": (nn.R2Conv, ProbabilisticR2Conv, *mixed_types(so2, width=2), (5,)),
            "R3Conv": (nn.R3Conv, ProbabilisticR3Conv, t3, t3, (3,)),
            "Linear": (nn.Linear, ProbabilisticLinear, t0, t0, ())}


@pytest.mark.parametrize("case", ["R2Conv", "R3Conv", "Linear"])
def test_initial_weights_are_escnn_he_initialisation_with_the_same_draws(case):
    """The strict weights are initialised without escnn's per-coefficient loop, but to the same values."""
    strict_cls, cls, t_in, t_out, args = _he_cases()[case]
    torch.manual_seed(3)
    strict = strict_cls(t_in, t_out, *args)
    torch.manual_seed(3)
    layer = cls(t_in, t_out, *args)
    torch.testing.assert_close(layer.weights, strict.weights, rtol=0, atol=0)


def test_initial_r3conv_and_linear_are_strict():
    gs = gspace("SO3", 1)
    t_in = nn.FieldType(gs, [gs.trivial_repr, gs.irrep(1)])
    layer = ProbabilisticR3Conv(t_in, t_in, 3, padding=1, L=1)
    assert_equivariant(layer, x=random_input(layer, size=5))
    for G in (group.cyclic_group(8), group.o2_group()):
        g0 = gspaces.no_base_space(G)
        reps = [g0.regular_repr] if G.order() > 0 else [G.irrep(*i) for i in G.bl_irreps(2)]
        t = nn.FieldType(g0, [g0.trivial_repr] + reps)
        lin = ProbabilisticLinear(t, t, L=2)
        assert_equivariant(lin, elements=list(G.elements) if G.order() > 0 else G.testing_elements(n=6)
                           if callable(getattr(G, "testing_elements", None)) else G.grid(6))
        strict = nn.Linear(t, t)
        strict.weights.data.copy_(lin.weights.data)
        strict.bias.data.copy_(lin.bias.data)
        x = random_input(lin, batch=4, dtype=torch.float32)
        torch.testing.assert_close(lin(x).tensor, strict(x).tensor, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cutoff", ["default1", "default2", "default3", 1.0])
def test_r3conv_pathways_take_the_r3conv_band_limit_rule(cutoff):
    """R3Conv's own frequency cut-off options ('default1'...'default3', which R2Conv's rule rejects) build, and the
    layer at uniform λ is the strict R3Conv with the same options, weights and output."""
    gs = gspace("SO3", 1)
    t = nn.FieldType(gs, [gs.trivial_repr, gs.irrep(1)])
    layer = ProbabilisticR3Conv(t, t, 5, padding=2, L=1, frequencies_cutoff=cutoff)
    assert len(layer.pathways) > 0
    strict = nn.R3Conv(t, t, 5, padding=2, frequencies_cutoff=cutoff)
    assert layer.weights.shape == strict.weights.shape
    strict.weights.data.copy_(layer.weights.data)
    strict.bias.data.copy_(layer.bias.data)
    x = random_input(layer, size=7, dtype=torch.float32)
    torch.testing.assert_close(layer(x).tensor, strict(x).tensor, atol=1e-6, rtol=1e-6)


def _subgroup_indicator(lik, sid):
    _, _, child = lik.group.subgroup(sid)
    return torch.tensor([1.0 if child(g) is not None else 0.0 for g in lik.grid], dtype=torch.float64)


@pytest.mark.parametrize("gspace, sid, inside, outside", [
    (lambda: gspace("C4"), 2, ["2[2pi/4]"], ["1[2pi/4]", "3[2pi/4]"]),
    (lambda: gspace("D4"), (0, 1), ["(-, 0[2pi/4])"], ["(+, 1[2pi/4])", "(-, 1[2pi/4])"]),
    (lambda: gspace("D4"), (None, 4), ["(+, 1[2pi/4])", "(+, 2[2pi/4])"], ["(-, 0[2pi/4])"]),
], ids=["C4>C2", "D4>flips", "D4>C4"])
def test_likelihood_uniform_on_subgroup_gives_exactly_that_equivariance(gspace, sid, inside, outside):
    """(b) λ uniform on S and 0 elsewhere: exactly S-equivariant, measurably not equivariant outside S."""
    gs = gspace()
    in_type, out_type = mixed_types(gs)
    layer = ProbabilisticR2Conv(in_type, out_type, 5, padding=2, L=10)  # every irrep of the finite group
    layer.likelihood.fit_density_(_subgroup_indicator(layer.likelihood, sid))
    torch.manual_seed(0)
    for p in layer.pathways:
        p.weights.data.normal_()
    els = {str(g): g for g in grid_exact_elements(gs)}
    assert_equivariant(layer, elements=[els[k] for k in inside])
    x = random_input(layer)
    errors = equivariance_error(layer.double(), x, [els[k] for k in outside])
    assert min(errors.values()) > 0.05, errors
    degree = layer.degree({"S": sid, "G": None})
    assert degree["nonequivariant_fraction"] > 0.1
    # the filter's share that respects S is all of it; for G it is what the pathways do not contribute
    assert degree["subgroups"]["S"]["equivariant_fraction"] == pytest.approx(1.0, abs=1e-6)
    assert degree["subgroups"]["G"]["equivariant_fraction"] == pytest.approx(1.0 - degree["nonequivariant_fraction"])


def test_equivariant_fraction_is_the_filter_part_that_respects_each_subgroup():
    """k_{λ - P_S λ} is the S-breaking part of the filter: its symmetrisation over S vanishes, and its norm
    relative to the filter is 1 - equivariant_fraction (checked by brute force on D4 with a random λ)."""
    gs = gspace("D4")
    in_type, out_type = mixed_types(gs)
    torch.manual_seed(0)
    layer = ProbabilisticR2Conv(in_type, out_type, 5, padding=2, L=10)
    layer.likelihood.coefficients.data.normal_()
    for p in layer.pathways:
        p.weights.data.normal_()
    sid = (None, 4)  # C4 inside D4
    fraction = layer.degree({"C4": sid})["subgroups"]["C4"]["equivariant_fraction"]
    assert 0.0 < fraction < 1.0
    # brute force: make λ C4-invariant on the grid (average over left translations by C4), rebuild the filter
    lik = layer.likelihood
    with torch.no_grad():
        full, _ = layer.expand_parameters()
        density = lik.grid_density().double()
        _, _, child = lik.group.subgroup(sid)
        rotations = [g for g in lik.grid if child(g) is not None]
        index = {str(g): i for i, g in enumerate(lik.grid)}
        averaged = torch.stack([torch.stack([density[index[str(r @ g)]] for r in rotations]).mean()
                                for g in lik.grid])
        lik.fit_density_(averaged)
        symmetric, _ = layer.expand_parameters()
    brute = 1.0 - float((full - symmetric).norm() / full.norm())
    assert fraction == pytest.approx(brute, abs=1e-3)


def _fit(layer, x, y, steps=300):
    params = [p for n, p in layer.named_parameters() if "likelihood" not in n]
    opt = torch.optim.Adam(params, lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = (layer(x).tensor - y).pow(2).mean()
        loss.backward()
        opt.step()
    return float(loss.detach())


def test_peaked_likelihood_fits_a_non_equivariant_target():
    """(c) λ peaked at e: the layer fits a target the strict layer cannot."""
    torch.manual_seed(0)
    gs = gspace("C4")
    in_type = nn.FieldType(gs, [gs.trivial_repr])
    out_type = nn.FieldType(gs, [gs.trivial_repr])
    x = in_type(torch.randn(8, 1, 11, 11))
    target_conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        target_conv.weight.copy_(torch.tensor([[[[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, -1.0, 0.0]]]]))
        y = target_conv(x.tensor)  # a vertical derivative: not C4-equivariant
    strict = ProbabilisticR2Conv(in_type, out_type, 3, padding=1, L=10)
    soft = ProbabilisticR2Conv(in_type, out_type, 3, padding=1, L=10)
    soft.likelihood.fit_density_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    strict_loss, soft_loss = _fit(strict, x, y), _fit(soft, x, y)
    assert soft_loss < 0.3 * strict_loss, (soft_loss, strict_loss)


def test_gradients_reach_weights_and_likelihood():
    torch.manual_seed(0)
    gs = gspace("SO2", 3)
    in_type, out_type = mixed_types(gs)
    layer = ProbabilisticR2Conv(in_type, out_type, 3, padding=1, L=2)
    x = random_input(layer, dtype=torch.float32)
    layer(x).tensor.pow(2).sum().backward()
    assert layer.weights.grad.abs().sum() > 0
    assert layer.likelihood.coefficients.grad[1:].abs().sum() > 0  # non-trivial coefficients learn at once
    with torch.no_grad():
        layer.likelihood.coefficients.normal_()
    layer.zero_grad()
    layer(x).tensor.pow(2).sum().backward()
    assert all(p.weights.grad.abs().sum() > 0 for p in layer.pathways)


def test_gradcheck_on_a_tiny_layer():
    gs = gspace("C4")
    t = nn.FieldType(gs, [gs.regular_repr])
    layer = ProbabilisticR2Conv(t, t, 3, padding=1, L=10).double()
    torch.manual_seed(0)
    with torch.no_grad():
        layer.likelihood.coefficients.normal_()
    x = random_input(layer, batch=1, size=5)
    names = ["weights", "likelihood.coefficients", "pathways.0.weights"]
    params = dict(layer.named_parameters())
    inputs = tuple(params[n].detach().clone().requires_grad_() for n in names)

    def f(*values):
        out = torch.func.functional_call(layer, dict(zip(names, values)), (x,))
        return out.tensor

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_export_and_state_dict_round_trips_between_modes():
    gs = gspace("D4")
    in_type, out_type = mixed_types(gs)
    torch.manual_seed(0)
    layer = ProbabilisticR2Conv(in_type, out_type, 5, padding=2, L=2)
    with torch.no_grad():
        layer.likelihood.coefficients.normal_()
    x = random_input(layer, dtype=torch.float32)
    y = layer(x).tensor
    torch.testing.assert_close(layer.export()(x.tensor), y)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)  # saved in train mode
    other = ProbabilisticR2Conv(in_type, out_type, 5, padding=2, L=2).eval()
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))  # loaded in eval mode
    with torch.no_grad():
        torch.testing.assert_close(other(x).tensor, y)
    buf = io.BytesIO()
    torch.save(other.state_dict(), buf)  # and back: eval -> train
    fresh = ProbabilisticR2Conv(in_type, out_type, 5, padding=2, L=2)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(fresh(x).tensor, y)


def test_eval_cache_is_never_stale_after_an_optimiser_step():
    gs = gspace("C8")
    in_type, out_type = mixed_types(gs)
    layer = ProbabilisticR2Conv(in_type, out_type, 3, padding=1, L=2).eval()
    x = random_input(layer, dtype=torch.float32)
    with torch.no_grad():
        before = layer(x).tensor.clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).tensor.pow(2).sum().backward()  # eval mode, gradients on: the filter is rebuilt with a graph
    opt.step()
    with torch.no_grad():
        after = layer(x).tensor
        filt, bias = layer.expand_parameters()
        expected = torch.nn.functional.conv2d(x.tensor, filt, bias, padding=1)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected)


def test_shared_likelihood_is_one_parameter_set_and_models_share_nothing():
    gs = gspace("C4")
    t = nn.FieldType(gs, [gs.regular_repr])
    lik = es.GroupLikelihood(gs.fibergroup, L=2)
    model = nn.SequentialModule(ProbabilisticR2Conv(t, t, 3, likelihood=lik), ProbabilisticR2Conv(t, t, 3, likelihood=lik))
    assert model[0].likelihood is model[1].likelihood
    assert sum(1 for n, _ in model.named_parameters() if "coefficients" in n) == 1
    other = nn.SequentialModule(ProbabilisticR2Conv(t, t, 3), ProbabilisticR2Conv(t, t, 3))
    ptrs = lambda m: {t.data_ptr() for t in list(m.parameters()) + list(m.buffers()) if t.numel()}
    assert not ptrs(model) & ptrs(other)
    other.double()  # moving one model never changes the other's buffers
    assert all(b.dtype != torch.float64 for b in model[0].basisexpansion.buffers() if b.is_floating_point())


def test_regularization_loss_sums_alignment_and_kl_with_weights():
    gs = gspace("SO2", 2)
    t = nn.FieldType(gs, [gs.irrep(0), gs.irrep(1)])
    model = nn.SequentialModule(ProbabilisticR2Conv(t, t, 3, L=1), ProbabilisticR2Conv(t, t, 3, L=1))
    with torch.no_grad():   # values only: the terms' gradients are tested elsewhere
        assert float(es.regularization_loss(model)) == pytest.approx(0.0, abs=1e-9)
        torch.manual_seed(0)
        for m in (model[0], model[1]):
            m.likelihood.coefficients.normal_()
        gen = lambda: torch.Generator().manual_seed(3)
        l0, l1 = model[0].likelihood, model[1].likelihood
        # the reference implementation's weighting: alignment terms summed, KL terms averaged over the 2 likelihoods
        expected = (2.0 * (l0.alignment_loss(gen()) + l1.alignment_loss(gen()))
                    + 0.5 * (l0.kl() + l1.kl(l0)) / 2)
        got = es.regularization_loss(model, align_weight=2.0, kl_weight=0.5, generator=gen())
        # the two layers draw their identity samples from one generator in sequence, so compare the parts
        assert float(got) == pytest.approx(float(expected), rel=0.2)
        assert float(es.regularization_loss(model, align_weight=0.0, kl_weight=1.0)) == pytest.approx(
            float(l0.kl() + l1.kl(l0)) / 2, rel=1e-6)  # the total is accumulated in the model's float32
        assert float(es.regularization_loss(model, align_weight=0.0, kl_weight=1.0, kl_reduction="sum")) == pytest.approx(
            float(l0.kl() + l1.kl(l0)), rel=1e-6)
        assert float(l0.kl()) > 0 and float(l1.kl(l0)) > 0  # both terms count


@pytest.mark.parametrize("make, match", [
    (lambda t, u: ProbabilisticR2Conv(t, u, 0), "kernel_size=0"),
    (lambda t, u: ProbabilisticR2Conv(t, u, 3, L=-1), "L=-1"),
    (lambda t, u: ProbabilisticR2Conv(t, u, 3, L=2, L_out=1), "L_out=1"),
    (lambda t, u: ProbabilisticR2Conv(t, u, 3, likelihood=es.GroupLikelihood(group.cyclic_group(8))), "likelihood"),
    (lambda t, u: ProbabilisticR2Conv(t, nn.FieldType(gspace("C4"), [gspace("C4").trivial_repr]), 3),
     "out_type"),
    (lambda t, u: ProbabilisticR2Conv(t, u, 3, groups=2), "groups=2"),
])
def test_bad_input(make, match):
    gs = gspace("D4")
    t = nn.FieldType(gs, [gs.regular_repr])
    with pytest.raises(ValueError, match=match):
        make(t, t)


def test_wrong_input_type_is_rejected():
    gs = gspace("C4")
    t = nn.FieldType(gs, [gs.regular_repr])
    layer = ProbabilisticR2Conv(t, t, 3)
    with pytest.raises(TypeError, match="input"):
        layer(torch.randn(1, 4, 9, 9))
    other = nn.FieldType(gs, [gs.trivial_repr] * 4)
    with pytest.raises(ValueError, match="input"):
        layer(other(torch.randn(1, 4, 9, 9)))


def test_degree_has_one_measure_per_subgroup_and_names_a_bad_subgroup():
    """Per subgroup only ``equivariant_fraction`` (λ's own statistics live on ``layer.likelihood``), also for a
    layer without pathways, whose bad subgroup ids are still rejected by name."""
    gs = gspace("D4")
    in_type, out_type = mixed_types(gs)
    torch.manual_seed(0)
    layer = ProbabilisticR2Conv(in_type, out_type, 5, padding=2, L=10)
    degree = layer.degree()
    assert set(degree) == {"group", "entropy", "nonequivariant_fraction", "subgroups"}
    assert all(set(entry) == {"equivariant_fraction"} for entry in degree["subgroups"].values())
    with pytest.raises(ValueError, match=r"subgroups: entry 'C3'.*subgroup_id=3"):
        layer.degree({"C3": 3})
    with pytest.raises(KeyError):  # the removed key is gone, not silently 0 (docs/migrating.md)
        degree["subgroups"]["C4"]["invariance"]
