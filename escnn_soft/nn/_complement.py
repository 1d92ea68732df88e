"""Filters that keep a subgroup S and are orthogonal to every filter of a larger group P ⊋ S: the levels of a subgroup
chain G ⊋ S_1 ⊋ ... ⊋ S_n (the pathways of :class:`~escnn_soft.nn.RPPR2Conv` / ``RPPR3Conv`` with ``pathways=``).

A steerable kernel between two fields is constrained field pair by field pair, so the space of S-steerable filters
of a layer is the direct sum, over (output field, input field) pairs, of the S-steerable kernels between the two
representations; the same holds for P, and the P-span lies inside the S-span. Per pair of representations
:func:`orthonormal_complement` gives an orthonormal basis (in the inner product of the sampled kernel grid) of
:math:`\\mathcal K_S \\ominus \\mathcal K_P`, and :class:`ComplementPathway` combines it with one weight vector per
field pair. The levels of a chain are then mutually orthogonal and together span :math:`\\mathcal K_{S_n}`:

.. math::
    \\mathcal K_{S_n} = \\mathcal K_G \\oplus (\\mathcal K_{S_1} \\ominus \\mathcal K_G) \\oplus \\dots \\oplus
    (\\mathcal K_{S_n} \\ominus \\mathcal K_{S_{n-1}}),

so the norm of a level's filter is exactly how far the layer leaves :math:`S_{k-1}` while keeping :math:`S_k`, and an
isotropic Gaussian prior on each level's weights is the prior :math:`\\sum_k \\sigma_k^2 \\Pi_k` on the filter
(:math:`\\Pi_k` the orthogonal projection on level k).
"""
from __future__ import annotations

from typing import Any

import torch
from escnn.nn import FieldType

__all__ = ["ComplementPathway", "NotNestedError", "add_blocks", "fields_by_representation", "orthonormal_complement"]

#: singular values below this share of the largest count as zero (escnn samples its bases in float32)
RANK_TOLERANCE = 1e-5


def fields_by_representation(field_type: FieldType) -> list[tuple[Any, torch.Tensor]]:
    """``[(representation, channel indices (n_fields, size))]`` grouping the fields of one representation."""
    groups: dict[str, tuple[Any, list[list[int]]]] = {}
    offset = 0
    for rep in field_type.representations:
        groups.setdefault(rep.name, (rep, []))[1].append(list(range(offset, offset + rep.size)))
        offset += rep.size
    return [(rep, torch.tensor(idx, dtype=torch.long)) for rep, idx in groups.values()]


class NotNestedError(ValueError):
    """The larger group's kernels are not inside the smaller group's span (the subgroups are not nested)."""


def _orthonormal_rows(m: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (rows) of the row space of ``m``."""
    if m.shape[0] == 0:
        return m.new_zeros(0, m.shape[1])
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    return vh[s > RANK_TOLERANCE * s.max()] if float(s.max()) > 0 else m.new_zeros(0, m.shape[1])


def orthonormal_complement(span: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning :math:`\\operatorname{rows}(\\text{span}) \\ominus \\operatorname{rows}(\\text{parent})`.

    Args:
        span: ``(a, n)`` kernels of the subgroup S (flattened), float64.
        parent: ``(b, n)`` kernels of the larger group P ⊋ S.

    Returns:
        ``(r, n)`` with r = rank(span) - rank(parent).

    Raises:
        NotNestedError: a parent kernel lies outside the span (relative residual above 1e-4).
    """
    q_span, q_parent = _orthonormal_rows(span), _orthonormal_rows(parent)
    if q_parent.shape[0]:
        outside = q_parent - (q_parent @ q_span.T) @ q_span
        if float(outside.norm(dim=1).max()) > 1e-4:
            raise NotNestedError("the parent group's kernels are not inside the subgroup's span")
    r = q_span.shape[0] - q_parent.shape[0]
    if r == 0:
        return span.new_zeros(0, span.shape[1])
    residual = q_span - (q_span @ q_parent.T) @ q_parent if q_parent.shape[0] else q_span
    _, _, vh = torch.linalg.svd(residual, full_matrices=False)
    return vh[:r]


def add_blocks(filt: torch.Tensor, weights: torch.Tensor,
               blocks: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``filt`` (``(c_out, c_in, P)``) plus the kernels of ``blocks`` weighted by ``weights``, accumulated in place.

    Each block ``(start, out channels (n_o, o), in channels (n_i, a), basis (K, o, a P))`` contributes, for every
    field pair, :math:`\\sum_k w[f_{out}, f_{in}, k]\\, B_k` with ``w = weights[start:start + n_o n_i K]`` in (output
    field, input field, basis) order (the layout :meth:`~escnn_soft.nn.SoftModule.coefficient_blocks` declares).
    """
    for s0, out_idx, in_idx, basis in blocks:
        (n_out, o), (n_in, a), n_k = out_idx.shape, in_idx.shape, basis.shape[0]
        w = weights[s0:s0 + n_out * n_in * n_k].view(n_out * n_in, n_k)
        kernels = (w @ basis.reshape(n_k, -1)).view(n_out, n_in, o, a, -1)
        filt.index_put_((out_idx[:, None, :, None], in_idx[None, :, None, :]), kernels.to(filt.dtype),
                        accumulate=True)  # .to: matmul may run in an autocast dtype
    return filt


class ComplementPathway(torch.nn.Module):
    """One level of a subgroup chain: :math:`K = \\sum_{f_{out}, f_{in}} \\sum_k w[f_{out}, f_{in}, k]\\, B_k`, with
    :math:`B_k` an orthonormal basis of :math:`\\mathcal K_S \\ominus \\mathcal K_P` between the two fields'
    representations (module docstring); ``weights`` start at zero.

    Args:
        pairs: one entry per pair of representations with a non-empty complement: ``(out channels (n_o, o), in
            channels (n_i, a), basis (K, o, a, P))``.
        c_out, c_in, n_points: the filter's shape ``(c_out, c_in, n_points)``.
    """

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], c_out: int, c_in: int,
                 n_points: int):
        super().__init__()
        self.c_out, self.c_in, self.n_points = c_out, c_in, n_points
        self._starts: list[int] = []
        start = 0
        for k, (out_idx, in_idx, basis) in enumerate(pairs):
            self.register_buffer(f"out_idx_{k}", out_idx, persistent=False)
            self.register_buffer(f"in_idx_{k}", in_idx, persistent=False)
            # persistent: the orthonormal basis of a complement is one choice among many (an SVD of a matrix whose
            # singular values are all one), so a checkpoint carries the basis its weights are written in
            self.register_buffer(f"basis_{k}", basis.reshape(basis.shape[0], basis.shape[1], -1))
            self._starts.append(start)
            start += out_idx.shape[0] * in_idx.shape[0] * basis.shape[0]
        self.weights = torch.nn.Parameter(torch.zeros(start))

    def blocks(self) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The layout of :attr:`weights` in the filter (:func:`add_blocks`), for the Laplace curvature."""
        return [(s0, getattr(self, f"out_idx_{k}"), getattr(self, f"in_idx_{k}"), getattr(self, f"basis_{k}"))
                for k, s0 in enumerate(self._starts)]

    def forward(self) -> torch.Tensor:
        """The level's filter, ``(c_out, c_in, n_points)``."""
        return add_blocks(self.weights.new_zeros(self.c_out, self.c_in, self.n_points), self.weights, self.blocks())
