"""KFAC-GGN curvature of expanded filters, pulled back to the trained tensors.

For one ``linear``/``conv`` op :math:`y_{n,p} = W x_{n,p} + b` (sample :math:`n`, position :math:`p`,
:math:`W` of shape :math:`c_\\text{out} \\times c_\\text{in} k^d`), the generalised Gauss–Newton of the
summed loss with respect to :math:`\\mathrm{vec}(W)` is approximated as in laplace-torch's KronLaplace
(curvlinops' KFAC, type-2 GGN, "expand" for weight sharing) by

.. math::
    H_W \\approx G \\otimes A, \\qquad
    G = \\sum_{n,p,r} g_{n,p,r}\\, g_{n,p,r}^\\top, \\qquad
    A = \\frac{1}{N} \\sum_{n} \\frac{1}{P} \\sum_{p} x_{n,p}\\, x_{n,p}^\\top,

with :math:`g_{n,p,r} = \\partial (s_{n,r}^\\top f(x_n)) / \\partial y_{n,p}` and
:math:`\\sum_r s_{n,r} s_{n,r}^\\top = \\nabla^2_f \\ell(f(x_n), y_n)` (:math:`r` runs over the columns of
a square root of the loss Hessian, or over Monte-Carlo samples). The bias gets :math:`H_b \\approx G`.

A trained tensor :math:`\\theta` reaches the op through :math:`W = f(\\theta, \\eta)`; its curvature is
the pull-back :math:`H_\\theta \\approx J^\\top (G \\otimes A) J` with
:math:`J = \\partial\\,\\mathrm{vec}(W) / \\partial \\theta`, evaluated by forward-mode products on the
recorded filter (:func:`jvp`), with autograd graph when the fit is differentiable (so gradients reach
hyperparameters :math:`\\eta` inside the filter). The structures (:class:`Term`):

* :class:`KronTerm` — :math:`W = c\\,\\theta` (``torch.nn.Conv2d``/``Linear`` weights, an unconstrained
  pathway scaled by :math:`c`): :math:`H = c^2\\, G \\otimes A`.
* :class:`BlocksTerm` — :math:`\\theta` is a block basis-expansion coefficient vector (escnn's
  ``BlocksBasisExpansion`` layout): for a pair of input/output representations with :math:`n_o` output
  and :math:`n_i` input fields of sizes :math:`d_o, d_i` and per-block basis
  :math:`\\tilde B_k \\in \\mathbb{R}^{d_o \\times d_i S}` (:math:`S` kernel points), :math:`W` restricted to the
  pair is :math:`W[(o,a),(i,z)] = \\sum_k w_{o,i,k} \\tilde B_k[a,z]`. With the trace-normalised partial-trace
  Kronecker factors of the restricted :math:`G` and :math:`A`,

  .. math::
      G_\\text{pair} \\approx \\frac{G_f \\otimes G_a}{\\operatorname{tr} G_\\text{pair}}, \\quad
      A_\\text{pair} \\approx \\frac{A_f \\otimes A_z}{\\operatorname{tr} A_\\text{pair}}, \\quad
      H_\\text{pair} \\approx \\frac{G_f \\otimes A_f \\otimes C}{\\operatorname{tr} G_\\text{pair}
      \\operatorname{tr} A_\\text{pair}}, \\quad
      C_{kl} = \\operatorname{tr}\\big(\\tilde B_k^\\top G_a \\tilde B_l A_z\\big),

  a Kronecker product over (out fields) ⊗ (in fields) ⊗ (basis). :math:`G_f[o,o'] = \\sum_a G[(o,a),(o',a)]`
  and :math:`A_z[z,z'] = \\sum_i A[(i,z),(i,z')]` are accumulated directly from patches, never forming the
  full :math:`A` (whose size is :math:`(c_\\text{in} k^d)^2`). When the pair's input patches are small
  (:data:`GROUP_GRAM_LIMIT`) their covariance is kept whole and only the output side is factored:
  :math:`H_\\text{pair} \\approx G_f \\otimes M / \\operatorname{tr} G_\\text{pair}` with
  :math:`M = (I \\otimes \\tilde B)^\\top (G_a \\otimes A_\\text{pair}) (I \\otimes \\tilde B)`. The pairs that
  share their output fields share :math:`G_f` and :math:`G_a`: when the patches of all their input fields
  together are small (:data:`JOINT_GRAM_LIMIT`), they form one block :math:`G_f \\otimes M / \\operatorname{tr} G` whose :math:`M` spans
  all their coefficients, with the cross-covariances of their inputs (the cross-pair curvature); otherwise
  pairs are independent blocks.
* :class:`BiasTerm` / :class:`DenseTerm` — a small dense Jacobian: :math:`H = J_b^\\top G J_b`, or
  :math:`H = \\sum_\\text{ops} J_W^\\top (G \\otimes A) J_W + J_b^\\top G J_b` for anything else (size-limited).

Every term exposes its spectrum as Kronecker factors of eigenvalues, so
:math:`\\log\\det(hH + \\delta I) = \\sum \\log(h\\,\\lambda_1 \\otimes \\lambda_2 \\otimes \\dots + \\delta)`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from escnn_soft._escnn import BlocksBasisExpansion, expansion_blocks, expansion_shape
from escnn_soft.laplace.hooks import OpCall, output_gram, unfold_patches
from escnn_soft.laplace.parameters import LaplaceParameter
from escnn_soft.nn.base import SoftModule

__all__ = [
    "DENSE_LIMIT",
    "GROUP_GRAM_LIMIT",
    "JOINT_GRAM_LIMIT",
    "BiasTerm",
    "BlocksTerm",
    "DenseTerm",
    "KronTerm",
    "Pair",
    "SlotStats",
    "Term",
    "jvp",
    "plan_terms",
]

#: largest number of Jacobian entries (parameters x filter entries) of a dense pull-back
DENSE_LIMIT = 2 ** 25
#: largest input-field group (n_i d_i S channels of patches) whose covariance is kept whole
GROUP_GRAM_LIMIT = 256
#: largest joint input (channels x kernel points) of field pairs sharing their output fields whose covariance is
#: kept whole; 128 keeps the Monte-Carlo fit of the DoubleMNIST network within 1.5x an epoch (256: 1.86x)
JOINT_GRAM_LIMIT = 128
_CHUNK = 2 ** 24  # elements per chunk of unfolded patches or probe columns
Key = tuple[str, int]


def jvp(out: Tensor, param: Tensor, directions: Tensor, create_graph: bool) -> Tensor:
    """Forward-mode products :math:`J v` of ``out`` w.r.t. ``param`` for each ``v`` in ``directions``.

    Computed by double backward: :math:`g(u) = J^\\top u` is linear in :math:`u`, and
    :math:`\\partial \\langle g(u), v\\rangle / \\partial u = J v`. Returns ``(len(directions), *out.shape)``;
    with ``create_graph`` the result keeps the graph of :math:`J` (e.g. to hyperparameters).
    """
    u = torch.zeros_like(out, requires_grad=True)
    (g,) = torch.autograd.grad(out, param, grad_outputs=u, create_graph=True, retain_graph=True)
    step = max(1, _CHUNK // max(1, out.numel()))
    cols = []
    for v in directions.split(step):
        try:
            (c,) = torch.autograd.grad(g, u, grad_outputs=v, retain_graph=True, create_graph=create_graph,
                                       is_grads_batched=True)
        except RuntimeError:  # an op without a batching rule: one direction at a time
            c = torch.stack([torch.autograd.grad(g, u, grad_outputs=vi, retain_graph=True,
                                                 create_graph=create_graph)[0] for vi in v])
        cols.append(c)
    return torch.cat(cols)


def _connected(out: Tensor, tensors: Sequence[Tensor]) -> list[bool]:
    """Whether ``out`` depends (through the autograd graph) on each of ``tensors``."""
    if not out.requires_grad or not tensors:
        return [False] * len(tensors)
    grads = torch.autograd.grad(out, list(tensors), grad_outputs=torch.zeros_like(out), retain_graph=True,
                                allow_unused=True)
    return [g is not None for g in grads]


def _eigvals(m: Tensor) -> Tensor:
    """Eigenvalues of a symmetric PSD matrix, clipped at 0 (gradients through eigenvalues only), in ``m``'s dtype.

    Computed in float64: float32 ``eigvalsh`` fails to converge on the ill-conditioned, highly degenerate Gram
    matrices of trained layers (DoubleMNIST thesis network, probabilistic pathway blocks)."""
    return torch.linalg.eigvalsh((0.5 * (m + m.T)).double()).clamp_min(0.0).to(m.dtype)


# ---------------------------------------------------------------------------------------------------
# statistics of one op


@dataclass
class SlotStats:
    """Accumulated Kronecker statistics of one op (one ``OpCall.key``).

    ``G`` is always kept (``c_out x c_out``); the full ``A`` only when a :class:`KronTerm` or
    :class:`DenseTerm` needs it; ``groups`` maps an input-channel index block (as a tuple key; ``(n_i, d_i)``
    for the fields of one pair, ``(1, c)`` for the joint inputs of pairs sharing their output fields) to the
    statistics :class:`BlocksTerm` uses: the restricted input covariance ``A_g`` when the group's patches
    are small (:data:`GROUP_GRAM_LIMIT` entries), else its partial traces :math:`(A_f, A_z)`.
    """

    name: str
    full_A: bool = False
    groups: dict[tuple[int, ...], Tensor] = field(default_factory=dict)
    G: Tensor | None = None
    A: Tensor | None = None
    A_g: dict[tuple[int, ...], Tensor] = field(default_factory=dict)
    A_f: dict[tuple[int, ...], Tensor] = field(default_factory=dict)
    A_z: dict[tuple[int, ...], Tensor] = field(default_factory=dict)
    n: int = 0

    def add_inputs(self, call: OpCall, differentiable: bool) -> None:
        """Add :math:`\\sum_p x_{n,p} x_{n,p}^\top / P` of a batch (and the field partial traces).

        Field groups gather their channels from the op input before unfolding, so the partial traces
        never touch the patches of other channels.
        """
        x = call.x if differentiable else call.x.detach()
        self.n += x.shape[0]
        per_sample = max(1, unfold_patches(call, x[:1]).numel())
        step = max(1, _CHUNK // per_sample)
        for xs in x.split(step):
            if self.full_A:
                cols = unfold_patches(call, xs)
                rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
                self.A = _add(self.A, rows.T @ rows / cols.shape[-1])
            for key, idx in self.groups.items():
                cols = unfold_patches(call, xs.index_select(-1 if call.d == 0 else 1, idx.reshape(-1)))
                if cols.shape[1] <= GROUP_GRAM_LIMIT:
                    gram = torch.bmm(cols, cols.transpose(1, 2)).sum(0)
                    self.A_g[key] = _add(self.A_g.get(key), gram / cols.shape[-1])
                    continue
                a_f, a_z = _partial_grams(cols, idx.shape[0])
                self.A_f[key] = _add(self.A_f.get(key), a_f / cols.shape[-1])
                self.A_z[key] = _add(self.A_z.get(key), a_z / cols.shape[-1])

    def add_grads(self, call: OpCall, grads: Tensor) -> None:
        """Add :math:`\\sum_{n,p} g g^\\top` of a batch of output gradients (one loss-Hessian column)."""
        self.G = _add(self.G, output_gram(call, grads))

    def check_finite(self) -> None:
        tensors = [self.G, self.A] + list(self.A_g.values()) + list(self.A_f.values()) + list(self.A_z.values())
        if any(t is not None and not bool(torch.isfinite(t).all()) for t in tensors):
            raise FloatingPointError(f"non-finite curvature (Kronecker factors) at layer '{self.name}'")


def _partial_grams(cols: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Partial traces of :math:`\\sum_{\text{batch}, p} x_p x_p^\top` for columns ``(batch, n * b, P)`` of
    ``n`` fields: :math:`A_f[i,j] = \\sum x_{iz} x_{jz}` (``n x n``) and :math:`A_z[z,w] = \\sum_i x_{iz} x_{iw}`
    (``b x b``)."""
    batch, f, p = cols.shape
    per_field = cols.reshape(batch, n, -1)
    per_point = cols.reshape(batch * n, f // n, p)
    return (torch.bmm(per_field, per_field.transpose(1, 2)).sum(0),
            torch.bmm(per_point, per_point.transpose(1, 2)).sum(0))


def _add(acc: Tensor | None, value: Tensor) -> Tensor:
    return value if acc is None else acc + value


# ---------------------------------------------------------------------------------------------------
# terms: the curvature of one trained tensor


@dataclass
class Term:
    """Curvature of one trained tensor (``param_index`` into the Laplace parameters)."""

    param_index: int
    numel: int

    def spectra(self, stats: dict[Key, SlotStats], scale: float) -> list[list[Tensor]]:
        """Diagonal blocks of the curvature, each as Kronecker factors of eigenvalues.

        ``A`` is divided by the number of samples it was accumulated over; ``scale`` multiplies ``G``
        (the data factor :math:`N / M` of a fit on :math:`M` of :math:`N` samples).
        """
        raise NotImplementedError


@dataclass
class KronTerm(Term):
    """:math:`W = c\\,\\theta`: :math:`H = c^2 G \\otimes A`."""

    key: Key = ("", 0)
    c: Tensor = None  # type: ignore[assignment]

    def spectra(self, stats, scale):
        s = stats[self.key]
        return [[_eigvals(s.G) * (scale * self.c ** 2), _eigvals(s.A / s.n)]]


@dataclass
class BiasTerm(Term):
    """:math:`b = f(\\theta)` with a small Jacobian ``J`` (``c_out x numel``): :math:`H = J^\\top G J`."""

    key: Key = ("", 0)
    J: Tensor = None  # type: ignore[assignment]

    def spectra(self, stats, scale):
        return [[_eigvals(self.J.T @ stats[self.key].G @ self.J) * scale]]


@dataclass
class Pair:
    """One block pair of a block basis expansion, in the coordinates of the recorded filter ``W``.

    The tensor's coefficients ``flat[coeff_index[o, i, k]]`` multiply the effective basis element
    ``basis[k]`` placed at ``W[out_idx[o], in_idx[i]]`` (rows: output fields, columns: input fields
    times kernel points).
    """

    out_idx: Tensor       # (n_o, d_o) rows of W, one row per output field
    in_idx: Tensor        # (n_i, d_i) input channels of W, one row per input field
    coeff_index: Tensor   # (n_o, n_i, K) positions in the flattened tensor
    basis: Tensor | None = None  # (K, d_o, d_i * S) effective per-block basis

    @property
    def in_key(self) -> tuple[int, ...]:
        return tuple(self.in_idx.reshape(-1).tolist())


@dataclass
class BlocksTerm(Term):
    r"""Block basis-expansion coefficients (module docstring): per set of pairs sharing their output
    fields, :math:`G_f \otimes M / \operatorname{tr} G` over all their coefficients when their joint input
    patches are small; else per pair, the same with the pair's own inputs when they are small, or
    :math:`G_f \otimes A_f \otimes C / (\operatorname{tr} G \operatorname{tr} A)`."""

    key: Key = ("", 0)
    pairs: list[Pair] = field(default_factory=list)

    def spectra(self, stats, scale):
        s = stats[self.key]
        out = []
        for group in _output_groups(self.pairs):
            n_o, d_o = group[0].out_idx.shape
            o = group[0].out_idx.reshape(-1)
            g = s.G[o][:, o].reshape(n_o, d_o, n_o, d_o)
            g_f = torch.einsum("iaja->ij", g)
            g_a = torch.einsum("iaib->ab", g)
            tiny = torch.finfo(g_f.dtype).tiny
            # eigenvalues / trace (<= 1) first, then the data factor: for output fields that get no gradient at all
            # (a dead gate) scale / tiny overflows to inf in float32 once scale > 4 (a subset fit), and 0 * inf = NaN
            out_factor = (_eigvals(g_f) / torch.trace(g_f).clamp_min(tiny)) * scale
            union = _union_key(group)
            if union in s.A_g:  # one block over the group's inputs, pairs included (one pair: the same)
                out.append([out_factor, _eigvals(_basis_gram(group, g_a, s.A_g[union] / s.n))])
                continue
            for pair in group:
                if pair.in_key in s.A_g:
                    out.append([out_factor, _eigvals(_basis_gram([pair], g_a, s.A_g[pair.in_key] / s.n))])
                    continue
                a_f, a_z = s.A_f[pair.in_key] / s.n, s.A_z[pair.in_key] / s.n
                c = torch.einsum("kaz,ab,lbw,zw->kl", pair.basis, g_a, pair.basis, a_z)
                out.append([out_factor, _eigvals(a_f) / torch.trace(a_f).clamp_min(tiny), _eigvals(c)])
        return out


def _output_groups(pairs: Sequence[Pair]) -> list[list[Pair]]:
    """The pairs grouped by their output fields (in order of first appearance)."""
    groups: dict[tuple[int, ...], list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(tuple(pair.out_idx.reshape(-1).tolist()), []).append(pair)
    return list(groups.values())


def _union_key(group: Sequence[Pair]) -> tuple[int, ...]:
    """The input channels of a group of pairs, concatenated in pair order (the key of their joint patches)."""
    return tuple(i for pair in group for i in pair.in_key)


def _basis_gram(group: Sequence[Pair], g_a: Tensor, a: Tensor) -> Tensor:
    """:math:`M = (I \\otimes \\tilde B)^\\top (G_a \\otimes A) (I \\otimes \\tilde B)` over the coefficients
    (input field, basis element) of the pairs of ``group``, which share their output fields; ``a`` is the
    covariance of their joint input patches (:func:`_union_key` order)."""
    points = group[0].basis.shape[-1] // group[0].in_idx.shape[1]
    spans, start = [], 0
    for pair in group:
        n_i, d_i = pair.in_idx.shape
        spans.append((start, n_i, d_i * points))
        start += n_i * d_i * points
    rows = []
    for p, (sp, n_p, f_p) in zip(group, spans):
        row = []
        for q, (sq, n_q, f_q) in zip(group, spans):
            a_pq = a[sp:sp + n_p * f_p, sq:sq + n_q * f_q].reshape(n_p, f_p, n_q, f_q)
            m = torch.einsum("kaz,ab,izjw,lbw->ikjl", p.basis, g_a, a_pq, q.basis)
            row.append(m.reshape(n_p * p.basis.shape[0], n_q * q.basis.shape[0]))
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows, dim=0)


@dataclass
class DenseTerm(Term):
    """Dense pull-back over every op the tensor reaches:
    :math:`H = \\sum J_W^\\top (G \\otimes A) J_W + J_b^\\top G J_b`."""

    parts: list[tuple[Key, Tensor | None, Tensor | None]] = field(default_factory=list)

    def spectra(self, stats, scale):
        h = None
        for key, jw, jb in self.parts:
            s = stats[key]
            if jw is not None:  # (P, c_out, F)
                h = _add(h, torch.einsum("pof,og,fe,qge->pq", jw, s.G * scale, s.A / s.n, jw))
            if jb is not None:  # (c_out, P)
                h = _add(h, jb.T @ (s.G * scale) @ jb)
        return [[_eigvals(h)]]


# ---------------------------------------------------------------------------------------------------
# planning: which structure each trained tensor gets


@dataclass
class _Layout:
    """A candidate block layout of a tensor; ``sampled`` holds escnn's bases when they apply as they are."""

    pairs: list[Pair]
    sampled: list[Tensor] | None = None
    #: bases the owning module declares (``coefficient_blocks``), with their graph to the hyperparameters
    declared: list[Tensor] | None = None


def _expansion_blocks(exp: BlocksBasisExpansion):
    """``(block module, first coefficient, n_o, n_i, out channels (n_o, d_o), in channels (n_i, d_i))``
    for each representation pair of ``exp``."""
    for blk in expansion_blocks(exp):
        yield blk.module, blk.start, blk.out_count, blk.in_count, blk.out_channels, blk.in_channels


def _layouts(exp: BlocksBasisExpansion, numel: int, c_out: int, c_in: int, points: int, device: torch.device
             ) -> list[_Layout]:
    """Candidate layouts of a tensor of ``numel`` coefficients expanded by ``exp`` into a filter of shape
    ``(c_out, c_in, points)``.

    * standard — escnn's ``weights``: ``coeff = start + (o n_i + i) K + k``;
    * trailing multiplicity ``m`` — one coefficient per basis element and class (e.g. per kernel
      position): ``coeff = (start + (o n_i + i) K + k) m + c``, basis size ``K m``;
    * leading multiplicity ``m`` — ``m`` stacked filters (banks) occupying consecutive row ranges of
      ``W``: ``coeff = l D + start + (o n_i + i) K + k`` at rows ``l c + out``;
    * tensored by an irrep of size ``d`` — the expansion maps ``in ⊗ ψ`` to ``out`` repeated ``d`` times
      and ``W`` contracts the ``d x d`` indices (probabilistic pathways): the blocks of the ``d`` copies of
      an output field share a block of ``W``, basis size ``d K``.
    """
    dim = exp.dimension()
    if exp.S != points or dim == 0 or numel % dim:
        return []
    m = numel // dim
    blocks = list(_expansion_blocks(exp))
    exp_out, exp_in = expansion_shape(exp)
    out: list[_Layout] = []

    def ar(n: int) -> Tensor:
        return torch.arange(n, device=device)

    def index(start: int, n_o: int, n_i: int, k: int) -> Tensor:
        return start + ((ar(n_o)[:, None] * n_i + ar(n_i)[None, :]) * k)[..., None] + ar(k)

    if exp_in == c_in and c_out % exp_out == 0:
        if m == 1:
            pairs = [Pair(oi.to(device), ii.to(device), index(st, no, ni, b.dimension())) for b, st, no, ni, oi, ii in blocks]
            out.append(_Layout(pairs, [b.sampled_basis for b, *_ in blocks]))
        else:
            pairs = [Pair(oi.to(device), ii.to(device),
                          (index(st, no, ni, b.dimension())[..., None] * m + ar(m)).reshape(no, ni, -1))
                     for b, st, no, ni, oi, ii in blocks]
            out.append(_Layout(pairs))
            if c_out == m * exp_out:
                out.append(_Layout([Pair(oi.to(device) + bank * exp_out, ii.to(device),
                                         index(bank * dim + st, no, ni, b.dimension()))
                                    for bank in range(m) for b, st, no, ni, oi, ii in blocks]))
    d = exp_out // c_out if c_out else 0
    if m == 1 and d > 1 and exp_out == d * c_out and exp_in == d * c_in:
        pairs = []
        for b, st, no, ni, oi, ii in blocks:
            n_fields = no // d  # occurrences of the output repr are ordered copy-major
            k = b.dimension()
            coeff = index(st, no, ni, k).reshape(d, n_fields, ni, k).permute(1, 2, 0, 3).reshape(n_fields, ni, d * k)
            pairs.append(Pair(oi[:n_fields].to(device), (ii[:, ::d] // d).to(device), coeff))
        out.append(_Layout(pairs))
    return out


def _probe_bases(call: OpCall, param: Tensor, pairs: list[Pair], create_graph: bool) -> None:
    """Fill ``pair.basis`` with :math:`\\tilde B_k = \\partial W[\\text{block}(0,0)] / \\partial
    \\theta[\\text{coeff\\_index}[0,0,k]]`, read off the recorded filter by forward-mode products."""
    w = call.weight
    c_out, c_in = w.shape[:2]
    firsts = torch.cat([p.coeff_index[0, 0] for p in pairs])
    directions = torch.zeros(len(firsts), param.numel(), dtype=w.dtype, device=w.device)
    directions[torch.arange(len(firsts), device=w.device), firsts] = 1
    cols = jvp(w, param, directions.reshape(-1, *param.shape), create_graph).reshape(len(firsts), c_out, c_in, -1)
    offset = 0
    for p in pairs:
        k = p.coeff_index.shape[-1]
        p.basis = cols[offset:offset + k][:, p.out_idx[0]][:, :, p.in_idx[0]].reshape(k, p.out_idx.shape[1], -1)
        offset += k


def _verified(call: OpCall, param: Tensor, pairs: list[Pair], hyper: Sequence[Tensor], create_graph: bool,
              gen: torch.Generator) -> tuple[bool, bool]:
    """``(J v equals the block reconstruction for a random v, J depends on the hyperparameters)``."""
    w = call.weight
    c_out, c_in = w.shape[:2]
    v = torch.randn(param.numel(), generator=gen, dtype=w.dtype).to(w.device)
    jv = jvp(w, param, v.reshape(1, *param.shape), create_graph)[0].reshape(c_out, c_in, -1)
    recon = w.new_zeros(jv.shape)
    for p in pairs:
        (n_o, d_o), n_i = p.out_idx.shape, p.in_idx.shape[0]
        blk = torch.einsum("oik,kaz->oaiz", v[p.coeff_index], p.basis.detach())
        recon[p.out_idx.reshape(-1)[:, None], p.in_idx.reshape(-1)[None, :]] = blk.reshape(n_o * d_o, n_i * p.in_idx.shape[1], -1)
    ok = float((jv - recon).detach().norm()) <= 1e-4 * float(jv.detach().norm()) + 1e-12
    return ok, create_graph and any(_connected(jv, list(hyper)))


def _blocks_pairs(module: torch.nn.Module, call: OpCall, param: Tensor, hooked: list[BlocksBasisExpansion],
                  hyper: Sequence[Tensor], create_graph: bool, gen: torch.Generator) -> list[Pair] | None:
    """The verified block layout of ``param`` among the candidate layouts of the layer's expansions
    (:func:`_layouts`), the layout a soft layer declares for ``param`` with
    :meth:`~escnn_soft.nn.SoftModule.coefficient_blocks`
    (``[(start, out channels (n_o, d_o), in channels (n_i, d_i), basis (K, d_o, d_i S))]``, coefficients in
    (out field, in field, basis) order, the basis differentiable in the hyperparameters; the probabilistic layers'
    pathways), and, for a 3-D tensor, the (out fields, in fields, basis) layout of its shape.

    Declared bases are used as they are (with their graph) once they reproduce :math:`J v`: no forward-mode
    probing, whose double backward with graph runs one ``select`` per basis direction through the filter assembly
    (10x the cost of a hyperparameter step on the thesis network's probabilistic layers).

    escnn's sampled bases are used directly when they reproduce :math:`J v` and :math:`J` does not
    depend on the hyperparameters; otherwise the bases are probed (with graph when ``create_graph``).
    """
    w = call.weight
    c_out, c_in, points = w.shape[0], w.shape[1], w[0, 0].numel()
    candidates = []
    for owner in module.modules():  # a soft layer that declares the block layout (and kernels) of its coefficients:
        declared = owner.coefficient_blocks(param) if isinstance(owner, SoftModule) else None
        if declared:  # tried first, as it needs no probing
            candidates.append(_Layout([
                Pair(o.to(w.device), i.to(w.device), start + torch.arange(
                    o.shape[0] * i.shape[0] * b.shape[0], device=w.device).reshape(o.shape[0], i.shape[0], -1))
                for start, o, i, b in declared], declared=[b for *_, b in declared]))
    expansions = list(dict.fromkeys(hooked + [m for m in module.modules() if isinstance(m, BlocksBasisExpansion)]))
    candidates += [layout for exp in expansions for layout in _layouts(exp, param.numel(), c_out, c_in, points, w.device)]
    if param.ndim == 3 and c_out % param.shape[0] == 0 and c_in % param.shape[1] == 0:
        # (out fields, in fields, basis) of contiguous channel groups, e.g. doubly-stochastic layers
        n_o, n_i, k = param.shape
        candidates.append(_Layout([Pair(torch.arange(c_out, device=w.device).reshape(n_o, -1),
                                        torch.arange(c_in, device=w.device).reshape(n_i, -1),
                                        torch.arange(param.numel(), device=w.device).reshape(n_o, n_i, k))]))
    for layout in candidates:
        if layout.declared is not None:  # the owner's kernels, with their graph to the hyperparameters
            for p, b in zip(layout.pairs, layout.declared):
                b = b.to(device=w.device, dtype=w.dtype)
                p.basis = b if create_graph else b.detach()
            try:
                if _verified(call, param, layout.pairs, hyper, False, gen)[0]:
                    return layout.pairs
            except (IndexError, RuntimeError):  # a malformed declaration: probe this layout instead
                pass
        if layout.sampled is not None:
            for p, b in zip(layout.pairs, layout.sampled):
                p.basis = b.to(device=w.device, dtype=w.dtype).reshape(b.shape[0], b.shape[1], -1)
            ok, hyper_dependent = _verified(call, param, layout.pairs, hyper, create_graph, gen)
            if ok and not hyper_dependent:
                return layout.pairs
        _probe_bases(call, param, layout.pairs, create_graph)
        if _verified(call, param, layout.pairs, hyper, False, gen)[0]:
            return layout.pairs
    return None


def _identity_scale(call: OpCall, param: Tensor, create_graph: bool, gen: torch.Generator
                    ) -> Tensor | None:
    """:math:`c` if :math:`J = c I` (``W = c * param`` up to reshape), else ``None``."""
    w = call.weight
    if param.numel() != w.numel():
        return None
    v = torch.randn(param.numel(), generator=gen, dtype=w.dtype).to(w.device)
    jv = jvp(w, param, v.reshape(1, *param.shape), create_graph)[0].reshape(-1)
    c = (jv @ v) / (v @ v)
    if float((jv - c * v).detach().norm()) > 1e-5 * float(jv.detach().norm()) + 1e-12:
        return None
    return c


def _dense_jacobian(out: Tensor, param: Tensor, create_graph: bool, what: str) -> Tensor:
    """``(numel(param), *out.shape)`` Jacobian columns, refusing sizes above :data:`DENSE_LIMIT`."""
    if param.numel() * out.numel() > DENSE_LIMIT:
        raise NotImplementedError(
            f"{what}: no structured curvature applies (its filter is neither a scaled copy of it nor a verified "
            f"block basis expansion) and a dense pull-back would need {param.numel()} x {out.numel()} Jacobian "
            f"entries (limit {DENSE_LIMIT}); mark it as a hyperparameter or exclude it")
    eye = torch.eye(param.numel(), dtype=out.dtype, device=out.device).reshape(-1, *param.shape)
    return jvp(out, param, eye, create_graph)


def plan_terms(calls: Sequence[OpCall], expansions: Sequence[tuple[str, BlocksBasisExpansion, Tensor]],
               params: Sequence[LaplaceParameter], modules: dict[str, torch.nn.Module],
               hyper: Sequence[Tensor], differentiable: bool, blocks: bool = True
               ) -> tuple[list[Term], dict[Key, SlotStats]]:
    """Choose the curvature structure of every trained tensor from one recorded forward pass.

    Args:
        calls, expansions: what :class:`~escnn_soft.laplace.hooks.OpRecorder` recorded.
        params: the Laplace parameters (:class:`~escnn_soft.laplace.parameters.LaplaceParameter`).
        modules: layer path -> module.
        hyper: hyperparameters; with ``differentiable`` the pull-back keeps their graph.
        blocks: use :class:`BlocksTerm` for basis-expansion coefficients; ``False`` gives them the dense
            pull-back :math:`J^\\top (G \\otimes A) J` (tiny layers; to measure the field Kronecker error).

    Returns:
        the terms (one per parameter that reaches the filter or bias of a recorded op; the others act
        outside the ops and get none) and empty statistics for every op they need.
    """
    first: dict[Key, OpCall] = {}
    for call in calls:
        first.setdefault(call.key, call)
    gen = torch.Generator().manual_seed(0)
    terms: list[Term] = []
    stats: dict[Key, SlotStats] = {}

    def slot(key: Key) -> SlotStats:
        return stats.setdefault(key, SlotStats(name=key[0]))

    for i, param in enumerate(params):
        p, layer = param.tensor, param.layer
        what = f"parameter '{param.name}' of layer '{layer}' ({param.layer_type})"
        own = [c for c in first.values() if c.module == layer]
        reach = []
        for candidates in (own, [c for c in first.values() if c.module != layer]):
            for c in candidates:
                in_w = _connected(c.weight, [p])[0]
                in_b = c.bias is not None and _connected(c.bias, [p])[0]
                if in_w or in_b:
                    reach.append((c, in_w, in_b))
            if reach:
                break
        if not reach:
            continue
        if len(reach) == 1 and not reach[0][2]:
            call = reach[0][0]
            c = _identity_scale(call, p, differentiable, gen)
            if c is not None:
                slot(call.key).full_A = True
                terms.append(KronTerm(i, p.numel(), call.key, c))
                continue
            hooked = [e for _, e, inp in expansions if inp is p or inp._base is p]
            pairs = _blocks_pairs(modules[layer], call, p, hooked, hyper, differentiable, gen) if blocks else None
            if pairs is not None:
                points = call.weight[0, 0].numel()
                for group in _output_groups(pairs):
                    union = torch.cat([pair.in_idx.reshape(-1) for pair in group])
                    if len(group) > 1 and union.numel() * points <= JOINT_GRAM_LIMIT:
                        slot(call.key).groups[_union_key(group)] = union[None]
                        continue
                    for pair in group:
                        slot(call.key).groups[pair.in_key] = pair.in_idx
                terms.append(BlocksTerm(i, p.numel(), call.key, pairs))
                continue
        if len(reach) == 1 and not reach[0][1]:
            call = reach[0][0]
            jb = _dense_jacobian(call.bias, p, differentiable, what).reshape(p.numel(), -1).T
            slot(call.key)
            terms.append(BiasTerm(i, p.numel(), call.key, jb))
            continue
        parts = []
        for call, in_w, in_b in reach:
            jw = jb = None
            if in_w:
                jw = _dense_jacobian(call.weight, p, differentiable, what).reshape(
                    p.numel(), call.weight.shape[0], -1)
                slot(call.key).full_A = True
            if in_b:
                jb = _dense_jacobian(call.bias, p, differentiable, what).reshape(p.numel(), -1).T
            slot(call.key)
            parts.append((call.key, jw, jb))
        terms.append(DenseTerm(i, p.numel(), parts))
    return terms, stats
