"""LikelihoodHistory: λ per layer and epoch at the documented elements, equivariant fractions, JSON, one PNG."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from escnn import group, gspaces, nn

import escnn_soft as es
from escnn_soft.metrics import LikelihoodHistory
from escnn_soft.nn import ProbabilisticLinear, ProbabilisticR2Conv


def _model(gs, parameterisation="softmax", L=2):
    G = gs.fibergroup
    reps = [gs.regular_repr] if G.order() > 0 else [gs.irrep(*i) for i in G.bl_irreps(1)]
    t = nn.FieldType(gs, [gs.trivial_repr] + reps)
    return nn.SequentialModule(ProbabilisticR2Conv(t, t, 3, padding=1, L=L, parameterisation=parameterisation),
                               ProbabilisticR2Conv(t, t, 3, padding=1, L=L, parameterisation=parameterisation))


def _perturb_(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ProbabilisticR2Conv):
                m.likelihood.coefficients.add_(0.5 * torch.randn(m.likelihood.coefficients.shape, generator=g,
                                                                 dtype=torch.float64))
                for p in m.pathways:
                    p.weights.normal_(generator=g)


def test_records_o2_density_on_both_cosets_and_the_fractions_of_degree():
    gs = gspaces.flipRot2dOnR2(-1, maximum_frequency=4)
    model = _model(gs, "square")
    history = LikelihoodHistory(n_angles=8)
    expected = []
    for epoch in range(3):
        _perturb_(model, epoch)
        history.record(model, epoch)
        expected.append({name: m.degree() for name, m in model.named_modules() if isinstance(m, ProbabilisticR2Conv)})
    entry = history.to_dict()["layers"]["0"]
    assert history.epochs == [0, 1, 2] and list(history.to_dict()["layers"]) == ["0", "1"]
    assert list(entry["density"]) == ["rotations", "reflections"] and entry["x"][2] == pytest.approx(90.0)
    G, lik = gs.fibergroup, model[0].likelihood
    last = np.asarray(entry["density"]["reflections"][-1])
    direct = lik.density([G.element((1, k * math.pi / 4), "radians") for k in range(8)]).detach().numpy()
    np.testing.assert_allclose(last, direct, atol=1e-14)
    assert not np.allclose(entry["density"]["rotations"][0], entry["density"]["rotations"][2])  # λ moved
    for epoch, degrees in enumerate(expected):
        for sub, value in degrees["0"]["subgroups"].items():
            assert entry["equivariant_fraction"][sub][epoch] == pytest.approx(value["equivariant_fraction"], abs=1e-12)
    assert set(entry["equivariant_fraction"]) == set(es.subgroups.default_subgroups(G))


def test_dihedral_rows_hold_rotations_then_reflections_at_their_element_values():
    gs = gspaces.flipRot2dOnR2(4)
    model = _model(gs, L=10)
    _, _, child = gs.fibergroup.subgroup((0, 1))
    lik = model[0].likelihood
    lik.fit_density_(torch.tensor([float(child(g) is not None) for g in lik.grid]))  # uniform on {e, flip}
    history = LikelihoodHistory()
    history.record(model, 0)
    density = history.to_dict()["layers"]["0"]["density"]
    np.testing.assert_allclose(density["rotations"][0], [4.0, 0.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(density["reflections"][0], [4.0, 0.0, 0.0, 0.0], atol=1e-9)


def test_so3_records_the_axis_mean_over_rotation_angles():
    gs = gspaces.no_base_space(group.so3_group(2))
    t = nn.FieldType(gs, [gs.irrep(0), gs.irrep(1)])
    layer = ProbabilisticLinear(t, t, L=2, parameterisation="square")
    history = LikelihoodHistory(n_angles=8, n_axes=5)
    history.record(layer, 0)  # uniform: 1 at every angle
    layer.likelihood.concentrate_on_((False, -1))  # peaked on the rotations about z
    history.record(layer, 1)
    entry = history.to_dict()["layers"]["(model)"]
    assert entry["x"] == pytest.approx([0.0, 45.0, 90.0, 135.0, 180.0])
    np.testing.assert_allclose(entry["density"]["rotations"][0], 1.0, atol=1e-13)
    after = np.asarray(entry["density"]["rotations"][1])
    assert after.min() >= 0.0 and after[0] > 1.0  # λ(e) is above the mean for a λ peaked on a subgroup
    assert entry["equivariant_fraction"]["SO2z"] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert entry["equivariant_fraction"]["SO3"][1] < 0.999


def test_to_dict_is_json_and_plot_writes_one_png(tmp_path):
    model = _model(gspaces.flipRot2dOnR2(4), L=10)
    history = LikelihoodHistory()
    for epoch in (0, 2, 5):
        _perturb_(model, epoch)
        history.record(model, epoch)
    data = history.to_dict()
    assert json.loads(json.dumps(data)) == data
    data["epochs"].append(9)  # a copy: the history is untouched
    assert history.epochs == [0, 2, 5]
    fig = history.plot(tmp_path / "history.png")
    assert (tmp_path / "history.png").stat().st_size > 10_000
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("λ, rotations" in t for t in titles) == 2 and sum("λ, reflections" in t for t in titles) == 2
    assert sum("equivariant" in t for t in titles) == 2


def test_bad_input_names_the_argument():
    model = _model(gspaces.rot2dOnR2(4))
    history = LikelihoodHistory()
    with pytest.raises(ValueError, match="plot: nothing recorded"):
        history.plot()
    with pytest.raises(ValueError, match="no probabilistic layer"):
        history.record(torch.nn.Linear(2, 2), 0)
    with pytest.raises(TypeError, match="epoch"):
        history.record(model, 1.5)
    history.record(model, 3)
    with pytest.raises(ValueError, match="epoch=3"):
        history.record(model, 3)
    with pytest.raises(ValueError, match="differ"):
        history.record(model[0], 4)
    with pytest.raises(ValueError, match="n_angles=1"):
        LikelihoodHistory(n_angles=1)


def test_quarter_turn_mass_is_a_half_for_uniform_lambda_and_the_analytic_share_for_one_plus_cos_four_theta():
    from escnn_soft.doublemnist.reporting import quarter_turn_mass

    model = _model(gspaces.rot2dOnR2(-1, maximum_frequency=4), "square", L=4)   # λ uniform at construction
    history = LikelihoodHistory(n_angles=72)
    history.record(model, 0)
    record = history.to_dict()
    assert quarter_turn_mass(record) == pytest.approx({"0": 0.5, "1": 0.5}, abs=1e-9)
    # λ = 1 + cos 4θ: its exact share within ±22.5° of the quarter turns is 1/2 + 1/π; 72 samples give the
    # midpoint-free Riemann sum, within 0.03 of it
    theta = np.radians(record["layers"]["0"]["x"])
    record["layers"]["0"]["density"]["rotations"][-1] = (1 + np.cos(4 * theta)).tolist()
    shares = quarter_turn_mass(record)
    assert shares["0"] == pytest.approx(0.5 + 1 / math.pi, abs=0.03) and shares["1"] == pytest.approx(0.5, abs=1e-9)
    # an O(3) layer has no angle axis and is left out
    record["layers"]["0"]["x_label"] = "rotation angle (degrees), mean over axes"
    assert list(quarter_turn_mass(record)) == ["1"]
