"""The strict steerable part every soft layer with a steerable basis owns, and the convolution built around it.

* :class:`StrictSteerable` — ``weights``, the coefficients of a private sampled G-steerable basis
  (:math:`K_G = \\sum_b w_b B_b`, ``basisexpansion``), and ``bias``, one coefficient per trivial irrep of the
  output fields (:math:`b_G = E\\beta`, ``bias_expansion``), named, ordered and initialised as in escnn's
  ``R2Conv`` / ``R3Conv`` / ``Linear`` (so ``weights``, ``bias`` and the strict entries of a state dict copy
  across); plus the one evaluation-mode cache of the filter a subclass builds from them (``_expand()``,
  :class:`~escnn_soft.nn._filter.FilterCache`), cleared on entering training mode and on ``.to()``.
* :class:`SteerableConv` — that strict part on :math:`\\mathbb R^d` (``_dim`` = 2 or 3), with escnn's
  ``R2Conv`` / ``R3Conv`` arguments (checked), basis (sigma, rings, frequency cut-off, grid), ``forward``
  (:math:`y = K \\star x + b` with the filter of ``_expand()``), ``evaluate_output_shape`` and ``export()`` to a
  plain ``torch.nn.Conv2d`` / ``Conv3d``. The probabilistic convolutions and the relaxed family
  (:class:`~escnn_soft.nn._relaxation.SoftConvBase`) both build on it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from escnn.gspaces import GSpace, GSpace2D, GSpace3D
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from escnn_soft._escnn import (
    BlocksBasisExpansion,
    compute_basis_params_2d,
    compute_basis_params_3d,
    grid_coords,
    he_stds,
    private_blocks_expansion,
)
from escnn_soft.nn._filter import FilterCache, conv_output_shape, convolve, plain_conv

__all__ = ["SteerableConv", "StrictSteerable", "check_field_types"]


def check_field_types(in_type: Any, out_type: Any) -> None:
    """Both are escnn ``FieldType`` s on the same gspace, or a ``TypeError`` / ``ValueError`` naming the argument."""
    for name, t in (("in_type", in_type), ("out_type", out_type)):
        if not isinstance(t, FieldType):
            raise TypeError(f"{name}: expected an escnn FieldType, got {type(t).__name__} ({t!r}); build one with "
                            "escnn.nn.FieldType(gspace, representations)")
    if in_type.gspace != out_type.gspace:
        raise ValueError(f"out_type: its gspace {out_type.gspace} differs from in_type's gspace {in_type.gspace}; "
                         "build both field types on the same gspace object")


class StrictSteerable(EquivariantModule):
    """The strict part :math:`(K_G, b_G)` and the evaluation-mode cache of the layer's filter.

    Subclasses call :meth:`_init_strict` in their constructor and implement ``_expand()`` (the filter and bias
    the layer applies); :meth:`_expanded` serves it from the cache in evaluation mode while no parameter changed
    (parameters' storage and version counters; bypassed whenever autograd needs the graph, so eval-mode
    gradients, e.g. for a Laplace approximation, are always right). The cache is a plain attribute, never in the
    ``state_dict``.
    """

    def _init_strict(self, in_type: FieldType, out_type: FieldType, expansion: BlocksBasisExpansion, bias: bool,
                     initialize: bool, filter_shape: tuple[int, ...]) -> None:
        """Register ``weights`` on ``expansion`` (escnn's generalised He initialisation when ``initialize``, the
        same random draws as escnn's, without its Python loop over coefficients) and ``bias``; ``filter_shape``
        is the shape of :meth:`strict_filter` (``(C_out, C_in, k, k)``, or ``(C_out, C_in)`` for a linear map)."""
        self.in_type, self.out_type, self.space = in_type, out_type, in_type.gspace
        self._basisexpansion = expansion
        self._filter_shape = filter_shape
        self.weights = torch.nn.Parameter(torch.zeros(expansion.dimension()))
        if initialize:
            with torch.no_grad():
                self.weights.copy_(he_stds(expansion) * torch.randn(self.weights.shape))
        self._init_bias(bias)
        self._filter_cache: FilterCache[tuple[torch.Tensor, torch.Tensor | None]] = FilterCache()

    def _init_bias(self, bias: bool) -> None:
        """escnn's bias: a coefficient per trivial irrep of the output fields, expanded through the columns of the
        fields' change of basis (``bias_expansion``, a buffer); ``None`` without trivial irreps or ``bias``."""
        columns = []
        if bias:
            p = 0
            for r in self.out_type.representations:
                pi = 0
                for irr_id in r.irreps:
                    irr = self.out_type.fibergroup.irrep(*irr_id)
                    if irr.is_trivial():
                        col = torch.zeros(self.out_type.size)
                        col[p:p + r.size] = torch.tensor(r.change_of_basis[:, pi], dtype=torch.float32)
                        columns.append(col)
                    pi += irr.size
                p += r.size
        if columns:
            self.register_buffer("bias_expansion", torch.stack(columns, dim=1))
            self.bias = torch.nn.Parameter(torch.zeros(len(columns)))
        else:
            self.bias_expansion = None
            self.bias = None

    @property
    def basisexpansion(self) -> BlocksBasisExpansion:
        """The layer's private sampled G-steerable basis (as escnn's ``basisexpansion``)."""
        return self._basisexpansion

    def strict_filter(self) -> torch.Tensor:
        """The G-steerable filter :math:`K_G = \\sum_b w_b B_b`, shape ``(C_out, C_in, k, ...)`` (``(C_out, C_in)``
        for a linear map)."""
        return self._basisexpansion(self.weights).reshape(self._filter_shape)

    def strict_bias(self) -> torch.Tensor | None:
        """The expanded equivariant bias :math:`E\\beta` (``None`` without bias)."""
        return None if self.bias is None else self.bias_expansion @ self.bias

    # -- the filter the layer applies, and its cache --------------------------------------------------

    def _expand(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The filter and bias the layer applies."""
        raise NotImplementedError(f"{type(self).__name__} must implement _expand()")

    def _cache_parameters(self) -> Iterable[torch.Tensor]:
        """Every parameter :meth:`_expand` reads (default: the layer's own, read from ``_parameters`` because
        ``parameters()`` hashes escnn's basis modules, about 0.1 ms each)."""
        return self._parameters.values()

    def _cached(self, cache: FilterCache, expand: Callable[[], Any], extra: Any = None) -> Any:
        """``expand()``, served from ``cache`` in evaluation mode while no parameter changed (:class:`FilterCache`)."""
        return cache.get(self.training, self._cache_parameters(), expand, extra)

    def _expanded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_expand`, served from the evaluation-mode cache when allowed."""
        return self._cached(self._filter_cache, self._expand)

    def _caches(self) -> list[FilterCache]:
        """Every evaluation-mode cache of the layer (cleared on entering training mode and on ``.to()``)."""
        return [self._filter_cache]

    def train(self, mode: bool = True) -> StrictSteerable:
        """Set the mode; entering training mode drops the caches."""
        if mode:
            for cache in self._caches():
                cache.clear()
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        # the caches are plain attributes, which .to()/.double()/.cuda() would leave on the old device and dtype (a
        # stale copy held in memory); the next eval forward rebuilds them
        for cache in self._caches():
            cache.clear()
        return super()._apply(fn, recurse)

    def _check_input(self, x: Any) -> None:
        if not isinstance(x, GeometricTensor):
            raise TypeError(f"input: expected a GeometricTensor, got {type(x).__name__}; wrap it with "
                            "layer.in_type(tensor)")
        if x.type != self.in_type:
            raise ValueError(f"input: its field type {x.type} differs from the layer's in_type {self.in_type}")


class SteerableConv(StrictSteerable):
    """:class:`StrictSteerable` on :math:`\\mathbb R^d` with escnn's ``R2Conv`` (d = 2) / ``R3Conv`` (d = 3)
    arguments and basis; ``forward`` convolves with the filter of ``_expand()``.

    ``recompute`` is accepted for signature compatibility only (the basis is always private, as with
    ``recompute=True``); ``maximum_offset`` (2D only) is kept for building the strict escnn layer back
    (escnn's ``R2Conv`` does not use it either).
    """

    _dim: int = 2

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int, padding: int | tuple = 0,
                 stride: int = 1, dilation: int = 1, padding_mode: str = "zeros", groups: int = 1,
                 bias: bool = True, sigma: float | list[float] | None = None,
                 frequencies_cutoff: float | Callable[[float], float] | None = None,
                 rings: list[float] | None = None, maximum_offset: int | None = None, recompute: bool = False,
                 basis_filter: Callable[[dict], bool] | None = None, initialize: bool = True):
        super().__init__()
        self._check_types(in_type, out_type)
        for name, value, low, example in (("kernel_size", kernel_size, 1, 3), ("stride", stride, 1, 1),
                                          ("dilation", dilation, 1, 1), ("groups", groups, 1, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}; use e.g. {name}={example}")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"padding_mode: {padding_mode!r} is not one of 'zeros', 'reflect', 'replicate', "
                             "'circular'")
        d = self._dim
        pad = (padding,) * d if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool) else padding
        if not (isinstance(pad, tuple) and len(pad) == d
                and all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p >= 0 for p in pad)):
            raise ValueError(f"padding: expected an int >= 0 or a tuple of {d} such ints, got {padding!r}; "
                             "use e.g. padding=kernel_size // 2")
        if maximum_offset is not None and d != 2:
            raise ValueError(f"maximum_offset: {maximum_offset!r} is an R2Conv argument; escnn's R3Conv has none, "
                             "leave it unset (None)")
        if groups > 1 and (len(in_type) % groups or len(out_type) % groups):
            raise ValueError(f"groups: {groups} does not divide the number of fields of in_type ({len(in_type)}) "
                             f"and out_type ({len(out_type)}); pass a common divisor")

        self.kernel_size = kernel_size
        self.padding = padding
        self.stride = stride
        self.dilation = dilation
        self.padding_mode = padding_mode
        self.groups = groups
        self._pad2 = pad  # the padding per spatial dimension (named for the 2D layers; d entries)
        self._kernel_shape = (kernel_size,) * d
        # the escnn R2Conv / R3Conv arguments, to build the strict layer back
        self._r2conv_kwargs = {
            "padding": padding, "stride": stride, "dilation": dilation, "padding_mode": padding_mode,
            "groups": groups, "bias": bias, "sigma": sigma, "frequencies_cutoff": frequencies_cutoff,
            "rings": rings, "basis_filter": basis_filter,
        }
        if d == 2:
            self._r2conv_kwargs["maximum_offset"] = maximum_offset

        # the strict layer's own band-limit rule: R3Conv's accepts the strings 'default1'...'default3' (R2Conv's
        # raises on them), and the two agree on everything else
        compute = compute_basis_params_2d if d == 2 else compute_basis_params_3d
        self._basis_filter, self._rings, self._sigma, self._maximum_frequency = compute(
            kernel_size, frequencies_cutoff, rings, sigma, dilation, basis_filter)
        self._grid = grid_coords(d, kernel_size, dilation)
        in_group_type = in_type.index_select(list(range(len(in_type) // groups))) if groups > 1 else in_type
        self._in_group_type = in_group_type
        expansion = self._private_expansion(in_type.gspace, in_group_type, out_type)
        if expansion.dimension() == 0:
            raise ValueError(f"in_type/out_type: escnn's steerable basis between these field types is empty for "
                             f"kernel_size={kernel_size}; raise kernel_size or frequencies_cutoff, or change "
                             "rings/sigma/basis_filter")
        self._init_strict(in_type, out_type, expansion, bias, initialize,
                          (out_type.size, in_group_type.size, *self._kernel_shape))

    @classmethod
    def _check_types(cls, in_type: Any, out_type: Any) -> None:
        check_field_types(in_type, out_type)
        name = cls.__name__
        if cls._dim == 2 and not isinstance(in_type.gspace, GSpace2D):
            raise ValueError(
                f"in_type: {name} needs a planar gspace (escnn.gspaces.rot2dOnR2, flipRot2dOnR2, ...), got "
                f"{in_type.gspace}; use the 3D layer (R3 in its name) for a 3D gspace")
        if cls._dim == 3 and not isinstance(in_type.gspace, GSpace3D):
            raise ValueError(
                f"in_type: {name} needs a 3D gspace (escnn.gspaces.rot3dOnR3, flipRot3dOnR3, octaOnR3, ...), got "
                f"{in_type.gspace}; use the planar layer (R2 in its name) for a 2D gspace")

    def kernel_basis(self, gspace: GSpace) -> Callable[[Any, Any], Any]:
        """``(in_repr, out_repr) -> KernelBasis`` on ``gspace`` with this layer's sigma, rings and maximum frequency
        (the generator escnn's ``R2Conv`` / ``R3Conv`` builds its own basis with)."""
        def generator(in_repr, out_repr):
            return gspace.build_kernel_basis(in_repr, out_repr, self._sigma, self._rings,
                                             maximum_frequency=self._maximum_frequency)
        return generator

    def _private_expansion(self, gspace: GSpace, in_type: FieldType, out_type: FieldType) -> BlocksBasisExpansion:
        """A private sampled basis of steerable kernels between ``in_type`` and ``out_type`` on ``gspace``."""
        return private_blocks_expansion(in_type.representations, out_type.representations, self.kernel_basis(gspace),
                                        self._grid, basis_filter=self._basis_filter)

    def _conv(self, x: torch.Tensor, filt: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return convolve(x, filt, bias, stride=self.stride, padding=self._pad2, dilation=self.dilation,
                        groups=self.groups, padding_mode=self.padding_mode)

    def forward(self, input: GeometricTensor) -> GeometricTensor:
        """:math:`y = K \\star x + b` with the filter and bias of ``_expand()``."""
        self._check_input(input)
        filt, bias = self._expanded()
        return GeometricTensor(self._conv(input.tensor, filt, bias), self.out_type)

    def evaluate_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return conv_output_shape(input_shape, self.in_type.size, self.out_type.size, self.kernel_size,
                                 stride=self.stride, padding=self._pad2, dilation=self.dilation, d=self._dim)

    def _plain_conv(self, filt: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Module:
        """A plain ``torch.nn.Conv2d`` / ``Conv3d`` with this layer's geometry holding ``filt`` and ``bias``."""
        return plain_conv(filt, bias, stride=self.stride, padding=self._pad2, dilation=self.dilation,
                          groups=self.groups, padding_mode=self.padding_mode)

    def export(self) -> torch.nn.Module:
        """A plain ``torch.nn.Conv2d`` (``Conv3d`` in 3D) holding the layer's current filter and bias."""
        with torch.no_grad():
            filt, bias = self._expand()
        return self._plain_conv(filt, bias)
