"""RelaxedR3Conv, RPPR3Conv, RSteerR3Conv: the contract of the 2D layers on escnn's 3D gspaces.

* zero relaxation computes the strict escnn ``R3Conv`` exactly (float64, bit for bit);
* a relaxation over S stays S-equivariant on grid-exact elements (float64 and float32, each with its own
  tolerance) and breaks the rest of the group;
* ``export()`` is a plain ``Conv3d`` (or the relaxed export module) with the same output;
* ``degree()`` is JSON-serialisable and sees the relaxation; ``penalty()`` is a differentiable scalar;
* the Laplace evidence gives every trained tensor a structured term and is differentiable in the hyperparameters.
"""
from __future__ import annotations

import json

import pytest
import torch
from escnn import nn as enn

from escnn_soft.laplace import LaplaceEvidence
from escnn_soft.metrics.equivariance import equivariance_error, grid_exact_elements
from escnn_soft.nn import RelaxedR3Conv, RPPR3Conv, RSteerR3Conv
from escnn_soft.nn.relaxed import RelaxedConvExport
from escnn_soft.subgroups import subgroup_test_elements
from escnn_soft.testing import assert_equivariant, random_input
from tests.registry import vector

CLASSES = [RelaxedR3Conv, RPPR3Conv, RSteerR3Conv]


def soft_and_strict(cls, name: str, sid, **kwargs):
    torch.manual_seed(0)
    t = vector(name)
    strict = enn.R3Conv(t, t, 3, padding=1, recompute=True)
    return cls.from_r3conv(strict, relaxed_subgroup=sid, **kwargs).double(), strict.double()


def randomise_(layer) -> None:
    with torch.no_grad():
        for n, p in layer.named_parameters():
            if n in ("relaxed_weights", "free_weights"):
                p.normal_(0, 1)


@pytest.mark.parametrize("name", ["SO3", "O3", "octa"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_zero_relaxation_is_the_strict_r3conv_exactly(cls, name):
    layer, strict = soft_and_strict(cls, name, None)
    x = random_input(strict, size=7)
    for mode in (True, False):
        layer.train(mode), strict.train(mode)
        with torch.no_grad():
            assert torch.equal(layer(x).tensor, strict(x).tensor)
    assert isinstance(layer.to_r3conv(), enn.R3Conv)


# (class, gspace, S, an element of the group outside S breaks equivariance on the grid); on SO(3) the grid-exact
# elements are the octahedral rotations, so relaxing over 'octa' leaves nothing on the grid to break
SUBGROUP_CASES = [
    (RelaxedR3Conv, "SO3", "octa", False),
    (RelaxedR3Conv, "O3", (False, "octa"), True),
    (RelaxedR3Conv, "O3", "so3", True),
    (RPPR3Conv, "O3", "so3", True),
    (RPPR3Conv, "SO3", (False, 4), True),
    (RSteerR3Conv, "SO3", (False, 4), True),
    # orbits of the octahedral rotations on a 3x3x3 grid are closed under -1: the ties keep the inversion too
    (RSteerR3Conv, "O3", (False, "octa"), False),
    (RelaxedR3Conv, "SO3", (False, -1), True),
]


@pytest.mark.parametrize("cls,name,sid,breaks", SUBGROUP_CASES,
                         ids=[f"{c.__name__}-{n}-{s}" for c, n, s, _ in SUBGROUP_CASES])
def test_relaxed_over_a_subgroup_stays_equivariant_to_it(cls, name, sid, breaks):
    layer, strict = soft_and_strict(cls, name, sid)
    randomise_(layer)
    gs = layer.in_type.gspace
    x = random_input(layer, size=9)
    sub = subgroup_test_elements(gs, sid)
    assert sub, "no grid-exact element of S to test"
    assert_equivariant(layer, x, elements=sub)                                  # float64
    assert_equivariant(layer, x, elements=sub, dtype=torch.float32, atol=1e-5, rtol=1e-4)
    if breaks:
        outside = [g for g in grid_exact_elements(gs) if g not in sub]
        assert max(equivariance_error(layer, x, outside).values()) > 1e-2
        assert max(equivariance_error(strict, x, outside).values()) < 1e-5


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_unconstrained_relaxation_breaks_the_group_and_exports(cls):
    layer, _ = soft_and_strict(cls, "O3", None)
    randomise_(layer)
    x = random_input(layer, size=7)
    elements = grid_exact_elements(layer.in_type.gspace)
    assert max(equivariance_error(layer, x, elements).values()) > 1e-2
    plain = layer.export()
    assert isinstance(plain, (torch.nn.Conv3d, RelaxedConvExport))
    if isinstance(plain, RelaxedConvExport):
        assert isinstance(plain.conv, torch.nn.Conv3d)
    with torch.no_grad():
        torch.testing.assert_close(plain(x.tensor), layer(x).tensor, rtol=1e-10, atol=1e-10)
    assert layer.evaluate_output_shape(x.tensor.shape) == tuple(layer(x).tensor.shape)


def test_stationary_relaxed_exports_a_conv3d():
    layer, _ = soft_and_strict(RelaxedR3Conv, "SO3", None, lengthscale=float("inf"))
    randomise_(layer)
    plain = layer.export()
    assert type(plain) is torch.nn.Conv3d
    x = random_input(layer, size=7)
    with torch.no_grad():
        torch.testing.assert_close(plain(x.tensor), layer(x).tensor, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_degree_sees_the_relaxation_and_penalty_is_differentiable(cls):
    layer, _ = soft_and_strict(cls, "SO3", None)
    before = layer.degree()
    json.dumps(before)
    assert before["relative_norm"] < 1e-6 and before["group"] == "SO(3)"
    assert max(before["equivariance_error"].values()) < 1e-5
    randomise_(layer)
    after = layer.degree()
    assert after["relative_norm"] > 1e-2
    assert after["equivariance_error"]["octahedral"] > 1e-2
    pen = layer.penalty()
    assert pen.dim() == 0
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad(pen, params, allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_relaxed_gains_are_invariant_on_the_grid():
    """The position gains of a relaxation over the octahedral group take equal values on each orbit of voxels."""
    layer, _ = soft_and_strict(RelaxedR3Conv, "SO3", "octa")
    g = layer.gains(7, 7, 7)[0].detach()
    # the 90-degree rotation about z maps (d, h, w) -> (d, w', h') on the centred grid; rot90 in the (H, W) plane
    torch.testing.assert_close(torch.rot90(g, 1, dims=(1, 2)), g, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.rot90(g, 1, dims=(0, 1)), g, rtol=1e-6, atol=1e-6)
    assert float(g.std()) > 1e-3            # not constant: the relaxation is non-stationary


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_laplace_evidence_is_structured_and_differentiable(cls):
    torch.manual_seed(0)
    t = vector("SO3")
    a = cls(t, t, 3, padding=1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = a
            self.out = torch.nn.Linear(t.size * 5 ** 3, 3)

        def forward(self, x):
            return self.out(torch.tanh(self.a(self.a.in_type(x)).tensor).flatten(1))

    model = Net()
    randomise_(model.a)
    model = model.double()
    x = torch.randn(6, t.size, 5, 5, 5, dtype=torch.float64)
    data = [(x[:3], torch.randint(0, 3, (3,))), (x[3:], torch.randint(0, 3, (3,)))]
    exclude = ["a.bias", "a.bank_coefficients"] if cls is RelaxedR3Conv else "default"
    ev = LaplaceEvidence(model, exclude=exclude)
    ev.fit(data, differentiable=True)
    kinds = {ev.params[term.param_index].name: type(term).__name__ for term in ev.curvature.terms}
    assert "DenseTerm" not in kinds.values(), kinds
    assert kinds["a.weights"] == "BlocksTerm"
    lml = ev.log_marginal_likelihood()
    assert torch.isfinite(lml)
    hyper = ev.network_hyperparameters
    if cls is RelaxedR3Conv:   # amplitude and lengthscale reach the filter (RPP / R-steer hyperparameters are priors)
        assert hyper
    if hyper:
        grads = torch.autograd.grad(lml, hyper, allow_unused=True)
        assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("in_fraction", [1.0, 0.5])
def test_relaxed_bank_fraction_in_3d_keeps_the_subgroup_and_exports(in_fraction):
    """bank_fraction < 1 on O(3) relaxed over SO(3): the modulated filters reach one of two copies of each field
    (and with bank_in_fraction=0.5 read one of two), the layer stays SO(3)-equivariant on the grid, breaks the
    inversion and exports exactly."""
    torch.manual_seed(0)
    t = vector("O3")
    t2 = enn.FieldType(t.gspace, 2 * t.representations)
    layer = RelaxedR3Conv(t2, t2, 3, padding=1, relaxed_subgroup="so3", bank_fraction=0.5,
                          bank_in_fraction=in_fraction).double()
    assert layer.bank_channels.numel() == t.size
    assert (layer.bank_in_channels is None) if in_fraction == 1 else layer.bank_in_channels.numel() == t.size
    with torch.no_grad():
        layer.relaxed_weights.normal_(0, 1)
        layer.bank_weights.normal_(0, 1)
    x = random_input(layer, size=7)
    sub = subgroup_test_elements(t.gspace, "so3")
    assert_equivariant(layer, x, elements=sub)
    outside = [g for g in grid_exact_elements(t.gspace) if g not in sub]
    assert max(equivariance_error(layer, x, outside).values()) > 1e-2
    with torch.no_grad():
        torch.testing.assert_close(layer.export()(x.tensor), layer(x).tensor, rtol=1e-10, atol=1e-10)
