"""parameterisation="square" (λ = f²/∫f², issue 16 part 1): a density at every element, exact Fourier matrices.

Oracles: scipy's adaptive Gauss–Kronrod integration (``quad_vec``) over the angles of SO(2)/O(2) and over the
Euler angle β of SO(3)/O(3) (α, γ by the trapezoid rule on 12 points, exact for the trigonometric degrees
involved), sums over all elements for finite groups, escnn's own group action for invariances, and the
strict escnn layers.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from escnn import group, gspaces, nn
from scipy.integrate import quad_vec

import escnn_soft as es
from escnn_soft import GroupLikelihood
from escnn_soft.likelihood import _product_tensor, band_limited_irreps, haar_gram, irrep_features
from escnn_soft.metrics import equivariance_error, grid_exact_elements
from escnn_soft.nn import ProbabilisticLinear, ProbabilisticR2Conv, ProbabilisticR3Conv
from escnn_soft.quadrature import exact_quadrature
from escnn_soft.subgroups import default_subgroups
from escnn_soft.testing import assert_equivariant, random_input

GROUPS = {
    "SO2": lambda: group.so2_group(),
    "O2": lambda: group.o2_group(),
    "C8": lambda: group.cyclic_group(8),
    "D6": lambda: group.dihedral_group(6),
    "SO3": lambda: group.so3_group(2),
    "O3": lambda: group.o3_group(2),
    "SO3>O2": lambda: group.so3_group(2).subgroup((True, -1))[0],  # O(2) as the subgroup of SO(3) escnn returns
    "D6>C3": lambda: group.dihedral_group(6).subgroup((None, 3))[0],
}
L_OF = {"SO2": 4, "O2": 3, "C8": 3, "D6": 4, "SO3": 2, "O3": 2, "SO3>O2": 2, "D6>C3": 10}


def _square(name: str, **kwargs) -> GroupLikelihood:
    return GroupLikelihood(GROUPS[name](), L=kwargs.pop("L", L_OF[name]), parameterisation="square", **kwargs)


def _random_(lik: GroupLikelihood, seed: int, scale: float = 1.0) -> GroupLikelihood:
    with torch.no_grad():
        lik.coefficients.copy_(scale * torch.randn(lik.coefficients.shape, generator=torch.Generator().manual_seed(seed),
                                                   dtype=torch.float64))
    return lik


def _dense_elements(G, n: int = 1440) -> list:
    """Elements off every grid the likelihood uses: shifted angles, or random rotations (seeded)."""
    if G.order() > 0:
        return list(G.elements)
    shift = math.sqrt(2) / 10  # not a rational multiple of pi
    angles = shift + 2 * math.pi * np.arange(n) / n
    if type(G).__name__ == "SO2":
        return [G.element(t, "radians") for t in angles]
    if type(G).__name__ == "O2":
        return [G.element((k % 2, t), "radians") for k, t in enumerate(angles)]
    rng = np.random.default_rng(0)
    q = rng.normal(size=(n // 4, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)  # uniform (Haar) random rotations
    if type(G).__name__ == "SO3":
        return [G.element(qi, "Q") for qi in q]
    return [G.element((k % 2, qi), "Q") for k, qi in enumerate(q)]


def _brute_force_integral(G, func, eps: float = 1e-11) -> np.ndarray:
    """:math:`\\int_G func(h)\\,dh` (normalised Haar) with an adaptive integrator; ``func(elements) -> (n, k)``."""
    if G.order() > 0:
        return func(list(G.elements)).mean(axis=0)
    kind = type(G).__name__
    if kind in ("SO2", "O2"):
        cosets = [None] if kind == "SO2" else [0, 1]

        def on_circle(t):
            els = [G.element(t, "radians") if c is None else G.element((c, t), "radians") for c in cosets]
            return func(els).mean(axis=0)

        return quad_vec(on_circle, 0.0, 2 * math.pi, epsabs=eps, epsrel=eps)[0] / (2 * math.pi)
    uniform = 2 * math.pi * np.arange(12) / 12
    cosets = [None] if kind == "SO3" else [0, 1]

    def on_beta(beta):  # dh = sin(beta) d(alpha) d(beta) d(gamma) / (8 pi^2)
        angles = [np.array([a, beta, c]) for a in uniform for c in uniform]
        els = [G.element(x, "ZYZ") if j is None else G.element((j, x), "ZYZ") for j in cosets for x in angles]
        return func(els).mean(axis=0) * math.sin(beta) / 2

    return quad_vec(on_beta, 0.0, math.pi, epsabs=eps, epsrel=eps)[0]


# ------------------------------------------------------------------------------------------------ the density
@pytest.mark.parametrize("name", list(GROUPS))
def test_density_is_nonnegative_at_dense_off_grid_elements(name):
    G = GROUPS[name]()
    elements = _dense_elements(G)
    for seed, scale in ((0, 1.0), (1, 1.0), (2, 10.0)):
        lik = _random_(_square(name), seed, scale)
        lam = lik.density(elements)
        assert lam.dtype == torch.float64 and torch.isfinite(lam).all()
        assert float(lam.detach().min()) >= 0.0
        # it is the Fourier series the layers use (L_out covers every frequency of f^2)
        series = lik._features(elements, lik.out_irreps) @ lik._fourier_flat()
        torch.testing.assert_close(lam, series.detach(), atol=1e-12 * scale ** 2, rtol=1e-10)


def test_the_softmax_series_rings_below_zero_where_the_square_does_not():
    """The defect of issue 16 at the same elements: O(2), L=3, standard-normal logits."""
    G = group.o2_group()
    elements = _dense_elements(G)
    softmax = _random_(GroupLikelihood(G, L=3), 0)
    assert float(softmax.density(elements).detach().min()) < -0.5
    assert float(_random_(_square("O2"), 0).density(elements).detach().min()) >= 0.0


@pytest.mark.parametrize("name", list(GROUPS))
def test_mean_one_and_fourier_matrices_equal_brute_force_integrals(name):
    G = GROUPS[name]()
    lik = _random_(_square(name), 3)
    with torch.no_grad():
        exact = lik._fourier_flat().numpy()

    def integrand(els):
        lam = lik.density(els).detach().numpy()
        return np.concatenate([lam[:, None], lam[:, None] * irrep_features(lik.out_irreps, els, weighted=False)], 1)

    brute = _brute_force_integral(G, integrand)
    assert brute[0] == pytest.approx(1.0, abs=1e-9)  # the mean of λ
    np.testing.assert_allclose(exact, brute[1:], atol=1e-9)
    assert np.abs(exact[1:]).max() > 1e-2  # a non-trivial λ


@pytest.mark.parametrize("name", ["SO2", "O2", "SO3", "O3"])
def test_product_tensor_quadrature_is_exact_at_degree_4M(name):
    """T from the degree-4M rule equals T from a finer rule; one degree less is measurably wrong."""
    G = GROUPS[name]()
    M = 1 if name in ("SO3", "O3") else 2
    root, _ = band_limited_irreps(G, M)
    rows, _ = band_limited_irreps(G, 2 * M)
    exact = _product_tensor(G, root, rows, 4 * M)
    np.testing.assert_allclose(exact, _product_tensor(G, root, rows, 4 * M + 5), atol=1e-13)
    assert np.abs(exact - _product_tensor(G, root, rows, 4 * M - 1)).max() > 1e-3
    # the trivial row is Parseval's Gram matrix of the weighted coefficients, which the quadrature reproduces
    elements, weights = exact_quadrature(G, 4 * M)
    s = irrep_features(root, elements)
    np.testing.assert_allclose(exact[0], (s * weights[:, None]).T @ s, atol=1e-13)
    scale = np.concatenate([np.full(i.size ** 2, i.size / i.endomorphism_basis().shape[0]) for i in root])
    np.testing.assert_allclose(exact[0], scale[:, None] * haar_gram(root) * scale[None, :], atol=0)


# ----------------------------------------------------------------------------------------- uniform and subgroups
@pytest.mark.parametrize("name", list(GROUPS))
def test_initial_likelihood_is_exactly_uniform(name):
    lik = _square(name)
    flat = lik._fourier_flat().detach()
    assert float(flat[0]) == 1.0 and torch.count_nonzero(flat[1:]) == 0  # exact zeros, not 1e-17
    lam = lik.density(_dense_elements(GROUPS[name](), 64)).detach()
    torch.testing.assert_close(lam, torch.ones_like(lam), atol=1e-14, rtol=0)
    assert float(lik.kl().detach()) == pytest.approx(0.0, abs=1e-14)
    assert float(lik.alignment_loss().detach()) == pytest.approx(0.0, abs=1e-12)


def _strict_cases():
    cases = {}
    for name, gs in (("C8", gspaces.rot2dOnR2(8)), ("D6", gspaces.flipRot2dOnR2(6)),
                     ("SO2", gspaces.rot2dOnR2(-1, maximum_frequency=4)),
                     ("O2", gspaces.flipRot2dOnR2(-1, maximum_frequency=4))):
        G = gs.fibergroup
        reps = [gs.regular_repr] if G.order() > 0 else [gs.irrep(*i) for i in G.bl_irreps(2)]
        t = nn.FieldType(gs, [gs.trivial_repr] + reps)
        cases[f"R2Conv-{name}"] = (nn.R2Conv, ProbabilisticR2Conv, t, (5,), {"padding": 2})
    gs3 = gspaces.rot3dOnR3(maximum_frequency=1)
    cases["R3Conv-SO3"] = (nn.R3Conv, ProbabilisticR3Conv, nn.FieldType(gs3, [gs3.trivial_repr, gs3.irrep(1)]),
                           (3,), {"padding": 1})
    g0 = gspaces.no_base_space(group.o3_group(2))
    cases["Linear-O3"] = (nn.Linear, ProbabilisticLinear,
                          nn.FieldType(g0, [g0.irrep(0, 0), g0.irrep(1, 1), g0.irrep(0, 2)]), (), {})
    return cases


@pytest.mark.parametrize("case", list(_strict_cases()))
def test_initial_layer_is_exactly_the_strict_layer(case):
    strict_cls, cls, t, args, kw = _strict_cases()[case]
    layer = cls(t, t, *args, L=2, parameterisation="square", **kw)
    assert layer.likelihood.parameterisation == "square" and len(layer.pathways) > 0
    strict = strict_cls(t, t, *args, **kw)
    strict.weights.data.copy_(layer.weights.data)
    strict.bias.data.copy_(layer.bias.data)
    with torch.no_grad():
        torch.manual_seed(0)
        for p in layer.pathways:
            p.weights.normal_()  # the pathways are multiplied by exact zeros
        filt, _ = layer.expand_parameters()
        assert torch.equal(filt, strict.expand_parameters()[0])
        x = random_input(layer, batch=2, size=7, dtype=torch.float32) if not case.startswith("Linear") \
            else random_input(layer, batch=2, dtype=torch.float32)
        torch.testing.assert_close(layer(x).tensor, strict(x).tensor, atol=1e-6, rtol=1e-6)


def _subgroup_elements(G, sid, n: int = 6) -> list:
    """Elements of the subgroup ``sid`` (all of a finite one, ``n`` seeded random ones of a continuous one)."""
    H, parent, _ = G.subgroup(sid)
    if H.order() > 0:
        return [parent(h) for h in H.elements]
    rng = np.random.RandomState(0)
    if type(H).__name__ in ("SO2", "O2"):
        return [parent(h) for h in H.grid(n, type="rand", seed=rng)]
    return [parent(H.sample()) for _ in range(n)]


@pytest.mark.parametrize("name", list(GROUPS))
def test_concentrate_on_every_default_subgroup_gives_an_exactly_invariant_density(name):
    G = GROUPS[name]()
    lik = _square(name)
    probe = _dense_elements(G, 40)
    for sub, sid in default_subgroups(G).items():
        lik.concentrate_on_(sid)
        assert float(lik.invariant_fraction(sid).detach()) == pytest.approx(1.0, abs=1e-12), sub
        lam = lik.density(probe).detach()
        for s in _subgroup_elements(G, sid) if sid is not None else []:
            torch.testing.assert_close(lik.density([s @ h for h in probe]).detach(), lam, atol=1e-12, rtol=1e-10)
        if sid is None:
            torch.testing.assert_close(lam, torch.ones_like(lam), atol=1e-14, rtol=0)
        elif torch.count_nonzero(lik.coefficients[1:]) > 0:  # f is not constant: λ breaks the whole group
            assert float(lik.invariant_fraction(None).detach()) < 0.999, sub


def test_concentrate_on_a_finite_subgroup_is_uniform_on_it_and_zero_elsewhere():
    G = group.dihedral_group(4)
    lik = GroupLikelihood(G, L=10, parameterisation="square")  # f has every irrep of D4
    for sid in default_subgroups(G).values():
        H, _, child = G.subgroup(sid) if sid is not None else (G, None, lambda g: g)
        lik.concentrate_on_(sid)
        expected = torch.tensor([G.order() / H.order() if child(g) is not None else 0.0 for g in lik.grid],
                                dtype=torch.float64)
        torch.testing.assert_close(lik.density().detach(), expected, atol=1e-13, rtol=0)


def test_concentrate_on_so2_inside_o2_is_two_on_rotations_and_zero_on_reflections():
    lik = GroupLikelihood(group.o2_group(), L=4, parameterisation="square")
    lik.concentrate_on_((None, -1))
    lam = lik.density(_dense_elements(group.o2_group(), 200)).detach()
    torch.testing.assert_close(lam, torch.tensor([2.0, 0.0] * 100, dtype=torch.float64), atol=1e-13, rtol=0)


@pytest.mark.parametrize("gspace, L", [(lambda: gspaces.flipRot2dOnR2(-1, maximum_frequency=8), 4),
                                       (lambda: gspaces.rot2dOnR2(-1, maximum_frequency=8), 4),
                                       (lambda: gspaces.flipRot2dOnR2(4), 10)], ids=["O2", "SO2", "D4"])
def test_layer_degree_reports_the_concentrated_subgroup_fully_kept(gspace, L):
    gs = gspace()
    G = gs.fibergroup
    reps = [gs.regular_repr] if G.order() > 0 else [gs.irrep(*i) for i in G.bl_irreps(2)]
    t = nn.FieldType(gs, [gs.trivial_repr] + reps)
    layer = ProbabilisticR2Conv(t, t, 5, padding=2, L=L, parameterisation="square")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.pathways:
            p.weights.normal_()
    for sub, sid in default_subgroups(G).items():
        layer.likelihood.concentrate_on_(sid)
        degree = layer.degree()
        assert degree["subgroups"][sub]["equivariant_fraction"] == pytest.approx(1.0, abs=1e-9), sub
        assert set(degree["subgroups"][sub]) == {"equivariant_fraction"}, sub  # one measure per subgroup
        assert layer.likelihood.degree()["subgroups"][sub]["invariant_fraction"] == pytest.approx(1.0, abs=1e-12), sub


@pytest.mark.parametrize("gspace, sid", [(lambda: gspaces.flipRot2dOnR2(4), (0, 1)),
                                         (lambda: gspaces.flipRot2dOnR2(-1, maximum_frequency=8), (None, -1))],
                         ids=["D4>flips", "O2>SO2"])
def test_concentrated_layer_is_exactly_equivariant_to_the_subgroup_only(gspace, sid):
    gs = gspace()
    G = gs.fibergroup
    reps = [gs.regular_repr] if G.order() > 0 else [gs.irrep(*i) for i in G.bl_irreps(2)]
    t = nn.FieldType(gs, [gs.trivial_repr] + reps)
    layer = ProbabilisticR2Conv(t, t, 5, padding=2, L=10 if G.order() > 0 else 4, parameterisation="square")
    layer.likelihood.concentrate_on_(sid)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.pathways:
            p.weights.normal_()
    _, _, child = G.subgroup(sid)
    exact = grid_exact_elements(gs)  # multiples of 90 degrees and flips: no interpolation error
    inside = [g for g in exact if child(g) is not None]
    outside = [g for g in exact if child(g) is None]
    assert inside and outside
    assert_equivariant(layer, elements=inside)
    errors = equivariance_error(layer.double(), random_input(layer), outside)
    assert min(errors.values()) > 0.05, errors


def test_fit_density_is_exact_on_a_finite_group():
    G = group.dihedral_group(4)
    lik = GroupLikelihood(G, L=10, parameterisation="square")
    target = torch.rand(len(lik.grid), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target[[1, 5]] = 0.0
    lik.fit_density_(target)
    torch.testing.assert_close(lik.density().detach(), target / target.mean(), atol=1e-13, rtol=0)


# ------------------------------------------------------------------------------- training, readout, conversions
def test_kl_and_its_gradient_are_finite_where_lambda_vanishes():
    lik = GroupLikelihood(group.dihedral_group(4), L=10, parameterisation="square").concentrate_on_((0, 1))
    assert int((lik.density() < 1e-30).sum()) == 6
    assert float(lik.kl().detach()) == pytest.approx(math.log(4.0), abs=1e-12)  # λ = 4 on 2 of 8 elements: KL = log 4
    # f = 1 + cos(θ) vanishes exactly at the grid point θ = π
    lik = GroupLikelihood(group.so2_group(), L=2, parameterisation="square")
    with torch.no_grad():
        lik.coefficients.copy_(torch.tensor([1.0, 0.5, 0.0, 0.0, 0.5], dtype=torch.float64))
    assert int((lik.density() == 0).sum()) == 1
    kl = lik.kl()
    kl.backward()
    assert math.isfinite(float(kl.detach())) and torch.isfinite(lik.coefficients.grad).all()
    other = _random_(_square("O2"), 0)
    assert float(other.kl(other).detach()) == pytest.approx(0.0, abs=1e-12) and float(other.kl().detach()) > 0


def test_gradients_reach_the_coefficients_and_gradcheck():
    gs = gspaces.rot2dOnR2(4)
    t = nn.FieldType(gs, [gs.regular_repr])
    layer = ProbabilisticR2Conv(t, t, 3, padding=1, L=10, parameterisation="square").double()
    x = random_input(layer, batch=1, size=5)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.pathways:
            p.weights.normal_()
    layer(x).tensor.pow(2).sum().backward()
    assert layer.likelihood.coefficients.grad[1:].abs().sum() > 0  # f's non-trivial irreps learn from uniform
    with torch.no_grad():
        layer.likelihood.coefficients.normal_()
    names = ["weights", "likelihood.coefficients", "pathways.0.weights"]
    params = dict(layer.named_parameters())
    inputs = tuple(params[n].detach().clone().requires_grad_() for n in names)

    def f(*values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,)).tensor

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_laplace_evidence_differentiates_the_square_coefficients():
    from tests.laplace.test_laplace_hyper import SoftNet, _check_fd

    torch.manual_seed(0)
    model = SoftNet(lambda i, o: ProbabilisticR2Conv(i, o, 3, L=2, parameterisation="square"))
    with torch.no_grad():
        for layer in (model.a, model.b):
            layer.likelihood.coefficients.normal_(0, 0.5)
    model = model.double()
    coefficients = [model.a.likelihood.coefficients, model.b.likelihood.coefficients]
    ev = es.laplace.LaplaceEvidence(model, "classification")
    assert {id(t) for t in ev.network_hyperparameters} == {id(t) for t in coefficients}
    _check_fd(model, coefficients, "kron")


@pytest.mark.parametrize("sid, expected", [((None, -1), "SO2"), ((0.0, 1), "flips")])
def test_soften_and_harden_keep_the_concentrated_subgroup(sid, expected):
    gs = gspaces.flipRot2dOnR2(-1, maximum_frequency=8)  # irreps for the tensor products with λ's up to 4
    t = nn.FieldType(gs, [gs.trivial_repr] + [gs.irrep(*i) for i in gs.fibergroup.bl_irreps(2)])
    model = nn.SequentialModule(nn.R2Conv(t, t, 5, padding=2))
    model = es.soften(model, "probabilistic", L=4, parameterisation="square")
    layer = model[0]
    assert layer.likelihood.parameterisation == "square"
    layer.likelihood.concentrate_on_(sid)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.pathways:
            p.weights.normal_()
    _, log = es.harden(model, return_log=True)
    (entry,) = log.values()
    assert entry["subgroup"] == expected and entry["residual"] < 1e-5, entry


@pytest.mark.parametrize("name", ["SO2", "O2", "C8", "SO3"])
def test_plot_draws_the_nonnegative_density(name, tmp_path):
    lik = _random_(_square(name), 0)
    fig = lik.plot()
    fig.savefig(tmp_path / "lik.png")
    assert (tmp_path / "lik.png").stat().st_size > 1000
    values = ([line.get_ydata() for line in fig.axes[0].lines if len(line.get_ydata()) > 2] if name in ("SO2", "O2")
              else [p.get_height() for p in fig.axes[0].patches] if name == "C8"
              else [ax.images[0].get_array() for ax in fig.axes if ax.images])
    assert len(values) > 0 and min(float(np.min(v)) for v in values) >= 0.0


# --------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, error, match", [
    (lambda: GroupLikelihood(group.so2_group(), L=2, parameterisation="squared"), ValueError,
     "parameterisation='squared'"),
    (lambda: GroupLikelihood(group.so2_group(), L=4, L_out=3, parameterisation="square"), ValueError,
     r"L_out=3 .*L_out >= 4"),
    (lambda: GroupLikelihood(group.so2_group(), L=2).concentrate_on_(2), ValueError, "parameterisation='square'"),
    (lambda: GroupLikelihood(group.so2_group(), L=2, parameterisation="square").concentrate_on_((0, 1)), ValueError,
     "subgroup_id"),
    (lambda: ProbabilisticR2Conv(*[nn.FieldType(gspaces.rot2dOnR2(4), [gspaces.rot2dOnR2(4).regular_repr])] * 2, 3,
                                 likelihood=GroupLikelihood(group.cyclic_group(4), L=2), parameterisation="square"),
     ValueError, "parameterisation='square' contradicts"),
])
def test_bad_input_names_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_odd_band_limit_defaults_l_out_to_the_band_limit_of_the_square():
    lik = GroupLikelihood(group.o2_group(), L=3, parameterisation="square")
    assert (lik.L_root, lik.L_out) == (2, 4)
    assert GroupLikelihood(group.cyclic_group(4), L=50, parameterisation="square").L_out == 2
