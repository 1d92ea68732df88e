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
from escnn.nn import FieldType, GeometricTensor

from escnn_soft._escnn import is_empty_basis_error, private_blocks_expansion, private_sampled_basis
from escnn_soft.likelihood import GroupLikelihood
from escnn_soft.nn._complement import add_blocks, fields_by_representation
from escnn_soft.nn._filter import plain_linear
from escnn_soft.nn._strict import SteerableConv, StrictSteerable, check_field_types
from escnn_soft.nn.base import SoftModule, iter_modules
from escnn_soft.subgroups import default_subgroups

__all__ = ["ProbabilisticLinear", "ProbabilisticR2Conv", "ProbabilisticR3Conv"]


def _check_groups(groups: Any) -> None:
    if groups != 1:
        raise ValueError(f"groups={groups!r}: probabilistic layers support groups=1 only; use groups=1")


def _check_kernel_size(kernel_size: Any) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)):
        raise TypeError(f"kernel_size: expected an int, got {type(kernel_size).__name__} ({kernel_size!r})")
    if kernel_size < 1:
        raise ValueError(f"kernel_size={kernel_size} is invalid: use a positive int (e.g. 3, 5 or 7)")


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
        in_groups, out_groups = fields_by_representation(in_type), fields_by_representation(out_type)
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

    def add_to(self, filt: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """``filt`` (``(c_out, c_in, P)``) plus :math:`k_\\psi` for the Fourier matrix ``lam`` =
        :math:`\\hat\\Lambda(\\psi)`, accumulated in place block by block, in the kernels' own memory order (an
        out-of-place scatter per block copied the whole filter, forward and backward)."""
        return add_blocks(filt, self.weights, self.blocks(lam))

    def forward(self, lam: torch.Tensor) -> torch.Tensor:
        """:math:`k_\\psi`, shape ``(c_out, c_in, P)``, for the Fourier matrix ``lam`` = :math:`\\hat\\Lambda(\\psi)`."""
        return self.add_to(self.weights.new_zeros(self.c_out, self.c_in, self.n_points), lam)


_TENSOR_REPRESENTATIONS: dict[tuple[Any, str, tuple], Any] = {}


def _tensor_representation(rep, irrep):
    """``rep ⊗ irrep`` (escnn's ``kron`` order), memoised: escnn rebuilds it, with disk look-ups, on every call.
    Representations are immutable, so sharing them between layers is safe."""
    key = (id(rep.group), rep.name, irrep.id)  # escnn groups are unique per parameters (cached)
    if key not in _TENSOR_REPRESENTATIONS:
        _TENSOR_REPRESENTATIONS[key] = rep.tensor(irrep)
    return _TENSOR_REPRESENTATIONS[key]


class _ProbabilisticFilter(StrictSteerable, SoftModule):
    """Shared machinery: the strict part (:class:`~escnn_soft.nn._strict.StrictSteerable`), the likelihood and its
    pathways, the λ-contraction; the filter cache of the strict part serves :math:`k_\\lambda` in eval mode."""

    likelihood: GroupLikelihood
    pathways: torch.nn.ModuleList

    def _setup(self, in_type: FieldType, likelihood: GroupLikelihood | None, L: int, L_out: int | None,
               parameterisation: str | None, basis_generator, points: np.ndarray, basis_filter,
               initialize: bool) -> None:
        """The likelihood (given, or a new one over ``in_type.fibergroup``) and a pathway per non-trivial irrep."""
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
            pathway = _Pathway(irrep, in_type, self.out_type, basis_generator, points, basis_filter, initialize)
            if pathway.dimension() > 0:
                pathways.append(pathway)
        self.pathways = torch.nn.ModuleList(pathways)

    def expand_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Filter :math:`k_\\lambda` (strict kernel plus every pathway contracted with
        :math:`\\hat\\Lambda(\\psi)`) and the expanded bias."""
        filt, bias = self.strict_filter(), self.strict_bias()
        if len(self.pathways) == 0:
            return filt, bias
        coeffs = self.likelihood.fourier_coefficients()
        flat = filt.reshape(filt.shape[0], filt.shape[1], -1).clone()
        for pathway in self.pathways:
            pathway.add_to(flat, coeffs[pathway.irrep_id])
        return flat.view_as(filt), bias

    def coefficient_blocks(self, param: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] | None:
        """The block layout and kernels of ``param`` when it is a pathway's ``weights`` (:meth:`_Pathway.blocks`
        at the current λ), else ``None``: what the Laplace curvature gives its Kronecker structure
        (:func:`escnn_soft.laplace.curvature.plan_terms`)."""
        for pathway in self.pathways:
            if pathway.weights is param:
                return pathway.blocks(self.likelihood.fourier_coefficients()[pathway.irrep_id])
        return None

    def _expand(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.expand_parameters()

    def _cache_parameters(self) -> list[torch.Tensor]:
        """Every parameter the filter depends on: the strict part's, the likelihood's and the pathways' (walked
        without hashing escnn's basis modules)."""
        return [p for m in iter_modules(self) for p in m._parameters.values() if p is not None]

    plot_kind = "likelihood"

    def hyperparameter_parameters(self) -> dict[str, torch.Tensor]:
        """The coefficients of the layer's likelihood λ (``likelihood.<name>``), which the Laplace evidence tunes."""
        return {f"likelihood.{n}": p for n, p in self.likelihood.named_parameters()}

    @torch.no_grad()
    def idle_parameters(self) -> list[torch.Tensor]:
        """The pathways whose Fourier matrix :math:`\\hat\\Lambda(\\psi)` is exactly zero (every pathway at the
        uniform λ of the strict layer): their weights enter the filter only as :math:`w\\,\\tilde B(\\hat\\Lambda
        (\\psi))`, so the output does not depend on them, and the gradient of the output with respect to
        :math:`\\hat\\Lambda(\\psi)` is proportional to them."""
        coeffs = self.likelihood.fourier_coefficients()
        return [p.weights for p in self.pathways if not bool(coeffs[p.irrep_id].any())]

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
            strict = self.strict_filter()
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


class _ProbabilisticConv(_ProbabilisticFilter, SteerableConv):
    """The 2D and 3D convolutions: escnn's ``R2Conv`` / ``R3Conv`` arguments, strict basis and weights
    (:class:`~escnn_soft.nn._strict.SteerableConv`), then the likelihood and its pathways on the same grid, band
    limit and basis filter."""

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int, likelihood: GroupLikelihood | None,
                 L: int, L_out: int | None, parameterisation: str | None, padding: int | tuple, stride: int,
                 dilation: int, groups: int, initialize: bool, **conv_kwargs: Any):
        check_field_types(in_type, out_type)
        _check_kernel_size(kernel_size)
        _check_groups(groups)
        if in_type.gspace.dimensionality != self._dim:
            other = "ProbabilisticR3Conv for 3D" if self._dim == 2 else "ProbabilisticR2Conv for 2D"
            raise ValueError(f"in_type: {type(self).__name__} needs a {self._dim}D gspace, got {in_type.gspace}; "
                             f"use {other} or ProbabilisticLinear for no base space")
        SteerableConv.__init__(self, in_type, out_type, kernel_size, padding=padding, stride=stride, dilation=dilation,
                               groups=groups, initialize=initialize, **conv_kwargs)
        self._setup(in_type, likelihood, L, L_out, parameterisation, self.kernel_basis(self.space), self._grid,
                    self._basis_filter, initialize)

    def extra_repr(self) -> str:
        return (f"{self.in_type.size}->{self.out_type.size}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, " + self._extra())


class ProbabilisticR2Conv(_ProbabilisticConv):
    """An :class:`escnn.nn.R2Conv` whose kernel is the λ-weighted projection :math:`\\Pi_\\lambda(\\hat K)`.

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
    and ``bias`` are escnn's (the strict pathway: same names, basis order and initialisation, so they and the
    strict entries of a state dict copy across); ``pathways[k].weights`` hold the kernels coupled to the
    non-trivial irreps of λ. The layer is an :class:`escnn.nn.EquivariantModule` (GeometricTensor in and out,
    ``in_type``/``out_type``, ``evaluate_output_shape``, ``export()``), not a subclass of ``R2Conv``.
    """

    _dim = 2

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int,
                 likelihood: GroupLikelihood | None = None, L: int = 2, L_out: int | None = None,
                 padding: int = 0, stride: int = 1, dilation: int = 1, padding_mode: str = "zeros",
                 groups: int = 1, bias: bool = True, sigma=None, frequencies_cutoff=None, rings=None,
                 maximum_offset=None, basis_filter=None, initialize: bool = True, parameterisation: str | None = None):
        super().__init__(in_type, out_type, kernel_size, likelihood, L, L_out, parameterisation, padding, stride,
                         dilation, groups, initialize, padding_mode=padding_mode, bias=bias, sigma=sigma,
                         frequencies_cutoff=frequencies_cutoff, rings=rings, maximum_offset=maximum_offset,
                         basis_filter=basis_filter)


class ProbabilisticR3Conv(_ProbabilisticConv):
    """An :class:`escnn.nn.R3Conv` whose kernel is the λ-weighted projection (see :class:`ProbabilisticR2Conv`)."""

    _dim = 3

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int,
                 likelihood: GroupLikelihood | None = None, L: int = 2, L_out: int | None = None,
                 padding: int = 0, stride: int = 1, dilation: int = 1, padding_mode: str = "zeros",
                 groups: int = 1, bias: bool = True, sigma=None, frequencies_cutoff=None, rings=None,
                 basis_filter=None, initialize: bool = True, parameterisation: str | None = None):
        super().__init__(in_type, out_type, kernel_size, likelihood, L, L_out, parameterisation, padding, stride,
                         dilation, groups, initialize, padding_mode=padding_mode, bias=bias, sigma=sigma,
                         frequencies_cutoff=frequencies_cutoff, rings=rings, basis_filter=basis_filter)


class ProbabilisticLinear(_ProbabilisticFilter):
    """An :class:`escnn.nn.Linear` (fields with no base space) with a λ-weighted equivariance constraint
    (arguments as :class:`ProbabilisticR2Conv`, without the kernel's); ``weights`` and ``bias`` are escnn
    ``Linear``'s. An :class:`escnn.nn.EquivariantModule`, not a subclass of ``Linear``."""

    def __init__(self, in_type: FieldType, out_type: FieldType, likelihood: GroupLikelihood | None = None,
                 L: int = 2, L_out: int | None = None, bias: bool = True, initialize: bool = True,
                 parameterisation: str | None = None):
        super().__init__()
        check_field_types(in_type, out_type)
        if in_type.gspace.dimensionality != 0:
            raise ValueError(f"in_type: ProbabilisticLinear needs field types on a no_base_space gspace "
                             f"(escnn.gspaces.no_base_space(group)), got {in_type.gspace}")
        points = np.zeros((1, 1))
        expansion = private_blocks_expansion(in_type.representations, out_type.representations,
                                             in_type.gspace.build_fiber_intertwiner_basis, points)
        if expansion.dimension() == 0:
            raise ValueError(f"in_type/out_type: escnn's equivariant basis between these field types is empty "
                             f"(no {in_type.fibergroup.name}-equivariant map from {in_type} to {out_type}); "
                             f"add output fields that share an irrep with the input fields")
        self._init_strict(in_type, out_type, expansion, bias, initialize, (out_type.size, in_type.size))
        self._setup(in_type, likelihood, L, L_out, parameterisation, in_type.gspace.build_fiber_intertwiner_basis,
                    points, None, initialize)

    def evaluate_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 2 or input_shape[1] != self.in_type.size:
            raise ValueError(f"input_shape: expected (batch, {self.in_type.size}), got {tuple(input_shape)}")
        return (input_shape[0], self.out_type.size)

    def forward(self, input: GeometricTensor) -> GeometricTensor:
        self._check_input(input)
        matrix, bias = self._expanded()
        return GeometricTensor(F.linear(input.tensor, matrix, bias), self.out_type, input.coords)

    def export(self) -> torch.nn.Linear:
        """A plain ``torch.nn.Linear`` holding the current matrix."""
        with torch.no_grad():
            matrix, bias = self.expand_parameters()
        return plain_linear(matrix, bias)

    def extra_repr(self) -> str:
        return f"{self.in_type.size}->{self.out_type.size}, " + self._extra()
