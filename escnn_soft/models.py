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
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from escnn import gspaces
from escnn import nn as enn
from escnn.gspaces import GSpace2D
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from escnn_soft.ordering import canonical_order_

__all__ = [
    "GROUPS",
    "METHODS",
    "READOUTS",
    "DSDoubleMNISTNet",
    "PlainDoubleMNISTNet",
    "SteerableDoubleMNISTNet",
    "build_model",
    "conv_factory",
    "make_gspace",
]

GROUPS = ("C4", "D4", "C8", "D8", "SO2", "O2")
METHODS = ("cnn", "strict", "probabilistic", "relaxed", "rpp", "rsteer", "ds")
#: the finite group of the doubly-stochastic network for each group of :data:`GROUPS` (escnn subgroup id)
DS_SUBGROUP = {"C4": None, "D4": None, "C8": None, "D8": None, "SO2": 8, "O2": (0.0, 8)}
KERNEL_SIZES = (7, 5, 3, 3, 3)
#: the pooled output size (rows, columns) of each read-out
_READOUT_CELLS = {"halves": (1, 2), "grid": (3, 3)}
READOUTS = tuple(_READOUT_CELLS)
POOL_AFTER = (1, 3)


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


def conv_factory(method: str, **method_kwargs) -> Callable[..., EquivariantModule]:
    """``make(in_type, out_type, kernel_size, padding)`` building the convolution of ``method``."""
    if method == "strict":
        from escnn_soft.nn.basis import he_stds, privatize_

        def strict(i, o, k, padding):
            conv = enn.R2Conv(i, o, k, padding=padding, initialize=False, **method_kwargs)
            privatize_(conv.basisexpansion)  # escnn would share its sampled bases with every other model
            with torch.no_grad():  # escnn's He initialisation, without its per-coefficient Python loop
                conv.weights.copy_(he_stds(conv.basisexpansion) * torch.randn(conv.weights.shape))
            return conv

        return strict
    if method == "probabilistic":
        from escnn_soft.nn import ProbabilisticR2Conv

        return lambda i, o, k, padding: ProbabilisticR2Conv(i, o, k, padding=padding, **method_kwargs)
    if method == "relaxed":
        from escnn_soft.nn import RelaxedR2Conv

        return lambda i, o, k, padding: RelaxedR2Conv(i, o, k, padding=padding, **method_kwargs)
    if method == "rpp":
        from escnn_soft.nn import RPPR2Conv

        return lambda i, o, k, padding: RPPR2Conv(i, o, k, padding=padding, **method_kwargs)
    if method == "rsteer":
        from escnn_soft.nn import RSteerR2Conv

        return lambda i, o, k, padding: RSteerR2Conv(i, o, k, padding=padding, **method_kwargs)
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


class PlainDoubleMNISTNet(torch.nn.Module):
    """The same blocks with ``torch.nn.Conv2d`` (``channels`` per block), BatchNorm2d and ELU."""

    def __init__(self, channels: int, n_classes: int = 100, n_invariant: int = 32, readout: str = "grid"):
        super().__init__()
        self.readout = _check_readout(readout)
        layers: list[torch.nn.Module] = []
        c_in = 1
        for i, k in enumerate(KERNEL_SIZES):
            layers += [torch.nn.Conv2d(c_in, channels, k, padding=k // 2), torch.nn.BatchNorm2d(channels),
                       torch.nn.ELU()]
            if i in POOL_AFTER:
                layers.append(torch.nn.AvgPool2d(5, stride=2, padding=2))
            c_in = channels
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
    """

    def __init__(self, gspace: GSpace2D, fields: int, subgroup_id=None, n_classes: int = 100,
                 n_invariant: int = 32, readout: str = "grid", **ds_kwargs):
        super().__init__()
        from escnn_soft.nn import DSGroupConv, DSLiftingConv

        self.readout = _check_readout(readout)
        if fields < 1:
            raise ValueError(f"fields={fields} is invalid: use a positive number of regular fields")
        self.gspace = gspace
        self.method = "ds"
        self.in_type = FieldType(gspace, [gspace.trivial_repr])
        self.mask = enn.MaskModule(self.in_type, 57, margin=1)
        blocks: list[EquivariantModule] = []
        current: FieldType = self.in_type
        for i, k in enumerate(KERNEL_SIZES):
            if i == 0:
                conv = DSLiftingConv(current, fields, k, subgroup_id=subgroup_id, padding=k // 2, **ds_kwargs)
            else:
                conv = DSGroupConv(current, fields, k, padding=k // 2, **ds_kwargs)
            current = conv.out_type
            block = [conv, enn.InnerBatchNorm(current), enn.ELU(current)]
            if i in POOL_AFTER:
                block.append(enn.PointwiseAvgPoolAntialiased2D(current, sigma=0.66, stride=2))
            blocks.append(enn.SequentialModule(*block))
        self.blocks = enn.SequentialModule(*blocks)
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


def _pool(t: torch.Tensor, readout: str) -> torch.Tensor:
    """Average of the feature maps over the read-out's cells, flattened: ``(B, C, H, W) → (B, C·cells)``.

    ``'halves'``: the left and the right half (1×2 cells); ``'grid'``: 3×3 cells (5×5 pixels each on the
    15×15 map, so quarter turns and flips permute whole cells).
    """
    return F.adaptive_avg_pool2d(t, _READOUT_CELLS[readout]).flatten(1)


def _head(n_invariant: int, n_classes: int, readout: str) -> torch.nn.Sequential:
    """Batch-norm–ELU–Linear on the pooled invariant features of every read-out cell."""
    rows, cols = _READOUT_CELLS[readout]
    n = rows * cols * n_invariant
    return torch.nn.Sequential(torch.nn.BatchNorm1d(n), torch.nn.ELU(), torch.nn.Linear(n, n_classes))


def build_model(method: str, group: str = "SO2", width: int = 2, max_frequency: int = 2, n_classes: int = 100,
                readout: str = "grid", **method_kwargs) -> torch.nn.Module:
    """A DoubleMNIST network for ``method`` (one of :data:`METHODS`) on ``group``.

    The plain CNN gets as many channels per block as the steerable network's gated fields; the
    doubly-stochastic network as many regular fields of its finite group (:data:`DS_SUBGROUP`) as fill
    that many channels (at least one). ``readout`` is ``'grid'`` (default) or ``'halves'`` (module docstring).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; choose one of {', '.join(METHODS)}")
    for name, value, low in (("width", width, 1), ("max_frequency", max_frequency, 0), ("n_classes", n_classes, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} is invalid: use an int >= {low}")
    return canonical_order_(_build(method, group, width, max_frequency, n_classes, readout, **method_kwargs))


def _build(method: str, group: str, width: int, max_frequency: int, n_classes: int, readout: str,
           **method_kwargs) -> torch.nn.Module:
    gspace = make_gspace(group, max_frequency)
    if method == "cnn":
        conv_out, _, _ = _gated_types(gspace, width, max_frequency)
        return PlainDoubleMNISTNet(conv_out.size, n_classes=n_classes, readout=readout)
    if method == "ds":
        conv_out, _, _ = _gated_types(gspace, width, max_frequency)
        sid = DS_SUBGROUP[group]
        order = (gspace.restrict(sid)[0] if sid is not None else gspace).fibergroup.order()
        return DSDoubleMNISTNet(gspace, max(1, round(conv_out.size / order)), subgroup_id=sid, n_classes=n_classes,
                                readout=readout, **method_kwargs)
    return SteerableDoubleMNISTNet(gspace, method=method, width=width, max_frequency=max_frequency,
                                   n_classes=n_classes, readout=readout, **method_kwargs)


def method_summary(model: torch.nn.Module) -> dict[str, dict]:
    """``{layer name: degree()}`` for every soft layer of ``model``."""
    from escnn_soft.nn.base import SoftModule

    return {name: m.degree() for name, m in model.named_modules() if isinstance(m, SoftModule)}
