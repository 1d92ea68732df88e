"""Field types, layer construction and checks shared by the relaxed, RPP and R-steer layer tests."""
from __future__ import annotations

import torch
from escnn import gspaces
from escnn import nn as enn

from escnn_soft.metrics.equivariance import equivariance_error, grid_exact_elements
from escnn_soft.nn._relaxation import subgroup_test_elements
from escnn_soft.testing import assert_equivariant, random_input


def field_types(name: str) -> tuple[enn.FieldType, enn.FieldType]:
    """Small input/output field types for C4, D4, SO2 or O2."""
    if name == "C4":
        gs = gspaces.rot2dOnR2(4)
        return enn.FieldType(gs, [gs.regular_repr]), enn.FieldType(gs, [gs.regular_repr, gs.trivial_repr])
    if name == "D4":
        gs = gspaces.flipRot2dOnR2(4)
        return enn.FieldType(gs, [gs.regular_repr]), enn.FieldType(gs, [gs.regular_repr])
    if name == "SO2":
        gs = gspaces.rot2dOnR2(-1, maximum_frequency=3)
        reprs = [gs.trivial_repr, gs.irrep(1)]
        return enn.FieldType(gs, reprs), enn.FieldType(gs, reprs)
    gs = gspaces.flipRot2dOnR2(-1, maximum_frequency=3)
    reprs = [gs.trivial_repr, gs.irrep(1, 1)]
    return enn.FieldType(gs, reprs), enn.FieldType(gs, reprs)


def soft_and_strict(cls, name: str, sid, **kwargs):
    """``(cls.from_r2conv(strict, relaxed_subgroup=sid), strict)`` in float64, seeded."""
    torch.manual_seed(0)
    in_type, out_type = field_types(name)
    strict = enn.R2Conv(in_type, out_type, 5, recompute=True)
    layer = cls.from_r2conv(strict, relaxed_subgroup=sid, **kwargs)
    return layer.double(), strict.double()


def check_subgroup_equivariance_breaks_group_and_export(layer, strict, sid) -> None:
    """A relaxed ``layer`` (relaxation randomised) stays exactly equivariant to its relaxed subgroup ``sid``,
    breaks the full group where the ``strict`` layer does not, and its ``export()`` computes its output."""
    x = random_input(layer)
    if sid is not None:
        assert_equivariant(layer, x, elements=subgroup_test_elements(layer.in_type.gspace, sid))
    elements = grid_exact_elements(layer.in_type.gspace)
    assert max(equivariance_error(layer, x, elements).values()) > 1e-2
    assert max(equivariance_error(strict, x, elements).values()) < 1e-5
    with torch.no_grad():
        torch.testing.assert_close(layer.export()(x.tensor), layer(x).tensor)


def relative_fit_loss(layer, x, target: torch.Tensor, penalty: bool = False, steps: int = 300) -> float:
    """Fit ``layer`` (float64, Adam, lr 2e-2) to ``target`` on ``x``; the final squared error relative to the
    target's mean square. ``penalty`` adds the layer's own prior penalty to the loss."""
    layer.double()
    opt = torch.optim.Adam(layer.parameters(), lr=2e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = (layer(x).tensor - target).pow(2).mean()
        if penalty:
            loss = loss + layer.penalty()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (layer(x).tensor - target).pow(2).mean().item() / target.pow(2).mean().item()
