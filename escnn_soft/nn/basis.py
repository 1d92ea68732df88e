"""Private sampled steerable bases.

escnn caches sampled bases in a process-wide dictionary (``block_basisexpansion``'s
``_stored_filters``) and hands the *same* ``SingleBlockBasisExpansion`` module to every layer with the
same representations and grid. Moving one model to another device or dtype then moves the buffers of
every other model too. escnn_soft layers never keep such a shared module: they either build their
expansions with ``recompute=True`` (:func:`private_blocks_expansion`) or take escnn's cached sampling
and keep a private copy of it (:func:`privatize_`, :func:`private_sampled_basis`), which is as fast
as escnn's cache and as safe as recomputing.

:func:`he_stds` gives the standard deviations of escnn's generalised He initialisation without escnn's
Python loop over every coefficient (3 s for a 512-channel layer, almost all of its construction).

Note: escnn samples bases from float32 Clebsch–Gordan coefficients, so even in float64 a strict
escnn layer is equivariant on grid-exact elements only to about 1e-7 relative error.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from escnn.group import Representation
from escnn.kernels import KernelBasis
from escnn.nn.modules.basismanager import BlocksBasisExpansion
from escnn.nn.modules.basismanager.basisexpansion_singleblock import (
    SingleBlockBasisExpansion,
    block_basisexpansion,
)

__all__ = ["he_stds", "private_blocks_expansion", "private_sampled_basis", "privatize_"]


def private_blocks_expansion(in_reprs: list[Representation], out_reprs: list[Representation],
                             basis_generator: Callable[[Representation, Representation], KernelBasis],
                             points: np.ndarray,
                             basis_filter: Callable[[dict], bool] | None = None) -> BlocksBasisExpansion:
    """A ``BlocksBasisExpansion`` whose sampled bases belong to this expansion alone."""
    return privatize_(BlocksBasisExpansion(in_reprs, out_reprs, basis_generator, points, basis_filter=basis_filter))


def _private(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.get_default_dtype()).clone()


def private_sampled_basis(basis: KernelBasis, points: np.ndarray,
                          basis_filter: Callable[[dict], bool] | None = None) -> torch.Tensor:
    """escnn's sampled basis ``(n_basis, out, in, points)`` as a new CPU tensor (escnn's cache is reused,
    never shared). Raises escnn's ``EmptyBasisException`` when no basis element survives the filter."""
    return _private(block_basisexpansion(basis, points, basis_filter=basis_filter).sampled_basis)


def privatize_(expansion: BlocksBasisExpansion) -> BlocksBasisExpansion:
    """Replace, in place, every cached (shared) block of ``expansion`` by a private copy; returns it.

    Also stores escnn's index buffers densely: for a single input field escnn registers them as expanded
    (stride-0) views, which ``load_state_dict`` cannot write into, so a checkpoint would not load into a
    second model of the same architecture.
    """
    for name, buf in list(expansion._buffers.items()):
        if buf is not None and buf.numel() > 1 and 0 in buf.stride():
            expansion._buffers[name] = buf.contiguous()
    # escnn keeps the [start, stop, size] of a contiguous block as a list of 0-dim tensors; as Python ints they
    # slice the same, and torch.compile traces the expansion without a graph break (Tensor.item()) per block
    for pair, contiguous in expansion._contiguous.items():
        if contiguous:
            for side in ("in", "out"):
                attr = f"{side}_indices_{expansion._escape_pair(pair)}"
                setattr(expansion, attr, [int(v) for v in getattr(expansion, attr)])
    for name, block in list(expansion.named_children()):
        if isinstance(block, SingleBlockBasisExpansion):
            private = SingleBlockBasisExpansion.__new__(SingleBlockBasisExpansion)
            torch.nn.Module.__init__(private)
            object.__setattr__(private, "basis", block.basis)
            private._mask = block._mask.clone()  # escnn never writes it, but nothing is shared between models
            private.register_buffer("sampled_basis", _private(block.sampled_basis))
            setattr(expansion, name, private)
    return expansion


def he_stds(expansion: BlocksBasisExpansion) -> torch.Tensor:
    """Per-coefficient standard deviations of escnn's generalised He initialisation (shape ``(D,)``).

    The values of escnn's ``_generalized_he_init_variances``, computed per block instead of per coefficient.
    escnn gives coefficient ``w`` of a basis element from input irrep ``ψ`` to output irrep position ``p`` the
    std :math:`1/\\sqrt{n_p\\,c_{\\psi,p}}`, with :math:`n_p` the number of distinct input irreps reaching
    ``p`` and :math:`c_{\\psi,p}` the number of basis elements from ``ψ`` to ``p``. Every output field of one
    representation receives the same basis elements, so both counts depend only on the output
    representation and the index of the irrep inside it.
    """
    counts: dict[tuple[str, int], dict[Any, int]] = defaultdict(lambda: defaultdict(int))
    blocks = []
    for pair in expansion._representations_pairs:
        block = getattr(expansion, f"block_expansion_{expansion._escape_pair(pair)}")
        attrs = [(attr["in_irrep"], attr["out_irrep_idx"]) for attr in block.get_basis_info()]
        for in_irrep, j in attrs:
            counts[pair[1], j][in_irrep] += expansion._in_count[pair[0]]
        blocks.append((pair, attrs))
    stds = torch.ones(expansion.dimension())
    for pair, attrs in blocks:
        per_element = torch.tensor([1.0 / math.sqrt(len(counts[pair[1], j]) * counts[pair[1], j][in_irrep])
                                    for in_irrep, j in attrs])
        start, stop = expansion._weights_ranges[pair]
        stds[start:stop] = per_element.repeat((stop - start) // len(attrs))
    return stds
