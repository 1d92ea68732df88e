"""GroupLikelihood: Fourier conventions against quadrature, normalisation, KL, alignment, readout."""
import numpy as np
import pytest
import torch
from escnn import group

from escnn_soft import GroupLikelihood
from escnn_soft.likelihood import _compute_constants, band_limited_irreps, haar_gram, irrep_features

TWO_D_GROUPS = {
    "C8": lambda: group.cyclic_group(8),
    "D6": lambda: group.dihedral_group(6),
    "SO2": lambda: group.so2_group(),
    "O2": lambda: group.o2_group(),
}


@pytest.mark.parametrize("name", list(TWO_D_GROUPS))
def test_haar_gram_matches_exact_quadrature(name):
    G = TWO_D_GROUPS[name]()
    irreps, _ = band_limited_irreps(G, 3)
    elements = G.elements if G.order() > 0 else G.grid(64)  # regular grids integrate these exactly
    F = irrep_features(irreps, elements, weighted=False)
    np.testing.assert_allclose(F.T @ F / len(elements), haar_gram(irreps), atol=1e-12)


@pytest.mark.parametrize("name", list(TWO_D_GROUPS))
def test_fourier_inversion_round_trip(name):
    """A band-limited density survives density -> Fourier -> density exactly."""
    G = TWO_D_GROUPS[name]()
    lik = GroupLikelihood(G, L=2, L_out=2)
    irreps, _ = band_limited_irreps(G, 2)
    rng = np.random.default_rng(0)
    coeffs = rng.normal(size=sum(i.size ** 2 for i in irreps)) * 0.1
    coeffs[0] = 1.0
    values = irrep_features(irreps, lik.grid) @ coeffs  # a band-limited function on the grid
    lam = torch.tensor(lik.analysis.numpy() @ values)
    recon = irrep_features(irreps, lik.grid) @ lam.numpy()
    np.testing.assert_allclose(recon, values, atol=1e-10)


@pytest.mark.parametrize("name", list(TWO_D_GROUPS) + ["SO3"])
def test_density_is_nonnegative_with_mean_one(name):
    G = group.so3_group(2) if name == "SO3" else TWO_D_GROUPS[name]()
    lik = GroupLikelihood(G, L=2)
    torch.manual_seed(1)
    for scale in (0.1, 1.0, 10.0, 1e4):
        with torch.no_grad():
            lik.coefficients.normal_().mul_(scale)
        lam = lik.density().detach()
        assert torch.isfinite(lam).all()
        assert float(lam.min()) >= 0.0
        assert float(lam.mean()) == pytest.approx(1.0, abs=1e-12)


def test_uniform_initialisation_has_trivial_fourier_coefficients():
    lik = GroupLikelihood(group.o2_group(), L=3)
    for irrep_id, mat in lik.fourier_coefficients().items():
        expected = 1.0 if irrep_id == (0, 0) else 0.0
        np.testing.assert_allclose(mat.detach().numpy(), expected * np.ones_like(mat.detach().numpy()), atol=1e-12)
    assert float(lik.kl().detach()) == pytest.approx(0.0, abs=1e-12)
    assert float(lik.alignment_loss().detach()) == pytest.approx(0.0, abs=1e-10)


def test_kl_nonnegative_zero_for_identical_and_detached_reference():
    G = group.so2_group()
    a, b = GroupLikelihood(G, L=2), GroupLikelihood(G, L=2)
    torch.manual_seed(0)
    with torch.no_grad():
        a.coefficients.normal_()
        b.coefficients.normal_()
    with torch.no_grad():
        assert float(a.kl(b)) > 0
        assert float(a.kl(a)) == pytest.approx(0.0, abs=1e-10)
        assert float(a.kl()) > 0
    a.kl(b).backward()
    assert b.coefficients.grad is None and a.coefficients.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="other"):
        a.kl(GroupLikelihood(group.o2_group(), L=2))


def test_alignment_penalises_mass_away_from_identity():
    G = group.cyclic_group(4)
    lik = GroupLikelihood(G, L=4)
    lik.fit_density_(torch.tensor([0.0, 0.0, 1.0, 0.0]))  # all mass on the rotation by 180 degrees
    assert float(lik.alignment_loss().detach()) == pytest.approx(4.0, abs=1e-6)
    lik.fit_density_(torch.tensor([1.0, 0.0, 0.0, 0.0]))  # peaked at e
    assert float(lik.alignment_loss().detach()) == pytest.approx(0.0, abs=1e-6)


def test_fit_density_is_exact_on_finite_groups_and_degree_reads_it():
    G = group.dihedral_group(4)
    lik = GroupLikelihood(G, L=10)
    _, _, child = G.subgroup((0, 1))  # the flip subgroup {e, flip}
    target = torch.tensor([1.0 if child(g) is not None else 0.0 for g in lik.grid], dtype=torch.float64)
    lik.fit_density_(target)
    np.testing.assert_allclose(lik.density().detach().numpy(), (target * len(target) / target.sum()).numpy(),
                               atol=1e-12)
    deg = lik.degree()
    assert deg["subgroups"]["flips"]["invariant_fraction"] == pytest.approx(1.0, abs=1e-10)
    assert lik.mass((0, 1)) == pytest.approx(1.0, abs=1e-12)
    assert deg["subgroups"]["C4"]["invariant_fraction"] < 0.9
    # λ = 4 on {e, flip}: ||λ|| = 2, its G-average is 1, ||λ - 1|| = sqrt(3), so 1 - sqrt(3)/2
    assert deg["subgroups"]["D4"]["invariant_fraction"] == pytest.approx(1 - 3 ** 0.5 / 2, abs=1e-10)
    assert set(deg["subgroups"]["flips"]) == {"invariant_fraction"}  # one measure per subgroup


def _left_average(lik, sid):
    """Brute force on a finite group's grid: (P_S λ)(h) = mean over s in S of λ(s h)."""
    density = lik.grid_density().detach()
    index = {str(g): i for i, g in enumerate(lik.grid)}
    _, _, child = lik.group.subgroup(sid)
    members = [g for g in lik.grid if child(g) is not None]
    return torch.stack([torch.stack([density[index[str(s @ h)]] for s in members]).mean() for h in lik.grid])


def test_invariant_fraction_is_one_minus_the_relative_norm_of_the_s_breaking_part():
    """1 - ||λ - P_S λ|| / ||λ|| (L2 over the normalised Haar measure), checked by brute force on D4 (L = 10
    holds every irrep, so the grid sum is the Haar integral) for a random λ and every default subgroup."""
    G = group.dihedral_group(4)
    torch.manual_seed(0)
    lik = GroupLikelihood(G, L=10)
    lik.coefficients.data.normal_()
    density = lik.grid_density().detach()
    for name, entry in lik.degree()["subgroups"].items():
        sub_id = {"flips": (0, 1), "C2": (None, 2), "D2": (0, 2), "C4": (None, 4), "D4": None}[name]
        averaged = _left_average(lik, sub_id) if sub_id is not None else torch.ones_like(density)
        expected = 1 - ((density - averaged).pow(2).mean() / density.pow(2).mean()).sqrt()
        assert float(lik.invariant_fraction(sub_id).detach()) == pytest.approx(float(expected), abs=1e-10), name
        assert entry["invariant_fraction"] == pytest.approx(float(expected), abs=1e-10), name
        assert 0.0 < entry["invariant_fraction"] < 1.0, name


def test_invariant_fraction_of_an_almost_uniform_likelihood_is_almost_one_on_every_subgroup():
    """The removed ``invariance`` divided by ||λ - 1|| and read 0.0 for C4, 0.54 for C2 on a λ 1e-3 away from
    uniform; a layer using such λ is equivariant to within 1e-3 on every subgroup, and the readout says so."""
    G = group.dihedral_group(4)
    torch.manual_seed(0)
    lik = GroupLikelihood(G, L=10)
    lik.coefficients.data.normal_(std=1e-3)
    distance = float((lik.grid_density().detach() - 1).pow(2).mean().sqrt())
    assert 0 < distance < 1e-2
    for name, entry in lik.degree()["subgroups"].items():
        assert 1 - distance - 1e-12 <= entry["invariant_fraction"] <= 1.0, name
    with pytest.raises(AttributeError, match="invariant_fraction"):
        lik.invariance((None, 4))
    with pytest.raises(ValueError, match="mass: needs a finite group"):
        GroupLikelihood(group.so2_group(), L=2).mass((None, 4))


def test_band_limit_is_capped_for_finite_groups():
    lik = GroupLikelihood(group.cyclic_group(4), L=50)
    assert [i.id for i in lik.irreps] == [i.id for i in group.cyclic_group(4).irreps()]
    assert lik.L == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"L": -1}, "L=-1"),
    ({"L": 2, "L_out": 1}, "L_out=1"),
    ({"L": 1.5}, "L: expected an int"),
    ({"L": 2, "grid_size": 2}, "grid_size=2"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GroupLikelihood(group.so2_group(), **kwargs)


def test_group_must_be_an_escnn_group():
    with pytest.raises(TypeError, match="group"):
        GroupLikelihood("SO2", L=2)


def test_density_rejects_foreign_elements():
    lik = GroupLikelihood(group.so2_group(), L=1)
    with pytest.raises(ValueError, match="elements"):
        lik.density([group.o2_group().identity])


@pytest.mark.parametrize("G", [group.cyclic_group(4), group.o2_group(), group.so3_group(1)],
                         ids=["C4", "O2", "SO3"])
def test_plot_returns_a_figure(G, tmp_path):
    lik = GroupLikelihood(G, L=1)
    fig = lik.plot()
    fig.savefig(tmp_path / "lik.png")
    assert (tmp_path / "lik.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["C8", "O2", "SO3"])
def test_cached_constants_are_private_copies_equal_to_an_uncached_build(name):
    """Likelihoods over one group reuse one computation of their grid and matrices, but own their tensors."""
    G = group.so3_group(2) if name == "SO3" else TWO_D_GROUPS[name]()
    a, b = GroupLikelihood(G, L=2), GroupLikelihood(G, L=2)  # b comes from the cache
    storages = lambda m: {t.untyped_storage().data_ptr() for t in [*m.parameters(), *m.buffers()] if t.numel()}
    assert not storages(a) & storages(b)
    irreps, _ = band_limited_irreps(G, 2)
    fresh = _compute_constants(G, irreps, irreps, 2, None, b.n_identity_samples)
    for buffer in ("synthesis", "analysis", "alignment_features", "identity_pool"):
        np.testing.assert_array_equal(getattr(b, buffer).numpy(), getattr(fresh, buffer))
    assert b.grid == list(fresh.grid) and b.grid is not a.grid
    with torch.no_grad():
        a.analysis.add_(1.0)  # writing into one likelihood's buffer reaches neither the cache nor the others
    np.testing.assert_array_equal(GroupLikelihood(G, L=2).analysis.numpy(), fresh.analysis)
    np.testing.assert_array_equal(b.analysis.numpy(), fresh.analysis)
