"""Tests of the per-layer × per-subgroup equivariance report."""
import json

import numpy as np
import pytest
import torch
from escnn import gspaces, nn

from escnn_soft.metrics import MODEL_ROW, SubgroupReport, WrappedModule, subgroup_elements, subgroup_report
from escnn_soft.testing import random_input

D = torch.float64
EXACT = 1e-5  # escnn samples its bases in float32: strict layers are exact to ~1e-7 in float64
BROKEN = 0.05


@pytest.fixture(scope="module")
def d4():
    return gspaces.flipRot2dOnR2(4)


def _types(gs, hidden=2):
    return (nn.FieldType(gs, [gs.trivial_repr]), nn.FieldType(gs, hidden * [gs.regular_repr]),
            nn.FieldType(gs, hidden * [gs.regular_repr]))


def _c4_net_on_d4_types(d4):
    """Convolutions that are C4- but not D4-equivariant, between D4 field types.

    Each convolution is an escnn R2Conv built on the C4 restrictions ``t.restrict((None, 4))`` of the D4
    types and wrapped back onto the D4 types (WrappedModule). Restriction keeps the channels and
    their basis, so for a rotation r in C4 the D4 action on these channels is exactly the C4 action
    the R2Conv commutes with; for a flip the D4 action permutes the regular fields' channels in a way
    a generic C4 filter does not respect. The ReLUs act on D4 regular fields and are D4-equivariant.
    """
    t_in, t_hid, t_out = _types(d4)
    c4 = [t.restrict((None, 4)) for t in (t_in, t_hid, t_out)]
    return nn.SequentialModule(WrappedModule(nn.R2Conv(c4[0], c4[1], 3, padding=1), t_in, t_hid),
                               nn.ReLU(t_hid),
                               WrappedModule(nn.R2Conv(c4[1], c4[2], 3, padding=1), t_hid, t_out),
                               nn.ReLU(t_out)).to(D)


def _strict_net(gs):
    t_in, t_hid, t_out = _types(gs)
    return nn.SequentialModule(nn.R2Conv(t_in, t_hid, 3, padding=1), nn.InnerBatchNorm(t_hid),
                               nn.ReLU(t_hid, inplace=True), nn.R2Conv(t_hid, t_out, 3, padding=1)).to(D)


def _plain_cnn(gs, channels=4):
    trivial = gs.trivial_repr
    t_in = nn.FieldType(gs, [trivial])
    t_hid = nn.FieldType(gs, channels * [trivial])
    torch.manual_seed(0)
    return nn.SequentialModule(WrappedModule(torch.nn.Conv2d(1, channels, 3, padding=1), t_in, t_hid),
                               nn.ReLU(t_hid),
                               WrappedModule(torch.nn.Conv2d(channels, channels, 3, padding=1), t_hid, t_hid)).to(D)


def test_c4_net_is_exact_on_c4_and_broken_on_flips(d4):
    torch.manual_seed(0)
    net = _c4_net_on_d4_types(d4)
    report = subgroup_report(net, random_input(net))
    assert report.subgroups == ["flips", "C2", "D2", "C4", "D4"]
    assert all(report.exact.values())
    assert report.layers == ["0", "1", "2", "3", MODEL_ROW]
    for row in report.layers:
        assert report.error[row]["C2"] < EXACT and report.error[row]["C4"] < EXACT
    for row in ["0", "2", MODEL_ROW]:
        for col in ["flips", "D2", "D4"]:
            assert report.error[row][col] > BROKEN, (row, col)
    for row in ["1", "3"]:  # the ReLUs are D4-equivariant
        assert max(report.error[row].values()) < EXACT


def test_strict_d4_net_is_exact_everywhere_and_left_untouched(d4):
    torch.manual_seed(0)
    net = _strict_net(d4)
    net.train()
    bn = net._modules["1"]
    running = [b.clone() for b in bn.buffers()]
    report = subgroup_report(net, random_input(net))
    assert report.layer_types["1"] == "InnerBatchNorm"
    for row in report.layers:  # the in-place ReLU does not spoil the recorded tensors
        assert max(report.error[row].values()) < EXACT, row
    assert all(m.training for m in net.modules())
    assert all(torch.equal(a, b) for a, b in zip(running, bn.buffers()))


@pytest.mark.parametrize("gs", [gspaces.flipRot2dOnR2(4), gspaces.rot2dOnR2(4)], ids=["D4", "C4"])
def test_plain_cnn_wrapped_with_field_types_is_broken_everywhere(gs):
    net = _plain_cnn(gs)
    report = subgroup_report(net, random_input(net))
    for row in ["0", "2", MODEL_ROW]:
        for col in report.subgroups:
            assert report.error[row][col] > BROKEN, (row, col)


def test_escnn_net_on_the_trivial_group_is_broken_everywhere(d4):
    trivial = gspaces.trivialOnR2()
    s_in, s_hid = nn.FieldType(trivial, [trivial.trivial_repr]), nn.FieldType(trivial, 4 * [trivial.trivial_repr])
    t_in, t_hid = nn.FieldType(d4, [d4.trivial_repr]), nn.FieldType(d4, 4 * [d4.trivial_repr])
    torch.manual_seed(0)
    net = nn.SequentialModule(WrappedModule(nn.R2Conv(s_in, s_hid, 3, padding=1), t_in, t_hid), nn.ELU(t_hid),
                              WrappedModule(nn.R2Conv(s_hid, s_hid, 3, padding=1), t_hid, t_hid)).to(D)
    report = subgroup_report(net, random_input(net))
    for row in ["0", "2", MODEL_ROW]:
        assert min(report.error[row].values()) > BROKEN, row


def test_o2_report_gives_interpolated_subgroups_a_reference():
    gs = gspaces.flipRot2dOnR2(-1, maximum_frequency=2)
    g = gs.fibergroup
    t_in = nn.FieldType(gs, [g.irrep(0, 0)])
    t_hid = nn.FieldType(gs, [g.irrep(0, 0), g.irrep(1, 0), g.irrep(1, 1), g.irrep(1, 2)])
    torch.manual_seed(0)
    net = nn.SequentialModule(nn.R2Conv(t_in, t_hid, 5, padding=2), nn.NormNonLinearity(t_hid),
                              nn.R2Conv(t_hid, t_hid, 5, padding=2)).to(D)
    x = random_input(net, batch=1)
    report = subgroup_report(net, x)
    assert report.subgroups == ["flips", "C2", "C4", "D4", "SO2", "O2"]
    assert report.exact == {"flips": True, "C2": True, "C4": True, "D4": True, "SO2": False, "O2": False}
    assert len(report.elements["SO2"]) == 15 and len(report.elements["O2"]) == 31
    for row in report.layers:
        for col in ["flips", "C2", "C4", "D4"]:
            assert report.error[row][col] < EXACT and report.reference[row][col] is None
        for col in ["SO2", "O2"]:
            err, ref = report.error[row][col], report.reference[row][col]
            # a strict layer's interpolation error is of the size of the round-trip floor
            assert 0 < err < 2 * ref, (row, col, err, ref)
    # a strict reference model: the model compared with itself
    self_ref = subgroup_report(net, x, subgroups=["C4", "SO2"], reference=net)
    assert self_ref.reference_kind == "model"
    for row in self_ref.layers:
        assert self_ref.reference[row]["SO2"] == pytest.approx(self_ref.error[row]["SO2"])
        assert self_ref.reference[row]["C4"] is None
    # rows the reference model lacks have no reference
    partial = subgroup_report(net, x, subgroups=["SO2"], reference=nn.SequentialModule(net._modules["0"]))
    assert partial.reference["2"]["SO2"] is None
    assert " (-)" in partial.table()


class _PlainHead(torch.nn.Module):
    """A strict D4 body, group pooling, then a plain read-out: the mean over the map (invariant), the 3x3
    grid of cell means flattened (keeps the orientation, as the DoubleMNIST 'grid' read-out does), or the
    mean taken by escnn onto one pixel and then flattened (invariant, seen from the last escnn layer)."""

    def __init__(self, d4, readout):
        super().__init__()
        self.body = _strict_net(d4)
        self.pool = nn.GroupPooling(self.body.out_type)
        self.readout = readout
        if readout == "escnn-mean":
            self.mean = nn.PointwiseAdaptiveAvgPool2D(self.pool.out_type, 1)

    def forward(self, x):
        y = self.pool(self.body(x))
        if self.readout == "mean":
            return y.tensor.mean(dim=(2, 3))
        if self.readout == "grid":
            return torch.nn.functional.adaptive_avg_pool2d(y.tensor, 3).flatten(1)
        return self.mean(y).tensor.flatten(1)


def test_invariant_plain_tensor_output(d4):
    torch.manual_seed(0)
    model = _PlainHead(d4, "mean")
    x = random_input(model.body)
    report = subgroup_report(model, x, model_output="invariant")
    assert report.layers[:4] == ["body.0", "body.1", "body.2", "body.3"]
    assert "pool" in report.layers  # GroupPooling maps D4 fields to D4 (trivial) fields
    assert report.model_row == "invariance" and report.layers[-1] == MODEL_ROW
    assert max(report.error[MODEL_ROW].values()) < EXACT
    assert "(model): the model's plain output, taken as invariant" in report.table()


def test_model_row_is_left_out_for_a_plain_output_not_known_to_be_invariant(d4):
    """A grid read-out is not invariant by design: its 'invariance error' is of order 1 while every layer is
    exact. With model_output='auto' (default) the row is left out, with a note that says how to ask for it."""
    torch.manual_seed(0)
    model = _PlainHead(d4, "grid")
    x = random_input(model.body)
    report = subgroup_report(model, x)
    assert MODEL_ROW not in report.layers and report.model_row is None
    assert report.layers == ["body.0", "body.1", "body.2", "body.3", "pool"]
    assert all(max(report.error[row].values()) < EXACT for row in report.layers)
    assert "no (model) row" in report.table() and "model_output='invariant'" in report.table()
    assert report.to_dict()["model_row"] is None
    assert [r["name"] for r in report.to_dict()["rows"]] == report.layers
    forced = subgroup_report(model, x, model_output="invariant")
    assert min(forced.error[MODEL_ROW].values()) > BROKEN  # what the row would say, though every layer is exact
    with_reference = subgroup_report(model, x, reference=model)  # the reference's model row is left out too
    assert MODEL_ROW not in with_reference.layers
    # the mean over the map is invariant, but only the caller knows that: auto leaves it out as well
    assert MODEL_ROW not in subgroup_report(_PlainHead(d4, "mean"), x).layers


def test_model_row_is_kept_when_the_last_escnn_layer_returns_invariants_on_one_pixel(d4):
    torch.manual_seed(0)
    model = _PlainHead(d4, "escnn-mean")
    report = subgroup_report(model, random_input(model.body))
    assert report.model_row == "invariance" and report.layers[-2:] == ["mean", MODEL_ROW]
    assert max(report.error[MODEL_ROW].values()) < EXACT
    assert MODEL_ROW not in subgroup_report(model, random_input(model.body), model_output="omit").layers


def test_table_dict_and_plot(d4, tmp_path):
    net = _c4_net_on_d4_types(d4)
    report = subgroup_report(net, random_input(net))
    assert isinstance(report, SubgroupReport)
    table = report.table()
    assert str(report) == table
    lines = table.splitlines()
    assert "D4" in lines[0] and all(c in lines[1] for c in report.subgroups)
    assert len(lines) == 3 + len(report.layers) + 1  # + what the model row measures
    assert lines[-2].startswith(f"{MODEL_ROW} [SequentialModule]")
    assert report.model_row == "equivariance"
    assert lines[-1].startswith(f"{MODEL_ROW}: the model's output fields, acted on by escnn")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["model_row"] == "equivariance"
    assert data["group"] == "D4" and [s["name"] for s in data["subgroups"]] == report.subgroups
    assert [r["name"] for r in data["rows"]] == report.layers
    assert data["rows"][0]["errors"]["flips"]["error"] == pytest.approx(report.error["0"]["flips"])
    path = tmp_path / "report.png"
    fig = report.plot(path)
    assert path.stat().st_size > 1000
    assert fig.axes and fig.axes[0].get_title().startswith("equivariance error")


def test_subgroups_argument_forms(d4):
    net = _c4_net_on_d4_types(d4)
    x = random_input(net)
    g = d4.fibergroup
    report = subgroup_report(net, x, subgroups=["C4", (None, 2), (0, 1), [g.element((1, 1))], None])
    assert report.subgroups == ["C4", "C2", "C2(0, 1)", "elements3", "D4"]
    assert report.error[MODEL_ROW]["C2"] < EXACT
    assert report.error[MODEL_ROW]["C2(0, 1)"] > BROKEN
    named = subgroup_report(net, x, subgroups={"rotations": (None, 4), "one flip": [g.element((1, 0))]})
    assert named.subgroups == ["rotations", "one flip"]
    assert named.error["0"]["one flip"] == pytest.approx(report.error["0"]["C2(0, 1)"])


def test_subgroup_elements():
    o2 = gspaces.flipRot2dOnR2(-1).fibergroup
    assert len(subgroup_elements(o2, None)) == 31
    assert len(subgroup_elements(o2, (None, -1))) == 15
    assert len(subgroup_elements(o2, (0.0, 1))) == 1
    so3 = gspaces.rot3dOnR3().fibergroup
    assert len(subgroup_elements(so3, "octa")) == 23
    assert len(subgroup_elements(so3, None)) == 23 + 8


def test_bad_inputs(d4):
    net = _c4_net_on_d4_types(d4)
    x = random_input(net)
    with pytest.raises(ValueError, match=r"subgroups: 'C5' is not a subgroup of D4.*pass names from"):
        subgroup_report(net, x, subgroups=["C5"])
    with pytest.raises(ValueError, match="subgroups: expected a list"):
        subgroup_report(net, x, subgroups="C4")
    with pytest.raises(ValueError, match="subgroups: .* holds only the identity"):
        subgroup_report(net, x, subgroups=[[d4.fibergroup.identity]])
    with pytest.raises(ValueError, match="subgroups: element .* is not in D4"):
        subgroup_report(net, x, subgroups=[[gspaces.rot2dOnR2(4).fibergroup.element(1)]])
    with pytest.raises(ValueError, match="subgroups: names .* are not unique"):
        subgroup_report(net, x, subgroups=["C4", "C4"])
    with pytest.raises(TypeError, match="x: expected a GeometricTensor"):
        subgroup_report(net, x.tensor)
    other = nn.FieldType(d4, [d4.regular_repr])
    with pytest.raises(ValueError, match="x: its field type"):
        subgroup_report(net, other(torch.zeros(1, 8, 5, 5, dtype=D)))
    c4 = gspaces.rot2dOnR2(4)
    with pytest.raises(ValueError, match="model: returns fields of C4"):
        subgroup_report(lambda z: nn.FieldType(c4, [c4.trivial_repr])(z.tensor), x)
    with pytest.raises(ValueError, match="model_output: expected one of"):
        subgroup_report(net, x, model_output="invariance")
    with pytest.raises(ValueError, match="model_output='invariant': the model returns a GeometricTensor"):
        subgroup_report(net, x, model_output="invariant")
    with pytest.raises(ValueError, match="nothing to report; pass model_output='invariant'"):
        subgroup_report(lambda z: z.tensor.sum(dim=(1, 2, 3)), x)


def test_so3_report_is_exact_on_the_octahedral_group():
    gs = gspaces.rot3dOnR3(maximum_frequency=1)
    g = gs.fibergroup
    t_in = nn.FieldType(gs, [g.irrep(0)])
    t_out = nn.FieldType(gs, [g.irrep(0), g.irrep(1)])
    torch.manual_seed(0)
    conv = nn.R3Conv(t_in, t_out, 3, padding=1).to(D)
    x = random_input(conv, batch=1, size=7)
    report = subgroup_report(conv, x, subgroups=["C4z", "octahedral", "SO3"])
    assert report.exact == {"C4z": True, "octahedral": True, "SO3": False}
    assert report.layers == [MODEL_ROW]
    assert report.error[MODEL_ROW]["octahedral"] < EXACT
    assert np.isfinite(report.reference[MODEL_ROW]["SO3"])
