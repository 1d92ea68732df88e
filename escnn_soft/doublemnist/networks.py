"""The DoubleMNIST networks of METHODS section 6, for every method of the package.

Steerable network: the 56×56 input is upsampled to 57×57 and masked to a disc of radius 28, then
5 blocks conv–batch-norm–gated non-linearity with kernels 7, 5, 3, 3, 3 (anti-aliased average pooling
after blocks 2 and 4), a 1×1 convolution to invariant fields, the read-out pooling (below), and
batch-norm–ELU–Linear. Hidden fields are the group's irreps up to
``max_frequency`` (``width`` copies), each with its own gate. ``method`` chooses the convolution used in
every block; the plain CNN mirrors the same blocks with ``torch.nn.Conv2d`` and as many channels.

Two read-outs (``readout``), both exactly equivariant to quarter turns and flips of the 15×15 map:

* ``'grid'`` (default) averages the invariant maps over a 3×3 grid of 5×5 cells and flattens it, as the
  thesis network flattens its 3×3 map of invariant fields. The coarse layout keeps the digits' orientation,
  so a strict network can tell a 6 from a 9, and must learn every orientation of a rotated digit from data.
* ``'halves'`` averages them over the left and the right half. A DoubleMNIST image is two digits side by
  side, each transformed on its own: the invariant features of each half describe one digit, and their
  order tells "37" from "73". Global pooling would make the network blind to that order (measured: a plain
  CNN on DoubleMNIST-C1 reaches 12% test accuracy after 5 epochs with global pooling, 69–82% with per-half
  pooling). A strictly equivariant network with this read-out is nearly invariant to turning each digit on
  its own (tested), so rotated digits cost it little, but it can hardly tell a 6 from a 9.

The doubly-stochastic network (``method='ds'``, :class:`DSDoubleMNISTNet`) uses a finite group (the group
itself for C_N/D_N, C8 for SO(2), D8 for O(2)): a lifting convolution to regular fields, four group
convolutions, each followed by batch-norm and ELU, pooling over the group, and the same 1×1 convolution and
read-out; every convolution learns its own representation of the group (:mod:`escnn_soft.nn.doubly_stochastic`).

Two architectures (``arch`` of :func:`build_model`):

* ``'default'``: the network above (``width`` copies of the irreps up to ``max_frequency`` in every block).
* ``'thesis'``: the network of the reference implementation (:class:`ThesisDoubleMNISTNet`), scaled by
  ``width_multiplier`` k: block i has k·(1, 2, 4, 6, 6)[i] gated fields with band limits
  (2, 3, L, L, 2) capped at L (L = 4 for SO(2)/O(2), min(4, N/2) for C_N/D_N), kernels 7, 5, 3, 3, 3 with
  strides 1, 1, 2, 2, 1 and paddings 2, 2, 2, 0, 1, anti-aliased pooling (σ = 0.66) with stride 2 after blocks
  2 and 3 and with stride 1 after block 5, so the 57×57 input ends as a 1×1 map; a 1×1 convolution (no bias) to
  8k invariant fields, flattened (read-out ``'flatten'``), and batch-norm–ELU–Linear. k = 6 is the thesis network
  (strict escnn: 165,256 trainable parameters on SO(2), 116,632 on C4). The plain CNN and the doubly-stochastic
  network get the same block geometry (:data:`THESIS_BLOCKS`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from escnn import group as egroup
from escnn import gspaces
from escnn import nn as enn
from escnn.gspaces import GSpace2D
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from escnn_soft.ordering import canonical_order_

__all__ = [
    "ARCHS",
    "ARCH_READOUTS",
    "DEFAULT_BLOCKS",
    "DS_SUBGROUP",
    "GROUPS",
    "KERNEL_SIZES",
    "METHODS",
    "POOL_AFTER",
    "READOUTS",
    "THESIS_BLOCKS",
    "THESIS_FIELDS",
    "THESIS_INVARIANT",
    "Block",
    "DSDoubleMNISTNet",
    "PlainDoubleMNISTNet",
    "SteerableDoubleMNISTNet",
    "ThesisDoubleMNISTNet",
    "build_model",
    "conv_factory",
    "make_gspace",
    "method_summary",
    "network_size",
    "pathway_subgroups",
    "thesis_band_limits",
]

GROUPS = ("C4", "D4", "C8", "D8", "SO2", "O2")
METHODS = ("cnn", "strict", "probabilistic", "relaxed", "rpp", "rsteer", "ds")
#: the finite group of the doubly-stochastic network for each group of :data:`GROUPS` (escnn subgroup id)
DS_SUBGROUP = {"C4": None, "D4": None, "C8": None, "D8": None, "SO2": 8, "O2": (0.0, 8)}
KERNEL_SIZES = (7, 5, 3, 3, 3)
#: the pooled output size (rows, columns) of each read-out ('flatten': the thesis network's 1×1 map as it is)
_READOUT_CELLS = {"halves": (1, 2), "grid": (3, 3), "flatten": (1, 1)}
READOUTS = tuple(_READOUT_CELLS)
POOL_AFTER = (1, 3)
ARCHS = ("default", "thesis")
#: the read-outs each architecture supports, its default first
ARCH_READOUTS = {"default": ("grid", "halves"), "thesis": ("flatten",)}


class Block(NamedTuple):
    """Geometry of one convolution block: ``kernel``, ``stride`` and ``padding`` of its convolution, and the
    ``(stride, padding)`` of the anti-aliased average pooling after it (5×5 Gaussian, σ = 0.66; a plain
    5×5 average in the CNN), or ``None`` for no pooling."""

    kernel: int
    stride: int
    padding: int
    pool: tuple[int, int] | None


#: the default architecture: stride-1 'same' convolutions, pooling by 2 after blocks 2 and 4 (57 → 29 → 15)
DEFAULT_BLOCKS = tuple(Block(k, 1, k // 2, (2, 2) if i in POOL_AFTER else None) for i, k in enumerate(KERNEL_SIZES))
#: the thesis network: 57 → 55 → 55, pool → 27 → 15, pool → 7 → 3 → 3, pool (stride 1) → 1
THESIS_BLOCKS = (Block(7, 1, 2, None), Block(5, 1, 2, (2, 1)), Block(3, 2, 2, (2, 1)), Block(3, 2, 0, None),
                 Block(3, 1, 1, (1, 1)))
#: gated fields per block of the thesis network, per unit of ``width_multiplier``
THESIS_FIELDS = (1, 2, 4, 6, 6)
#: invariant fields of the thesis network's 1×1 convolution, per unit of ``width_multiplier``
THESIS_INVARIANT = 8


def make_gspace(group: str, max_frequency: int = 2) -> GSpace2D:
    """The 2D gspace for a group name (C4, D4, C8, D8, SO2, O2)."""
    if group not in GROUPS:
        raise ValueError(f"group={group!r} is not supported; choose one of {', '.join(GROUPS)}")
    if group.startswith("C"):
        return gspaces.rot2dOnR2(int(group[1:]))
    if group.startswith("D"):
        return gspaces.flipRot2dOnR2(int(group[1:]))
    if group == "SO2":
        return gspaces.rot2dOnR2(-1, maximum_frequency=2 * max_frequency + 2)
    return gspaces.flipRot2dOnR2(-1, maximum_frequency=2 * max_frequency + 2)


def pathway_subgroups(group: str, names: Sequence[str]) -> list[Any]:
    """The escnn subgroup ids of a chain of subgroup names of ``group`` for ``RPPR2Conv(..., pathways=...)``: a name of
    :func:`escnn_soft.subgroups.default_subgroups` (e.g. ``C4``) other than the group itself, or ``trivial`` (id
    ``None``, last only), each contained in the one before (checked by name, :func:`_contains`).

    Raises:
        ValueError: an unknown name, ``trivial`` not last, or a name not inside the one before it."""
    from escnn_soft.subgroups import default_subgroups

    named = {k: v for k, v in default_subgroups(make_gspace(group).fibergroup).items() if v is not None}
    known = ", ".join([*named, "trivial"])
    out = []
    for i, name in enumerate(names):
        if name == "trivial":
            if i != len(names) - 1:
                raise ValueError(f"'trivial' must come last in the chain {','.join(names)}")
            out.append(None)
        elif name not in named:
            raise ValueError(f"{name!r} is not a proper subgroup of {group} that can be named here; choose from "
                             f"{known}, each inside the one before (e.g. C4,trivial)")
        elif i and not _contains(names[i - 1], name):
            raise ValueError(f"{names[i - 1]} does not contain {name}; list the chain from the largest subgroup to "
                             f"the smallest, each inside the one before (e.g. C4,C2,trivial)")
        else:
            out.append(named[name])
    return out


def _contains(larger: str, smaller: str) -> bool:
    """Whether the planar subgroup named ``larger`` contains the one named ``smaller`` (names of
    :func:`pathway_subgroups`: ``C<n>``, ``D<n>``, ``flips`` = D1, ``SO2`` = C∞, ``O2`` = D∞; reflections about the
    same axis): :math:`C_m \\subseteq C_n, D_n` and :math:`D_m \\subseteq D_n` iff :math:`m \\mid n`."""
    def kind_order(name: str) -> tuple[str, float]:
        special = {"flips": ("D", 1), "SO2": ("C", math.inf), "O2": ("D", math.inf)}
        return special[name] if name in special else (name[0], int(name[1:]))

    (k1, n1), (k2, n2) = kind_order(larger), kind_order(smaller)
    if k1 == "C" and k2 == "D":
        return False
    return n1 == math.inf or (n2 != math.inf and n1 % n2 == 0)


def conv_factory(method: str, **method_kwargs) -> Callable[..., EquivariantModule]:
    """``make(in_type, out_type, kernel_size, padding, stride=1, bias=True)`` building the convolution of ``method``."""
    if method == "strict":
        from escnn_soft._escnn import he_stds, privatize_

        def strict(i, o, k, padding, stride=1, bias=True):
            conv = enn.R2Conv(i, o, k, padding=padding, stride=stride, bias=bias, initialize=False, **method_kwargs)
            privatize_(conv.basisexpansion)  # escnn would share its sampled bases with every other model
            with torch.no_grad():  # escnn's He initialisation, without its per-coefficient Python loop
                conv.weights.copy_(he_stds(conv.basisexpansion) * torch.randn(conv.weights.shape))
            return conv

        return strict
    soft = {"probabilistic": "ProbabilisticR2Conv", "relaxed": "RelaxedR2Conv", "rpp": "RPPR2Conv",
            "rsteer": "RSteerR2Conv"}
    if method in soft:
        from escnn_soft import nn as soft_nn

        cls = getattr(soft_nn, soft[method])
        return lambda i, o, k, padding, stride=1, bias=True: cls(i, o, k, padding=padding, stride=stride, bias=bias,
                                                                 **method_kwargs)
    raise ValueError(f"method={method!r} has no steerable convolution; choose one of "
                     f"{', '.join(m for m in METHODS if m not in ('cnn', 'ds'))} (or build PlainDoubleMNISTNet "
                     f"for 'cnn', DSDoubleMNISTNet for 'ds')")


def _irreps(gspace: GSpace2D, max_frequency: int):
    G = gspace.fibergroup
    for L in range(max_frequency, -1, -1):
        try:
            return [gspace.irrep(*i) for i in G.bl_irreps(L)]
        except (AssertionError, ValueError):
            continue
    return [gspace.trivial_repr]


def _gated_types(gspace: GSpace2D, width: int, max_frequency: int):
    features = _irreps(gspace, max_frequency) * width
    gates = [gspace.trivial_repr] * len(features)
    conv_out = FieldType(gspace, gates + features)
    labels = ["gate"] * len(gates) + ["gated"] * len(features)
    return conv_out, labels, FieldType(gspace, features)


class SteerableDoubleMNISTNet(torch.nn.Module):
    """Steerable DoubleMNIST classifier; takes ``(B, 1, 56, 56)`` tensors or GeometricTensors."""

    def __init__(self, gspace: GSpace2D, method: str = "strict", width: int = 2, max_frequency: int = 2,
                 n_classes: int = 100, n_invariant: int = 32, readout: str = "grid", **method_kwargs):
        super().__init__()
        if width < 1:
            raise ValueError(f"width={width} is invalid: use a positive int")
        self.readout = _check_readout(readout)
        make = conv_factory(method, **method_kwargs)
        self.gspace = gspace
        self.method = method
        self.in_type = FieldType(gspace, [gspace.trivial_repr])
        self.mask = enn.MaskModule(self.in_type, 57, margin=1)
        blocks: list[EquivariantModule] = []
        current = self.in_type
        for i, k in enumerate(KERNEL_SIZES):
            conv_out, labels, features = _gated_types(gspace, width, max_frequency)
            block = [make(current, conv_out, k, k // 2), enn.IIDBatchNorm2d(conv_out),
                     enn.GatedNonLinearity1(conv_out, gates=labels)]
            if i in POOL_AFTER:
                # default padding (filter_size - 1) // 2 samples centres 0, 2, ..., n - 1 of an odd-sized map:
                # symmetric about the centre, so rotations by 90 degrees and flips stay exact
                block.append(enn.PointwiseAvgPoolAntialiased2D(features, sigma=0.66, stride=2))
            blocks.append(enn.SequentialModule(*block))
            current = features
        self.blocks = enn.SequentialModule(*blocks)
        self.invariant_type = FieldType(gspace, [gspace.trivial_repr] * n_invariant)
        self.invariant = make(current, self.invariant_type, 1, 0)
        self.head = _head(n_invariant, n_classes, readout)

    def features(self, x) -> GeometricTensor:
        """Invariant feature maps before pooling."""
        h = self.mask(GeometricTensor(_upsample(x), self.in_type))
        return self.invariant(self.blocks(h))

    def forward(self, x) -> torch.Tensor:
        return self.head(_pool(self.features(x).tensor, self.readout))


def thesis_band_limits(group: str) -> tuple[int, ...]:
    """Band limit of each block of the thesis network: ``(2, 3, L, L, 2)``, each capped at ``L``.

    ``L = 4`` for SO(2) and O(2), ``L = min(4, max(N // 2, 1))`` for C_N and D_N (2 for C4/D4, 4 for C8/D8), as in
    the reference implementation.
    """
    if group not in GROUPS:
        raise ValueError(f"group={group!r} is not supported; choose one of {', '.join(GROUPS)}")
    L = 4 if group in ("SO2", "O2") else min(4, max(int(group[1:]) // 2, 1))
    return (min(2, L), min(3, L), L, L, min(2, L))


def _thesis_gspace(group: str) -> GSpace2D:
    """The gspace of the thesis network: :func:`make_gspace`, with irreps up to frequency 4·L = 16 for SO(2)/O(2)."""
    if group == "SO2":
        return gspaces.rot2dOnR2(-1, maximum_frequency=16)
    if group == "O2":
        return gspaces.flipRot2dOnR2(-1, maximum_frequency=16)
    return make_gspace(group)


def _uniform_gated_type(gspace: GSpace2D, fields: int, band_limit: int) -> FieldType:
    """``fields`` copies of one gated field: a trivial gate per irrep of frequency <= ``band_limit``, then those irreps.

    This is the layout :class:`escnn.nn.GatedNonLinearityUniform` expects (gate j multiplies irrep j).
    """
    irreps = [gspace.irrep(*i) for i in gspace.fibergroup.bl_irreps(band_limit)]
    field = egroup.directsum([gspace.trivial_repr] * len(irreps) + irreps)
    return FieldType(gspace, [field] * fields)


class ThesisDoubleMNISTNet(torch.nn.Module):
    """The thesis's DoubleMNIST network (module docstring), for any steerable ``method``; ``(B, 1, 56, 56)`` input.

    The image is upsampled to 57×57 and masked to a disc; block i is ``conv → IIDBatchNorm2d → gated
    non-linearity`` on ``width_multiplier · (1, 2, 4, 6, 6)[i]`` gated fields of band limit ``band_limits[i]``
    (each field: one trivial gate per irrep of frequency ≤ L, then those irreps; the gates are dropped by the
    non-linearity), with the geometry of :data:`THESIS_BLOCKS`; then a 1×1 convolution without bias to
    ``8 · width_multiplier`` invariant fields on the 1×1 map, flattened, and batch-norm–ELU–Linear.
    """

    def __init__(self, gspace: GSpace2D, method: str = "strict", width_multiplier: int = 6,
                 band_limits: Sequence[int] = (2, 3, 4, 4, 2), n_classes: int = 100, **method_kwargs):
        super().__init__()
        if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, int) or width_multiplier < 1:
            raise ValueError(f"width_multiplier={width_multiplier!r} is invalid: use an int >= 1 (6 is the thesis)")
        band_limits = tuple(band_limits)
        if len(band_limits) != len(THESIS_BLOCKS) or any(isinstance(L, bool) or not isinstance(L, int) or L < 0
                                                         for L in band_limits):
            raise ValueError(f"band_limits={band_limits!r} is invalid: use {len(THESIS_BLOCKS)} ints >= 0, one per "
                             f"block (thesis_band_limits(group) gives the thesis's)")
        make = conv_factory(method, **method_kwargs)
        self.gspace, self.method, self.readout = gspace, method, "flatten"
        self.width_multiplier, self.band_limits = width_multiplier, band_limits
        self.in_type = FieldType(gspace, [gspace.trivial_repr])
        self.mask = enn.MaskModule(self.in_type, 57, margin=1)
        blocks: list[EquivariantModule] = []
        current = self.in_type
        for fields, band_limit, b in zip(THESIS_FIELDS, band_limits, THESIS_BLOCKS):
            conv_out = _uniform_gated_type(gspace, width_multiplier * fields, band_limit)
            gate = enn.GatedNonLinearityUniform(conv_out)
            block = [make(current, conv_out, b.kernel, b.padding, stride=b.stride), enn.IIDBatchNorm2d(conv_out), gate]
            if b.pool is not None:
                block.append(enn.PointwiseAvgPoolAntialiased2D(gate.out_type, sigma=0.66, stride=b.pool[0],
                                                               padding=b.pool[1]))
            blocks.append(enn.SequentialModule(*block))
            current = gate.out_type
        self.blocks = enn.SequentialModule(*blocks)
        n_invariant = THESIS_INVARIANT * width_multiplier
        self.invariant_type = FieldType(gspace, [gspace.trivial_repr] * n_invariant)
        self.invariant = make(current, self.invariant_type, 1, 0, bias=False)
        self.head = _head(n_invariant, n_classes, self.readout)

    def features(self, x) -> GeometricTensor:
        """Invariant feature maps ``(B, 8k, 1, 1)`` before the head."""
        h = self.mask(GeometricTensor(_upsample(x), self.in_type))
        return self.invariant(self.blocks(h))

    def forward(self, x) -> torch.Tensor:
        return self.head(_pool(self.features(x).tensor, self.readout))


class PlainDoubleMNISTNet(torch.nn.Module):
    """The same blocks with ``torch.nn.Conv2d``, BatchNorm2d and ELU.

    ``channels`` per block (one int for every block, or one per block), ``blocks`` their geometry
    (:data:`DEFAULT_BLOCKS` or :data:`THESIS_BLOCKS`; the anti-aliased pooling becomes a 5×5 average with the
    same stride and padding), then a 1×1 convolution to ``n_invariant`` channels and the read-out.
    """

    def __init__(self, channels: int | Sequence[int], n_classes: int = 100, n_invariant: int = 32,
                 readout: str = "grid", blocks: Sequence[Block] = DEFAULT_BLOCKS):
        super().__init__()
        self.readout = _check_readout(readout)
        layers: list[torch.nn.Module] = []
        c_in = 1
        for c, b in zip(_per_block(channels, len(blocks), "channels"), blocks):
            layers += [torch.nn.Conv2d(c_in, c, b.kernel, stride=b.stride, padding=b.padding), torch.nn.BatchNorm2d(c),
                       torch.nn.ELU()]
            if b.pool is not None:
                layers.append(torch.nn.AvgPool2d(5, stride=b.pool[0], padding=b.pool[1]))
            c_in = c
        layers.append(torch.nn.Conv2d(c_in, n_invariant, 1))
        self.body = torch.nn.Sequential(*layers)
        self.head = _head(n_invariant, n_classes, readout)

    def forward(self, x) -> torch.Tensor:
        return self.head(_pool(self.body(_upsample(x)), self.readout))


class DSDoubleMNISTNet(torch.nn.Module):
    """Doubly-stochastic DoubleMNIST classifier over a finite group (van der Linden et al., NeurIPS 2024).

    Block 1 is a :class:`~escnn_soft.nn.DSLiftingConv` (kernel 7) from the masked image to ``fields`` regular
    fields of the finite group ``G`` (``subgroup_id`` of the gspace's group, or the group itself), blocks 2–5
    are :class:`~escnn_soft.nn.DSGroupConv` (kernels 5, 3, 3, 3), each followed by batch-norm over the
    regular fields and ELU, with anti-aliased average pooling after blocks 2 and 4; then pooling over the
    group, a 1×1 convolution to ``n_invariant`` channels and the read-out of the other networks. Every
    convolution learns its own soft permutations (``init='random'``), i.e. its own representation of ``G``.
    ``fields`` is one int for every block or one per block; ``blocks`` sets the geometry
    (:data:`DEFAULT_BLOCKS`, or :data:`THESIS_BLOCKS` with pooling after blocks 2, 3 and 5).
    """

    def __init__(self, gspace: GSpace2D, fields: int | Sequence[int], subgroup_id=None, n_classes: int = 100,
                 n_invariant: int = 32, readout: str = "grid", blocks: Sequence[Block] = DEFAULT_BLOCKS,
                 **ds_kwargs):
        super().__init__()
        from escnn_soft.nn import DSGroupConv, DSLiftingConv

        self.readout = _check_readout(readout)
        geometry = tuple(blocks)
        per_block = _per_block(fields, len(geometry), "fields")
        self.gspace = gspace
        self.method = "ds"
        self.in_type = FieldType(gspace, [gspace.trivial_repr])
        self.mask = enn.MaskModule(self.in_type, 57, margin=1)
        modules: list[EquivariantModule] = []
        current: FieldType = self.in_type
        for i, (f, b) in enumerate(zip(per_block, geometry)):
            if i == 0:
                conv = DSLiftingConv(current, f, b.kernel, subgroup_id=subgroup_id, padding=b.padding, stride=b.stride,
                                     **ds_kwargs)
            else:
                conv = DSGroupConv(current, f, b.kernel, padding=b.padding, stride=b.stride, **ds_kwargs)
            current = conv.out_type
            block = [conv, enn.InnerBatchNorm(current), enn.ELU(current)]
            if b.pool is not None:
                block.append(enn.PointwiseAvgPoolAntialiased2D(current, sigma=0.66, stride=b.pool[0], padding=b.pool[1]))
            modules.append(enn.SequentialModule(*block))
        self.blocks = enn.SequentialModule(*modules)
        self.group_pool = enn.GroupPooling(current)
        self.invariant = torch.nn.Conv2d(self.group_pool.out_type.size, n_invariant, 1)
        self.head = _head(n_invariant, n_classes, readout)

    def features(self, x) -> torch.Tensor:
        """Invariant feature maps before pooling (a plain tensor: the group lives on a subgroup's gspace)."""
        h = self.mask(GeometricTensor(_upsample(x), self.in_type))
        return self.invariant(self.group_pool(self.blocks(h)).tensor)

    def forward(self, x) -> torch.Tensor:
        return self.head(_pool(self.features(x), self.readout))


def _upsample(x) -> torch.Tensor:
    """56×56 images (tensor or GeometricTensor) → 57×57, so the masked disc has a centre pixel."""
    t = x.tensor if isinstance(x, GeometricTensor) else x
    return F.interpolate(t, size=(57, 57), mode="bilinear", align_corners=False)


def _check_readout(readout: str) -> str:
    if readout not in READOUTS:
        raise ValueError(f"readout={readout!r} is not known; choose one of {', '.join(map(repr, READOUTS))}")
    return readout


def _per_block(value: int | Sequence[int], n_blocks: int, name: str) -> tuple[int, ...]:
    """``value`` for each of ``n_blocks`` blocks: an int repeated, or a sequence of ``n_blocks`` positive ints."""
    values = (value,) * n_blocks if isinstance(value, int) else tuple(value)
    if len(values) != n_blocks or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name}={value!r} is invalid: use a positive int, or {n_blocks} positive ints (one per block)")
    return values


def _pool(t: torch.Tensor, readout: str) -> torch.Tensor:
    """Average of the feature maps over the read-out's cells, flattened: ``(B, C, H, W) → (B, C·cells)``.

    ``'halves'``: the left and the right half (1×2 cells); ``'grid'``: 3×3 cells (5×5 pixels each on the
    15×15 map, so quarter turns and flips permute whole cells); ``'flatten'``: one cell, the thesis network's
    1×1 map as it is.
    """
    cells = _READOUT_CELLS[readout]
    if readout == "flatten" and t.shape[-2:] != (1, 1) or t.shape[-2] < cells[0] or t.shape[-1] < cells[1]:
        raise ValueError(f"readout={readout!r} needs a map of at least {cells[0]}x{cells[1]} cells ('flatten': exactly "
                         f"1x1), got {tuple(t.shape[-2:])}: use 'flatten' with THESIS_BLOCKS, 'grid' or 'halves' with "
                         f"DEFAULT_BLOCKS")
    return F.adaptive_avg_pool2d(t, cells).flatten(1)


def _head(n_invariant: int, n_classes: int, readout: str) -> torch.nn.Sequential:
    """Batch-norm–ELU–Linear on the pooled invariant features of every read-out cell."""
    rows, cols = _READOUT_CELLS[readout]
    n = rows * cols * n_invariant
    return torch.nn.Sequential(torch.nn.BatchNorm1d(n), torch.nn.ELU(), torch.nn.Linear(n, n_classes))


def network_size(arch: str, width: int | None = None, max_frequency: int | None = None,
                 width_multiplier: int | None = None, readout: str | None = None,
                 spell: Callable[[str], str] = str) -> dict[str, int | str]:
    """The size arguments and read-out of architecture ``arch``, defaults filled in: ``{"width", "max_frequency",
    "readout"}`` for ``'default'`` (width 2, band limit 2, read-out ``'grid'``), ``{"width_multiplier", "readout"}``
    for ``'thesis'`` (k = 6, ``'flatten'``).

    Raises:
        ValueError: an unknown ``arch``, a size argument of the other architecture, a size below its minimum or a
            read-out ``arch`` does not have. Arguments are named by ``spell(name)`` (e.g. a command-line flag).
    """
    if arch not in ARCHS:
        raise ValueError(f"{spell('arch')}={arch!r} is not known; choose one of {', '.join(map(repr, ARCHS))}")
    if arch == "default":
        if width_multiplier is not None:
            raise ValueError(f"{spell('width_multiplier')}={width_multiplier!r} applies to {spell('arch')}='thesis'; "
                             f"scale the default network with {spell('width')}, or pass {spell('arch')}='thesis'")
        size: dict[str, int | str] = {"width": 2 if width is None else width,
                                      "max_frequency": 2 if max_frequency is None else max_frequency}
        lows = {"width": 1, "max_frequency": 0}
    else:
        for name, value in (("width", width), ("max_frequency", max_frequency)):
            if value is not None:
                raise ValueError(f"{spell(name)}={value!r} applies to {spell('arch')}='default'; the thesis network is "
                                 f"scaled by {spell('width_multiplier')} and has its own band limits: leave "
                                 f"{spell(name)} unset")
        size = {"width_multiplier": 6 if width_multiplier is None else width_multiplier}
        lows = {"width_multiplier": 1}
    for name, low in lows.items():
        value = size[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{spell(name)}={value!r} is invalid: use an int >= {low}")
    readout = ARCH_READOUTS[arch][0] if readout is None else readout
    if readout not in ARCH_READOUTS[arch]:
        raise ValueError(f"{spell('readout')}={readout!r} is not a read-out of {spell('arch')}={arch!r}; choose one "
                         f"of {', '.join(map(repr, ARCH_READOUTS[arch]))} (or leave it unset for "
                         f"{ARCH_READOUTS[arch][0]!r})")
    return {**size, "readout": readout}


def build_model(method: str, group: str = "SO2", width: int | None = None, max_frequency: int | None = None,
                n_classes: int = 100, readout: str | None = None, *, arch: str = "default",
                width_multiplier: int | None = None, **method_kwargs) -> torch.nn.Module:
    """A DoubleMNIST network for ``method`` (one of :data:`METHODS`) on ``group``, of architecture ``arch``.

    ``arch='default'`` (:class:`SteerableDoubleMNISTNet`): ``width`` (default 2) copies of the irreps up to
    ``max_frequency`` (default 2) per block; ``readout`` ``'grid'`` (default) or ``'halves'``. The plain CNN gets as
    many channels per block as the steerable network's gated fields have dimensions; the doubly-stochastic network
    as many regular fields of its finite group (:data:`DS_SUBGROUP`) as fill that many channels (at least one).

    ``arch='thesis'`` (:class:`ThesisDoubleMNISTNet`): the thesis network scaled by ``width_multiplier`` k (default
    6, the thesis layout), band limits :func:`thesis_band_limits`, read-out ``'flatten'``; ``width`` and
    ``max_frequency`` do not apply and must be left unset. The plain CNN is the thesis's CNN: one channel per gated
    field, k·(1, 2, 4, 6, 6) channels and 8k invariant channels, on the same geometry (:data:`THESIS_BLOCKS`).
    The doubly-stochastic network has, per block, as many regular fields as fill the channels of the steerable
    block's convolution output (gates included; at least one), and 8k invariant channels.

    ``method_kwargs`` go to every convolution (e.g. ``L=4`` for the probabilistic likelihoods).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; choose one of {', '.join(METHODS)}")
    if group not in GROUPS:
        raise ValueError(f"group={group!r} is not supported; choose one of {', '.join(GROUPS)}")
    size = network_size(arch, width, max_frequency, width_multiplier, readout)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes={n_classes!r} is invalid: use an int >= 1")
    width, max_frequency = size.get("width"), size.get("max_frequency")
    width_multiplier, readout = size.get("width_multiplier"), size["readout"]
    return canonical_order_(_build(method, group, width, max_frequency, n_classes, readout, arch, width_multiplier,
                                   **method_kwargs))


def _ds_fields(gspace: GSpace2D, group: str, channels: int) -> int:
    """Regular fields of the doubly-stochastic network's finite group (:data:`DS_SUBGROUP`) that fill ``channels``
    channels: ``max(1, round(channels / |G|))``."""
    sid = DS_SUBGROUP[group]
    order = (gspace.restrict(sid)[0] if sid is not None else gspace).fibergroup.order()
    return max(1, round(channels / order))


def _build(method: str, group: str, width: int | None, max_frequency: int | None, n_classes: int, readout: str,
           arch: str, width_multiplier: int | None, **method_kwargs) -> torch.nn.Module:
    if arch == "thesis":
        return _build_thesis(method, group, width_multiplier, n_classes, **method_kwargs)
    gspace = make_gspace(group, max_frequency)
    if method == "cnn":
        conv_out, _, _ = _gated_types(gspace, width, max_frequency)
        return PlainDoubleMNISTNet(conv_out.size, n_classes=n_classes, readout=readout)
    if method == "ds":
        conv_out, _, _ = _gated_types(gspace, width, max_frequency)
        return DSDoubleMNISTNet(gspace, _ds_fields(gspace, group, conv_out.size), subgroup_id=DS_SUBGROUP[group],
                                n_classes=n_classes, readout=readout, **method_kwargs)
    return SteerableDoubleMNISTNet(gspace, method=method, width=width, max_frequency=max_frequency,
                                   n_classes=n_classes, readout=readout, **method_kwargs)


def _build_thesis(method: str, group: str, k: int, n_classes: int, **method_kwargs) -> torch.nn.Module:
    """The thesis architecture at width multiplier ``k`` for ``method`` (see :func:`build_model`)."""
    gspace = _thesis_gspace(group)
    band_limits = thesis_band_limits(group)
    n_invariant = THESIS_INVARIANT * k
    if method == "cnn":
        return PlainDoubleMNISTNet([k * f for f in THESIS_FIELDS], n_classes=n_classes, n_invariant=n_invariant,
                                   readout="flatten", blocks=THESIS_BLOCKS)
    if method == "ds":
        fields = [_ds_fields(gspace, group, _uniform_gated_type(gspace, k * f, L).size)
                  for f, L in zip(THESIS_FIELDS, band_limits)]
        return DSDoubleMNISTNet(gspace, fields, subgroup_id=DS_SUBGROUP[group], n_classes=n_classes,
                                n_invariant=n_invariant,
                                readout="flatten", blocks=THESIS_BLOCKS, **method_kwargs)
    return ThesisDoubleMNISTNet(gspace, method=method, width_multiplier=k, band_limits=band_limits,
                                n_classes=n_classes, **method_kwargs)


def method_summary(model: torch.nn.Module) -> dict[str, dict]:
    """``{layer name: degree()}`` for every soft layer of ``model``."""
    from escnn_soft.nn.base import SoftModule

    return {name: m.degree() for name, m in model.named_modules() if isinstance(m, SoftModule)}
