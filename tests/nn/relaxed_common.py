"""Layer construction and fitting shared by the relaxed, RPP and R-steer layer tests (field types:
``tests.registry``)."""
from __future__ import annotations

import torch
from escnn import nn as enn

from tests.registry import conv_types


def soft_and_strict(cls, name: str, sid, **kwargs):
    """``(cls.from_r2conv(strict, relaxed_subgroup=sid), strict)`` in float64, seeded."""
    torch.manual_seed(0)
    in_type, out_type = conv_types(name)
    strict = enn.R2Conv(in_type, out_type, 5, recompute=True)
    layer = cls.from_r2conv(strict, relaxed_subgroup=sid, **kwargs)
    return layer.double(), strict.double()


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
