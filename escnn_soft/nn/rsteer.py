"""Relaxed steerable convolution (Wang, Walters, Yu, ICML 2022) on escnn's steerable basis."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from escnn.nn import FieldType

from escnn_soft.nn._relaxation import (
    SoftConvBase,
    SoftR2ConvBase,
    SoftR3ConvBase,
    _positive_log,
    expand_blocks,
)
from escnn_soft.subgroups import orbit_classes, subgroup_matrices

__all__ = ["RSteerR2Conv", "RSteerR3Conv"]


class _RSteerConv(SoftConvBase):
    """G-steerable convolution whose basis coefficients vary over the kernel positions.

    .. math::
        K(p) = \\sum_b w_{b,p}\\, B^G_b(p), \\qquad w_{b,p} = w_b + \\delta_{b, c(p)},

    where :math:`w` are the strict coefficients (as in :class:`escnn.nn.R2Conv`), :math:`\\delta` the
    relaxation (initialised at zero, so the layer starts as the strict layer) and :math:`c(p)` the class
    of kernel pixel :math:`p`: each pixel its own class by default (Wang et al.), or, with
    ``relaxed_subgroup`` S, the orbit of :math:`p` under S (circles for S ⊇ SO(2)), which keeps the
    layer exactly S-equivariant: :math:`K(gp) = \\rho_\\text{out}(g) K(p) \\rho_\\text{in}(g)^{-1}` for
    every :math:`g \\in S` mapping the grid onto itself.

    ``penalty()`` is the smoothness prior of the relaxation over the kernel grid,

    .. math::
        \\alpha \\sum_{(p, q)} \\lVert w_{\\cdot,p} - w_{\\cdot,q}\\rVert^2 =
        \\alpha \\sum_{(p, q)} \\lVert \\delta_{\\cdot,c(p)} - \\delta_{\\cdot,c(q)}\\rVert^2,

    summed over horizontally and vertically adjacent kernel pixels :math:`(p, q)` (Wang et al. use the
    mean absolute difference along the flattened kernel; the squared 2-D neighbour differences are a
    Gaussian Markov random field prior whose null space is exactly the strict layer).

    Args:
        in_type, out_type, kernel_size: as :class:`escnn.nn.R2Conv`.
        **r2conv_kwargs: as :class:`escnn.nn.R2Conv`.
        relaxed_subgroup: escnn subgroup id S whose orbits tie the coefficients; ``None``: no tying.
        smoothness: :math:`\\alpha > 0`.
        learn_smoothness: make :math:`\\log\\alpha` trainable (fixed by default).

    ``hyperparameters()``: ``{"smoothness"}``.
    ``degree()`` keys: ``method``, ``group``, ``relaxed_subgroup``, ``relative_norm`` (part of the filter
    outside the G-steerable span, relative), ``position_variation`` (:math:`\\lVert w - \\bar w\\rVert /
    \\lVert w \\rVert`, :math:`\\bar w` the mean over kernel positions), ``smoothness``,
    ``equivariance_error`` (``{subgroup: relative error}`` on grid-exact elements), ``translation_error``.
    """

    method = "rsteer"

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int, relaxed_subgroup: Any = None,
                 smoothness: float = 1e-3, learn_smoothness: bool = False, **r2conv_kwargs: Any):
        log_alpha = _positive_log(smoothness, "smoothness", allow_zero=False, allow_inf=False)
        super().__init__(in_type, out_type, kernel_size, relaxed_subgroup=relaxed_subgroup, **r2conv_kwargs)
        p = kernel_size ** self._dim
        if self._relaxed_subgroup_given:
            classes = orbit_classes(self._grid, subgroup_matrices(self.space, self.relaxed_subgroup))
        else:
            classes = np.arange(p)
        # kernel-grid index of every position along each axis; neighbours differ by one step along one axis
        idx = np.stack(np.unravel_index(np.arange(p), self._kernel_shape), axis=1)
        pairs = [(i, j) for i in range(p) for j in range(i + 1, p)
                 if np.abs(idx[i] - idx[j]).sum() == 1 and classes[i] != classes[j]]
        self.register_buffer("position_classes", torch.as_tensor(classes, dtype=torch.long), persistent=False)
        self.register_buffer("neighbour_pairs", torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2).T,
                             persistent=False)
        n_classes = int(classes.max()) + 1
        self.relaxed_weights = torch.nn.Parameter(torch.zeros(self.weights.shape[0], n_classes))
        self.log_smoothness = torch.nn.Parameter(torch.tensor(log_alpha), requires_grad=learn_smoothness)

    def coefficients(self) -> torch.Tensor:
        """:math:`w_{b,p}`, shape ``(D, k^d)``."""
        return self.weights[:, None] + self.relaxed_weights[:, self.position_classes]

    def _expand(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        filt = expand_blocks(self._basisexpansion, self.coefficients()[None])[0]
        return filt.reshape(filt.shape[0], filt.shape[1], *self._kernel_shape), self.strict_bias()

    def hyperparameters(self) -> dict[str, torch.Tensor]:
        """``{"smoothness": α}`` (differentiable in the log-parameter)."""
        return {"smoothness": self.log_smoothness.exp()}

    def penalty(self) -> torch.Tensor:
        """:math:`\\alpha \\sum_{(p,q)\\,\\text{adjacent}} \\lVert \\delta_{\\cdot,c(p)} - \\delta_{\\cdot,c(q)}\\rVert^2`."""
        delta = self.relaxed_weights[:, self.position_classes]
        diff = delta[:, self.neighbour_pairs[0]] - delta[:, self.neighbour_pairs[1]]
        return self.log_smoothness.exp() * diff.pow(2).sum()

    def degree(self) -> dict[str, Any]:
        with torch.no_grad():
            coeff = self.coefficients()
            total = float(coeff.norm())
            variation = float((coeff - coeff.mean(1, keepdim=True)).norm()) / total if total > 0 else 0.0
            out = self._degree_header()
            out.update({
                "relative_norm": self._nonequivariant_fraction(self._expand()[0]),
                "position_variation": variation,
                "smoothness": math.exp(float(self.log_smoothness)),
            })
        out.update(self._measured_errors())
        return out


class RSteerR2Conv(_RSteerConv, SoftR2ConvBase):
    __doc__ = _RSteerConv.__doc__


class RSteerR3Conv(_RSteerConv, SoftR3ConvBase):
    """:class:`RSteerR2Conv` on escnn's 3D gspaces (arguments of :class:`escnn.nn.R3Conv`): coefficients per kernel
    voxel, tied over the orbits of S (spheres for S ⊇ SO(3); for another continuous S, the orbits of its
    grid-exact elements); the smoothness prior sums over voxels adjacent along one axis."""
