"""Subgroups of a compact group, in one place: which ones to report, how to name, resolve and test them.

Every soft layer, the subgroup report, ``degree()`` and ``harden`` speak of subgroups by **escnn subgroup id**
(``group.subgroup(id)``); ``None`` means the whole group. This module holds all that is done with them:

* which subgroups are worth reporting per group (:func:`default_subgroups`) and the trivial one
  (:func:`trivial_subgroup_id`);
* resolving an id, with an error that lists valid ids (:func:`subgroup`), and checking it against a gspace that
  must restrict to it (:func:`resolve_subgroup`, the relaxed layers' ``relaxed_subgroup``);
* test elements: grid-exact and interpolated ones for the report (:func:`subgroup_elements`), the grid-exact
  non-identity ones for the layers' ``degree()`` (:func:`subgroup_test_elements`);
* the subgroup acting on the kernel grid: its base-space matrices (:func:`subgroup_matrices`), the orbits of the
  grid points (:func:`orbit_classes`), and whether it contains every rotation (:func:`contains_rotations`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from escnn.group import (
    O2,
    O3,
    SO2,
    SO3,
    CyclicGroup,
    DihedralGroup,
    Group,
    GroupElement,
    Icosahedral,
    Octahedral,
)
from escnn.gspaces import GSpace

__all__ = ["contains_rotations", "default_subgroups", "orbit_classes", "resolve_subgroup", "subgroup",
           "subgroup_elements", "subgroup_matrices", "subgroup_test_elements", "trivial_subgroup_id"]


def _divisors(n: int) -> list:
    return [d for d in range(1, n + 1) if n % d == 0]


def _check_group(group: Any) -> None:
    if not isinstance(group, Group):
        raise TypeError(f"group: expected an escnn Group, got {type(group).__name__} ({group!r}); build one with "
                        f"escnn.group (e.g. dihedral_group(4), so2_group()) or take gspace.fibergroup")


def default_subgroups(group: Group) -> dict[str, Any]:
    """``{name: escnn subgroup id}`` of the subgroups worth reporting for ``group``.

    O(2): flips, C2, C4, D4, SO(2), O(2); SO(2): C2, C4, SO(2); C_N: C_d for the divisors d > 1 of N;
    D_N: flips, C_d and D_d for the divisors d of N; SO(3): C4 and SO(2) about z, O(2), the
    octahedral group, SO(3); O(3): the octahedral groups, SO(3), O(3).
    """
    _check_group(group)
    if isinstance(group, O2):
        return {"flips": (0.0, 1), "C2": (None, 2), "C4": (None, 4), "D4": (0.0, 4), "SO2": (None, -1),
                "O2": None}
    if isinstance(group, SO2):
        return {"C2": 2, "C4": 4, "SO2": None}
    if isinstance(group, CyclicGroup):
        n = group.order()
        return {f"C{d}": (d if d < n else None) for d in _divisors(n) if d > 1}
    if isinstance(group, DihedralGroup):
        n = group.order() // 2
        out: dict[str, Any] = {"flips": (0, 1)}
        for d in _divisors(n):
            if d > 1:
                out[f"C{d}"] = (None, d)
            out[f"D{d}"] = (0, d) if d < n else None
        out.pop("D1", None)
        return out
    if isinstance(group, SO3):
        return {"C4z": (False, 4), "SO2z": (False, -1), "O2": (True, -1), "octahedral": "octa", "SO3": None}
    if isinstance(group, O3):
        return {"octahedral": (False, "octa"), "full_octahedral": (True, "octa"), "SO3": "so3", "O3": None}
    return {group.name: None}


def subgroup(group: Group, sid: Any):
    """``(H, parent_map, child_map)`` for ``sid``; ``None`` means the whole group.

    Raises:
        TypeError: ``group`` is not an escnn group.
        ValueError: ``sid`` is not an escnn subgroup id of ``group``.
    """
    _check_group(group)
    if sid is None:
        return group, (lambda h: h), (lambda g: g)
    try:
        return group.subgroup(sid)
    except Exception as err:  # escnn rejects ids with AssertionError, KeyError, TypeError, ValueError, ...
        detail = str(err).strip() or type(err).__name__
        examples = [v for v in default_subgroups(group).values() if v is not None]
        raise ValueError(f"sid: {sid!r} is not a subgroup id of {group.name} ({detail}); pass an escnn subgroup "
                         f"id of {group.name}, e.g. one of {examples}, or None for the whole group") from err


_N_ROTATIONS = 16  # test rotations of a continuous planar subgroup: multiples of 22.5 degrees
_N_RANDOM_3D = 8   # random test rotations of a continuous 3D subgroup, besides the octahedral grid


def subgroup_elements(group: Group, sid: Any) -> list[GroupElement]:
    """Test elements of the subgroup ``sid`` (an escnn subgroup id, ``None`` = ``group``), as elements of ``group``.

    Finite subgroups: all their elements. SO(2), O(2): the rotations by multiples of 360/16 degrees
    (and as many reflections), so C_2, C_4 (grid-exact) and 12 interpolated angles are included.
    SO(3), O(3): the octahedral grid (exact) and 8 random rotations (seed 0). The identity is left out.
    """
    sub, inclusion, _ = subgroup(group, sid)
    if sub.order() > 0:
        elements = list(sub.elements)
    elif isinstance(sub, (SO2, O2)):
        elements = sub.grid(_N_ROTATIONS)
    elif isinstance(sub, (SO3, O3)):
        elements = sub.grid("cube") + sub.grid("rand", N=_N_RANDOM_3D, seed=0)
    else:
        raise ValueError(f"subgroups: no test elements known for the continuous group {sub.name}; "
                         "pass a list of its elements instead")
    return [g for g in (inclusion(h) for h in elements) if g != group.identity]


def trivial_subgroup_id(group: Group) -> Any:
    """The escnn id of the trivial subgroup of a fibre group: planar (C_N, D_N, SO(2), O(2)) or 3D (SO(3), O(3),
    the octahedral and icosahedral groups); ``None`` for a group whose trivial-subgroup id is not known here."""
    if isinstance(group, (SO3, Octahedral, Icosahedral)):
        return (False, 1)
    if isinstance(group, O3):
        return (False, False, 1)
    if isinstance(group, (DihedralGroup, O2)):
        return (None, 1)
    if isinstance(group, (CyclicGroup, SO2)):
        return 1
    return None


def contains_rotations(sub: Group) -> bool:
    """True when ``sub`` (an escnn group) contains every rotation of its space: SO(2)/O(2) in 2D, SO(3)/O(3) in 3D."""
    return isinstance(sub, (SO2, O2, SO3, O3))


def _subgroup_examples(group: Group) -> str:
    if isinstance(group, O2):
        return "(None, -1) for SO(2), (None, M) for C_M, (0., M) for D_M, (0., 1) for one flip, (None, 1) trivial"
    if isinstance(group, DihedralGroup):
        return (f"(None, M) for C_M, (0, M) for D_M with M dividing {group.rotation_order}, (0, 1) for one flip, "
                "(None, 1) trivial")
    if isinstance(group, SO2):
        return "M > 0 for C_M, -1 for SO(2), 1 trivial"
    if isinstance(group, SO3):
        return "'octa' for the octahedral group, 'ico', (False, M) for C_M about z, (False, -1) for SO(2), (False, 1) trivial"
    if isinstance(group, O3):
        return ("'so3' for SO(3), (False, 'octa') for the octahedral rotations, (True, 'octa') for the full octahedral "
                "group, (False, False, 1) trivial")
    return f"a divisor M of {group.order()} for C_M, 1 trivial"


def resolve_subgroup(gspace: GSpace, subgroup_id: Any, argname: str = "relaxed_subgroup"
                     ) -> tuple[Any, Group, Callable[[GroupElement], GroupElement]]:
    """Check ``subgroup_id`` against the fibre group of ``gspace``; ``None`` means the trivial subgroup.

    Returns:
        ``(id, S, inclusion)`` with ``inclusion`` mapping elements of ``S`` to the fibre group.

    Raises:
        ValueError: ``subgroup_id`` is not an escnn subgroup id of the fibre group.
    """
    group = gspace.fibergroup
    trivial = subgroup_id is None
    if subgroup_id is None:
        subgroup_id = trivial_subgroup_id(group)
        if subgroup_id is None:
            raise ValueError(f"{argname}: None (the trivial subgroup) has no known escnn id for the layer's group "
                             f"{group.name}; pass the escnn id of the subgroup to relax to")
    try:
        sub, inclusion, _ = group.subgroup(subgroup_id)
    except Exception as err:  # escnn signals bad ids with AssertionError, TypeError, ValueError, ...
        detail = str(err).strip() or type(err).__name__
        raise ValueError(f"{argname}: {subgroup_id!r} is not a subgroup id of the layer's group {group.name} "
                         f"({detail}); pass an escnn subgroup id of {group.name}, e.g. "
                         f"{_subgroup_examples(group)}") from err
    try:
        gspace.restrict(subgroup_id)
    except NotImplementedError as err:
        if trivial or sub.order() == 1:
            return subgroup_id, sub, inclusion   # the trivial subgroup needs no restriction (the layer builds it on escnn's trivial gspace)
        raise ValueError(f"{argname}: {subgroup_id!r}: escnn's gspace {gspace} cannot restrict to subgroups (escnn "
                         f"raises NotImplementedError); pass relaxed_subgroup=None (the trivial group), or build the "
                         f"layer on a gspace of a larger group (e.g. escnn.gspaces.rot3dOnR3() with "
                         f"relaxed_subgroup='octa')") from err
    except Exception as err:  # escnn signals bad ids with AssertionError, TypeError, ValueError, ...
        detail = str(err).strip() or type(err).__name__
        raise ValueError(f"{argname}: {subgroup_id!r} is not a subgroup id of the layer's group {group.name} "
                         f"({detail}); pass an escnn subgroup id of {group.name}, e.g. "
                         f"{_subgroup_examples(group)}") from err
    return subgroup_id, sub, inclusion


def subgroup_test_elements(gspace: GSpace, subgroup_id: Any) -> list[GroupElement]:
    """Grid-exact, non-identity elements of the subgroup ``subgroup_id`` (``None``: the whole fibre group),
    as elements of the fibre group."""
    from escnn_soft.metrics.equivariance import is_grid_exact

    sub, inclusion, _ = subgroup(gspace.fibergroup, subgroup_id)
    candidates = sub.testing_elements() if sub.continuous else sub.elements
    out = []
    for s in candidates:
        h = inclusion(s)
        if h != gspace.fibergroup.identity and is_grid_exact(gspace, h) and h not in out:
            out.append(h)
    return out


def subgroup_matrices(gspace: GSpace, subgroup_id: Any) -> np.ndarray | None:
    """The base-space matrices of all elements of a finite subgroup (``|S| x d x d``; ``subgroup_id=None``: the whole
    fibre group).

    ``None`` for a subgroup containing every rotation (SO(2), O(2) in 2D; SO(3), O(3) in 3D), whose averages are
    taken in closed form. For another continuous subgroup (e.g. SO(2) about an axis in 3D) the matrices of its
    grid-exact elements, closed under products: the finite subgroup that maps the grid onto itself.
    """
    from escnn_soft.metrics.equivariance import is_grid_exact

    sub, inclusion, _ = subgroup(gspace.fibergroup, subgroup_id)
    if contains_rotations(sub):
        return None
    if not sub.continuous:
        return np.stack([np.asarray(gspace.basespace_action(inclusion(s)), dtype=np.float64)
                         for s in sub.elements])
    mats = [np.eye(gspace.dimensionality)]
    for s in sub.testing_elements():
        h = inclusion(s)
        if is_grid_exact(gspace, h):
            mats.append(np.round(np.asarray(gspace.basespace_action(h), dtype=np.float64)))
    closed: list[np.ndarray] = []
    frontier = mats
    while frontier:
        new = []
        for a in frontier:
            if not any(np.array_equal(a, c) for c in closed):
                closed.append(a)
                new.extend(a @ b for b in mats)
        frontier = new
    return np.stack(closed)


def orbit_classes(points: np.ndarray, matrices: np.ndarray | None, tol: float = 1e-6) -> np.ndarray:
    """Label the kernel grid ``points`` (``P x d``) by their orbits under a subgroup.

    ``matrices=None`` stands for a subgroup containing every rotation (SO(2) in 2D, SO(3) in 3D): the orbits are
    circles or spheres, so points of equal radius share a label. Otherwise two points share a label when one of the matrices maps one onto the
    other (transitive closure by union-find); points that no element maps onto the grid stay alone.

    Returns:
        integer labels ``0..C-1`` of shape ``(P,)``.
    """
    n = len(points)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if matrices is None:
        radius = np.linalg.norm(points, axis=1)
        for i in range(n):
            for j in range(i):
                if abs(radius[i] - radius[j]) < tol:
                    parent[find(i)] = find(j)
    else:
        for a in matrices:
            moved = points @ a.T
            dist = np.linalg.norm(moved[:, None, :] - points[None, :, :], axis=-1)
            for i, j in zip(*np.nonzero(dist < tol)):
                parent[find(int(i))] = find(int(j))
    roots = [find(i) for i in range(n)]
    labels = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return np.array([labels[r] for r in roots], dtype=np.int64)
