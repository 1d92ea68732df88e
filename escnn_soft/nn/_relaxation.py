"""Shared machinery of the relaxed steerable convolutions (RelaxedR2Conv, RPPR2Conv, RSteerR2Conv and their
3D counterparts RelaxedR3Conv, RPPR3Conv, RSteerR3Conv).

* :class:`SoftConvBase` (with :class:`SoftR2ConvBase` and :class:`SoftR3ConvBase`) — on top of the strict part
  every soft convolution owns (:class:`~escnn_soft.nn._strict.SteerableConv`: an escnn ``R2Conv``'s / ``R3Conv``'s
  ``weights``, ``bias`` and private sampled basis, the evaluation-mode filter cache, ``forward``,
  ``evaluate_output_shape``, ``export()``), the relaxed subgroup, the conversion from and to the strict escnn
  layer and the shared parts of ``degree()``; the dimension (2 or 3) is a class attribute.
* Block-wise helpers working on an escnn :class:`BlocksBasisExpansion`: :func:`expand_blocks` expands a
  batch of coefficient vectors — optionally one per kernel position — and :func:`projection_gram`
  measures the part of filters that lies in the span of the steerable basis (orthogonal projection on
  the sampled grid), which defines the "non-equivariant part" reported by ``degree()``.

The subgroup helpers the layers use (:func:`~escnn_soft.subgroups.resolve_subgroup`,
:func:`~escnn_soft.subgroups.subgroup_test_elements`, :func:`~escnn_soft.subgroups.subgroup_matrices`,
:func:`~escnn_soft.subgroups.orbit_classes`) live in :mod:`escnn_soft.subgroups`.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from escnn.gspaces import GSpace
from escnn.nn import FieldType, GeometricTensor, R2Conv, R3Conv

from escnn_soft._escnn import (
    BlocksBasisExpansion,
    ExpansionBlock,
    conv_basis_kwargs,
    expansion_blocks,
    expansion_shape,
)
from escnn_soft.metrics.equivariance import equivariance_error
from escnn_soft.nn._strict import SteerableConv
from escnn_soft.nn.base import SoftModule
from escnn_soft.subgroups import (
    default_subgroups,
    resolve_subgroup,
    subgroup_test_elements,
)

__all__ = [
    "SoftConvBase",
    "SoftR2ConvBase",
    "SoftR3ConvBase",
    "bessel_j0",
    "centred_coordinates",
    "expand_blocks",
    "factorize_",
    "projection_coefficients",
    "projection_gram",
]


def _trivial_gspace(dim: int) -> GSpace:
    from escnn import gspaces

    return gspaces.trivialOnR2() if dim == 2 else gspaces.trivialOnR3()


# ----------------------------------------------------------------------------------------------------
# block-wise operations on an escnn BlocksBasisExpansion


def _support_components(support: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Connected components of the bipartite graph basis element -- (out, in) entry given by ``support``
    (``b x E`` booleans): ``[(basis elements, entries)]``, entries touched by no element left out."""
    b, e = support.shape
    parent = list(range(b + e))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(support)):
        ri, rj = find(int(i)), find(b + int(j))
        if ri != rj:
            parent[ri] = rj
    comps: dict[int, tuple[list[int], list[int]]] = {}
    for i in range(b):
        comps.setdefault(find(i), ([], []))[0].append(i)
    for j in range(e):
        r = find(b + j)
        if r in comps:
            comps[r][1].append(j)
    return [(np.array(bs), np.array(es)) for bs, es in comps.values()]


def factorize_(expansion: BlocksBasisExpansion) -> BlocksBasisExpansion:
    """Store, on ``expansion``, a block-sparse form of every sampled block basis (in place; returns it).

    A basis element of a steerable block touches only a few (output, input) channel entries: one for the
    trivial subgroup (its restricted fields are sums of trivial irreps), a 2x2 block for 2-dimensional
    irreps, and so on. The (basis element, entry) incidence splits into connected components; components of
    equal shape are stacked, so that :func:`expand_blocks` runs one small batched product per shape instead of a
    dense contraction over every basis element and every entry (the same values, summed in another order).
    Blocks that do not split are left to the dense contraction. The tensors are non-persistent buffers of
    the expansion (moved by ``.to()``, never in a ``state_dict``).
    """
    for j, blk in enumerate(expansion_blocks(expansion)):
        b, o, i, p = blk.basis.shape
        basis = blk.basis.reshape(b, o * i, p)
        comps = _support_components((basis != 0).any(-1).cpu().numpy())
        if len(comps) < 2:
            continue
        classes: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
        for bs, es in comps:
            classes.setdefault((len(bs), len(es)), []).append((bs, es))
        order = []
        for c, members in enumerate(classes.values()):
            bidx = torch.as_tensor(np.stack([bs for bs, _ in members]), dtype=torch.long)
            eidx = np.stack([es for _, es in members])
            sub = basis[bidx[:, :, None], torch.as_tensor(eidx, dtype=torch.long)[:, None, :]]  # (G, nb, ne, P)
            sub = sub.reshape(len(members), bidx.shape[1], -1)
            if bool((sub == sub[:1]).all()):
                sub = sub[:1]  # every component has the same sub-basis (e.g. the trivial subgroup): one matmul
            expansion.register_buffer(f"_factor_b_{j}_{c}", bidx, persistent=False)
            expansion.register_buffer(f"_factor_basis_{j}_{c}", sub.contiguous(), persistent=False)
            order.append(eidx.reshape(-1))
        order = np.concatenate(order)
        # position of every (out, in) entry in the concatenated component outputs; untouched entries read a zero
        position = np.full(o * i, len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        expansion.register_buffer(f"_factor_gather_{j}", torch.as_tensor(position), persistent=False)
        setattr(expansion, f"_factor_classes_{j}", len(classes))
    return expansion


def _factored(expansion: BlocksBasisExpansion, j: int, c: torch.Tensor) -> torch.Tensor | None:
    """``(F, b) -> (F, o*i, P)`` from the block-sparse form of block ``j``, or ``None`` without one."""
    n_classes = getattr(expansion, f"_factor_classes_{j}", None)
    if n_classes is None:
        return None
    parts = []
    for k in range(n_classes):
        bidx = getattr(expansion, f"_factor_b_{j}_{k}")
        sub = getattr(expansion, f"_factor_basis_{j}_{k}")
        if sub.shape[0] == 1:
            parts.append((c[:, bidx] @ sub[0]).reshape(c.shape[0], -1))
        else:
            parts.append(torch.einsum("fgb,gbe->fge", c[:, bidx], sub).reshape(c.shape[0], -1))
    p = expansion.S
    parts.append(c.new_zeros(c.shape[0], p))
    flat = torch.cat(parts, dim=1).reshape(c.shape[0], -1, p)
    return flat[:, getattr(expansion, f"_factor_gather_{j}")]


def expand_blocks(expansion: BlocksBasisExpansion, coefficients: torch.Tensor) -> torch.Tensor:
    """Expand ``F`` coefficient vectors in the steerable basis of ``expansion``.

    Args:
        coefficients: ``(F, D)`` — one coefficient per basis element, as escnn's ``weights`` — or
            ``(F, D, P)`` — one coefficient per basis element *and kernel position*
            (:math:`\\kappa(p) = \\sum_b w_{b,p} B_b(p)`).

    Returns:
        filters of shape ``(F, C_out, C_in, P)``; for ``(1, D)`` the same as ``expansion(weights)``.
        Blocks prepared by :func:`factorize_` are expanded from their block-sparse form.
    """
    f = coefficients.shape[0]
    per_position = coefficients.dim() == 3
    blocks = expansion_blocks(expansion)
    c_out, c_in = expansion_shape(expansion)
    single = len(blocks) == 1 and isinstance(blocks[0].out_index, slice)
    out = None if single else coefficients.new_zeros(f, c_out, c_in, expansion.S)
    for j, blk in enumerate(blocks):
        b, o, i, p = blk.basis.shape
        n_pairs = blk.out_count * blk.in_count
        c = coefficients[:, blk.start:blk.stop]
        factored = None if per_position else _factored(expansion, j, c.reshape(f * n_pairs, b))
        if factored is not None:
            k = factored.reshape(f, blk.out_count, blk.in_count, o, i, p)
        elif per_position:
            k = torch.einsum("boip,fkbp->fkoip", blk.basis, c.reshape(f, n_pairs, b, p))
            k = k.reshape(f, blk.out_count, blk.in_count, o, i, p)
        else:
            k = torch.einsum("boip,fkb->fkoip", blk.basis, c.reshape(f, n_pairs, b))
            k = k.reshape(f, blk.out_count, blk.in_count, o, i, p)
        k = k.transpose(2, 3)
        if single:
            k = k.reshape(f, blk.out_count * o, blk.in_count * i, p)
            if k.shape[1:3] == (c_out, c_in):
                return k
            out = coefficients.new_zeros(f, c_out, c_in, expansion.S)
            out[:, blk.out_index, blk.in_index] = k
        elif isinstance(blk.out_index, slice):
            out[:, blk.out_index, blk.in_index] = k.reshape(f, blk.out_count * o, blk.in_count * i, p)
        else:
            out[:, blk.out_index, blk.in_index] = k.reshape(f, -1, p)
    return out


def _gather_block(filters: torch.Tensor, blk: ExpansionBlock) -> torch.Tensor:
    """The entries of ``filters`` (``F, C_out, C_in, P``) belonging to ``blk``: ``(F, pairs, o*i*P)``."""
    _b, o, i, p = blk.basis.shape
    f = filters.shape[0]
    sub = filters[:, blk.out_index, blk.in_index]
    sub = sub.reshape(f, blk.out_count, o, blk.in_count, i, p).permute(0, 1, 3, 2, 4, 5)
    return sub.reshape(f, blk.out_count * blk.in_count, o * i * p)


def _block_projector(blk: ExpansionBlock) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, G⁺)``: the flattened basis ``A`` (``b x o*i*P``) and the pseudo-inverse of its Gram matrix."""
    a = blk.basis.reshape(blk.basis.shape[0], -1).to(torch.float64)
    return a, torch.linalg.pinv(a @ a.T, hermitian=True)


def projection_gram(expansion: BlocksBasisExpansion, filters: torch.Tensor) -> torch.Tensor:
    """Gram matrix :math:`\\langle P K_i, P K_j\\rangle` of the filters projected on the steerable span.

    :math:`P` is the orthogonal projection (least squares on the sampled grid, block by block) onto the
    span of the sampled G-steerable basis, so :math:`\\lVert K - PK\\rVert^2 = \\lVert K\\rVert^2 -
    \\lVert PK\\rVert^2` is the squared norm of the part of :math:`K` that no strict layer can express.

    Args:
        filters: ``(F, C_out, C_in, P)``.

    Returns:
        ``(F, F)`` float64 tensor.
    """
    filters = filters.detach().to(torch.float64)
    gram = filters.new_zeros(filters.shape[0], filters.shape[0])
    for blk in expansion_blocks(expansion):
        a, g_inv = _block_projector(blk)
        z = _gather_block(filters, blk) @ a.T                      # (F, pairs, b)
        gram += torch.einsum("fkb,bc,gkc->fg", z, g_inv, z)
    return gram


def projection_coefficients(expansion: BlocksBasisExpansion, filt: torch.Tensor) -> torch.Tensor:
    """Least-squares coefficients (escnn ``weights`` order, shape ``(D,)``) of one filter ``(C_out, C_in, P)``."""
    filt = filt.detach().to(torch.float64)[None]
    weights = filt.new_zeros(expansion.dimension())
    for blk in expansion_blocks(expansion):
        a, g_inv = _block_projector(blk)
        coeff = (_gather_block(filt, blk) @ a.T) @ g_inv           # (1, pairs, b)
        weights[blk.start:blk.stop] = coeff.reshape(-1)
    return weights


# ----------------------------------------------------------------------------------------------------
# Bessel J0 with autograd (torch.special.bessel_j0 has no derivative)


class _BesselJ0(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.special.bessel_j0(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return -grad * _BesselJ1.apply(x)


class _BesselJ1(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.special.bessel_j1(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        # J1'(x) = J0(x) - J1(x)/x, which tends to 1/2 at x = 0
        small = x.abs() < 1e-8
        safe = torch.where(small, torch.ones_like(x), x)
        deriv = torch.where(small, torch.full_like(x, 0.5), _BesselJ0.apply(x) - _BesselJ1.apply(safe) / safe)
        return grad * deriv


def bessel_j0(x: torch.Tensor) -> torch.Tensor:
    """Bessel function :math:`J_0`, differentiable any number of times (:math:`J_0' = -J_1`)."""
    return _BesselJ0.apply(x)


# ----------------------------------------------------------------------------------------------------
# the shared base class


def _positive_log(value: float, argname: str, allow_zero: bool, allow_inf: bool) -> float:
    """``log(value)`` after checking that ``value`` is a valid positive hyperparameter."""
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{argname}: expected a number, got {value!r}") from err
    if math.isnan(v) or v < 0 or (v == 0 and not allow_zero) or (math.isinf(v) and not allow_inf):
        allowed = "a positive number" + (" or 0" if allow_zero else "") + (" or float('inf')" if allow_inf else "")
        raise ValueError(f"{argname}: {value!r} is not allowed; pass {allowed}")
    return math.log(v) if v > 0 else -math.inf


class SoftConvBase(SteerableConv, SoftModule):
    """Strict G-steerable convolution on R^d (``_dim`` = 2 or 3) plus a relaxation defined by the subclass.

    The strict part, the evaluation-mode filter cache, ``forward``, ``evaluate_output_shape`` and ``export()`` are
    :class:`~escnn_soft.nn._strict.SteerableConv`'s (escnn's ``R2Conv`` / ``R3Conv`` arguments, basis and weight
    layout). Subclasses implement ``_expand()`` (the filter and bias to convolve with) and may override
    ``forward``; this class adds the relaxed subgroup, the conversion from and to the strict escnn layer
    (:meth:`from_conv`, :meth:`to_conv`) and the shared parts of ``degree()``.
    """

    method: str = ""

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int, relaxed_subgroup: Any = None,
                 **r2conv_kwargs: Any):
        super().__init__(in_type, out_type, kernel_size, **r2conv_kwargs)
        self.relaxed_subgroup, self._subgroup, _ = resolve_subgroup(self.space, relaxed_subgroup)
        self._relaxed_subgroup_given = relaxed_subgroup is not None

    # -- construction helpers ------------------------------------------------------------------------

    def _private_expansion(self, gspace: GSpace, in_type: FieldType, out_type: FieldType) -> BlocksBasisExpansion:
        """:meth:`SteerableConv._private_expansion`, with the block-sparse form :func:`expand_blocks` uses."""
        return factorize_(super()._private_expansion(gspace, in_type, out_type))

    def _subgroup_expansion(self, out_type: FieldType | None = None, in_type: FieldType | None = None,
                            subgroup: tuple[Any, Any] | None = None) -> BlocksBasisExpansion:
        """The steerable basis of the relaxed subgroup S between the restricted field types (from ``in_type`` to
        ``out_type``, selections of the layer's input and output fields, if given); ``subgroup`` = ``(id, escnn
        group)`` of another subgroup than the relaxed one."""
        sid, sub = (self.relaxed_subgroup, self._subgroup) if subgroup is None else subgroup
        out_type = self.out_type if out_type is None else out_type
        in_type = self._in_group_type if in_type is None else in_type
        try:
            gspace_s = self.space.restrict(sid)[0]
            in_s, out_s = in_type.restrict(sid), out_type.restrict(sid)
        except NotImplementedError:
            # a gspace that cannot restrict (escnn's octaOnR3), with S trivial: the trivial group's basis between
            # the channels; it spans the same band-limited filters as the restricted types would
            gspace_s = _trivial_gspace(self._dim)
            in_s = FieldType(gspace_s, [gspace_s.trivial_repr] * in_type.size)
            out_s = FieldType(gspace_s, [gspace_s.trivial_repr] * out_type.size)
        expansion = self._private_expansion(gspace_s, in_s, out_s)
        if expansion.dimension() == 0:
            raise ValueError(f"relaxed_subgroup: the {sub.name}-steerable basis is empty for these "
                             "field types; raise kernel_size or frequencies_cutoff")
        return expansion

    @classmethod
    def _strict_class(cls) -> type:
        return R2Conv if cls._dim == 2 else R3Conv

    @classmethod
    def from_conv(cls, conv: R2Conv | R3Conv, **kwargs: Any) -> SoftConvBase:
        """A soft layer whose strict part copies an :class:`escnn.nn.R2Conv` (2D) or :class:`escnn.nn.R3Conv`
        (3D; weights and bias).

        ``kwargs`` are the soft layer's own arguments; pass ``frequencies_cutoff`` / ``basis_filter``
        too if ``conv`` was built with non-default ones (escnn does not store them).

        Raises:
            ValueError: the layer built from ``conv``'s arguments has a different steerable basis.
        """
        strict_cls = cls._strict_class()
        if not isinstance(conv, strict_cls):
            raise TypeError(f"conv: expected an escnn.nn.{strict_cls.__name__}, got {type(conv).__name__}")
        kwargs.setdefault("initialize", False)
        layer = cls(conv.in_type, conv.out_type, conv.kernel_size, padding=conv.padding, stride=conv.stride,
                    dilation=conv.dilation, padding_mode=conv.padding_mode, groups=conv.groups,
                    bias=conv.bias is not None, **conv_basis_kwargs(conv), **kwargs)
        layer.to(device=conv.weights.device, dtype=conv.weights.dtype)
        with torch.no_grad():
            same = layer.weights.shape == conv.weights.shape
            if same:
                layer.weights.copy_(conv.weights)
                strict, _ = conv.expand_parameters()
                same = torch.allclose(layer.strict_filter(), strict, rtol=1e-5, atol=1e-6)
            if not same:
                raise ValueError("conv: its steerable basis differs from the one built from its arguments; pass "
                                 "the frequencies_cutoff and basis_filter conv was built with")
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def to_conv(self) -> R2Conv | R3Conv:
        """The strict :class:`escnn.nn.R2Conv` / :class:`escnn.nn.R3Conv` closest to this layer's stationary filter.

        Its weights are the least-squares coefficients (on the sampled grid) of :meth:`stationary_filter`
        in the G-steerable basis; the bias is copied.
        """
        conv = self._strict_class()(self.in_type, self.out_type, self.kernel_size, recompute=True, initialize=False,
                                    **self._r2conv_kwargs)
        ref = self.weights
        conv.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            filt = self.stationary_filter()
            filt = filt.reshape(filt.shape[0], filt.shape[1], -1)
            conv.weights.copy_(projection_coefficients(self._basisexpansion, filt).to(ref.dtype))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    # -- filters -------------------------------------------------------------------------------------

    def stationary_filter(self) -> torch.Tensor:
        """The translation-invariant part of the filter, ``(C_out, C_in/groups, k, k)``."""
        return self._expand()[0]

    # -- degree ----------------------------------------------------------------------------------------

    def _nonequivariant_fraction(self, filt: torch.Tensor) -> float:
        """:math:`\\lVert K - P_G K\\rVert / \\lVert K\\rVert` for one filter ``(C_out, C_in, k, ...)``."""
        flat = filt.detach().reshape(1, filt.shape[0], filt.shape[1], -1)
        total = float(flat.to(torch.float64).pow(2).sum())
        if total == 0.0:
            return 0.0
        inside = float(projection_gram(self._basisexpansion, flat)[0, 0])
        return math.sqrt(max(total - inside, 0.0) / total)

    def _probe_size(self) -> int:
        """An odd input size whose output grid is centred (so grid-exact elements act exactly)."""
        extent = self.dilation * (self.kernel_size - 1) + 1
        pad_total = 2 * max(self._pad2)
        n = max(17 if self._dim == 2 else 9, extent + 4 * self.stride)
        while n % 2 == 0 or (n + pad_total - extent) % self.stride:
            n += 1
        return n

    def _given_subgroups(self) -> list[tuple[Any, Any]]:
        """``(id, escnn group)`` of the subgroups the user named (the relaxed subgroup, if given)."""
        return [(self.relaxed_subgroup, self._subgroup)] if self._relaxed_subgroup_given else []

    def _subgroup_labels(self) -> list[tuple[str, Any]]:
        """(name, subgroup id) measured by ``degree()``: :func:`escnn_soft.subgroups.default_subgroups` of
        the fibre group, plus the subgroups the user named (:meth:`_given_subgroups`) that are not among them."""
        ids = list(default_subgroups(self.space.fibergroup).items())
        for given, sub in self._given_subgroups():
            if all(given != sid for _, sid in ids):
                name = sub.name
                if any(name == label for label, _ in ids):
                    name = f"{name} {given!r}"
                ids.append((name, given))
        return ids

    @torch.no_grad()
    def _measured_errors(self) -> dict[str, Any]:
        """Relative equivariance error per subgroup (grid-exact elements) and under a translation."""
        ref = self.weights
        n = self._probe_size()
        gen = torch.Generator().manual_seed(0)
        d, st = self._dim, self.stride
        big = torch.randn(2, self.in_type.size, *(n + st,) * d, generator=gen, dtype=torch.float64)
        big = big.to(device=ref.device, dtype=ref.dtype)
        x = GeometricTensor(big[(..., *(slice(0, n),) * d)], self.in_type)
        errors: dict[str, float | None] = {}
        for label, sid in self._subgroup_labels():
            elements = subgroup_test_elements(self.space, sid)
            if elements:
                errors[label] = float(np.mean(list(equivariance_error(self, x, elements).values())))
        # translation by one output pixel: compare away from the zero-padded border
        ya = self(x).tensor
        yb = self(GeometricTensor(big[(..., *(slice(st, None),) * d)].contiguous(), self.in_type)).tensor
        crop = -(-max(self._pad2) // st)
        m = ya.shape[-1]
        if m - 1 - 2 * crop > 0:
            a = ya[(..., *(slice(crop + 1, m - crop),) * d)]
            b = yb[(..., *(slice(crop, m - 1 - crop),) * d)]
            translation = float((a - b).norm() / a.norm().clamp_min(torch.finfo(a.dtype).tiny))
        else:
            translation = None
        return {"equivariance_error": errors, "translation_error": translation}

    def _degree_header(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "group": self.space.fibergroup.name,
            "relaxed_subgroup": None if not self._relaxed_subgroup_given else repr(self.relaxed_subgroup),
        }

    def hyperparameter_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The raw (log-scale) leaf parameters behind :meth:`hyperparameters`, for an optimiser."""
        return {name: p for name, p in self.named_parameters(recurse=False) if name.startswith("log_")}

    def extra_repr(self) -> str:
        s = (f"{self.in_type.size}->{self.out_type.size}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, group={self.space.fibergroup.name}")
        if self._relaxed_subgroup_given:
            s += f", relaxed_subgroup={self.relaxed_subgroup!r}"
        return s


class SoftR2ConvBase(SoftConvBase):
    """:class:`SoftConvBase` on the plane (escnn ``R2Conv`` arguments and basis)."""

    _dim = 2

    @classmethod
    def from_r2conv(cls, conv: R2Conv, **kwargs: Any) -> SoftR2ConvBase:
        """:meth:`SoftConvBase.from_conv` for an :class:`escnn.nn.R2Conv`."""
        return cls.from_conv(conv, **kwargs)

    def to_r2conv(self) -> R2Conv:
        """:meth:`SoftConvBase.to_conv`: the closest strict :class:`escnn.nn.R2Conv`."""
        return self.to_conv()


class SoftR3ConvBase(SoftConvBase):
    """:class:`SoftConvBase` on R^3 (escnn ``R3Conv`` arguments and basis; no ``maximum_offset``)."""

    _dim = 3

    @classmethod
    def from_r3conv(cls, conv: R3Conv, **kwargs: Any) -> SoftR3ConvBase:
        """:meth:`SoftConvBase.from_conv` for an :class:`escnn.nn.R3Conv`."""
        return cls.from_conv(conv, **kwargs)

    def to_r3conv(self) -> R3Conv:
        """:meth:`SoftConvBase.to_conv`: the closest strict :class:`escnn.nn.R3Conv`."""
        return self.to_conv()


def centred_coordinates(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Output-pixel positions ``(prod(shape), d)`` in escnn's frame, centred on the grid centre and scaled so that
    the outermost pixel centres of the longest side sit at ±1.

    escnn's frame: for a 2D map ``(H, W)``, x runs along W and y against H; for a 3D map ``(D, H, W)``, x runs
    along W, y against H and z against D (checked against ``GeometricTensor.transform``).
    """
    scale = max(max(shape) - 1, 2) / 2
    axes = [(torch.arange(n, device=like.device, dtype=like.dtype) - (n - 1) / 2) / scale for n in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    if len(shape) == 2:
        rows, cols = grids
        return torch.stack([cols.reshape(-1), -rows.reshape(-1)], dim=1)
    depth, rows, cols = grids
    return torch.stack([cols.reshape(-1), -rows.reshape(-1), -depth.reshape(-1)], dim=1)
