"""Residual pathway prior convolution (Finzi, Benton, Wilson, NeurIPS 2021) on escnn's steerable basis."""
from __future__ import annotations

import math
from typing import Any

import torch
from escnn.nn import FieldType

from escnn_soft.nn._relaxation import (
    SoftConvBase,
    SoftR2ConvBase,
    SoftR3ConvBase,
    _positive_log,
    expand_blocks,
)

__all__ = ["RPPR2Conv", "RPPR3Conv"]


class _RPPConv(SoftConvBase):
    """G-steerable convolution with a residual, less constrained pathway (RPP).

    The filter is the sum of two pathways,

    .. math::
        K = \\underbrace{\\textstyle\\sum_b w_b B^G_b}_{\\text{equivariant}} + K_\\text{free},
        \\qquad K_\\text{free} = \\begin{cases} V & \\text{relaxed\\_subgroup = None (plain conv weights)}\\\\
        \\sum_c v_c B^S_c & \\text{otherwise (S-steerable basis)}\\end{cases}

    with independent Gaussian priors :math:`w \\sim \\mathcal N(0, \\sigma^2_\\text{eq})`,
    :math:`v \\sim \\mathcal N(0, \\sigma^2_\\text{free})`. With :math:`\\sigma^2_\\text{eq} \\gg
    \\sigma^2_\\text{free}` the data are explained by the equivariant path unless they need the free
    one. ``penalty()`` is the negative log prior up to a constant,

    .. math::
        \\frac{\\lVert w\\rVert^2}{2\\sigma^2_\\text{eq}} + \\frac{\\lVert v\\rVert^2}{2\\sigma^2_\\text{free}},

    to be added to the mean training loss as it is: with the defaults (1e5, 1e3, as in the DoubleMNIST
    comparison) it acts as weight decays 1e-5 and 1e-3 (multiply by 1/N for the exact MAP objective of N
    examples with a summed likelihood).

    The free path starts at zero, so a fresh layer (and one built with :meth:`from_r2conv`) computes
    exactly the strict :class:`escnn.nn.R2Conv`. With ``relaxed_subgroup`` S the free path is
    S-steerable and the layer stays exactly S-equivariant.

    Args:
        in_type, out_type, kernel_size: as :class:`escnn.nn.R2Conv`.
        **r2conv_kwargs: as :class:`escnn.nn.R2Conv` (``padding``, ``stride``, ``dilation``,
            ``padding_mode``, ``groups``, ``bias``, ``sigma``, ``frequencies_cutoff``, ``rings``,
            ``maximum_offset``, ``recompute``, ``basis_filter``, ``initialize``); the bias stays in the
            equivariant path.
        relaxed_subgroup: escnn subgroup id of the fibre group constraining the free path; ``None``:
            unconstrained pixel weights.
        variance_equivariant, variance_free: prior variances :math:`\\sigma^2` (positive).
        learn_variances: make the log-variances trainable (e.g. by a marginal likelihood); by default
            they are fixed (``requires_grad=False``).

    ``hyperparameters()``: ``{"variance_equivariant", "variance_free"}``.
    ``degree()`` keys: ``method``, ``group``, ``relaxed_subgroup``, ``relative_norm`` (part of the filter
    outside the G-steerable span, relative), ``free_to_equivariant_ratio`` (:math:`\\lVert K_\\text{free}
    \\rVert / \\lVert K_G\\rVert`), ``variance_equivariant``, ``variance_free``, ``equivariance_error``
    (``{subgroup: relative error}`` on grid-exact elements), ``translation_error``.
    """

    method = "rpp"

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int, relaxed_subgroup: Any = None,
                 variance_equivariant: float = 1e5, variance_free: float = 1e3, learn_variances: bool = False,
                 **r2conv_kwargs: Any):
        log_eq = _positive_log(variance_equivariant, "variance_equivariant", allow_zero=False, allow_inf=False)
        log_free = _positive_log(variance_free, "variance_free", allow_zero=False, allow_inf=False)
        super().__init__(in_type, out_type, kernel_size, relaxed_subgroup=relaxed_subgroup, **r2conv_kwargs)
        if self._relaxed_subgroup_given:
            self._free_expansion = self._subgroup_expansion()
            free_shape: tuple[int, ...] = (self._free_expansion.dimension(),)
        else:
            self._free_expansion = None
            free_shape = (out_type.size, self._in_group_type.size, *self._kernel_shape)
        self.free_weights = torch.nn.Parameter(torch.zeros(free_shape))
        self.log_variance_equivariant = torch.nn.Parameter(torch.tensor(log_eq), requires_grad=learn_variances)
        self.log_variance_free = torch.nn.Parameter(torch.tensor(log_free), requires_grad=learn_variances)

    def free_filter(self) -> torch.Tensor:
        """:math:`K_\\text{free}`, shape ``(C_out, C_in/groups, k, k)``."""
        if self._free_expansion is None:
            return self.free_weights
        filt = expand_blocks(self._free_expansion, self.free_weights[None])[0]
        return filt.reshape(filt.shape[0], filt.shape[1], *self._kernel_shape)

    def _expand(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.strict_filter() + self.free_filter(), self.strict_bias()

    def hyperparameters(self) -> dict[str, torch.Tensor]:
        """``{"variance_equivariant": σ²_eq, "variance_free": σ²_free}`` (differentiable in the log-parameters)."""
        return {"variance_equivariant": self.log_variance_equivariant.exp(),
                "variance_free": self.log_variance_free.exp()}

    def penalty(self) -> torch.Tensor:
        """:math:`\\lVert w\\rVert^2/(2\\sigma^2_\\text{eq}) + \\lVert v\\rVert^2/(2\\sigma^2_\\text{free})`."""
        return (0.5 * self.weights.pow(2).sum() * torch.exp(-self.log_variance_equivariant)
                + 0.5 * self.free_weights.pow(2).sum() * torch.exp(-self.log_variance_free))

    def degree(self) -> dict[str, Any]:
        with torch.no_grad():
            strict, free = self.strict_filter(), self.free_filter()
            strict_norm = float(strict.norm())
            ratio = float(free.norm()) / strict_norm if strict_norm > 0 else None
            out = self._degree_header()
            out.update({
                "relative_norm": self._nonequivariant_fraction(strict + free),
                "free_to_equivariant_ratio": ratio,
                "variance_equivariant": math.exp(float(self.log_variance_equivariant)),
                "variance_free": math.exp(float(self.log_variance_free)),
            })
        out.update(self._measured_errors())
        return out


class RPPR2Conv(_RPPConv, SoftR2ConvBase):
    __doc__ = _RPPConv.__doc__


class RPPR3Conv(_RPPConv, SoftR3ConvBase):
    """:class:`RPPR2Conv` on escnn's 3D gspaces (arguments of :class:`escnn.nn.R3Conv`): the free path is a plain
    ``Conv3d`` weight (``relaxed_subgroup=None``) or S-steerable for any escnn subgroup id S of SO(3) / O(3)."""
