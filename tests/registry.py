"""One registry of the groups, gspaces and field types the tests build layers on.

* :func:`gspace` — the gspace of a named group: ``"C4"``, ``"C8"``, ``"D4"``, ``"SO2"``, ``"O2"`` (on R²),
  ``"SO3"``, ``"O3"``, ``"octa"`` (on R³); continuous groups with :data:`MAXIMUM_FREQUENCY` unless a test
  passes its own. Cached: escnn memoises kernel bases on the gspace, so sharing one saves time.
* field-type builders: :func:`trivial`, :func:`regular`, :func:`irreps` (every irrep up to a band limit),
  :func:`vector` (trivial + the group's standard action), :func:`mixed_types` (an input/output pair with
  scalars and a hidden part), :func:`conv_types` (the small pairs the soft convolution tests use).
"""
from __future__ import annotations

import functools
from collections.abc import Callable

from escnn import gspaces
from escnn import nn as enn

__all__ = ["GSPACES_2D", "GSPACES_3D", "MAXIMUM_FREQUENCY", "conv_types", "gspace", "irreps", "mixed_types",
           "regular", "trivial", "vector"]

#: the default band limit of each continuous group's gspace
MAXIMUM_FREQUENCY = {"SO2": 4, "O2": 4, "SO3": 2, "O3": 2}

_BUILDERS: dict[str, Callable[[int | None], gspaces.GSpace]] = {
    "C4": lambda f: gspaces.rot2dOnR2(4),
    "C8": lambda f: gspaces.rot2dOnR2(8),
    "D4": lambda f: gspaces.flipRot2dOnR2(4),
    "SO2": lambda f: gspaces.rot2dOnR2(-1, maximum_frequency=f),
    "O2": lambda f: gspaces.flipRot2dOnR2(-1, maximum_frequency=f),
    "SO3": lambda f: gspaces.rot3dOnR3(maximum_frequency=f),
    "O3": lambda f: gspaces.flipRot3dOnR3(maximum_frequency=f),
    "octa": lambda f: gspaces.octaOnR3(),
}

#: the names of the groups acting on R² and on R³
GSPACES_2D = ("C4", "C8", "D4", "SO2", "O2")
GSPACES_3D = ("SO3", "O3", "octa")


@functools.cache
def gspace(name: str, maximum_frequency: int | None = None) -> gspaces.GSpace:
    """The gspace of the group ``name``; ``maximum_frequency`` overrides the default band limit."""
    if name not in _BUILDERS:
        raise KeyError(f"gspace: unknown group {name!r}; use one of {list(_BUILDERS)}")
    return _BUILDERS[name](maximum_frequency if maximum_frequency is not None else MAXIMUM_FREQUENCY.get(name))


def _space(gs: gspaces.GSpace | str) -> gspaces.GSpace:
    return gspace(gs) if isinstance(gs, str) else gs


def trivial(gs: gspaces.GSpace | str, n: int = 1) -> enn.FieldType:
    """``n`` scalar fields."""
    gs = _space(gs)
    return enn.FieldType(gs, [gs.trivial_repr] * n)


def regular(gs: gspaces.GSpace | str, n: int = 1) -> enn.FieldType:
    """``n`` regular fields (finite groups)."""
    gs = _space(gs)
    return enn.FieldType(gs, [gs.regular_repr] * n)


def irreps(gs: gspaces.GSpace | str, L: int = 2, n: int = 1) -> enn.FieldType:
    """``n`` copies of every irrep of band limit ``L`` (``G.bl_irreps(L)``)."""
    gs = _space(gs)
    return enn.FieldType(gs, [gs.irrep(*i) for i in gs.fibergroup.bl_irreps(L)] * n)


# the irrep of each continuous group's standard action on the plane / space
_STANDARD_IRREP = {"SO2": (1,), "O2": (1, 1), "SO3": (1,), "O3": (1, 1)}


def vector(name: str, maximum_frequency: int | None = None) -> enn.FieldType:
    """A scalar and a vector field: trivial + the standard action of the group ``name`` (finite groups on R²:
    the regular representation)."""
    gs = gspace(name, maximum_frequency)
    if name in _STANDARD_IRREP:
        return enn.FieldType(gs, [gs.trivial_repr, gs.irrep(*_STANDARD_IRREP[name])])
    if name == "octa":
        return enn.FieldType(gs, [gs.trivial_repr, gs.fibergroup.standard_representation])
    return enn.FieldType(gs, [gs.trivial_repr, gs.regular_repr])


def mixed_types(gs: gspaces.GSpace | str, width: int = 1) -> tuple[enn.FieldType, enn.FieldType]:
    """``(in, out)``: one (in) or two (out) scalars and a hidden part of ``width`` regular fields (finite
    groups) or ``width`` copies of the irreps of band limit 2 (continuous groups)."""
    gs = _space(gs)
    hidden = list((regular(gs, width) if gs.fibergroup.order() > 0 else irreps(gs, 2, width)).representations)
    return enn.FieldType(gs, [gs.trivial_repr] + hidden), enn.FieldType(gs, [gs.trivial_repr] * 2 + hidden)


def conv_types(name: str) -> tuple[enn.FieldType, enn.FieldType]:
    """Small input/output field types for the soft convolution tests on C4, D4, SO2 or O2 (band limit 3)."""
    if name == "C4":
        return regular("C4"), enn.FieldType(gspace("C4"), [gspace("C4").regular_repr, gspace("C4").trivial_repr])
    if name == "D4":
        return regular("D4"), regular("D4")
    t = vector(name, maximum_frequency=3)
    return t, t
