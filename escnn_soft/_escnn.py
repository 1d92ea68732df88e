"""The one adapter between escnn_soft and escnn's private internals.

escnn_soft reads and rewrites parts of escnn that escnn does not document: the block layout of a
``BlocksBasisExpansion`` (``_representations_pairs``, ``_weights_ranges``, ``_contiguous``, the
``block_expansion_*`` / ``in_indices_*`` / ``out_indices_*`` attributes, ...), the ``_sigma`` / ``_rings`` an
``R2Conv`` was built with, a gspace's ``_interpolate_transform_basespace``, the text of the error escnn raises for
an empty basis, the names of the buffers escnn's layers add in eval mode, and helpers that live in escnn's module
tree only (``escnn.nn.modules...``). All of that is reached from here and nowhere else.

**Rule:** no other module of escnn_soft touches escnn's private names or imports from ``escnn.nn.modules``;
``tests/test_escnn_adapter.py`` checks it over the package source. escnn's public API (``FieldType``, ``R2Conv``,
``GeometricTensor``, a layer's ``basisexpansion`` / ``weights``, ``expansion(weights)``, ``dimension()``, ``.S``,
``get_basis_info()``, gspaces and groups) may be used anywhere.

**Versions:** written against and tested with escnn 1.0.11 (the newest release); ``pyproject.toml`` bounds escnn
to ``>=1.0.11,<1.1``. A new escnn release that moves these internals needs changes in this module only, and
``tests/test_escnn_adapter.py`` says which: it rebuilds escnn's filters block by block from
:func:`expansion_blocks` for every supported group.

What lives here:

* the block layout of an expansion — :class:`ExpansionBlock`, :func:`expansion_blocks`, :func:`expansion_shape`;
* private sampled bases — :func:`private_blocks_expansion`, :func:`private_sampled_basis`, :func:`privatize_`
  (escnn caches sampled bases in a process-wide dictionary and hands the *same* module to every layer with the same
  representations and grid, so moving one model to another device or dtype would move every other model's
  buffers; escnn_soft layers keep private copies, as fast as escnn's cache and as safe as recomputing);
* :func:`he_stds` — escnn's generalised He initialisation without escnn's Python loop over every coefficient
  (3 s for a 512-channel layer, almost all of its construction);
* escnn's convolution helpers — :func:`compute_basis_params_2d`, :func:`compute_basis_params_3d`,
  :func:`grid_coords`, :func:`conv_basis_kwargs`, :func:`kernel_basis_generator`;
* :func:`interpolate_transform_basespace` — a gspace's action on a sampled signal;
* empty bases and eval-mode buffers — :func:`is_empty_basis_error`, :data:`MODE_DEPENDENT_BUFFERS`,
  :func:`keeps_mode_dependent_buffers`, :func:`drop_mode_dependent_buffers_`.

Note: escnn samples bases from float32 Clebsch–Gordan coefficients, so even in float64 a strict escnn layer is
equivariant on grid-exact elements only to about 1e-7 relative error.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from escnn.group import GroupElement, Representation
from escnn.gspaces import GSpace
from escnn.kernels import EmptyBasisException, KernelBasis
from escnn.nn import Linear
from escnn.nn.modules.basismanager import BlocksBasisExpansion, BlocksBasisSampler
from escnn.nn.modules.basismanager.basisexpansion_singleblock import (
    SingleBlockBasisExpansion,
    block_basisexpansion,
)
from escnn.nn.modules.conv.r2convolution import compute_basis_params as compute_basis_params_2d
from escnn.nn.modules.conv.r3convolution import compute_basis_params as compute_basis_params_3d
from escnn.nn.modules.conv.rd_convolution import _RdConv
from escnn.nn.modules.conv.rd_convolution import get_grid_coords as grid_coords

__all__ = [
    "MODE_DEPENDENT_BUFFERS",
    "BlocksBasisExpansion",
    "BlocksBasisSampler",
    "ExpansionBlock",
    "compute_basis_params_2d",
    "compute_basis_params_3d",
    "conv_basis_kwargs",
    "expansion_blocks",
    "expansion_shape",
    "grid_coords",
    "he_stds",
    "interpolate_transform_basespace",
    "is_empty_basis_error",
    "keeps_mode_dependent_buffers",
    "private_blocks_expansion",
    "private_sampled_basis",
    "privatize_",
]

# ``BlocksBasisExpansion`` / ``BlocksBasisSampler`` (isinstance checks, type hints), ``compute_basis_params_2d`` /
# ``compute_basis_params_3d`` (escnn's ``(basis_filter, rings, sigma, maximum_frequency)`` of an R2Conv / R3Conv's
# arguments) and ``grid_coords(d, kernel_size, dilation)`` (escnn's kernel grid, ``kernel_size**d x d``) are escnn's
# own, re-exported from here because they live in escnn's module tree only.


# ----------------------------------------------------------------------------------------------------
# the block layout of a BlocksBasisExpansion


@dataclass(frozen=True)
class ExpansionBlock:
    """One (input representation, output representation) block of an escnn ``BlocksBasisExpansion``.

    ``expansion(weights)`` places, for every one of the ``out_count x in_count`` pairs of fields of these two
    representations, ``sum_k w[k] basis[k]`` (``(d_o, d_i, S)``) at the pair's rows and columns of the filter; the
    coefficients of the block are ``weights[start:stop]``, field pair major (output field, then input field), basis
    element minor.
    """

    pair: tuple[str, str]      # (input representation name, output representation name), as escnn keys the block
    module: torch.nn.Module    # escnn's block expansion (``dimension()``, ``get_basis_info()``, ``sampled_basis``)
    basis: torch.Tensor        # (b, d_o, d_i, S) sampled basis of the block
    start: int                 # coefficient range [start, stop) in the expansion's weight vector
    stop: int
    out_count: int             # occurrences (fields) of the output / input representation
    in_count: int
    out_index: Any             # escnn's indices: slices when the occurrences are contiguous, else the flattened
    in_index: Any              # (out channel x in channel) grid of LongTensors; ``filter[:, out_index, in_index]``

    @property
    def out_channels(self) -> torch.Tensor:
        """``(n_o, d_o)`` LongTensor: the filter rows of each output field of the block."""
        if isinstance(self.out_index, slice):
            rows = torch.arange(int(self.out_index.start), int(self.out_index.stop))
        else:
            rows = self.out_index.reshape(self.out_count * self.basis.shape[1], -1)[:, 0]
        return rows.reshape(self.out_count, -1)

    @property
    def in_channels(self) -> torch.Tensor:
        """``(n_i, d_i)`` LongTensor: the filter columns of each input field of the block."""
        if isinstance(self.in_index, slice):
            cols = torch.arange(int(self.in_index.start), int(self.in_index.stop))
        else:
            cols = self.in_index.reshape(self.out_count * self.basis.shape[1], -1)[0]
        return cols.reshape(self.in_count, -1)


def expansion_blocks(expansion: BlocksBasisExpansion) -> list[ExpansionBlock]:
    """The blocks of an escnn expansion, in the order of its weight vector."""
    blocks = []
    for pair in expansion._representations_pairs:
        escaped = expansion._escape_pair(pair)
        module = getattr(expansion, f"block_expansion_{escaped}")
        in_idx = getattr(expansion, f"in_indices_{escaped}")
        out_idx = getattr(expansion, f"out_indices_{escaped}")
        if expansion._contiguous[pair]:
            in_idx, out_idx = slice(in_idx[0], in_idx[1]), slice(out_idx[0], out_idx[1])
        start, stop = expansion._weights_ranges[pair]
        blocks.append(ExpansionBlock(pair, module, module.sampled_basis, start, stop, expansion._out_count[pair[1]],
                                     expansion._in_count[pair[0]], out_idx, in_idx))
    return blocks


def expansion_shape(expansion: BlocksBasisExpansion) -> tuple[int, int]:
    """``(output channels, input channels)`` of the filters ``expansion`` builds (its output is ``(*, *, S)``)."""
    return expansion._output_size, expansion._input_size


# ----------------------------------------------------------------------------------------------------
# private sampled bases


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
    never shared). Raises escnn's ``EmptyBasisException`` (:func:`is_empty_basis_error`) when no basis element
    survives the filter."""
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
    for blk in expansion_blocks(expansion):
        attrs = [(attr["in_irrep"], attr["out_irrep_idx"]) for attr in blk.module.get_basis_info()]
        for in_irrep, j in attrs:
            counts[blk.pair[1], j][in_irrep] += blk.in_count
        blocks.append((blk, attrs))
    stds = torch.ones(expansion.dimension())
    for blk, attrs in blocks:
        per_element = torch.tensor([1.0 / math.sqrt(len(counts[blk.pair[1], j]) * counts[blk.pair[1], j][in_irrep])
                                    for in_irrep, j in attrs])
        stds[blk.start:blk.stop] = per_element.repeat((blk.stop - blk.start) // len(attrs))
    return stds


# ----------------------------------------------------------------------------------------------------
# convolutions and gspaces


def conv_basis_kwargs(conv: torch.nn.Module, missing_ok: bool = False) -> dict[str, Any]:
    """``{"sigma": ..., "rings": ...}`` an escnn ``R2Conv`` / ``R3Conv`` built its basis with (escnn stores the
    resolved values, not the constructor's arguments; escnn_soft's relaxed layers keep theirs under the same
    names). Without them: ``{}`` when ``missing_ok``, else ``AttributeError``."""
    if missing_ok and not hasattr(conv, "_sigma"):
        return {}
    return {"sigma": conv._sigma, "rings": conv._rings}


def interpolate_transform_basespace(gspace: GSpace, x: np.ndarray, g: GroupElement, order: int = 2) -> np.ndarray:
    """escnn's action of ``g`` on a signal ``x`` sampled on the base space, :math:`x'(p) = x(g^{-1}p)` (the one
    ``GeometricTensor.transform`` uses): exact on grid-exact elements, a spline interpolation of ``order``
    otherwise."""
    return gspace._interpolate_transform_basespace(x, g, order=order)


# ----------------------------------------------------------------------------------------------------
# empty bases and eval-mode buffers


def is_empty_basis_error(err: BaseException) -> bool:
    """Whether ``err`` is escnn saying a steerable basis is empty: ``EmptyBasisException`` (sampling one block,
    :func:`private_sampled_basis`) or the ``ValueError`` of an ``R2Conv`` / ``R3Conv`` constructor."""
    return isinstance(err, EmptyBasisException) or (isinstance(err, ValueError) and "filter is empty" in str(err))


#: the buffers escnn's ``R2Conv`` / ``R3Conv`` (``filter``, ``expanded_bias``) and ``Linear`` (``matrix``,
#: ``expanded_bias``) register in ``.eval()`` and drop in ``.train()``: persistent, so a state dict depends on the mode
MODE_DEPENDENT_BUFFERS: tuple[str, ...] = ("filter", "matrix", "expanded_bias")


def keeps_mode_dependent_buffers(module: torch.nn.Module) -> bool:
    """Whether ``module`` is an escnn layer (an ``R2Conv`` / ``R3Conv`` or a ``Linear``, or a subclass) that may
    hold :data:`MODE_DEPENDENT_BUFFERS`."""
    return isinstance(module, (_RdConv, Linear))
