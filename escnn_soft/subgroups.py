"""Subgroups of interest per group, as escnn subgroup ids.

Used by ``degree()`` of the probabilistic layers and by :func:`escnn_soft.metrics.subgroup_report`.
The whole group is listed under its own name with id ``None``.
"""
from __future__ import annotations

from typing import Any

from escnn.group import O2, O3, SO2, SO3, CyclicGroup, DihedralGroup, Group

__all__ = ["default_subgroups", "subgroup"]


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
