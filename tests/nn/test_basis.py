"""escnn_soft.nn.basis: the block-wise He initialisation matches escnn's per-coefficient loop."""
import pytest
import torch
from escnn import group, gspaces, nn
from escnn.nn.init import _generalized_he_init_variances

from escnn_soft.nn.basis import he_stds


def _mixed_so2():
    gs = gspaces.rot2dOnR2(-1, maximum_frequency=6)
    t = nn.FieldType(gs, [gs.irrep(1), gs.irrep(0), gs.irrep(2), gs.irrep(0), gs.irrep(1)])  # repeated, not contiguous
    return nn.R2Conv(t, nn.FieldType(gs, [gs.irrep(0)] * 3 + [gs.irrep(2), gs.irrep(1)]), 5)


def _c8_regular_and_trivial():
    gs = gspaces.rot2dOnR2(8)
    t = nn.FieldType(gs, [gs.regular_repr] * 3 + [gs.trivial_repr] * 2)
    return nn.R2Conv(t, t, 3)


def _o2_induced():
    gs = gspaces.flipRot2dOnR2(-1, maximum_frequency=4)
    t = nn.FieldType(gs, [gs.irrep(1, 1), gs.irrep(0, 0), gs.irrep(1, 0), gs.irrep(1, 2)] * 2)
    return nn.R2Conv(t, t, 5)


def _so3():
    gs = gspaces.rot3dOnR3(maximum_frequency=2)
    t = nn.FieldType(gs, [gs.irrep(0), gs.irrep(1), gs.irrep(2), gs.irrep(1)])
    return nn.R3Conv(t, t, 3)


def _linear():
    g0 = gspaces.no_base_space(group.dihedral_group(4))
    t = nn.FieldType(g0, [g0.regular_repr, g0.trivial_repr] + [g0.irrep(1, 1)] * 2)
    return nn.Linear(t, t)


@pytest.mark.parametrize("make", [_mixed_so2, _c8_regular_and_trivial, _o2_induced, _so3, _linear],
                         ids=["SO2 mixed", "C8 regular+trivial", "O2", "SO3 R3Conv", "D4 Linear"])
def test_he_stds_equal_escnn_generalized_he_variances(make):
    expansion = make().basisexpansion
    torch.testing.assert_close(he_stds(expansion), _generalized_he_init_variances(expansion), rtol=0, atol=0)
