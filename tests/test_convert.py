"""soften / harden: outputs are kept, hardened layers are exactly equivariant to what they kept."""
import pytest
import torch
from escnn import gspaces, nn

import escnn_soft as es
from escnn_soft.metrics import WrappedModule, equivariance_error, grid_exact_elements
from escnn_soft.nn.base import SoftModule
from escnn_soft.testing import assert_equivariant, random_input


def _net(gs):
    G = gs.fibergroup
    hid = [gs.regular_repr] if G.order() > 0 else [gs.irrep(*i) for i in G.bl_irreps(2)]
    t_in = nn.FieldType(gs, [gs.trivial_repr])
    t_hid = nn.FieldType(gs, [gs.trivial_repr] + hid)
    return nn.SequentialModule(nn.R2Conv(t_in, t_hid, 5, padding=2), nn.IIDBatchNorm2d(t_hid),
                               nn.R2Conv(t_hid, t_hid, 3, padding=1)).eval()


SOFT_KWARGS = {"probabilistic": {"L": 2}, "relaxed": {}, "rpp": {}, "rsteer": {}}


@pytest.mark.parametrize("method", list(SOFT_KWARGS))
@pytest.mark.parametrize("gspace", [lambda: gspaces.rot2dOnR2(4), lambda: gspaces.flipRot2dOnR2(-1, 4)],
                         ids=["C4", "O2"])
def test_soften_keeps_the_output(method, gspace):
    torch.manual_seed(0)
    model = _net(gspace())
    x = random_input(model, dtype=torch.float32)
    with torch.no_grad():
        before = model(x).tensor.clone()
    soft = es.soften(model, method=method, **SOFT_KWARGS[method]).eval()
    assert isinstance(soft[0], es.nn.SoftModule) and isinstance(soft[2], es.nn.SoftModule)
    with torch.no_grad():
        torch.testing.assert_close(soft(x).tensor, before, atol=1e-5, rtol=1e-5)


def test_soften_by_name_and_bad_input():
    model = _net(gspaces.rot2dOnR2(4))
    es.soften(model, names=["2"])
    assert type(model[0]) is nn.R2Conv and isinstance(model[2], es.nn.ProbabilisticR2Conv)
    with pytest.raises(ValueError, match="method='nope'"):
        es.soften(model, method="nope")
    with pytest.raises(ValueError, match="names"):
        es.soften(model, names=["does.not.exist"])


@pytest.mark.parametrize("method", list(SOFT_KWARGS))
def test_round_trip_strict_soft_strict(method):
    """Every method, including the non-stationary relaxed layer (hardened from its centre filter)."""
    torch.manual_seed(0)
    model = _net(gspaces.flipRot2dOnR2(4))
    x = random_input(model, dtype=torch.float32)
    with torch.no_grad():
        before = model(x).tensor.clone()
    hard, log = es.harden(es.soften(model, method=method), return_log=True)
    assert type(hard[0]) is nn.R2Conv and type(hard[2]) is nn.R2Conv
    assert all(entry["subgroup"] == "D4" for entry in log.values()), log
    with torch.no_grad():
        torch.testing.assert_close(hard.eval()(x).tensor, before, atol=1e-4, rtol=1e-4)


def test_harden_keeps_the_subgroup_a_likelihood_is_uniform_on():
    torch.manual_seed(0)
    gs = gspaces.flipRot2dOnR2(4)
    t = nn.FieldType(gs, [gs.regular_repr])
    layer = es.nn.ProbabilisticR2Conv(t, t, 5, padding=2, L=10)
    lik = layer.likelihood
    _, _, child = lik.group.subgroup((0, 1))
    lik.fit_density_(torch.tensor([float(child(g) is not None) for g in lik.grid]))
    for p in layer.pathways:
        p.weights.data.normal_()
    x = random_input(layer, dtype=torch.float32)
    with torch.no_grad():
        before = layer(x).tensor.clone()
    hard, log = es.harden(layer, return_log=True)
    assert isinstance(hard, WrappedModule) and log["(model)"]["subgroup"] == "flips", log
    with torch.no_grad():
        torch.testing.assert_close(hard(x).tensor, before, atol=1e-4, rtol=1e-4)
    els = {str(g): g for g in grid_exact_elements(gs)}
    assert_equivariant(hard, elements=[els["(-, 0[2pi/4])"]])  # exactly the flip it kept
    errors = equivariance_error(hard.double(), random_input(hard), [els["(+, 1[2pi/4])"]])
    assert min(errors.values()) > 0.05


def test_harden_counts_the_dropped_position_dependence_of_a_relaxed_layer():
    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(4)
    t = nn.FieldType(gs, [gs.regular_repr])
    layer = es.nn.RelaxedR2Conv(t, t, 5, padding=2)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name not in ("weights", "bias"):
                p.normal_()  # position-dependent banks, gains and amplitude far from zero
    dropped = layer.degree()["nonstationary_norm"]
    assert dropped > 0.05
    x = random_input(layer, size=11, dtype=torch.float32)
    with torch.no_grad():
        before = layer.eval()(x).tensor.clone()
    hard, log = es.harden(layer, return_log=True)
    # no strict layer keeps the position dependence: every subgroup's residual counts it, none is within the
    # threshold, and the layer becomes its own exact plain export (position-dependent, equivariant to nothing)
    assert log["(model)"]["smallest_subgroup_residual"] >= dropped
    assert (log["(model)"]["subgroup"], log["(model)"]["subgroup_id"], log["(model)"]["residual"]) == ("C1", "plain", 0.0)
    with torch.no_grad():
        torch.testing.assert_close(hard(x).tensor, before, rtol=1e-5, atol=1e-5)


def test_a_layer_that_keeps_no_subgroup_hardens_to_its_exact_plain_export():
    """An RPP layer whose free part is as large as its equivariant one keeps no subgroup: harden returns its own
    filter as a plain conv on the same field types, with the same output (a projection onto escnn's trivial-group
    basis, sampled on rings and band-limited, lost 7-14% of such filters per layer and collapsed the medium-scale
    DoubleMNIST RPP network to 0.010 test accuracy)."""
    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(4)
    t_in, t = nn.FieldType(gs, [gs.trivial_repr]), nn.FieldType(gs, [gs.regular_repr] * 2)
    model = nn.SequentialModule(es.nn.RPPR2Conv(t_in, t, 7, padding=3), nn.ReLU(t), es.nn.RPPR2Conv(t, t, 5, padding=2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "free" in name:
                p.normal_(0, 0.3)
    model.eval()
    x = random_input(model, size=15, dtype=torch.float32)
    with torch.no_grad():
        before = model(x).tensor.clone()
    hard, log = es.harden(model, return_log=True)
    assert all(entry["subgroup_id"] == "plain" and entry["smallest_subgroup_residual"] > 0.01 for entry in log.values()), log
    assert not any(isinstance(m, SoftModule) for m in hard.modules())
    with torch.no_grad():
        torch.testing.assert_close(hard.eval()(x).tensor, before, rtol=1e-5, atol=1e-5)


def test_harden_rejects_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        es.harden(_net(gspaces.rot2dOnR2(4)), threshold=1.5)


# ------------------------------------------------------------------------------------------------- 3D


def _net3d(gs):
    t_in = nn.FieldType(gs, [gs.trivial_repr])
    t_hid = nn.FieldType(gs, [gs.trivial_repr, gs.irrep(1)])
    return nn.SequentialModule(nn.R3Conv(t_in, t_hid, 3, padding=1), nn.R3Conv(t_hid, t_hid, 3, padding=1)).eval()


@pytest.mark.parametrize("method", list(SOFT_KWARGS))
def test_soften_and_harden_r3conv_round_trip(method):
    """Every method softens escnn's R3Conv into its 3D layer (same output) and hardens back to R3Conv."""
    torch.manual_seed(0)
    model = _net3d(gspaces.rot3dOnR3(maximum_frequency=2))
    x = random_input(model, size=7, dtype=torch.float32)
    with torch.no_grad():
        before = model(x).tensor.clone()
    soft = es.soften(model, method=method, **SOFT_KWARGS[method]).eval()
    expected = {"probabilistic": es.nn.ProbabilisticR3Conv, "relaxed": es.nn.RelaxedR3Conv,
                "rpp": es.nn.RPPR3Conv, "rsteer": es.nn.RSteerR3Conv}[method]
    assert type(soft[0]) is expected and type(soft[1]) is expected
    with torch.no_grad():
        torch.testing.assert_close(soft(x).tensor, before, atol=1e-5, rtol=1e-5)
    hard, log = es.harden(soft, return_log=True)
    assert type(hard[0]) is nn.R3Conv and type(hard[1]) is nn.R3Conv
    assert all(entry["subgroup_id"] == "None" for entry in log.values()), log   # the whole SO(3)
    with torch.no_grad():
        torch.testing.assert_close(hard.eval()(x).tensor, before, atol=1e-4, rtol=1e-4)


def test_harden_a_relaxed_r3conv_keeps_the_subgroup_it_kept():
    """A relaxation over the octahedral rotations of O(3) hardens to the octahedral group, exactly equivariant."""
    torch.manual_seed(0)
    gs = gspaces.flipRot3dOnR3(maximum_frequency=2)
    t = nn.FieldType(gs, [gs.trivial_repr, gs.irrep(1, 1)])
    layer = es.nn.RPPR3Conv(t, t, 3, padding=1, relaxed_subgroup=(False, "octa"))
    with torch.no_grad():
        layer.free_weights.normal_()
    hard, log = es.harden(layer, return_log=True)
    assert log["(model)"]["subgroup"] == "octahedral", log
    x = random_input(layer, size=7, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(hard(x).tensor, layer(x).tensor, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------- subclasses, nothing replaced


class MyConv(nn.R2Conv):
    """A fork's own conv class that only adds an attribute: safe to soften."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.note = "fork"


class ScaledConv(nn.R2Conv):
    """A subclass that changes the output: softening it would change the model."""

    def forward(self, x):
        y = super().forward(x)
        return nn.GeometricTensor(2 * y.tensor, y.type)


def test_soften_replaces_safe_subclasses_and_warns_about_the_others():
    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(4)
    t_in, t = nn.FieldType(gs, [gs.trivial_repr]), nn.FieldType(gs, [gs.regular_repr])
    model = nn.SequentialModule(MyConv(t_in, t, 3, padding=1), ScaledConv(t, t, 3, padding=1)).eval()
    x = random_input(model, dtype=torch.float32)
    with torch.no_grad():
        before = model(x).tensor.clone()
    with pytest.warns(UserWarning, match=r"layer '1' left strict: ScaledConv subclasses escnn's R2Conv but"):
        soft = es.soften(model, method="rpp")
    assert isinstance(soft[0], es.nn.RPPR2Conv) and type(soft[1]) is ScaledConv
    with torch.no_grad():
        torch.testing.assert_close(soft.eval()(x).tensor, before, atol=1e-5, rtol=1e-5)


def test_soften_warns_when_nothing_is_replaced():
    gs = gspaces.rot2dOnR2(4)
    t = nn.FieldType(gs, [gs.regular_repr])
    with pytest.warns(UserWarning, match="no layer of the SequentialModule was replaced: its escnn layers"):
        es.soften(nn.SequentialModule(nn.R2Conv(t, t, 3)), method="relaxed",
                  types=[nn.Linear])
    with pytest.warns(UserWarning, match="has no escnn R2Conv, R3Conv or Linear layer"):
        es.soften(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3)), method="rpp")
    with pytest.warns(UserWarning) as record:
        es.soften(nn.SequentialModule(ScaledConv(t, t, 3)), method="rpp")
    messages = [str(w.message) for w in record]
    assert any("layer '0' left strict" in m for m in messages) and any("every candidate was skipped" in m
                                                                        for m in messages), messages


def test_harden_a_float64_model_gives_a_float64_strict_model_with_the_same_output():
    """At uniform λ the softened model is the strict one: harden keeps the whole group, in the model's dtype."""
    gs = gspaces.rot2dOnR2(4)
    t0, t1 = nn.FieldType(gs, [gs.trivial_repr]), nn.FieldType(gs, [gs.regular_repr] * 2)
    torch.manual_seed(0)
    soft = es.soften(nn.SequentialModule(nn.R2Conv(t0, t1, 3), nn.ReLU(t1), nn.R2Conv(t1, t1, 3)),
                     method="probabilistic").double().eval()
    x = t0(torch.randn(2, 1, 9, 9, dtype=torch.float64))
    with torch.no_grad():
        expected = soft(x).tensor
    hard, log = es.harden(soft, return_log=True)
    with torch.no_grad():
        got = hard.eval()(x).tensor
    assert got.dtype == torch.float64 and all(entry["subgroup"] == "C4" for entry in log.values())
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
