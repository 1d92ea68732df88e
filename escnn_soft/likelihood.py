"""Fourier-parameterised likelihoods over a compact group (Veefkind & Cesa, ICML 2024).

A :class:`GroupLikelihood` is a density :math:`\\lambda: H \\to \\mathbb{R}_{\\ge 0}` with
:math:`\\int_H \\lambda\\,dh = 1` (mean 1 under the normalised Haar measure, so uniform means
:math:`\\lambda \\equiv 1`). It is built in three steps (METHODS section 1):

1. unnormalised Fourier coefficients :math:`\\hat\\lambda'(\\psi)` for every irrep :math:`\\psi` up to
   the band limit :math:`L` give
   :math:`\\lambda'(h) = \\sum_\\psi \\tfrac{d_\\psi}{c_\\psi}\\,\\mathrm{tr}(\\hat\\lambda'(\\psi)\\,\\psi(h)^T)`
   (:math:`d_\\psi` the dimension, :math:`c_\\psi` the dimension of the endomorphism algebra: 1 for
   real-type irreps, 2 for the complex-type irreps of SO(2) and C_N);
2. on a grid :math:`h_1..h_N` (regular for 2D groups, Thomson for SO(3)/O(3), every element for a
   finite group) a softmax that divides by the mean:
   :math:`\\lambda(h_n) = e^{\\lambda'(h_n) - m} / (\\tfrac1N \\sum_k e^{\\lambda'(h_k) - m})`;
3. a least-squares projection onto the irreps up to :math:`L_{out} \\ge L`, giving the normalised
   Fourier matrices :math:`\\hat\\Lambda(\\psi) = \\int_H \\lambda(h)\\psi(h)\\,dh` that the
   probabilistic layers use.

Uniform :math:`\\lambda` has :math:`\\hat\\Lambda(\\psi) = 0` for every non-trivial irrep, which makes a
probabilistic layer exactly the strict escnn layer. :math:`\\lambda` is left-invariant under a
subgroup :math:`S` iff :math:`\\psi(s)\\hat\\Lambda(\\psi) = \\hat\\Lambda(\\psi)` for all
:math:`s \\in S`, and then the layer is exactly :math:`S`-equivariant.

``parameterisation="square"`` replaces steps 2–3 by a construction that is a density at *every* group element
with *exact* Fourier matrices (no grid, no least squares):

.. math::
    f(h) = \\sum_{\\psi \\le M} \\tfrac{d_\\psi}{c_\\psi}\\,\\mathrm{tr}(\\hat f(\\psi)\\,\\psi(h)^T), \\qquad
    \\lambda(h) = \\frac{f(h)^2}{\\int_H f^2\\,dh}, \\qquad M = \\lceil L/2 \\rceil .

Writing :math:`f(h) = c^T s(h)` (:math:`c` the flattened coefficients, :math:`s` the weighted matrix
coefficients), every Fourier matrix is a quadratic form in :math:`c`,

.. math::
    \\hat\\Lambda(\\rho)_{mn} = \\frac{c^T\\,T^{\\rho}_{mn}\\,c}{c^T G\\,c}, \\qquad
    T^{\\rho}_{mn}[p, q] = \\int_H \\rho_{mn}(h)\\,s_p(h)\\,s_q(h)\\,dh, \\qquad G = T^{\\text{trivial}},

with the constant 3-tensor :math:`T` integrated exactly by :func:`escnn_soft.quadrature.exact_quadrature` (the
integrand has frequency at most :math:`2M + L_{out}`) and :math:`G = \\int s s^T` from Schur orthogonality
(Parseval). :math:`\\lambda` has frequencies up to :math:`2M` only (Clebsch–Gordan), so with
:math:`L_{out} \\ge 2M` (the default) its Fourier series up to :math:`L_{out}` *is* :math:`\\lambda`: the layers
average transformed kernels with a non-negative weight. :math:`f \\equiv 1` is uniform; :math:`f` left-invariant
under :math:`S` makes :math:`\\lambda` so (:meth:`GroupLikelihood.concentrate_on_`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from escnn.group import O2, O3, SO2, SO3, Group, GroupElement, IrreducibleRepresentation

from escnn_soft.quadrature import exact_quadrature
from escnn_soft.subgroups import default_subgroups, subgroup

__all__ = ["PARAMETERISATIONS", "GroupLikelihood"]

#: The constructions of λ from its coefficients: ``"softmax"`` (the paper's grid softmax and least-squares
#: projection) and ``"square"`` (λ = f² / ∫f², a density everywhere with exact Fourier matrices).
PARAMETERISATIONS = ("softmax", "square")

_SUPPORTED = "finite groups (C_N, D_N, ...), SO(2), O(2), SO(3), O(3) and their subgroups"


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name}={value} is invalid: it must be >= {minimum}")
    return int(value)


def band_limited_irreps(group: Group, L: int) -> tuple[list[IrreducibleRepresentation], int]:
    """The irreps of ``group`` with frequency <= ``L``, and the band limit actually used.

    For a finite group ``L`` is capped at the largest frequency it has, so a large ``L`` means
    every irrep.
    """
    if group.order() > 0:
        for cap in range(L, -1, -1):
            try:
                return [group.irrep(*i) for i in group.bl_irreps(cap)], cap
            except (AssertionError, ValueError):
                continue
    return [group.irrep(*i) for i in group.bl_irreps(L)], L


def _grid(group: Group, grid_size: int | None, n_coefficients: int) -> list[GroupElement]:
    if group.order() > 0:
        return list(group.elements)
    if isinstance(group, (SO2, O2)):
        n = grid_size or max(16, 2 * n_coefficients)
        return list(group.grid(n))
    if isinstance(group, (SO3, O3)):
        n = grid_size or max(64, 3 * n_coefficients)
        return list(group.grid("thomson", N=n))
    raise ValueError(f"group: {group} is not supported; GroupLikelihood supports {_SUPPORTED}")


def _endomorphism_scale(irrep: IrreducibleRepresentation) -> float:
    """:math:`d_\\psi / c_\\psi`, the Fourier-inversion weight of an irrep in real form."""
    return irrep.size / irrep.endomorphism_basis().shape[0]


def irrep_features(irreps: Sequence[IrreducibleRepresentation], elements: Sequence[GroupElement],
                   weighted: bool = True) -> np.ndarray:
    """Matrix ``F[n, m]`` of the matrix coefficients :math:`\\psi_{ki}(h_n)` of every irrep, flattened.

    With ``weighted`` each block is multiplied by :math:`d_\\psi / c_\\psi`, so that
    ``F @ vec(Lambda)`` is the Fourier inversion :math:`\\lambda(h_n)`.
    """
    cols = []
    for irrep in irreps:
        w = _endomorphism_scale(irrep) if weighted else 1.0
        cols.append(np.stack([w * np.asarray(irrep(g), dtype=np.float64).reshape(-1) for g in elements]))
    return np.concatenate(cols, axis=1)


def haar_gram(irreps: Sequence[IrreducibleRepresentation]) -> np.ndarray:
    """Gram matrix of the matrix coefficients under the normalised Haar measure.

    Schur orthogonality in real form: :math:`\\int_H \\psi_{ki}\\,\\psi_{lj}\\,dh =
    \\tfrac{1}{d_\\psi}\\sum_e E_e[k,l]\\,E_e[i,j]` with :math:`E_e` the orthonormal endomorphism
    basis of :math:`\\psi`; coefficients of different irreps are orthogonal.
    """
    blocks = []
    for irrep in irreps:
        d = irrep.size
        E = np.asarray(irrep.endomorphism_basis(), dtype=np.float64)
        blocks.append(np.einsum("ekl,eij->kilj", E, E).reshape(d * d, d * d) / d)
    total = sum(b.shape[0] for b in blocks)
    out = np.zeros((total, total))
    p = 0
    for b in blocks:
        out[p:p + b.shape[0], p:p + b.shape[0]] = b
        p += b.shape[0]
    return out


def _identity_neighbourhood(group: Group, n: int, generator: torch.Generator | None) -> list[GroupElement]:
    """Random elements near the identity: angle ~ N(0, 0.2 rad) in 2D, quaternion 1 + N(0, 0.1) in 3D."""
    if n == 0 or group.order() > 0:
        return []
    if isinstance(group, (SO2, O2)):
        angles = (0.2 * torch.randn(n, generator=generator, dtype=torch.float64)).tolist()
        if isinstance(group, SO2):
            return [group.element(a, "radians") for a in angles]
        return [group.element((0, a), "radians") for a in angles]
    q = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64) + 0.1 * torch.randn(
        n, 4, generator=generator, dtype=torch.float64)
    q = (q / q.norm(dim=1, keepdim=True)).numpy()
    if isinstance(group, SO3):
        return [group.element(qi, "Q") for qi in q]
    return [group.element((0, qi), "Q") for qi in q]


class _Constants(NamedTuple):
    """What a :class:`GroupLikelihood` derives from its group and arguments alone (nothing learned)."""

    group: Group  # held so that the id(group) of the cache key cannot be reused while the entry lives
    grid: tuple[GroupElement, ...]
    grid_key: tuple[str, ...]
    synthesis: np.ndarray  # read-only float64 arrays
    analysis: np.ndarray | None  # None for parameterisation="square" (no projection)
    alignment_features: np.ndarray
    identity_pool: np.ndarray


_CONSTANTS: dict[tuple[int, str, int, int, int | None, int], _Constants] = {}


def _compute_constants(group: Group, irreps: list[IrreducibleRepresentation],
                       out_irreps: list[IrreducibleRepresentation], L_out: int, grid_size: int | None,
                       n_identity_samples: int, with_analysis: bool = True) -> _Constants:
    """The grid, the Fourier synthesis/analysis matrices and the alignment features of a likelihood.

    ``with_analysis=False`` (the square parameterisation, whose Fourier matrices are exact) skips the
    least-squares projection and its check that the grid resolves the irreps up to ``L_out``.
    """
    grid = _grid(group, grid_size, sum(irrep.size ** 2 for irrep in out_irreps))
    synthesis = irrep_features(irreps, grid)
    analysis = None
    if with_analysis:
        basis = irrep_features(out_irreps, grid, weighted=False)
        gram = haar_gram(out_irreps)
        if np.linalg.matrix_rank(basis) < np.linalg.matrix_rank(gram):
            raise ValueError(f"grid_size={grid_size}: {len(grid)} grid points cannot resolve the irreps up "
                             f"to L_out={L_out}; use a larger grid_size (or leave it None)")
        analysis = np.asarray(gram @ np.linalg.pinv(basis, rcond=1e-10), dtype=np.float64)
        analysis.setflags(write=False)
    grid_and_identity = irrep_features(out_irreps, list(grid) + [group.identity])
    pool = _identity_neighbourhood(group, 8 * n_identity_samples, torch.Generator().manual_seed(0))
    pool_features = irrep_features(out_irreps, pool) if pool else np.zeros((0, grid_and_identity.shape[1]))
    arrays = [np.asarray(a, dtype=np.float64) for a in (synthesis, grid_and_identity, pool_features)]
    for a in arrays:
        a.setflags(write=False)
    return _Constants(group, tuple(grid), tuple(str(g) for g in grid), arrays[0], analysis, *arrays[1:])


def _constants(group: Group, irreps: list[IrreducibleRepresentation], out_irreps: list[IrreducibleRepresentation],
               L: int, L_out: int, grid_size: int | None, n_identity_samples: int,
               parameterisation: str = "softmax") -> _Constants:
    """:func:`_compute_constants`, memoised per (group object, parameterisation, band limits, grid size, pool size).

    Every likelihood over one group with the same arguments has the same grid and matrices; for SO(3) they
    take a Thomson grid from escnn's disk cache and ~10^3 Wigner matrices, most of the construction time
    of a probabilistic R3Conv. The cache holds read-only NumPy arrays that each likelihood copies into
    tensors of its own, so no two likelihoods share a tensor.
    """
    key = (id(group), parameterisation, L, L_out, grid_size, n_identity_samples)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = _compute_constants(group, irreps, out_irreps, L_out, grid_size, n_identity_samples,
                                             with_analysis=parameterisation == "softmax")
    return _CONSTANTS[key]


class _SquareConstants(NamedTuple):
    """The exact product tensor of ``parameterisation="square"`` for one group and root band limit."""

    group: Group  # held so that the id(group) of the cache key cannot be reused while the entry lives
    root_irreps: tuple[IrreducibleRepresentation, ...]
    root_L: int
    irrep_ids: tuple[tuple, ...]  # the irreps ρ of the rows of ``product``: every irrep λ = f² can contain
    product: np.ndarray  # read-only (n_rows, n_f, n_f): T[ρ_mn, p, q]; rows of irreps outside λ's support are 0


_SQUARE_CONSTANTS: dict[tuple[int, int], _SquareConstants] = {}

#: Entries of the product tensor below this are quadrature rounding (~1e-16 times the number of nodes) of
#: integrals that vanish by the selection rules of the Clebsch–Gordan decomposition; they are set to 0, so
#: that uniform λ has Λ̂(ψ) = 0 exactly for ψ non-trivial. Non-zero entries are products of Clebsch–Gordan
#: coefficients, many orders of magnitude larger at the band limits used here.
_SELECTION_RULE_ZERO = 1e-10


def _product_tensor(group: Group, root_irreps: Sequence[IrreducibleRepresentation],
                    irreps: Sequence[IrreducibleRepresentation], degree: int) -> np.ndarray:
    """:math:`T[\\rho_{mn}, p, q] = \\int_H \\rho_{mn}\\,s_p\\,s_q\\,dh` by a quadrature exact up to ``degree``.

    :math:`s` are the weighted matrix coefficients of ``root_irreps`` (so :math:`f = c^T s`), :math:`\\rho`
    runs over ``irreps``. The row of the trivial irrep is set to the Gram matrix :math:`G = \\int s s^T` from
    Schur orthogonality (:func:`haar_gram`, which the quadrature reproduces to rounding).
    """
    elements, weights = exact_quadrature(group, degree)
    s = irrep_features(root_irreps, elements)
    rho = irrep_features(irreps, elements, weighted=False)
    T = np.einsum("nr,np,nq->rpq", rho * weights[:, None], s, s)
    T[np.abs(T) < _SELECTION_RULE_ZERO] = 0.0
    scale = np.concatenate([np.full(i.size ** 2, _endomorphism_scale(i)) for i in root_irreps])
    trivial = next(k for k, i in enumerate(irreps) if i.is_trivial())
    p = sum(i.size ** 2 for i in irreps[:trivial])
    T[p] = scale[:, None] * haar_gram(root_irreps) * scale[None, :]
    return T


def _square_constants(group: Group, root_L: int) -> _SquareConstants:
    """:class:`_SquareConstants`, memoised per (group object, root band limit).

    The rows cover every irrep that :math:`f^2` can contain: for a finite group every irrep (exact sums over
    the group); for SO(2)/O(2)/SO(3)/O(3) the irreps up to :math:`2M` (the Clebsch–Gordan series of two
    irreps of frequency at most :math:`M` stops there), integrated exactly at degree :math:`4M`.
    """
    key = (id(group), root_L)
    if key not in _SQUARE_CONSTANTS:
        root_irreps, M = band_limited_irreps(group, root_L)
        if group.order() > 0:
            rows, degree = list(group.irreps()), 0
        else:
            rows, degree = band_limited_irreps(group, 2 * M)[0], 4 * M
        T = _product_tensor(group, root_irreps, rows, degree)
        T.setflags(write=False)
        _SQUARE_CONSTANTS[key] = _SquareConstants(group, tuple(root_irreps), M, tuple(i.id for i in rows), T)
    return _SQUARE_CONSTANTS[key]


def _square_band_limit(group: Group, L: int, const: _SquareConstants) -> int:
    """The smallest band limit ``>= L`` whose irreps hold every irrep of λ = f² (its Fourier support)."""
    support, p = set(), 0
    for irrep_id in const.irrep_ids:
        d = group.irrep(*irrep_id).size
        if np.any(const.product[p:p + d * d]):
            support.add(irrep_id)
        p += d * d
    limit = L  # terminates: at 2M for the continuous groups, at the cap (every irrep) for a finite one
    while not support <= {i.id for i in band_limited_irreps(group, limit)[0]}:
        limit += 1
    return band_limited_irreps(group, limit)[1]


def _product_rows(const: _SquareConstants, irreps: Sequence[IrreducibleRepresentation]) -> np.ndarray:
    """The rows of the product tensor for ``irreps`` (in that order); irreps beyond λ's support get 0."""
    offsets, p = {}, 0
    for irrep_id in const.irrep_ids:
        d = const.group.irrep(*irrep_id).size
        offsets[irrep_id] = p
        p += d * d
    n = const.product.shape[1]
    blocks = [const.product[offsets[i.id]:offsets[i.id] + i.size ** 2] if i.id in offsets
              else np.zeros((i.size ** 2, n, n)) for i in irreps]
    return np.concatenate(blocks)


class GroupLikelihood(torch.nn.Module):
    """A learnable density :math:`\\lambda` over a compact escnn group, given by Fourier coefficients.

    Args:
        group: an escnn group (``escnn.group.so2_group()``, ``o2_group()``, ``cyclic_group(N)``,
            ``dihedral_group(N)``, ``so3_group()``, ``o3_group()``, or a subgroup
            ``group.subgroup(id)[0]``).
        L: band limit of λ (for finite groups capped at their largest frequency, so a large value means
            every irrep). ``"softmax"``: of the learnable logits λ′; ``"square"``: λ = f²/∫f² with f
            band-limited at ``ceil(L / 2)`` (capped as well: ``L`` >= twice the largest frequency gives f every
            irrep of a finite group, so that λ can be any density on it), so λ has band limit
            ``2 * ceil(L / 2)`` (``L`` if even).
        L_out: band limit of the Fourier matrices the layers use. ``"softmax"``: ``>= L``, default ``L``;
            ``"square"``: at least the band limit of λ (so that the layers use λ itself), which is the default.
        grid_size: size of the grid used for the softmax, the KL and the alignment loss (per coset for O(2));
            default from ``L_out``.
        n_identity_samples: random elements near the identity added to the grid by
            :meth:`alignment_loss` in each call, drawn from a pool of ``8 * n_identity_samples`` samples
            made (with a fixed seed) at construction, so that no escnn call happens in training.
        parameterisation: ``"softmax"`` (default; the paper's: softmax on the grid, least-squares
            projection to ``L_out``; λ ≥ 0 on the grid only) or ``"square"`` (λ = f²/∫f²: ≥ 0 at every
            element, Fourier matrices exact; module docstring).

    The likelihood keeps its own parameters and buffers in float64 (they are tiny) so that
    densities that vanish on part of a finite group are exact; ``.to(dtype)`` still casts them.
    """

    def __init__(self, group: Group, L: int = 2, L_out: int | None = None, grid_size: int | None = None,
                 n_identity_samples: int = 16, parameterisation: str = "softmax"):
        super().__init__()
        if not isinstance(group, Group):
            raise TypeError(f"group: expected an escnn Group (e.g. escnn.group.so2_group()), "
                            f"got {type(group).__name__} ({group!r})")
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation={parameterisation!r} is not known; use one of "
                             f"{', '.join(map(repr, PARAMETERISATIONS))}")
        self.parameterisation = parameterisation
        L = _check_int("L", L, 0)
        if L_out is not None:
            L_out = _check_int("L_out", L_out, 0)
        if grid_size is not None:
            grid_size = _check_int("grid_size", grid_size, 1)
        self.n_identity_samples = _check_int("n_identity_samples", n_identity_samples, 0)
        self.group = group
        if parameterisation == "softmax":
            L_out = L if L_out is None else L_out
            if L_out < L:
                raise ValueError(f"L_out={L_out} is smaller than L={L}: the projection must keep every learned "
                                 f"frequency; pass L_out >= {L} (or leave it None for L_out = L)")
            self.irreps, self.L = band_limited_irreps(group, L)
        else:
            self.L = band_limited_irreps(group, L)[1]
            square = _square_constants(group, (L + 1) // 2)  # uncapped L: a large L gives f every irrep
            #: the irreps of f, the square root of λ: band limit ``ceil(L / 2)``
            self.irreps, self.L_root = list(square.root_irreps), square.root_L
            needed = _square_band_limit(group, self.L, square)
            if L_out is not None and L_out < needed:
                raise ValueError(f"L_out={L_out} is too small for parameterisation='square' with L={L}: λ = f² has "
                                 f"Fourier components up to band limit {needed}, which the layers would drop "
                                 f"(their λ could then be negative); pass L_out >= {needed} (or leave it None)")
            L_out = needed if L_out is None else L_out
        self.out_irreps, self.L_out = band_limited_irreps(group, L_out)
        self._out_slices: list[tuple[IrreducibleRepresentation, int, int]] = []
        p = 0
        for irrep in self.out_irreps:
            self._out_slices.append((irrep, p, irrep.size))
            p += irrep.size ** 2
        const = _constants(group, self.irreps, self.out_irreps, self.L if parameterisation == "softmax"
                           else self.L_root, self.L_out, grid_size, self.n_identity_samples, parameterisation)
        self.grid = list(const.grid)
        self._grid_key = const.grid_key  # compared by kl() on every training step
        # torch.tensor copies: every likelihood owns its buffers, none is a view of the cache
        self.register_buffer("synthesis", torch.tensor(const.synthesis), persistent=False)
        self.register_buffer("alignment_features", torch.tensor(const.alignment_features), persistent=False)
        self.register_buffer("identity_pool", torch.tensor(const.identity_pool), persistent=False)
        if parameterisation == "softmax":
            self.register_buffer("analysis", torch.tensor(const.analysis), persistent=False)
            trivial = torch.zeros(const.analysis.shape[0], dtype=torch.float64)
            trivial[0] = 1.0  # vec Λ̂ of the uniform density: the trivial irrep comes first
            self.register_buffer("trivial_indicator", trivial, persistent=False)
        else:
            self.register_buffer("product", torch.tensor(_product_rows(square, self.out_irreps)), persistent=False)
        init = torch.zeros(const.synthesis.shape[1], dtype=torch.float64)
        init[0] = 1.0  # the trivial irrep comes first: lambda' = 1 (softmax) or f = 1 (square): lambda is uniform
        self.coefficients = torch.nn.Parameter(init)

    # ------------------------------------------------------------------ density
    def _unnormalised(self) -> torch.Tensor:
        """λ′ (softmax) or f (square) on the grid."""
        return self.synthesis @ self.coefficients

    def _root_norm(self) -> torch.Tensor:
        """:math:`\\int_H f^2\\,dh = c^T G c` (Parseval; ``product[0]`` is the Gram matrix G)."""
        return self.coefficients @ self.product[0] @ self.coefficients

    def grid_density(self) -> torch.Tensor:
        """:math:`\\lambda(h_n)` on the grid.

        ``"softmax"``: the mean-normalised softmax (>= 0, mean exactly 1); ``"square"``: the exact
        :math:`f(h_n)^2 / \\int f^2` (>= 0; mean 1 on a finite group, close to 1 on a grid of a continuous one).
        """
        if self.parameterisation == "square":
            return self._unnormalised().pow(2) / self._root_norm()
        logits = self._unnormalised()
        w = torch.exp(logits - logits.max())
        return w / w.mean()

    def _grid_log_probabilities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p, log p)``: λ on the grid renormalised to mean 1 there, and its logarithm, finite everywhere.

        ``"softmax"``: :math:`\\log p_n = \\lambda'(h_n) - \\operatorname{logsumexp}_k \\lambda'(h_k) + \\log N`,
        finite wherever the logits are, also where :math:`p_n` underflows to 0 (logits of size 1e4), so that
        :math:`p\\log p` and its gradient stay finite there (``xlogy`` has an infinite derivative at 0, and 0
        times it is NaN). ``"square"``: :math:`p_n = f_n^2 / \\overline{f^2}` and :math:`\\log p_n` clamped at
        :math:`p_n \\ge 10^{-300}`; where :math:`f_n = 0` both :math:`p_n` and its gradient vanish, so
        :math:`p \\log p` and its gradient are 0 there, not NaN.
        """
        if self.parameterisation == "square":
            f2 = self._unnormalised().pow(2)
            p = f2 / f2.mean()
            return p, torch.log(p.clamp_min(1e-300))
        return self.grid_density(), torch.log_softmax(self._unnormalised(), dim=0) + math.log(len(self.grid))

    def _fourier_flat(self) -> torch.Tensor:
        if self.parameterisation == "square":
            # Λ̂(ρ)_mn = c^T T[ρ_mn] c / c^T G c: exact; uniform f = e_0 gives T[ρ_mn, 0, 0] = 0 exactly for ρ
            # non-trivial (selection-rule zeros are stored as 0) and 1 for the trivial irrep
            rows, n = self.product.shape[0], self.coefficients.shape[0]
            quadratic = (self.product.reshape(rows * n, n) @ self.coefficients).view(rows, n) @ self.coefficients
            return quadratic / quadratic[0]
        # Λ̂ = analysis @ λ, written as analysis @ (λ - 1) + Λ̂(1): the constant 1 has exactly the trivial
        # coefficient 1, so uniform λ gives Λ̂(ψ) = 0 exactly (not 1e-17: such residues turn structural zeros of
        # the filters into tiny values whose products with small activations are slow denormals).
        flat = self.analysis @ (self.grid_density() - 1.0)
        return flat + self.trivial_indicator

    def fourier_coefficients(self) -> dict[tuple, torch.Tensor]:
        """``{irrep id: Lambda(psi)}``, the normalised Fourier matrices up to ``L_out`` (differentiable)."""
        flat = self._fourier_flat()
        return {irrep.id: flat[p:p + d * d].view(d, d) for irrep, p, d in self._out_slices}

    def _features(self, elements: Sequence[GroupElement], irreps: Sequence[IrreducibleRepresentation]) -> torch.Tensor:
        for g in elements:
            if not isinstance(g, GroupElement) or g.group != self.group:
                raise ValueError(f"elements: {g!r} is not an element of {self.group}; build elements with "
                                 f"likelihood.group.element(...)")
        f = irrep_features(irreps, elements)
        return torch.tensor(f, dtype=self.coefficients.dtype, device=self.coefficients.device)

    def density(self, elements: Sequence[GroupElement] | None = None) -> torch.Tensor:
        """:math:`\\lambda(h)` for a list of escnn group elements.

        ``None`` returns :meth:`grid_density`, the density on the likelihood's own grid.
        ``"softmax"``: other elements are evaluated from the band-limited Fourier coefficients
        (:math:`\\lambda(h) = \\sum_\\psi \\tfrac{d_\\psi}{c_\\psi}\\mathrm{tr}(\\hat\\Lambda(\\psi)\\psi(h)^T)`),
        which is what the layers use; for continuous groups it can ring below 0. ``"square"``:
        :math:`\\lambda(h) = f(h)^2 / \\int f^2`, >= 0 everywhere, which equals that Fourier series.
        """
        if elements is None:
            return self.grid_density()
        elements = list(elements)
        if not elements:
            return self.coefficients.new_zeros(0)
        if self.parameterisation == "square":
            return (self._features(elements, self.irreps) @ self.coefficients).pow(2) / self._root_norm()
        return self._features(elements, self.out_irreps) @ self._fourier_flat()

    # ------------------------------------------------------------ regularisers
    def kl(self, other: GroupLikelihood | None = None) -> torch.Tensor:
        """:math:`KL(\\lambda \\,\\|\\, \\mu) = \\int_H \\lambda \\log(\\lambda/\\mu)\\,dh` on this grid
        (λ renormalised to mean 1 on it, a no-op for the softmax).

        ``other`` is detached (the reference); ``None`` means the uniform density. ``other`` is
        evaluated from its Fourier coefficients on this likelihood's grid, clamped at 1e-12 and
        renormalised to mean 1, so the result is >= 0 and exactly 0 for identical likelihoods.
        """
        p, log_p = self._grid_log_probabilities()
        if other is None:
            return (p * log_p).mean()
        if not isinstance(other, GroupLikelihood):
            raise TypeError(f"other: expected a GroupLikelihood or None (uniform), got {type(other).__name__} "
                            f"({other!r})")
        if other.group != self.group:
            raise ValueError(f"other: its group {other.group} differs from this likelihood's group {self.group}; "
                             f"a KL needs densities over the same group")
        with torch.no_grad():
            if other._grid_key == self._grid_key:
                q = other.grid_density()
            else:
                q = other.density(self.grid)
            q = q.to(p).clamp_min(1e-12)
            q = q / q.mean()
        return (p * (log_p - torch.log(q))).mean()

    def alignment_loss(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """:math:`D_{align} = \\max_h \\lambda(h) - \\lambda(e)` over the grid plus samples near ``e``.

        It keeps the likelihood's mode at the identity, so that λ cannot drift away from ``e``
        together with the weights. Zero for uniform λ and for any λ peaked at ``e``.
        """
        flat = self._fourier_flat()
        values = self.alignment_features @ flat  # the grid, then the identity
        if self.n_identity_samples and len(self.identity_pool):
            idx = torch.randint(len(self.identity_pool), (self.n_identity_samples,), generator=generator)
            values = torch.cat([self.identity_pool[idx.to(self.identity_pool.device)] @ flat, values])
        return values[:-1].max() - values[-1]

    # ------------------------------------------------------------------ readout
    def invariant_fraction(self, subgroup_id: Any) -> torch.Tensor:
        """The share of λ that is left-invariant under a subgroup ``S``: 1 means exactly invariant (and every
        layer using λ exactly ``S``-equivariant), uniform λ gives 1 for every ``S``.

        :math:`1 - \\lVert \\lambda - P_S\\lambda\\rVert / \\lVert \\lambda\\rVert`, with :math:`P_S` the
        average over left translations by ``S`` (in Fourier space :math:`\\hat\\Lambda(\\psi) \\mapsto
        \\Pi^\\psi_S \\hat\\Lambda(\\psi)`, :math:`\\Pi^\\psi_S` the projector onto the ``S``-invariant vectors
        of ``psi``) and :math:`L^2` norms over the normalised Haar measure by Parseval,
        :math:`\\lVert\\lambda\\rVert^2 = \\sum_\\psi \\tfrac{d_\\psi}{c_\\psi}\\lVert\\hat\\Lambda(\\psi)\\rVert_F^2
        \\ge 1` (the trivial coefficient is 1). ``subgroup_id=None`` is the whole group (:math:`P\\lambda = 1`).
        It is the likelihood's counterpart of a layer's ``equivariant_fraction`` (the same formula on the
        filter, which is linear in λ); read the layer's, which also sees which irreps the layer uses.
        """
        coeffs = self.fourier_coefficients()
        broken = self.coefficients.new_zeros(())
        total = self.coefficients.new_zeros(())
        for irrep, _, _ in self._out_slices:
            lam = coeffs[irrep.id]
            w = _endomorphism_scale(irrep)
            total = total + w * lam.pow(2).sum()
            if irrep.is_trivial():
                continue
            proj = torch.tensor(self._invariant_projector(subgroup_id, irrep), dtype=lam.dtype, device=lam.device)
            broken = broken + w * (lam - proj @ lam).pow(2).sum()
        return 1.0 - (broken / total.clamp_min(1e-30)).sqrt()

    def invariance(self, subgroup_id: Any) -> torch.Tensor:
        """Removed: use :meth:`invariant_fraction` (or a layer's ``degree()['subgroups'][name]['equivariant_fraction']``)."""
        raise AttributeError("GroupLikelihood.invariance was removed (it was a shape statistic of λ relative to its "
                             "deviation from uniform, unstable near uniform λ); use "
                             "likelihood.invariant_fraction(subgroup_id), or the layer's degree()['subgroups'][name]"
                             "['equivariant_fraction']; see docs/migrating.md")

    def mass(self, subgroup_id: Any) -> float:
        """Finite groups: the probability :math:`\\sum_{s \\in S} \\lambda(s) / \\sum_h \\lambda(h)` that λ puts on
        the subgroup ``S`` itself. Where λ sits, not how equivariant a layer is (uniform λ on D4 puts 1/4 on C2
        and is D4-equivariant); 1 after :meth:`concentrate_on_` ``(S)`` with every irrep in f.
        """
        if self.group.order() <= 0:
            raise ValueError(f"mass: needs a finite group, this likelihood's group is {self.group.name}; read "
                             f"invariant_fraction(subgroup_id) instead")
        try:
            _, _, child = subgroup(self.group, subgroup_id)
        except Exception as err:  # escnn raises assorted errors for bad ids
            raise ValueError(f"subgroup_id={subgroup_id!r} is not a subgroup id of {self.group} ({err}); "
                             f"see escnn's {type(self.group).__name__}.subgroup for valid ids") from err
        with torch.no_grad():
            density = self.grid_density()
            member = torch.tensor([child(g) is not None for g in self.grid], device=density.device)
            return float(density[member].sum() / density.sum())

    def _invariant_projector(self, subgroup_id: Any, irrep: IrreducibleRepresentation) -> np.ndarray:
        if subgroup_id is None:
            return np.eye(irrep.size) if irrep.is_trivial() else np.zeros((irrep.size, irrep.size))
        try:
            restricted = self.group.restrict_representation(subgroup_id, irrep)
        except Exception as err:  # escnn raises assorted errors for bad ids
            raise ValueError(f"subgroup_id={subgroup_id!r} is not a subgroup id of {self.group} ({err}); "
                             f"see escnn's {type(self.group).__name__}.subgroup for valid ids") from err
        Q = np.asarray(restricted.change_of_basis, dtype=np.float64)
        cols, p = [], 0
        for sid in restricted.irreps:
            s_irrep = restricted.group.irrep(*sid)
            if s_irrep.is_trivial():
                cols.append(p)
            p += s_irrep.size
        Qt = Q[:, cols]
        return Qt @ Qt.T

    def entropy(self) -> torch.Tensor:
        """Differential entropy relative to Haar, :math:`-\\int \\lambda\\log\\lambda\\,dh \\le 0` (0 = uniform)."""
        return -self.kl(None)

    def degree(self, subgroups: dict[str, Any] | None = None) -> dict[str, Any]:
        """What λ says about equivariance: per subgroup its :meth:`invariant_fraction` (1 = every layer using λ
        is exactly equivariant to it), plus λ's entropy.

        ``{"group", "entropy", "subgroups": {name: {"invariant_fraction"}}}``; ``subgroups`` maps names to
        escnn subgroup ids (default: :func:`default_subgroups`). A probabilistic layer's own ``degree()``
        reports the ``equivariant_fraction`` of its filter instead.
        """
        subgroups = default_subgroups(self.group) if subgroups is None else subgroups
        with torch.no_grad():
            out: dict[str, Any] = {"group": self.group.name, "entropy": float(self.entropy()), "subgroups": {}}
            for name, sid in subgroups.items():
                try:
                    value = float(self.invariant_fraction(sid))
                except ValueError as err:
                    raise ValueError(f"subgroups: entry {name!r}: {err}") from None
                out["subgroups"][name] = {"invariant_fraction": value}
        return out

    # -------------------------------------------------------------- utilities
    @torch.no_grad()
    def fit_density_(self, values: torch.Tensor, floor: float = 1e3) -> GroupLikelihood:
        """Set the coefficients so that λ on the grid matches ``values`` (up to the mean).

        ``"softmax"``: zeros become logits ``-floor`` below the rest (exactly 0 after the softmax); a
        least-squares fit of the logits. ``"square"``: a least-squares fit of :math:`f = \\sqrt{values}`
        (``floor`` unused). Exact for finite groups with every irrep (``L`` large).
        """
        values = torch.as_tensor(values, dtype=torch.float64)
        if values.shape != (len(self.grid),):
            raise ValueError(f"values: expected shape ({len(self.grid)},) (one per grid element), "
                             f"got {tuple(values.shape)}")
        if torch.any(values < 0) or not torch.any(values > 0):
            raise ValueError(f"values: a density must be >= 0 and positive somewhere, got {values.tolist()}; "
                             f"pass non-negative values, at least one of them positive")
        if self.parameterisation == "square":
            target = values.sqrt()
        else:
            positive = values > 0
            target = torch.full_like(values, -float(floor))
            target[positive] = torch.log(values[positive] / values[positive].max())
        solution = torch.linalg.pinv(self.synthesis.double().cpu()) @ target
        self.coefficients.copy_(solution.to(self.coefficients))
        return self

    @torch.no_grad()
    def concentrate_on_(self, subgroup_id: Any) -> GroupLikelihood:
        """Set f to the band-limited Haar measure of a subgroup ``S`` (``"square"`` only): λ is then exactly
        left- and right-invariant under ``S``, and every probabilistic layer using it exactly ``S``-equivariant.

        :math:`\\hat f(\\psi) = \\int_S \\psi(s)\\,ds = \\Pi^\\psi_S`, the projector onto the ``S``-invariant vectors
        of :math:`\\psi`, for every irrep of f: the Fourier series of the delta on ``S`` cut at f's band limit,
        so :math:`f(sh) = f(hs) = f(h)`, and λ = f²/∫f² is as concentrated on ``S`` as the band limit allows.
        On a finite group with every irrep in f it is exactly uniform on ``S`` and 0 elsewhere; O(2) ⊃ SO(2)
        gives λ = 2 on the rotations and 0 on the reflections; ``None`` (the whole group) gives uniform λ.
        """
        if self.parameterisation != "square":
            raise ValueError(f"concentrate_on_: needs parameterisation='square', this likelihood is "
                             f"{self.parameterisation!r}; build GroupLikelihood(..., parameterisation='square'), "
                             f"or use fit_density_ (exact on finite groups)")
        blocks = [self._invariant_projector(subgroup_id, irrep).reshape(-1) for irrep in self.irreps]
        self.coefficients.copy_(torch.as_tensor(np.concatenate(blocks)).to(self.coefficients))
        return self

    def plot(self, ax=None):
        """Plot λ over the group and return the matplotlib figure.

        SO(2): λ against the angle; O(2): rotations and reflections side by side; finite groups: a
        bar per element; SO(3)/O(3): slices of the axis-angle ball (λ on the sphere of rotation
        axes, one panel per angle).
        """
        import matplotlib
        if ax is None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        with torch.no_grad():
            if self.group.order() > 0:
                fig, ax = (plt.subplots(figsize=(5, 3)) if ax is None else (ax.figure, ax))
                lam = self.grid_density().cpu().numpy()
                ax.bar(range(len(lam)), lam, color="tab:blue")
                ax.set_xticks(range(len(lam)))
                ax.set_xticklabels([str(g) for g in self.grid], rotation=90, fontsize=6)
                ax.axhline(1.0, color="k", lw=0.8, ls="--")
                ax.set_ylabel("λ(h)")
                ax.set_title(f"likelihood over {self.group.name}")
                fig.tight_layout()
                return fig
            if isinstance(self.group, (SO2, O2)):
                theta = np.linspace(0, 2 * math.pi, 181)
                if isinstance(self.group, SO2):
                    series = {"rotations": [self.group.element(t, "radians") for t in theta]}
                else:
                    series = {"rotations": [self.group.element((0, t), "radians") for t in theta],
                              "reflections": [self.group.element((1, t), "radians") for t in theta]}
                fig, ax = (plt.subplots(figsize=(5, 3)) if ax is None else (ax.figure, ax))
                for name, els in series.items():
                    ax.plot(np.degrees(theta), self.density(els).cpu().numpy(), label=name)
                ax.axhline(1.0, color="k", lw=0.8, ls="--")
                ax.set_xlabel("angle (degrees)")
                ax.set_ylabel("λ(h)")
                ax.set_title(f"likelihood over {self.group.name}")
                ax.legend()
                fig.tight_layout()
                return fig
            return self._plot_3d(plt)

    def _plot_3d(self, plt):
        angles = [math.pi / 4, math.pi / 2, 3 * math.pi / 4, math.pi]
        az = np.linspace(-math.pi, math.pi, 61)
        pol = np.linspace(0, math.pi, 31)
        A, P = np.meshgrid(az, pol)
        axes = np.stack([np.sin(P) * np.cos(A), np.sin(P) * np.sin(A), np.cos(P)], -1).reshape(-1, 3)
        fig, axs = plt.subplots(1, len(angles), figsize=(3 * len(angles), 2.6), squeeze=False)
        for ax, angle in zip(axs[0], angles):
            q = np.concatenate([axes * math.sin(angle / 2), np.full((len(axes), 1), math.cos(angle / 2))], 1)
            if isinstance(self.group, SO3):
                els = [self.group.element(qi, "Q") for qi in q]
            else:
                els = [self.group.element((0, qi), "Q") for qi in q]
            lam = self.density(els).cpu().numpy().reshape(P.shape)
            im = ax.imshow(lam, extent=(-180, 180, 180, 0), aspect="auto")
            ax.set_title(f"rotation by {math.degrees(angle):.0f}°", fontsize=8)
            ax.set_xlabel("axis azimuth")
            ax.set_ylabel("axis polar angle")
            fig.colorbar(im, ax=ax)
        fig.suptitle(f"likelihood over {self.group.name} (axis-angle slices)")
        fig.tight_layout()
        return fig

    def extra_repr(self) -> str:
        return (f"group={self.group.name}, L={self.L}, L_out={self.L_out}, grid={len(self.grid)}, "
                f"parameterisation={self.parameterisation!r}")
