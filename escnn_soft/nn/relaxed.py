"""Relaxed continuous-filter steerable convolution (van der Ouderaa, Romero, van der Wilk, NeurIPS 2022).

The filter is a continuous function of the relative *and* the absolute position,
:math:`k(x - y, x + y)`: a strict G-steerable filter plus a relaxation expanded in the steerable basis
of a subgroup S, whose coefficients vary smoothly with the absolute output position at a learnable
lengthscale. See :class:`RelaxedR2Conv`.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch
from escnn.nn import FieldType, GeometricTensor

from escnn_soft._escnn import BlocksBasisExpansion
from escnn_soft.nn._filter import FilterCache
from escnn_soft.nn._relaxation import (
    SoftConvBase,
    SoftR2ConvBase,
    SoftR3ConvBase,
    _positive_log,
    bessel_j0,
    centred_coordinates,
    expand_blocks,
    projection_gram,
)
from escnn_soft.subgroups import subgroup_matrices

__all__ = ["DEFAULT_BANK_FRACTION", "RelaxedConv2dExport", "RelaxedConvExport", "RelaxedR2Conv", "RelaxedR3Conv", "bank_fields",
           "position_features", "position_features_nd"]


#: ``bank_fraction`` and ``bank_in_fraction`` when not given (``groups=1``): the modulated filters reach and read a
#: quarter of the fields of each type, a training step of 1.14–1.19x strict escnn on the thesis DoubleMNIST network
#: at the accuracy of modulating every field (``benchmarks/RESULTS.md``)
DEFAULT_BANK_FRACTION = 0.25


def bank_fields(field_type: FieldType, fraction: float) -> list[int]:
    """The fields of ``field_type`` the position-modulated banks reach (output type, ``bank_fraction``) or read
    (input type, ``bank_in_fraction``) at ``fraction``: of every representation in ``field_type``, the first
    :math:`\\lceil \\rho\\, n \\rceil` of its :math:`n` fields (so every field type keeps at least one modulated
    field, and ``fraction=1`` selects them all)."""
    counts = Counter(r.name for r in field_type.representations)
    quota = {name: math.ceil(fraction * n - 1e-9) for name, n in counts.items()}
    taken: Counter = Counter()
    fields = []
    for i, r in enumerate(field_type.representations):
        if taken[r.name] < quota[r.name]:
            taken[r.name] += 1
            fields.append(i)
    return fields


def _field_channels(field_type: FieldType, fields: list[int]) -> list[int]:
    """The channels of ``fields`` (indices into ``field_type``), in order."""
    return [c for f in fields for c in range(field_type.fields_start[f], field_type.fields_end[f])]


def position_features(height: int, width: int, frequencies: torch.Tensor, phases: torch.Tensor,
                      log_lengthscale: torch.Tensor, matrices: torch.Tensor | None) -> torch.Tensor:
    """:func:`position_features_nd` on a planar ``(height, width)`` output grid."""
    return position_features_nd((height, width), frequencies, phases, log_lengthscale, matrices)


def position_features_nd(shape: tuple[int, ...], frequencies: torch.Tensor, phases: torch.Tensor,
                         log_lengthscale: torch.Tensor, matrices: torch.Tensor | None) -> torch.Tensor:
    """The S-invariant, centre-anchored random Fourier features :math:`\\psi_m(u)` on an output grid of
    ``shape`` (2 or 3 dimensions, :func:`~escnn_soft.nn._relaxation.centred_coordinates`).

    .. math::
        f_m(u) = \\sqrt{2/M}\\,\\big(\\cos(\\omega_m \\cdot u / \\ell + \\beta_m) - \\cos\\beta_m\\big), \\qquad
        \\psi_m(u) = \\frac{1}{|S|} \\sum_{g \\in S} f_m(A_g u)

    for finite S (``matrices`` = the base-space matrices :math:`A_g`), and the Haar average over all rotations
    for S ⊇ SO(2) in 2D, :math:`\\psi_m(u) = \\sqrt{2/M}\\cos\\beta_m\\,(J_0(\\lVert\\omega_m\\rVert \\lVert u\\rVert
    / \\ell) - 1)`, or S ⊇ SO(3) in 3D, :math:`\\psi_m(u) = \\sqrt{2/M}\\cos\\beta_m\\,(\\operatorname{sinc}
    (\\lVert\\omega_m\\rVert \\lVert u\\rVert / \\ell) - 1)` with :math:`\\operatorname{sinc} x = \\sin x / x`
    (``matrices=None``). :math:`\\psi_m(0) = 0` and :math:`\\psi_m \\to 0` as :math:`\\ell \\to \\infty`.

    Returns:
        ``(M, *shape)``.
    """
    m = frequencies.shape[0]
    u = centred_coordinates(tuple(shape), frequencies)
    inv_l = torch.exp(-log_lengthscale)
    amp = math.sqrt(2.0 / m)
    if matrices is None:
        arg = torch.linalg.vector_norm(u, dim=1)[:, None] * torch.linalg.vector_norm(frequencies, dim=1)[None, :]
        if u.shape[1] == 2:
            feats = amp * torch.cos(phases) * (bessel_j0(arg * inv_l) - 1.0)
        else:
            feats = amp * torch.cos(phases) * (torch.sinc(arg * inv_l / math.pi) - 1.0)
    else:
        # omega . (A u) = (A^T omega) . u
        rotated = torch.einsum("sdc,md->smc", matrices, frequencies)
        arg = torch.einsum("pc,smc->psm", u, rotated) * inv_l + phases
        feats = amp * (torch.cos(arg) - torch.cos(phases)).mean(1)
    return feats.T.reshape(m, *shape)


class _BankCombine(torch.autograd.Function):
    """:math:`y_0 + \\sum_l g_l\\, y_l` for the bank outputs ``y`` ``(B, G, L+1, O, P)`` and gains ``g`` ``(L, P)``.

    The backward writes the gradient of the stacked ``y`` once (autograd's backward of the slices ``y_l`` would
    zero-fill and copy a tensor of the size of ``y`` per slice). Built from differentiable operations, so that it
    can itself be differentiated (``create_graph=True``, as the Laplace evidence needs)."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y, gains)
        out = y[:, :, 0]
        for l in range(gains.shape[0]):
            out = torch.addcmul(out, y[:, :, l + 1], gains[l])
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, gains = ctx.saved_tensors
        grad_y = torch.stack([grad, *(grad * gains[l] for l in range(gains.shape[0]))], dim=2)
        grad_g = None
        if ctx.needs_input_grad[1]:
            n = grad.shape[-1]
            grad_g = torch.stack([(grad.reshape(-1, n) * y[:, :, l + 1].reshape(-1, n)).sum(0)
                                  for l in range(gains.shape[0])])
        return grad_y, grad_g


class _PartialBankCombine(torch.autograd.Function):
    """:math:`y_0 + \\sum_l g_l\\, y_l` when the banks :math:`l \\ge 1` reach only the output channels ``channels``:
    ``y0`` ``(B, C, P)``, the banks ``yb`` ``(B, L C_b, P)`` (bank-major, ``C_b`` = ``len(channels)``), ``gains``
    ``(L, P)``. The backward passes the output gradient on to ``y0`` as it is and writes the banks' gradient once;
    built from differentiable operations, so that it can itself be differentiated."""

    @staticmethod
    def forward(ctx: Any, y0: torch.Tensor, yb: torch.Tensor, gains: torch.Tensor, channels: torch.Tensor
                ) -> torch.Tensor:
        ctx.save_for_backward(yb, gains, channels)
        c_bank = channels.shape[0]
        extra = yb[:, :c_bank] * gains[0]
        for l in range(1, gains.shape[0]):
            extra = torch.addcmul(extra, yb[:, l * c_bank:(l + 1) * c_bank], gains[l])
        return y0.index_add(1, channels, extra)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, None]:
        yb, gains, channels = ctx.saved_tensors
        c_bank = channels.shape[0]
        reached = grad.index_select(1, channels)
        grad_yb = torch.cat([reached * gains[l] for l in range(gains.shape[0])], dim=1)
        grad_g = None
        if ctx.needs_input_grad[2]:
            grad_g = torch.stack([(reached * yb[:, l * c_bank:(l + 1) * c_bank]).sum((0, 1))
                                  for l in range(gains.shape[0])])
        return grad, grad_yb, grad_g, None


def _combine(y: torch.Tensor, gains: torch.Tensor, banks: int, groups: int, bias: torch.Tensor | None
             ) -> torch.Tensor:
    """:math:`y_0 + \\sum_l g_l(u)\\, y_l (+ b)` for the bank outputs ``y`` (``(B, C, *spatial)``), whose channels
    are ordered (conv group, bank, output channel of the group)."""
    b, c = y.shape[:2]
    spatial = y.shape[2:]
    y = y.reshape(b, groups, banks + 1, c // (groups * (banks + 1)), -1)
    out = _BankCombine.apply(y, gains.reshape(banks, -1)).reshape(b, -1, *spatial)
    return _add_bias(out, bias)


def _combine_partial(y0: torch.Tensor, yb: torch.Tensor, gains: torch.Tensor, channels: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """:math:`y_0 + \\sum_l g_l(u)\\, y_l (+ b)` with the banks ``yb`` (``(B, L C_b, *spatial)``, bank-major) added
    into the output ``channels`` of ``y0`` (``(B, C, *spatial)``)."""
    b, c = y0.shape[:2]
    gains = gains.to(yb.dtype)  # under autocast the convolutions return float16/bfloat16, the gains stay float32
    out = _PartialBankCombine.apply(y0.reshape(b, c, -1), yb.reshape(b, yb.shape[1], -1),
                                    gains.reshape(gains.shape[0], -1), channels)
    return _add_bias(out.reshape(y0.shape), bias)


def _add_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return out if bias is None else out + bias.reshape(1, -1, *(1,) * (out.dim() - 2))


class _RelaxedConv(SoftConvBase):
    """Steerable convolution with a smooth, non-stationary relaxation over a subgroup S.

    With :math:`u` the (centred, normalised) absolute output position and :math:`z` the kernel offset,

    .. math::
        K(u, z) = K_G(z) + a\\Big[R_0(z) + \\sum_{l=1}^{L} g_l(u)\\, R_l(z)\\Big], \\qquad
        R_l = \\sum_c r_{l,c} B^S_c, \\qquad g_l(u) = \\sum_{m=1}^{M} e_{l,m}\\, \\psi_m(u),

    where :math:`K_G` is the strict G-steerable filter (escnn ``weights``), :math:`B^S` the steerable
    basis of S between the restricted field types, :math:`a \\ge 0` the amplitude and :math:`\\psi_m`
    :func:`position_features`: random Fourier features of an RBF kernel with lengthscale :math:`\\ell`,
    averaged over S (so :math:`g_l` is S-invariant) and anchored at the image centre
    (:math:`\\psi_m(0) = 0`). The output is computed as :math:`L + 1` stacked convolutions combined per
    pixel, :math:`y(u) = [(K_G + aR_0) \\star x](u) + \\sum_l g_l(u) [aR_l \\star x](u) + b`.

    * :math:`a = 0` gives the strict layer exactly; :math:`\\ell = \\infty` (or ``num_banks=0``) gives
      the stationary layer :math:`K_G + aR_0` (translation-equivariant, S-equivariant).
    * For every :math:`g \\in S` the layer is S-equivariant about the centre of a centred grid (odd
      sizes, or any size whose output grid centre is the input grid centre): :math:`R_l` are
      S-steerable and :math:`g_l(A_g u) = g_l(u)`. Translations are broken by the absolute part.
    * The relaxation coefficients start at zero (the layer computes the strict ``R2Conv`` at
      initialisation); :math:`e \\sim \\mathcal N(0, 1)`, so each :math:`g_l` is a draw from the
      (anchored) GP prior.
    * The bias stays G-equivariant and stationary.

    ``penalty()`` (a Gaussian prior on every relaxation parameter and the amplitude, and a preference
    for stationarity):

    .. math::
        \\lambda \\cdot \\tfrac12 \\big(\\lVert r\\rVert^2 + \\lVert e\\rVert^2 + a^2 + \\ell^{-2}\\big)

    Minimising :math:`\\tfrac12(\\lVert r\\rVert^2 + a^2)` at fixed relaxation size :math:`a\\lVert r\\rVert`
    gives :math:`a\\lVert r\\rVert`: a group-lasso penalty that switches unneeded relaxations off.

    Args:
        in_type, out_type, kernel_size: as :class:`escnn.nn.R2Conv`.
        **r2conv_kwargs: as :class:`escnn.nn.R2Conv`.
        relaxed_subgroup: escnn subgroup id S of the fibre group; ``None``: the trivial group
            (unconstrained, band-limited by the same rings and frequency cut-off as the strict basis).
        amplitude: :math:`a \\ge 0`; ``0`` fixes the layer to the strict one.
        lengthscale: :math:`\\ell > 0` in units of the half-width of the output grid;
            ``float('inf')`` fixes the layer to be stationary.
        num_banks: :math:`L \\ge 0`, the number of position-modulated filters (each costs one more
            convolution of the layer's size, times ``bank_fraction``).
        bank_fraction: :math:`\\rho \\in (0, 1]`, the share of the output fields the modulated filters
            :math:`R_1, \\dots, R_L` reach (:func:`bank_fields`: the first :math:`\\lceil \\rho n\\rceil` fields of
            each field type); the other fields have :math:`g_l R_l = 0`, and :math:`R_0` reaches every field. The
            modulated convolution has :math:`\\rho` of the output channels (a second convolution, about
            :math:`\\rho` of the strict one's cost where convolutions are large); ``1`` is the layer above (van der
            Ouderaa et al.'s: every output field modulated). ``None`` (default): :data:`DEFAULT_BANK_FRACTION` (¼),
            or 1 for a grouped convolution (``groups > 1``, whose fields cannot be restricted). At a field type with
            fewer than 4 fields a quarter is one field. :math:`R_l` stay S-steerable between the restricted types,
            so every guarantee above holds.
        bank_in_fraction: :math:`\\rho_{in} \\in (0, 1]`, the share of the input fields the modulated filters read
            (the same rule on the input type); the modulated convolution then reads :math:`\\rho_{in}` of the input
            channels too, :math:`\\rho\\,\\rho_{in}` of the strict convolution's arithmetic. Convolution libraries
            work in blocks of output channels (oneDNN: 16 on AVX-512), so a narrow modulated convolution costs a whole
            block whatever :math:`\\rho`; reading fewer inputs is what shrinks it further (``results_3d.md``).
            ``1``: every input field; ``None`` (default): as ``bank_fraction``.
        num_features: :math:`M \\ge 1` random Fourier features.
        penalty_weight: :math:`\\lambda \\ge 0`.
        learn_hyperparameters: train :math:`\\log a` and :math:`\\log\\ell` (default); an amplitude of 0
            or an infinite lengthscale is never trained.

    ``hyperparameters()``: ``{"amplitude", "lengthscale"}``; the raw leaves are ``log_amplitude`` and
    ``log_lengthscale`` (:meth:`hyperparameter_parameters`).
    ``degree()`` keys: ``method``, ``group``, ``relaxed_subgroup``, ``amplitude``, ``lengthscale``
    (``None`` when infinite), ``relative_norm`` (RMS over a 17x17 grid of positions of the part of
    :math:`K(u, \\cdot)` outside the G-steerable span, relative to the RMS of :math:`K(u, \\cdot)`),
    ``nonstationary_norm`` (RMS of :math:`K(u, \\cdot) - \\bar K`, relative), ``equivariance_error``
    (``{subgroup: relative error}`` on grid-exact elements), ``translation_error``.
    """

    method = "relaxed"

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int, relaxed_subgroup: Any = None,
                 amplitude: float = 1.0, lengthscale: float = 1.0, num_banks: int = 1, num_features: int = 16,
                 penalty_weight: float = 1e-3, learn_hyperparameters: bool = True, bank_fraction: float | None = None,
                 bank_in_fraction: float | None = None, **r2conv_kwargs: Any):
        log_a = _positive_log(amplitude, "amplitude", allow_zero=True, allow_inf=False)
        log_l = _positive_log(lengthscale, "lengthscale", allow_zero=False, allow_inf=True)
        for name, value, low in (("num_banks", num_banks, 0), ("num_features", num_features, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if isinstance(penalty_weight, bool) or not isinstance(penalty_weight, (int, float)) or \
                not penalty_weight >= 0:
            raise ValueError(f"penalty_weight: {penalty_weight!r} is not allowed; pass a number >= 0")
        # not given: a quarter, or every field for a grouped convolution (whose fields cannot be restricted, below)
        default = 1.0 if r2conv_kwargs.get("groups", 1) != 1 else DEFAULT_BANK_FRACTION
        bank_fraction = default if bank_fraction is None else bank_fraction
        bank_in_fraction = default if bank_in_fraction is None else bank_in_fraction
        for name, value, what in (("bank_fraction", bank_fraction, "reach every output field"),
                                  ("bank_in_fraction", bank_in_fraction, "read every input field")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{name}: {value!r} is not allowed; pass a number in (0, 1] (1: the modulated "
                                 f"filters {what})")
        super().__init__(in_type, out_type, kernel_size, relaxed_subgroup=relaxed_subgroup, **r2conv_kwargs)
        self.num_banks = num_banks
        self.bank_fraction = float(bank_fraction)
        self.bank_in_fraction = float(bank_in_fraction)
        self.penalty_weight = float(penalty_weight)
        self._relaxation_expansion = self._subgroup_expansion()
        fields = bank_fields(out_type, bank_fraction)
        in_fields = bank_fields(in_type, bank_in_fraction)
        partial_in = num_banks > 0 and len(in_fields) < len(in_type)
        partial = partial_in or (num_banks > 0 and len(fields) < len(out_type))
        for name, value in (("bank_fraction", bank_fraction), ("bank_in_fraction", bank_in_fraction)):
            if partial and value < 1 and self.groups > 1:
                raise ValueError(f"{name}: {value!r} needs groups=1 (got groups={self.groups}); pass {name}=1 "
                                 "for a grouped convolution")
        # R_0 [, R_1 .. R_L when they reach every field]; else R_1 .. R_L in bank_weights, between fewer fields
        self._bank_expansion = (self._subgroup_expansion(out_type.index_select(fields), in_type.index_select(in_fields))
                                if partial else None)
        self.relaxed_weights = torch.nn.Parameter(torch.zeros(1 if partial else num_banks + 1,
                                                              self._relaxation_expansion.dimension()))
        if partial:
            self.bank_weights = torch.nn.Parameter(torch.zeros(num_banks, self._bank_expansion.dimension()))
            self.register_buffer("bank_channels", torch.tensor(_field_channels(out_type, fields), dtype=torch.long),
                                 persistent=False)
        else:
            self.register_parameter("bank_weights", None)
            self.register_buffer("bank_channels", None, persistent=False)
        self.register_buffer("bank_in_channels", torch.tensor(_field_channels(in_type, in_fields), dtype=torch.long)
                             if partial_in else None, persistent=False)
        self.bank_coefficients = torch.nn.Parameter(torch.randn(num_banks, num_features))
        self.log_amplitude = torch.nn.Parameter(torch.tensor(log_a),
                                                requires_grad=learn_hyperparameters and math.isfinite(log_a))
        self.log_lengthscale = torch.nn.Parameter(torch.tensor(log_l),
                                                  requires_grad=learn_hyperparameters and math.isfinite(log_l))
        self.register_buffer("rff_frequencies", torch.randn(num_features, self._dim))
        self.register_buffer("rff_phases", 2 * math.pi * torch.rand(num_features))
        matrices = subgroup_matrices(self.space, self.relaxed_subgroup)
        self.register_buffer("_subgroup_matrices", None if matrices is None else
                             torch.as_tensor(matrices, dtype=torch.float32), persistent=False)
        self._nonstationary = num_banks > 0 and math.isfinite(log_a) and math.isfinite(log_l)
        self._gains_cache: FilterCache[torch.Tensor] = FilterCache()

    # -- filters -------------------------------------------------------------------------------------

    def amplitude(self) -> torch.Tensor:
        """:math:`a`."""
        return self.log_amplitude.exp()

    def lengthscale(self) -> torch.Tensor:
        """:math:`\\ell`."""
        return self.log_lengthscale.exp()

    def hyperparameters(self) -> dict[str, torch.Tensor]:
        """``{"amplitude": a, "lengthscale": ℓ}`` (differentiable in the log-parameters)."""
        return {"amplitude": self.amplitude(), "lengthscale": self.lengthscale()}

    def relaxation_filters(self) -> torch.Tensor:
        """:math:`R_0, \\dots, R_L`, shape ``(L+1, C_out, C_in/groups, k, k)`` (zero on the output channels the
        modulated filters do not reach, see ``bank_fraction``)."""
        r0, banks = self._relaxations()
        return torch.cat([r0[None], self._embed(banks)], dim=0)

    def _expanded_relaxation(self, expansion: BlocksBasisExpansion, coefficients: torch.Tensor) -> torch.Tensor:
        filt = expand_blocks(expansion, coefficients)
        return filt.reshape(*filt.shape[:3], *self._kernel_shape)

    def _relaxations(self, stationary_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:math:`R_0` ``(C_out, ...)`` and :math:`R_1, \\dots, R_L` on the output channels they reach
        (``(L, C_bank, ...)``; ``None`` with ``stationary_only``)."""
        if self._bank_expansion is None:
            relax = self._expanded_relaxation(self._relaxation_expansion,
                                              self.relaxed_weights[:1] if stationary_only else self.relaxed_weights)
            return relax[0], None if stationary_only else relax[1:]
        r0 = self._expanded_relaxation(self._relaxation_expansion, self.relaxed_weights)[0]
        return r0, None if stationary_only else self._expanded_relaxation(self._bank_expansion, self.bank_weights)

    def _embed(self, banks: torch.Tensor) -> torch.Tensor:
        """Bank filters on the channels they reach, placed into ``C_out`` output channels (zero elsewhere) and
        ``C_in`` input channels (zero on the inputs they do not read)."""
        if self.bank_channels is None:
            return banks
        full = banks.new_zeros(banks.shape[0], self.out_type.size, *banks.shape[2:])
        return self._embed_inputs(full.index_copy(1, self.bank_channels, banks), 2)

    def _embed_inputs(self, filt: torch.Tensor, dim: int) -> torch.Tensor:
        """``filt`` with its input channels (dimension ``dim``) placed into the layer's ``C_in`` (zero on the input
        channels the banks do not read)."""
        if self.bank_in_channels is None:
            return filt
        shape = list(filt.shape)
        shape[dim] = self._in_group_type.size
        return filt.new_zeros(shape).index_copy(dim, self.bank_in_channels, filt)

    def _bank_filters(self, stationary_only: bool = False) -> torch.Tensor:
        """:math:`[K_G + aR_0, aR_1, \\dots, aR_L]` (only the first with ``stationary_only``), shape
        ``(L+1, C_out, C_in/groups, k, k)``."""
        a = self.amplitude()
        r0, banks = self._relaxations(stationary_only)
        k0 = (self.strict_filter() + a * r0)[None]
        return k0 if banks is None else torch.cat([k0, a * self._embed(banks)], dim=0)

    def _expand(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The bank filters stacked along the output channels, ordered (conv group, bank, channel); with
        ``bank_fraction < 1``: :math:`K_G + aR_0` on every channel, then each :math:`aR_l` on the channels it
        reaches."""
        if self.bank_channels is not None and self._nonstationary:
            k0, kb = self._partial_filters()
            return torch.cat([k0, self._embed_inputs(kb, 1)], dim=0), self.strict_bias()
        banks = self._bank_filters(stationary_only=not self._nonstationary)
        n, c_out = banks.shape[:2]
        banks = banks.reshape(n, self.groups, c_out // self.groups, *banks.shape[2:]).transpose(0, 1)
        return banks.reshape(-1, *banks.shape[3:]), self.strict_bias()

    def _partial_filters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """With ``bank_fraction < 1`` (or ``bank_in_fraction < 1``): :math:`K_G + aR_0` on every output channel and
        :math:`[aR_1, \\dots, aR_L]` stacked on the channels they reach, from the input channels they read, as two
        tensors (each trained tensor reaches one of them, so the
        Laplace curvature keeps its per-convolution structure)."""
        a = self.amplitude()
        r0, banks = self._relaxations()
        return self.strict_filter() + a * r0, (a * banks).flatten(0, 1)

    def stationary_filter(self) -> torch.Tensor:
        """:math:`K(0, \\cdot) = K_G + aR_0`: the filter at the image centre, and everywhere when stationary."""
        return self._bank_filters(stationary_only=True)[0]

    def gains(self, *shape: int) -> torch.Tensor:
        """:math:`g_l(u)` on an output grid of ``shape`` (``height, width`` in 2D, ``depth, height, width`` in 3D),
        shape ``(L, *shape)``."""
        if len(shape) != self._dim:
            raise ValueError(f"shape: expected {self._dim} output sizes, got {shape!r}")
        feats = position_features_nd(shape, self.rff_frequencies, self.rff_phases, self.log_lengthscale,
                                     self._subgroup_matrices)
        return torch.einsum("lm,mp->lp", self.bank_coefficients, feats.reshape(feats.shape[0], -1)).reshape(-1, *shape)

    def _cached_gains(self, *shape: int) -> torch.Tensor:
        return self._cached(self._gains_cache, lambda: self.gains(*shape), extra=shape)

    def _caches(self) -> list[FilterCache]:
        return [*super()._caches(), self._gains_cache]

    def forward(self, input: GeometricTensor) -> GeometricTensor:
        """:math:`y(u) = [(K_G + aR_0) \\star x](u) + \\sum_l g_l(u)\\,[aR_l \\star x](u) + b`: one convolution with
        the stacked bank filters, combined per pixel (with ``bank_fraction < 1``: one convolution with
        :math:`K_G + aR_0` and one with the banks on the channels they reach, from the input channels they read)."""
        self._check_input(input)
        if self._nonstationary and self.bank_channels is not None:
            # two convolutions: K_G + aR_0 on every channel, the banks on the channels they reach (the filter cache
            # holds this pair and the bias here, never _expand's stacked filter)
            k0, kb, bias = self._cached(self._filter_cache, lambda: (*self._partial_filters(), self.strict_bias()))
            y0 = self._conv(input.tensor, k0, None)
            x = input.tensor if self.bank_in_channels is None else input.tensor.index_select(1, self.bank_in_channels)
            # the narrow modulated convolution in channels-last layout: measured 1.0-2.1x faster on CPU (oneDNN,
            # forward + backward) than in the default layout (results_3d.md); the result is the same
            x = x.contiguous(memory_format=torch.channels_last if self._dim == 2 else torch.channels_last_3d)
            out = _combine_partial(y0, self._conv(x, kb, None), self._cached_gains(*y0.shape[2:]),
                                   self.bank_channels, bias)
            return GeometricTensor(out, self.out_type)
        filt, bias = self._expanded()
        if not self._nonstationary:
            return GeometricTensor(self._conv(input.tensor, filt, bias), self.out_type)
        y = self._conv(input.tensor, filt, None)
        out = _combine(y, self._cached_gains(*y.shape[2:]), self.num_banks, self.groups, bias)
        return GeometricTensor(out, self.out_type)

    def export(self) -> torch.nn.Module:
        """A plain :class:`torch.nn.Conv2d` (``Conv3d`` in 3D) when the layer is stationary, else a
        :class:`RelaxedConvExport`."""
        if not self._nonstationary:
            return super().export()
        with torch.no_grad():
            filt, bias = self._expand()
        conv = self._plain_conv(filt, None)
        return RelaxedConvExport(conv, self.num_banks, bias, self.bank_coefficients, self.rff_frequencies,
                                 self.rff_phases, self.log_lengthscale, self._subgroup_matrices,
                                 self.bank_channels).eval()

    # -- soft-module interface -------------------------------------------------------------------------

    def penalty(self) -> torch.Tensor:
        """:math:`\\lambda\\,\\tfrac12(\\lVert r\\rVert^2 + \\lVert e\\rVert^2 + a^2 + \\ell^{-2})` (:math:`r`: the
        coefficients of every :math:`R_l`, ``relaxed_weights`` and ``bank_weights``)."""
        total = (self.relaxed_weights.pow(2).sum() + self.bank_coefficients.pow(2).sum()
                 + self.amplitude().pow(2) + torch.exp(-2 * self.log_lengthscale))
        if self.bank_weights is not None:
            total = total + self.bank_weights.pow(2).sum()
        return self.penalty_weight * 0.5 * total

    def degree(self) -> dict[str, Any]:
        with torch.no_grad():
            banks = self._bank_filters()
            flat = banks.reshape(banks.shape[0], banks.shape[1], banks.shape[2], -1).to(torch.float64)
            gram = torch.einsum("foip,goip->fg", flat, flat)
            outside = gram - projection_gram(self._basisexpansion, flat)
            n = 17 if self._dim == 2 else 9
            g = self.gains(*(n,) * self._dim).reshape(self.num_banks, n ** self._dim).to(torch.float64)  # L may be 0
            v = torch.cat([torch.ones(1, g.shape[1], dtype=torch.float64, device=g.device), g], dim=0)  # (L+1, n^d)
            dv = v - v.mean(1, keepdim=True)
            if not self._nonstationary:
                v, dv = v[:1], dv[:1]
                gram, outside = gram[:1, :1], outside[:1, :1]
            total = float(torch.einsum("fu,fg,gu->", v, gram, v))
            rel = math.sqrt(max(float(torch.einsum("fu,fg,gu->", v, outside, v)), 0.0) / total) if total > 0 else 0.0
            nonstat = math.sqrt(max(float(torch.einsum("fu,fg,gu->", dv, gram, dv)), 0.0) / total) if total > 0 else 0.0
            out = self._degree_header()
            lengthscale = float(self.lengthscale())
            out.update({
                "amplitude": float(self.amplitude()),
                "lengthscale": lengthscale if math.isfinite(lengthscale) else None,
                "relative_norm": rel,
                "nonstationary_norm": nonstat,
            })
        out.update(self._measured_errors())
        return out

    def extra_repr(self) -> str:
        fraction = "" if self.bank_fraction == 1 else f", bank_fraction={self.bank_fraction}"
        if self.bank_in_fraction != 1:
            fraction += f", bank_in_fraction={self.bank_in_fraction}"
        return super().extra_repr() + f", num_banks={self.num_banks}{fraction}, stationary={not self._nonstationary}"


class RelaxedConvExport(torch.nn.Module):
    """Plain-torch export of a non-stationary :class:`RelaxedR2Conv` / :class:`RelaxedR3Conv`.

    :math:`y(u) = y_0(u) + \\sum_l g_l(u)\\, y_l(u) + b` with :math:`[y_0, \\dots, y_L] =`
    ``conv(x)`` (one :class:`torch.nn.Conv2d` / ``Conv3d`` holding the stacked filters) and the frozen gains
    :math:`g_l` of :func:`position_features_nd`; with ``bank_channels``, :math:`y_l` (:math:`l \\ge 1`) are added
    into those output channels only.
    """

    def __init__(self, conv: torch.nn.Module, num_banks: int, bias: torch.Tensor | None,
                 bank_coefficients: torch.Tensor, frequencies: torch.Tensor, phases: torch.Tensor,
                 log_lengthscale: torch.Tensor, matrices: torch.Tensor | None,
                 bank_channels: torch.Tensor | None = None):
        super().__init__()
        self.conv = conv
        self.num_banks = num_banks
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("bank_coefficients", bank_coefficients.detach().clone())
        self.register_buffer("rff_frequencies", frequencies.detach().clone())
        self.register_buffer("rff_phases", phases.detach().clone())
        self.register_buffer("log_lengthscale", log_lengthscale.detach().clone())
        self.register_buffer("subgroup_matrices", None if matrices is None else matrices.detach().clone())
        self.register_buffer("bank_channels", None if bank_channels is None else bank_channels.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        feats = position_features_nd(tuple(y.shape[2:]), self.rff_frequencies, self.rff_phases,
                                     self.log_lengthscale, self.subgroup_matrices)
        gains = torch.einsum("lm,mp->lp", self.bank_coefficients, feats.reshape(feats.shape[0], -1))
        if self.bank_channels is None:
            return _combine(y, gains, self.num_banks, self.conv.groups, self.bias)
        c = y.shape[1] - self.num_banks * self.bank_channels.shape[0]
        return _combine_partial(y[:, :c], y[:, c:], gains, self.bank_channels, self.bias)


#: the 2D name of :class:`RelaxedConvExport`
RelaxedConv2dExport = RelaxedConvExport


class RelaxedR2Conv(_RelaxedConv, SoftR2ConvBase):
    __doc__ = _RelaxedConv.__doc__


class RelaxedR3Conv(_RelaxedConv, SoftR3ConvBase):
    """:class:`RelaxedR2Conv` on escnn's 3D gspaces (SO(3), O(3) and their subgroups; arguments of
    :class:`escnn.nn.R3Conv`).

    Everything carries over with :math:`u \\in [-1, 1]^3` the centred output position (x along W, y against H,
    z against D, escnn's frame). The position features are averaged over S: over its elements for a finite S
    (e.g. the octahedral group ``'octa'`` of SO(3), ``(False, 'octa')`` / ``(True, 'octa')`` of O(3)), in closed
    form for S ⊇ SO(3) (:math:`\\operatorname{sinc}` in place of :math:`J_0`), and over the grid-exact elements of
    S for another continuous S (e.g. SO(2) about z: exact equivariance under the rotations by multiples of
    90° about z, as every discretised layer). ``degree()`` measures the norms on a 9x9x9 grid of positions.
    """
