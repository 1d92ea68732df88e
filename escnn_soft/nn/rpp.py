"""Residual pathway prior convolution (Finzi, Benton, Wilson, NeurIPS 2021) on escnn's steerable basis."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from escnn.nn import FieldType

from escnn_soft._escnn import expansion_blocks
from escnn_soft.nn._complement import (
    ComplementPathway,
    NotNestedError,
    fields_by_representation,
    orthonormal_complement,
)
from escnn_soft.nn._relaxation import (
    SoftConvBase,
    SoftR2ConvBase,
    SoftR3ConvBase,
    _positive_log,
    expand_blocks,
)
from escnn_soft.subgroups import resolve_subgroup

__all__ = ["RPPR2Conv", "RPPR3Conv"]


class _RPPConv(SoftConvBase):
    """G-steerable convolution with a residual, less constrained pathway (RPP), or a chain of them.

    The filter is the sum of an equivariant and a free pathway,

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

    **A chain of pathways** (``pathways=[S_1, ..., S_n]``, subgroups :math:`G \\supsetneq S_1 \\supsetneq \\dots
    \\supsetneq S_n`, ``None`` for the trivial group) replaces the single free path by one level per subgroup, each
    in the filters that keep :math:`S_k` and are orthogonal to every :math:`S_{k-1}`-steerable filter
    (:math:`S_0 = G`; :mod:`escnn_soft.nn._complement`), with an orthonormal basis and a prior of its own:

    .. math::
        K = \\textstyle\\sum_b w_b B^G_b + \\sum_{k=1}^{n} K_k, \\qquad
        K_k \\in \\mathcal K_{S_k} \\ominus \\mathcal K_{S_{k-1}}, \\qquad v_k \\sim \\mathcal N(0, \\sigma^2_k),
        \\qquad \\text{penalty} = \\frac{\\lVert w\\rVert^2}{2\\sigma^2_\\text{eq}}
        + \\sum_k \\frac{\\lVert v_k\\rVert^2}{2\\sigma^2_k}.

    The levels are mutually orthogonal, so :math:`\\lVert K_k\\rVert` is exactly how far the layer leaves
    :math:`S_{k-1}` while keeping :math:`S_k`, and the filter prior of the relaxation is
    :math:`\\sum_k \\sigma^2_k \\Pi_k` (:math:`\\Pi_k` the orthogonal projection on level k). Tuned by the Laplace
    evidence with one prior precision per tensor (``marglik_training(..., prior_structure="parameterwise")``:
    :math:`\\delta_k = 1/\\sigma^2_k` for ``chain.<k-1>.weights``), the Occam factor prices each level by the
    directions it opens, and a level the data do not need gets a large precision: the layer chooses the subgroup it
    keeps (automatic relevance determination over the chain; ``degree()["pathways"]`` gives each level's norm). The
    layer is exactly :math:`S_n`-equivariant, and ``relaxed_subgroup`` is :math:`S_n`. Needs ``groups=1``.

    The free pathways start at zero, so a fresh layer (and one built with :meth:`from_r2conv`) computes
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
        pathways: instead of ``relaxed_subgroup``, a list of escnn subgroup ids (``None``: the trivial group, every
            filter; allowed last only), each a subgroup of the one before; one level of the chain per entry.
        variance_equivariant, variance_free: prior variances :math:`\\sigma^2` (positive); ``variance_free`` one
            number for every pathway or a list with one per pathway.
        learn_variances: make the log-variances trainable (e.g. by a marginal likelihood); by default
            they are fixed (``requires_grad=False``).

    ``hyperparameters()``: ``{"variance_equivariant", "variance_free"}`` (``variance_free`` of shape ``(n,)``
    with a chain of n pathways).
    ``degree()`` keys: ``method``, ``group``, ``relaxed_subgroup``, ``relative_norm`` (part of the filter
    outside the G-steerable span, relative), ``free_to_equivariant_ratio`` (:math:`\\lVert K_\\text{free}
    \\rVert / \\lVert K_G\\rVert`), ``variance_equivariant``, ``variance_free``, ``pathways`` (per level:
    ``subgroup``, ``parameters``, ``variance_free``, ``norm_ratio`` = :math:`\\lVert K_k\\rVert / \\lVert K_G\\rVert`;
    the single free path of a layer without ``pathways`` is one level),
    ``equivariance_error`` (``{subgroup: relative error}`` on grid-exact elements), ``translation_error``.
    """

    method = "rpp"

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int, relaxed_subgroup: Any = None,
                 variance_equivariant: float = 1e5, variance_free: float | list[float] = 1e3,
                 learn_variances: bool = False, pathways: list[Any] | None = None, **r2conv_kwargs: Any):
        log_eq = _positive_log(variance_equivariant, "variance_equivariant", allow_zero=False, allow_inf=False)
        chain = pathways is not None
        if chain:
            if not isinstance(pathways, list) or not pathways:
                raise ValueError(f"pathways: {pathways!r}; pass a non-empty list of escnn subgroup ids, largest first "
                                 "(e.g. ['so3', None] for O(3))")
            if relaxed_subgroup is not None:
                raise ValueError(f"relaxed_subgroup: {relaxed_subgroup!r} given with pathways={pathways!r}; pass one "
                                 "of them (the layer is relaxed over the last pathway's subgroup)")
            if any(sid is None for sid in pathways[:-1]):
                raise ValueError(f"pathways: {pathways!r}; None (the trivial group) can only be the last pathway")
        ids = list(pathways) if chain else [relaxed_subgroup]
        log_free = self._log_variances(variance_free, len(ids), chain)
        # (id, escnn group) of each pathway, None for plain pixel weights (the base class checks in_type itself)
        subgroups = [None if sid is None else resolve_subgroup(in_type.gspace, sid, argname="pathways")[:2]
                     for sid in ids] if chain and isinstance(in_type, FieldType) else None
        super().__init__(in_type, out_type, kernel_size, relaxed_subgroup=ids[-1], **r2conv_kwargs)
        self.pathways = ids
        if chain:
            if self.groups != 1:
                raise ValueError(f"pathways: {pathways!r} needs groups=1 (got groups={self.groups}); pass "
                                 "relaxed_subgroup for a grouped convolution")
            self._pathway_subgroups = subgroups
            self.chain = torch.nn.ModuleList(self._chain_levels())
        else:
            self.chain = None
            self._free_expansion = self._subgroup_expansion() if self._relaxed_subgroup_given else None
            shape = ((self._free_expansion.dimension(),) if self._free_expansion is not None else
                     (out_type.size, self._in_group_type.size, *self._kernel_shape))
            self.free_weights = torch.nn.Parameter(torch.zeros(shape))
        self.log_variance_equivariant = torch.nn.Parameter(torch.tensor(log_eq), requires_grad=learn_variances)
        self.log_variance_free = torch.nn.Parameter(torch.tensor(log_free), requires_grad=learn_variances)

    @staticmethod
    def _log_variances(variance_free: Any, n: int, chain: bool) -> float | list[float]:
        """``log σ²_free`` (a float) or, with a chain of ``n`` pathways, one per pathway."""
        if not chain:
            return _positive_log(variance_free, "variance_free", allow_zero=False, allow_inf=False)
        values = variance_free if isinstance(variance_free, (list, tuple)) else [variance_free] * n
        if len(values) != n:
            raise ValueError(f"variance_free: {variance_free!r} has {len(values)} values for {n} pathways; pass one "
                             "number or one per pathway")
        return [_positive_log(v, "variance_free", allow_zero=False, allow_inf=False) for v in values]

    def _pair_span(self, level: tuple[Any, Any] | None | str, r_out: Any, r_in: Any) -> torch.Tensor:
        """The kernels between one input and one output field of representations ``r_in``, ``r_out``, flattened
        ``(D, o a P)`` in float64: of G (``level="G"``), of a subgroup ``(id, group)`` or every kernel (``None``)."""
        points = int(np.prod(self._kernel_shape))
        if level is None:
            return torch.eye(r_out.size * r_in.size * points, dtype=torch.float64)
        out1, in1 = FieldType(self.space, [r_out]), FieldType(self.space, [r_in])
        try:
            expansion = (self._private_expansion(self.space, in1, out1) if level == "G" else
                         self._subgroup_expansion(out1, in1, subgroup=level))
        except ValueError as err:
            if "basis is empty" in str(err):
                return torch.zeros(0, r_out.size * r_in.size * points, dtype=torch.float64)
            raise
        dim = expansion.dimension()
        if dim == 0:
            return torch.zeros(0, r_out.size * r_in.size * points, dtype=torch.float64)
        eye = torch.eye(dim, dtype=expansion_blocks(expansion)[0].basis.dtype)
        return expand_blocks(expansion, eye).reshape(dim, -1).to(torch.float64)

    def _chain_levels(self) -> list[ComplementPathway]:
        """One :class:`ComplementPathway` per pathway: :math:`\\mathcal K_{S_k} \\ominus \\mathcal K_{S_{k-1}}`
        between every pair of representations of the layer's fields (each level's span sampled once per pair)."""
        points = int(np.prod(self._kernel_shape))
        levels: list[Any] = ["G", *self._pathway_subgroups]
        in_groups, out_groups = fields_by_representation(self.in_type), fields_by_representation(self.out_type)
        pairs: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in self.pathways]
        for r_in, in_idx in in_groups:
            for r_out, out_idx in out_groups:
                spans = [self._pair_span(level, r_out, r_in) for level in levels]
                for k in range(1, len(levels)):
                    try:
                        basis = orthonormal_complement(spans[k], spans[k - 1])
                    except NotNestedError:
                        names = [lv if lv == "G" else None if lv is None else lv[1].name for lv in levels]
                        given = ["G", *self.pathways]
                        raise ValueError(f"pathways: {given[k - 1]!r} ({names[k - 1]}) does not contain "
                                         f"{given[k]!r} ({names[k] or 'trivial'}); list the pathways from the largest "
                                         "subgroup to the smallest, each inside the one before") from None
                    if basis.shape[0]:
                        pairs[k - 1].append((out_idx, in_idx, basis.reshape(-1, r_out.size, r_in.size, points)
                                             .to(torch.get_default_dtype())))
        return [ComplementPathway(level, self.out_type.size, self.in_type.size, points) for level in pairs]

    def pathway_filters(self) -> list[torch.Tensor]:
        """The free filter of each level, ``(C_out, C_in/groups, k, ...)``: the chain's levels :math:`K_1, \\dots,
        K_n`, or the single free path :math:`K_\\text{free}`."""
        if self.chain is not None:
            return [level().reshape(self.out_type.size, self.in_type.size, *self._kernel_shape) for level in self.chain]
        if self._free_expansion is None:
            return [self.free_weights]
        filt = expand_blocks(self._free_expansion, self.free_weights[None])[0]
        return [filt.reshape(filt.shape[0], filt.shape[1], *self._kernel_shape)]

    def _cache_parameters(self) -> list[torch.Tensor]:
        """The layer's own parameters and, with a chain, every level's weights and basis (the eval-mode filter cache
        is rebuilt when any of them changes)."""
        own = list(super()._cache_parameters())
        if self.chain is None:
            return own
        return own + [t for level in self.chain for t in (*level._parameters.values(), *level._buffers.values())]

    def _pathway_weights(self) -> list[torch.Tensor]:
        """The weights of each level (the chain's, or ``free_weights``)."""
        return [level.weights for level in self.chain] if self.chain is not None else [self.free_weights]

    def coefficient_blocks(self, param: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] | None:
        """The layout of a chain level's ``weights`` (:meth:`ComplementPathway.blocks`), for the Laplace curvature."""
        for level in self.chain or []:
            if level.weights is param:
                return level.blocks()
        return None

    def free_filter(self) -> torch.Tensor:
        """:math:`K_\\text{free}` (the sum of the pathways), shape ``(C_out, C_in/groups, k, k)``."""
        return _summed(self.pathway_filters())

    def _expand(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.strict_filter() + self.free_filter(), self.strict_bias()

    def _given_subgroups(self) -> list[tuple[Any, Any]]:
        if self.chain is None:
            return super()._given_subgroups()
        return [sub for sub in self._pathway_subgroups if sub is not None]

    def hyperparameters(self) -> dict[str, torch.Tensor]:
        """``{"variance_equivariant": σ²_eq, "variance_free": σ²_free}`` (differentiable in the log-parameters)."""
        return {"variance_equivariant": self.log_variance_equivariant.exp(),
                "variance_free": self.log_variance_free.exp()}

    def penalty(self) -> torch.Tensor:
        """:math:`\\lVert w\\rVert^2/(2\\sigma^2_\\text{eq}) + \\sum_k \\lVert v_k\\rVert^2/(2\\sigma^2_k)`."""
        free = torch.stack([w.pow(2).sum() for w in self._pathway_weights()])
        return (0.5 * self.weights.pow(2).sum() * torch.exp(-self.log_variance_equivariant)
                + 0.5 * (free * torch.exp(-self.log_variance_free)).sum())

    def degree(self) -> dict[str, Any]:
        with torch.no_grad():
            strict, pathways = self.strict_filter(), self.pathway_filters()
            free = _summed(pathways)
            strict_norm = float(strict.norm())
            ratio = float(free.norm()) / strict_norm if strict_norm > 0 else None
            variances = torch.exp(self.log_variance_free).reshape(-1).tolist()
            out = self._degree_header()
            out.update({
                "relative_norm": self._nonequivariant_fraction(strict + free),
                "free_to_equivariant_ratio": ratio,
                "variance_equivariant": math.exp(float(self.log_variance_equivariant)),
                "variance_free": variances if self.log_variance_free.dim() else variances[0],
                "pathways": [{
                    "subgroup": repr(sid) if sid is not None else None,
                    "parameters": weights.numel(),
                    "variance_free": variances[k if self.log_variance_free.dim() else 0],
                    "norm_ratio": float(filt.norm()) / strict_norm if strict_norm > 0 else None,
                } for k, (sid, filt, weights) in enumerate(zip(self.pathways, pathways, self._pathway_weights()))],
            })
        out.update(self._measured_errors())
        return out

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + f", pathways={self.pathways!r}" if len(self.pathways) > 1 else s


def _summed(filters: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the pathways' filters (the one filter itself, without a copy, for a single pathway)."""
    return filters[0] if len(filters) == 1 else torch.stack(filters).sum(0)


class RPPR2Conv(_RPPConv, SoftR2ConvBase):
    __doc__ = _RPPConv.__doc__


class RPPR3Conv(_RPPConv, SoftR3ConvBase):
    """:class:`RPPR2Conv` on escnn's 3D gspaces (arguments of :class:`escnn.nn.R3Conv`): the free path is a plain
    ``Conv3d`` weight (``relaxed_subgroup=None``) or S-steerable for any escnn subgroup id S of SO(3) / O(3)."""
