"""Probabilistic steerable layers: a λ-weighted projection onto the steerable kernel space.

Veefkind & Cesa (ICML 2024) replace escnn's uniform projection :math:`\\Pi_H(\\hat K) = \\int_H h\\cdot\\hat K\\,dh`
by a :math:`\\lambda`-weighted one, :math:`\\Pi_\\lambda(\\hat K) = \\int_H \\lambda(h)\\,(h\\cdot\\hat K)\\,dh`,
with :math:`\\lambda` a :class:`~escnn_soft.GroupLikelihood`.

Exact construction used here (no Monte Carlo). Write :math:`V` for the space of kernels with the
action :math:`(h\\cdot K)(x) = \\rho_{out}(h) K(h^{-1}x) \\rho_{in}(h)^T`. Fourier inversion of
:math:`\\lambda` gives :math:`\\Pi_\\lambda = \\sum_\\psi \\tfrac{d_\\psi}{c_\\psi} \\sum_{ij}
\\hat\\Lambda(\\psi)_{ij}\\,E^\\psi_{ij}` with :math:`E^\\psi_{ij} = \\int_H \\psi_{ij}(h)\\,D(h)\\,dh`. For
each column :math:`j`, :math:`u \\mapsto \\sum_i u_i E^\\psi_{ij}\\hat K` is an intertwiner from
:math:`\\psi` to :math:`V`, i.e. a steerable kernel from :math:`\\rho_{in}\\otimes\\psi` to
:math:`\\rho_{out}` (Wigner–Eckart: escnn's basis for those types). So

.. math::
    k_\\lambda(x) = \\sum_{\\psi \\le L_{out}} \\sum_{i,j} K^{\\psi}_{j}(x)\\,[\\,\\cdot\\,,(\\cdot, i)]\\;\\hat\\Lambda(\\psi)_{ij},

with :math:`K^\\psi_j` free steerable kernels :math:`\\rho_{in}\\otimes\\psi \\to \\rho_{out}` (one per
column ``j``; stacked as one kernel to :math:`\\rho_{out}^{\\oplus d_\\psi}`) and the trivial irrep's
:math:`K` the strict escnn kernel (:math:`\\hat\\Lambda(\\text{trivial}) = 1`). Properties that follow:

* uniform λ (the initialisation) gives :math:`\\hat\\Lambda(\\psi) = 0` for non-trivial ψ: the layer *is*
  the strict escnn layer (its ``weights`` are escnn's);
* λ left-invariant under a subgroup :math:`S` (:math:`\\psi(s)\\hat\\Lambda = \\hat\\Lambda`) gives an exactly
  :math:`S`-equivariant kernel; e.g. λ uniform on :math:`S` and 0 elsewhere;
* λ peaked at the identity lets every pathway contribute freely: a non-equivariant layer.

All pathways are escnn bases built once per layer (privately, never through escnn's global cache);
λ enters only through the contraction with :math:`\\hat\\Lambda`, so nothing learnable is ever cached
across layers or models.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from escnn.nn import FieldType, GeometricTensor, R2Conv, R3Conv
from escnn.nn import Linear as EscnnLinear

from escnn_soft._escnn import (
    compute_basis_params_2d,
    compute_basis_params_3d,
    drop_mode_dependent_buffers_,
    he_stds,
    is_empty_basis_error,
    kernel_basis_generator,
    private_sampled_basis,
    privatize_,
)
from escnn_soft.likelihood import GroupLikelihood
from escnn_soft.nn._filter import FilterCache, conv_output_shape, convolve, plain_conv, plain_linear
from escnn_soft.nn.base import SoftModule, iter_modules
from escnn_soft.subgroups import default_subgroups

__all__ = ["ProbabilisticLinear", "ProbabilisticR2Conv", "ProbabilisticR3Conv"]


def _check_types(in_type: Any, out_type: Any) -> None:
    for name, t in (("in_type", in_type), ("out_type", out_type)):
        if not isinstance(t, FieldType):
            raise TypeError(f"{name}: expected an escnn FieldType, got {type(t).__name__} ({t!r}); "
                            f"build one with escnn.nn.FieldType(gspace, representations)")
    if in_type.gspace != out_type.gspace:
        raise ValueError(f"out_type: its gspace {out_type.gspace} differs from in_type's gspace {in_type.gspace}; "
                         f"both field types must be built on the same gspace object")


def _check_input(input: Any, in_type: FieldType) -> None:
    if not isinstance(input, GeometricTensor):
        raise TypeError(f"input: expected a GeometricTensor, got {type(input).__name__}; wrap the tensor with "
                        f"layer.in_type(tensor)")
    if input.type != in_type:
        raise ValueError(f"input: its field type {input.type} differs from the layer's in_type {in_type}")


def _check_groups(groups: Any) -> None:
    if groups != 1:
        raise ValueError(f"groups={groups!r}: probabilistic layers support groups=1 only; use groups=1")


def _check_kernel_size(kernel_size: Any) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)):
        raise TypeError(f"kernel_size: expected an int, got {type(kernel_size).__name__} ({kernel_size!r})")
    if kernel_size < 1:
        raise ValueError(f"kernel_size={kernel_size} is invalid: use a positive int (e.g. 3, 5 or 7)")


def _check_geometry(padding: Any, stride: Any, dilation: Any, d: int) -> None:
    for name, value in (("stride", stride), ("dilation", dilation)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}; use e.g. {name}=1")
    pads = padding if isinstance(padding, tuple) else (padding,)
    if (isinstance(padding, tuple) and len(padding) != d) or any(
            isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0 for p in pads):
        raise ValueError(f"padding: expected an int >= 0 or a tuple of {d} such ints, got {padding!r}; "
                         f"use e.g. padding=kernel_size // 2")


def _empty_basis(kernel_size: int) -> ValueError:
    return ValueError(f"in_type/out_type: escnn's steerable basis between these field types is empty for "
                      f"kernel_size={kernel_size}; raise kernel_size or frequencies_cutoff, or change "
                      f"rings/sigma/basis_filter")


class _Pathway(torch.nn.Module):
    """The kernels :math:`K^\\psi_j` of one non-trivial irrep ψ, contracted with :math:`\\hat\\Lambda(\\psi)`.

    For every pair of input/output representations :math:`(R_{in}, R_{out})` of the layer's fields,
    escnn's steerable basis :math:`B_b` from :math:`R_{in}\\otimes\\psi` to :math:`R_{out}` (sampled on the
    kernel grid, channel order :math:`(a, i)` = ``kron(R_in, psi)``) is first contracted with the
    columns of :math:`\\hat\\Lambda`, :math:`\\tilde B_{j,b}[o, a, p] = \\sum_i B_b[o, (a, i), p]\\,\\hat\\Lambda_{ij}`,
    and then combined with the weights :math:`w[f_{out}, f_{in}, j, b]` of every pair of fields:

    .. math::
        k_\\psi[f_{out}, f_{in}] = \\sum_{j, b} w[f_{out}, f_{in}, j, b]\\,\\tilde B_{j,b}.

    Contracting the basis (per representation pair) before the weights (per field pair) makes the
    cost :math:`d_\\psi` times a strict expansion instead of :math:`d_\\psi^2`.
    """

    def __init__(self, irrep, in_type: FieldType, out_type: FieldType, basis_generator, points: np.ndarray,
                 basis_filter, initialize: bool):
        super().__init__()
        self.irrep_id = irrep.id
        self.size = d = irrep.size
        self.n_points = points.shape[0]
        self.c_out, self.c_in = out_type.size, in_type.size
        self._pairs: list[tuple[int, int, int, int, int]] = []  # (start, n_out, n_in, n_basis, index)
        start = 0
        in_groups, out_groups = _fields_by_representation(in_type), _fields_by_representation(out_type)
        for r_in, in_idx in in_groups:
            r_aug = _tensor_representation(r_in, irrep)
            for r_out, out_idx in out_groups:
                try:
                    basis = private_sampled_basis(basis_generator(r_aug, r_out), points, basis_filter)
                except Exception as err:
                    if is_empty_basis_error(err):
                        continue
                    raise
                k = len(self._pairs)  # basis: (n_b, o, a * d, P)
                self.register_buffer(f"basis_{k}", basis.reshape(basis.shape[0], basis.shape[1], r_in.size, d, -1))
                self.register_buffer(f"out_idx_{k}", out_idx)
                self.register_buffer(f"in_idx_{k}", in_idx)
                n = out_idx.shape[0] * in_idx.shape[0] * d * basis.shape[0]
                self._pairs.append((start, out_idx.shape[0], in_idx.shape[0], basis.shape[0], k))
                start += n
        self.weights = torch.nn.Parameter(torch.zeros(start))
        if initialize:
            with torch.no_grad():
                for s0, n_out, n_in, n_b, _ in self._pairs:
                    std = (2.0 / (len(in_type) * n_b * d)) ** 0.5
                    self.weights[s0:s0 + n_out * n_in * d * n_b].normal_(0.0, std)

    def dimension(self) -> int:
        return self.weights.numel()

    def blocks(self, lam: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The layout of :attr:`weights` in the filter for the Fourier matrix ``lam``, one entry per representation
        pair: ``(start, out channels (n_out, o), in channels (n_in, a), basis (K, o, a P))``; the pair's coefficients
        are ``weights[start:start + n_out n_in K]`` in (output field, input field, :math:`(j, b)`) order, and the
        :math:`K = d_\\psi n_b` kernels :math:`\\tilde B_{j,b}` (differentiable in ``lam``) are shared by every
        field pair: the filter block of fields ``(f_out, f_in)`` is :math:`\\sum_k w[f_{out}, f_{in}, k]\\,
        \\tilde B_k`."""
        out = []
        for s0, _, _, n_b, k in self._pairs:
            basis = getattr(self, f"basis_{k}")
            contracted = torch.einsum("boaip,ij->jboap", basis, lam.to(basis.dtype))
            out.append((s0, getattr(self, f"out_idx_{k}"), getattr(self, f"in_idx_{k}"),
                        contracted.reshape(self.size * n_b, basis.shape[1], -1)))
        return out

    def forward(self, lam: torch.Tensor) -> torch.Tensor:
        """:math:`k_\\psi`, shape ``(c_out, c_in, P)``, for the Fourier matrix ``lam`` = :math:`\\hat\\Lambda(\\psi)`."""
        filt = self.weights.new_zeros(self.c_out, self.c_in, self.n_points)
        for s0, out_idx, in_idx, basis in self.blocks(lam):
            (n_out, o), (n_in, a), n_k = out_idx.shape, in_idx.shape, basis.shape[0]
            w = self.weights[s0:s0 + n_out * n_in * n_k].view(n_out * n_in, n_k)
            kernels = (w @ basis.reshape(n_k, -1)).view(n_out, n_in, o, a, -1).permute(0, 2, 1, 3, 4)
            filt = filt.index_put((out_idx[:, :, None, None], in_idx[None, None, :, :]),
                                  kernels.to(filt.dtype))  # matmul may run in an autocast dtype
        return filt


_TENSOR_REPRESENTATIONS: dict[tuple[Any, str, tuple], Any] = {}


def _tensor_representation(rep, irrep):
    """``rep ⊗ irrep`` (escnn's ``kron`` order), memoised: escnn rebuilds it, with disk look-ups, on every call.
    Representations are immutable, so sharing them between layers is safe."""
    key = (id(rep.group), rep.name, irrep.id)  # escnn groups are unique per parameters (cached)
    if key not in _TENSOR_REPRESENTATIONS:
        _TENSOR_REPRESENTATIONS[key] = rep.tensor(irrep)
    return _TENSOR_REPRESENTATIONS[key]


def _fields_by_representation(field_type: FieldType) -> list[tuple[Any, torch.Tensor]]:
    """``[(representation, channel indices (n_fields, size))]`` grouping the fields of one representation."""
    groups: dict[str, tuple[Any, list[list[int]]]] = {}
    offset = 0
    for rep in field_type.representations:
        groups.setdefault(rep.name, (rep, []))[1].append(list(range(offset, offset + rep.size)))
        offset += rep.size
    return [(rep, torch.tensor(idx, dtype=torch.long)) for rep, idx in groups.values()]


class _ProbabilisticFilter(SoftModule):
    """Shared machinery: pathways, the λ-contraction, an eval-mode cache that is never stale."""

    likelihood: GroupLikelihood
    pathways: torch.nn.ModuleList

    def _init_strict_weights(self, initialize: bool) -> None:
        """escnn's generalised He initialisation of the strict ``weights`` (the same random draws), without
        escnn's Python loop over every coefficient (seconds for a 512-channel layer)."""
        if initialize:
            with torch.no_grad():
                self.weights.copy_(he_stds(self.basisexpansion) * torch.randn(self.weights.shape))  # type: ignore

    def _setup(self, in_type: FieldType, out_type: FieldType, likelihood: GroupLikelihood | None, L: int,
               L_out: int | None, parameterisation: str | None, basis_generator, points: np.ndarray, basis_filter,
               initialize: bool) -> None:
        group = in_type.fibergroup
        if likelihood is None:
            extra = {} if parameterisation is None else {"parameterisation": parameterisation}
            likelihood = GroupLikelihood(group, L=L, L_out=L_out, **extra)
        elif not isinstance(likelihood, GroupLikelihood):
            raise TypeError(f"likelihood: expected an escnn_soft.GroupLikelihood or None, "
                            f"got {type(likelihood).__name__}")
        elif likelihood.group != group:
            raise ValueError(f"likelihood: it is defined over {likelihood.group} but the layer's field types live on "
                             f"{group}; build it with GroupLikelihood(in_type.fibergroup, ...)")
        elif parameterisation is not None and parameterisation != likelihood.parameterisation:
            raise ValueError(f"parameterisation={parameterisation!r} contradicts the given likelihood's "
                             f"{likelihood.parameterisation!r}; leave parameterisation None when passing a likelihood")
        self.likelihood = likelihood
        pathways: list[_Pathway] = []
        for irrep in likelihood.out_irreps:
            if irrep.is_trivial():
                continue
            pathway = _Pathway(irrep, in_type, out_type, basis_generator, points, basis_filter, initialize)
            if pathway.dimension() > 0:
                pathways.append(pathway)
        self.pathways = torch.nn.ModuleList(pathways)
        self._filter_cache: FilterCache[tuple[torch.Tensor, torch.Tensor | None]] = FilterCache()
        # escnn registers persistent eval-mode buffers (the expanded filter or matrix, and bias) that change with
        # the mode (and break state_dict round trips between train and eval); this layer caches privately instead.
        drop_mode_dependent_buffers_(self)  # type: ignore[arg-type]

    def _strict_expansion(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def expand_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Filter :math:`k_\\lambda` (strict kernel plus every pathway contracted with
        :math:`\\hat\\Lambda(\\psi)`) and the expanded bias."""
        filt, bias = self._strict_expansion()
        if len(self.pathways) == 0:
            return filt, bias
        coeffs = self.likelihood.fourier_coefficients()
        flat = filt.reshape(filt.shape[0], filt.shape[1], -1)
        for pathway in self.pathways:
            flat = flat + pathway(coeffs[pathway.irrep_id])
        return flat.view_as(filt), bias

    def coefficient_blocks(self, param: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] | None:
        """The block layout and kernels of ``param`` when it is a pathway's ``weights`` (:meth:`_Pathway.blocks`
        at the current λ), else ``None``: what the Laplace curvature gives its Kronecker structure
        (:func:`escnn_soft.laplace.curvature.plan_terms`)."""
        for pathway in self.pathways:
            if pathway.weights is param:
                return pathway.blocks(self.likelihood.fourier_coefficients()[pathway.irrep_id])
        return None

    def _filter_parameters(self) -> list[torch.Tensor]:
        """Every parameter the filter depends on (walked without hashing escnn's basis modules)."""
        return [p for m in iter_modules(self) for p in m._parameters.values() if p is not None]

    def _current_filter(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rebuilt in training mode; in eval mode cached and reused while no parameter changed
        (:class:`~escnn_soft.nn._filter.FilterCache`)."""
        return self._filter_cache.get(self.training, self._filter_parameters(),  # type: ignore[attr-defined]
                                      self.expand_parameters)

    def train(self, mode: bool = True):
        self._filter_cache.clear()
        return torch.nn.Module.train(self, mode)  # type: ignore[arg-type]

    def _apply(self, fn, recurse=True):
        self._filter_cache.clear()
        return super()._apply(fn, recurse)  # type: ignore[misc]

    plot_kind = "likelihood"

    def hyperparameter_parameters(self) -> dict[str, torch.Tensor]:
        """The coefficients of the layer's likelihood λ (``likelihood.<name>``), which the Laplace evidence tunes."""
        return {f"likelihood.{n}": p for n, p in self.likelihood.named_parameters()}

    def plot(self, ax=None):
        """λ over the group (:meth:`escnn_soft.GroupLikelihood.plot`); returns the figure."""
        return self.likelihood.plot(ax)

    def degree(self, subgroups: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the layer kept: ``{"group", "entropy", "nonequivariant_fraction", "subgroups": {name:
        {"equivariant_fraction"}}}``, one measure per subgroup, read off the filter.

        * per subgroup ``S`` (``subgroups`` maps names to escnn ids; default
          :func:`~escnn_soft.subgroups.default_subgroups`), ``equivariant_fraction`` =
          :math:`1 - \\lVert k_{\\lambda - P_S\\lambda}\\rVert / \\lVert k_\\lambda\\rVert`: the filter is linear in
          λ, :math:`k_{P_S\\lambda}` (λ averaged over left translations by ``S``, i.e.
          :math:`\\hat\\Lambda(\\psi) \\mapsto \\Pi^\\psi_S\\hat\\Lambda(\\psi)`) is exactly ``S``-equivariant, and
          :math:`k_{\\lambda - P_S\\lambda}` is the part of the filter that breaks ``S``. 1 means exactly
          ``S``-equivariant; for the whole group it is ``1 - nonequivariant_fraction``;
        * ``nonequivariant_fraction`` = :math:`\\lVert k_\\lambda - k_{strict}\\rVert / \\lVert k_\\lambda\\rVert`,
          the share of the filter that the non-trivial pathways contribute;
        * ``entropy``: λ's entropy relative to Haar (0 = uniform).

        λ's own statistics are on the likelihood: ``layer.likelihood.degree()`` (its ``invariant_fraction``,
        blind to which irreps the layer uses) and ``layer.likelihood.mass(S)`` (where λ sits, finite groups).
        """
        named = default_subgroups(self.likelihood.group) if subgroups is None else subgroups
        with torch.no_grad():
            out: dict[str, Any] = {"group": self.likelihood.group.name, "entropy": float(self.likelihood.entropy())}
            full, _ = self.expand_parameters()
            strict, _ = self._strict_expansion()
            norm = full.norm().clamp_min(1e-30)
            out["nonequivariant_fraction"] = float((full - strict).norm() / norm)
            out["subgroups"] = {}
            coeffs = self.likelihood.fourier_coefficients()
            for name, sid in named.items():
                try:  # checks the id also for a layer without pathways
                    self.likelihood._invariant_projector(sid, self.likelihood.group.trivial_representation)
                except ValueError as err:
                    raise ValueError(f"subgroups: entry {name!r}: {err}") from None
                broken = torch.zeros_like(full.reshape(full.shape[0], full.shape[1], -1))
                for pathway in self.pathways:
                    lam = coeffs[pathway.irrep_id]
                    irrep = self.likelihood.group.irrep(*pathway.irrep_id)
                    proj = torch.as_tensor(self.likelihood._invariant_projector(sid, irrep), dtype=lam.dtype,
                                           device=lam.device)
                    broken = broken + pathway(lam - proj @ lam)
                out["subgroups"][name] = {"equivariant_fraction": float(1.0 - broken.norm() / norm)}
        return out

    def _extra(self) -> str:
        return f"likelihood={self.likelihood.extra_repr()}, pathways={[p.irrep_id for p in self.pathways]}"


class _ProbabilisticConv(_ProbabilisticFilter):
    """Forward, export and setup shared by the 2D and 3D convolutions."""

    d: int

    def _construct(self, escnn_conv: type, in_type: FieldType, out_type: FieldType, kernel_size: int,
                   likelihood: GroupLikelihood | None, L: int, L_out: int | None, parameterisation: str | None,
                   initialize: bool, **conv_kwargs: Any) -> None:
        """escnn's constructor (strict basis, uninitialised), a private copy of its basis, escnn's He
        initialisation of the strict weights, then the likelihood and its pathways."""
        try:
            escnn_conv.__init__(self, in_type, out_type, kernel_size, initialize=False, **conv_kwargs)
        except ValueError as err:
            if not is_empty_basis_error(err):
                raise
            raise _empty_basis(kernel_size) from None
        privatize_(self.basisexpansion)  # type: ignore[attr-defined]
        self._init_strict_weights(initialize)
        self._init_conv(in_type, out_type, kernel_size, likelihood, L, L_out, parameterisation, conv_kwargs["dilation"],
                        conv_kwargs["sigma"], conv_kwargs["frequencies_cutoff"], conv_kwargs["rings"],
                        conv_kwargs["basis_filter"], initialize)

    def _init_conv(self, in_type, out_type, kernel_size, likelihood, L, L_out, parameterisation, dilation, sigma,
                   frequencies_cutoff, rings, basis_filter, initialize) -> None:
        # the strict layer's own band-limit rule: R3Conv's accepts the strings 'default1'...'default3' (R2Conv's raises
        # on them), and the two agree on everything else
        rule = compute_basis_params_2d if self.d == 2 else compute_basis_params_3d
        bf, _, _, _ = rule(kernel_size, frequencies_cutoff, rings, sigma, dilation, basis_filter)
        self._setup(in_type, out_type, likelihood, L, L_out, parameterisation,
                    kernel_basis_generator(self),  # type: ignore[arg-type]
                    self.basisexpansion.points, bf, initialize)  # type: ignore[attr-defined]

    def evaluate_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return conv_output_shape(input_shape, self.in_type.size, self.out_type.size,  # type: ignore[attr-defined]
                                 self.kernel_size, stride=self.stride, padding=self.padding,  # type: ignore
                                 dilation=self.dilation, d=self.d)  # type: ignore[attr-defined]

    def forward(self, input: GeometricTensor) -> GeometricTensor:
        _check_input(input, self.in_type)  # type: ignore[attr-defined]
        filt, bias = self._current_filter()
        out = convolve(input.tensor, filt, bias, stride=self.stride, padding=self.padding,  # type: ignore
                       dilation=self.dilation, padding_mode=self.padding_mode)  # type: ignore[attr-defined]
        return GeometricTensor(out, self.out_type, coords=None)  # type: ignore[attr-defined]

    def export(self) -> torch.nn.Module:
        """A plain ``torch.nn.Conv2d``/``Conv3d`` holding the current filter :math:`k_\\lambda`."""
        with torch.no_grad():
            filt, bias = self.expand_parameters()
        return plain_conv(filt, bias, padding=self.padding, stride=self.stride,  # type: ignore[attr-defined]
                          dilation=self.dilation, padding_mode=self.padding_mode)  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self._extra()  # type: ignore[misc]


class ProbabilisticR2Conv(_ProbabilisticConv, R2Conv):
    """:class:`escnn.nn.R2Conv` whose kernel is the λ-weighted projection :math:`\\Pi_\\lambda(\\hat K)`.

    Args:
        in_type, out_type, kernel_size: as for :class:`escnn.nn.R2Conv`.
        likelihood: the :class:`~escnn_soft.GroupLikelihood` to use; pass the same object to several
            layers to share it. ``None`` creates one over ``in_type.fibergroup`` with ``L``, ``L_out``.
        L, L_out: band limits of a newly created likelihood.
        parameterisation: of a newly created likelihood, ``"softmax"`` or ``"square"``
            (:class:`~escnn_soft.GroupLikelihood`); ``None``: the likelihood's default, or the given one's.
        **r2conv_kwargs: ``padding``, ``stride``, ``dilation``, ``padding_mode``, ``bias``, ``sigma``,
            ``frequencies_cutoff``, ``rings``, ``basis_filter``, ``initialize`` as for R2Conv
            (``groups`` must be 1).

    At initialisation (uniform λ) the layer equals an R2Conv with the same ``weights``. ``weights``
    and ``bias`` are escnn's (the strict pathway); ``pathways[k].weights`` hold the kernels coupled to
    the non-trivial irreps of λ.
    """

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int,
                 likelihood: GroupLikelihood | None = None, L: int = 2, L_out: int | None = None,
                 padding: int = 0, stride: int = 1, dilation: int = 1, padding_mode: str = "zeros",
                 groups: int = 1, bias: bool = True, sigma=None, frequencies_cutoff=None, rings=None,
                 maximum_offset=None, basis_filter=None, initialize: bool = True, parameterisation: str | None = None):
        _check_types(in_type, out_type)
        _check_kernel_size(kernel_size)
        _check_groups(groups)
        _check_geometry(padding, stride, dilation, 2)
        if in_type.gspace.dimensionality != 2:
            raise ValueError(f"in_type: ProbabilisticR2Conv needs a 2D gspace, got {in_type.gspace}; "
                             f"use ProbabilisticR3Conv for 3D or ProbabilisticLinear for no base space")
        self._construct(R2Conv, in_type, out_type, kernel_size, likelihood, L, L_out, parameterisation, initialize,
                        padding=padding, stride=stride, dilation=dilation, padding_mode=padding_mode, groups=groups,
                        bias=bias, sigma=sigma, frequencies_cutoff=frequencies_cutoff, rings=rings,
                        maximum_offset=maximum_offset, basis_filter=basis_filter)

    def _strict_expansion(self):
        return R2Conv.expand_parameters(self)


class ProbabilisticR3Conv(_ProbabilisticConv, R3Conv):
    """:class:`escnn.nn.R3Conv` whose kernel is the λ-weighted projection (see :class:`ProbabilisticR2Conv`)."""

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int,
                 likelihood: GroupLikelihood | None = None, L: int = 2, L_out: int | None = None,
                 padding: int = 0, stride: int = 1, dilation: int = 1, padding_mode: str = "zeros",
                 groups: int = 1, bias: bool = True, sigma=None, frequencies_cutoff=None, rings=None,
                 basis_filter=None, initialize: bool = True, parameterisation: str | None = None):
        _check_types(in_type, out_type)
        _check_kernel_size(kernel_size)
        _check_groups(groups)
        _check_geometry(padding, stride, dilation, 3)
        if in_type.gspace.dimensionality != 3:
            raise ValueError(f"in_type: ProbabilisticR3Conv needs a 3D gspace, got {in_type.gspace}; "
                             f"use ProbabilisticR2Conv for 2D")
        self._construct(R3Conv, in_type, out_type, kernel_size, likelihood, L, L_out, parameterisation, initialize,
                        padding=padding, stride=stride, dilation=dilation, padding_mode=padding_mode, groups=groups,
                        bias=bias, sigma=sigma, frequencies_cutoff=frequencies_cutoff, rings=rings,
                        basis_filter=basis_filter)

    def _strict_expansion(self):
        return R3Conv.expand_parameters(self)


class ProbabilisticLinear(_ProbabilisticFilter, EscnnLinear):
    """:class:`escnn.nn.Linear` (fields with no base space) with a λ-weighted equivariance constraint
    (arguments as :class:`ProbabilisticR2Conv`, without the kernel's)."""

    def __init__(self, in_type: FieldType, out_type: FieldType, likelihood: GroupLikelihood | None = None,
                 L: int = 2, L_out: int | None = None, bias: bool = True, initialize: bool = True,
                 parameterisation: str | None = None):
        _check_types(in_type, out_type)
        if in_type.gspace.dimensionality != 0:
            raise ValueError(f"in_type: ProbabilisticLinear needs field types on a no_base_space gspace "
                             f"(escnn.gspaces.no_base_space(group)), got {in_type.gspace}")
        EscnnLinear.__init__(self, in_type, out_type, bias=bias, initialize=False)
        if self.basisexpansion.dimension() == 0:  # escnn would fail in its first forward (IndexError)
            raise ValueError(f"in_type/out_type: escnn's equivariant basis between these field types is empty "
                             f"(no {in_type.fibergroup.name}-equivariant map from {in_type} to {out_type}); "
                             f"add output fields that share an irrep with the input fields")
        privatize_(self.basisexpansion)
        self._init_strict_weights(initialize)
        self._setup(in_type, out_type, likelihood, L, L_out, parameterisation, self.space.build_fiber_intertwiner_basis,
                    np.zeros((1, 1)), None, initialize)

    def _strict_expansion(self):
        return EscnnLinear.expand_parameters(self)

    def evaluate_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 2 or input_shape[1] != self.in_type.size:
            raise ValueError(f"input_shape: expected (batch, {self.in_type.size}), got {tuple(input_shape)}")
        return (input_shape[0], self.out_type.size)

    def forward(self, input: GeometricTensor) -> GeometricTensor:
        _check_input(input, self.in_type)
        matrix, bias = self._current_filter()
        return GeometricTensor(F.linear(input.tensor, matrix, bias), self.out_type, input.coords)

    def export(self) -> torch.nn.Linear:
        """A plain ``torch.nn.Linear`` holding the current matrix."""
        with torch.no_grad():
            matrix, bias = self.expand_parameters()
        return plain_linear(matrix, bias)

    def extra_repr(self) -> str:
        return self._extra()
