"""escnn_soft.subgroups, the one home of subgroup logic, checked against escnn's own groups.

* every default subgroup id resolves with escnn, and its report test elements lie in it (escnn's inclusion);
* the trivial subgroup id of every supported group is escnn's subgroup of order 1;
* the grid-exact test elements map the pixel grid onto itself, and the subgroup matrices are closed under products
  and are the base-space actions of subgroup elements;
* orbit classes of the kernel grid are unions of orbits (each matrix maps a class onto itself).
"""
from __future__ import annotations

import numpy as np
import pytest
from escnn import group as egroup
from escnn import gspaces

from escnn_soft.metrics import is_grid_exact
from escnn_soft.subgroups import (
    contains_rotations,
    default_subgroups,
    orbit_classes,
    resolve_subgroup,
    subgroup,
    subgroup_elements,
    subgroup_matrices,
    subgroup_test_elements,
    trivial_subgroup_id,
)

GROUPS = {"C4": egroup.cyclic_group(4), "D4": egroup.dihedral_group(4), "SO2": egroup.so2_group(),
          "O2": egroup.o2_group(), "SO3": egroup.so3_group(), "O3": egroup.o3_group(),
          "octa": egroup.octa_group(), "ico": egroup.ico_group()}
GSPACES = {"C8": gspaces.rot2dOnR2(8), "D4": gspaces.flipRot2dOnR2(4), "SO2": gspaces.rot2dOnR2(-1),
           "O2": gspaces.flipRot2dOnR2(-1), "SO3": gspaces.rot3dOnR3(), "O3": gspaces.flipRot3dOnR3()}


@pytest.mark.parametrize("name", GROUPS)
def test_trivial_subgroup_id_is_escnns_subgroup_of_order_one(name):
    group = GROUPS[name]
    sub, inclusion, _ = group.subgroup(trivial_subgroup_id(group))
    assert sub.order() == 1 and inclusion(sub.identity) == group.identity


def test_trivial_subgroup_id_of_an_unknown_group_is_none():
    assert trivial_subgroup_id(egroup.direct_product(egroup.cyclic_group(2), egroup.cyclic_group(3))) is None


@pytest.mark.parametrize("name", ["C4", "D4", "SO2", "O2", "SO3", "O3"])
def test_default_subgroups_resolve_and_their_test_elements_lie_in_them(name):
    group = GROUPS[name]
    for label, sid in default_subgroups(group).items():
        _, inclusion, restriction = subgroup(group, sid)
        elements = subgroup_elements(group, sid)
        assert elements, label
        for g in elements:
            assert g.group == group and g != group.identity
            assert inclusion(restriction(g)) == g  # g is the image of an element of the subgroup


def _key(m: np.ndarray) -> bytes:
    return (m.round(6) + 0.0).tobytes()  # + 0.0 turns -0.0 into 0.0


@pytest.mark.parametrize("name", GSPACES)
def test_grid_exact_elements_and_subgroup_matrices(name):
    gspace = GSPACES[name]
    for label, sid in default_subgroups(gspace.fibergroup).items():
        try:
            resolve_subgroup(gspace, sid)
        except ValueError:
            continue  # a subgroup escnn's gspace cannot restrict to (checked in test_bad_input)
        for g in subgroup_test_elements(gspace, sid):
            assert is_grid_exact(gspace, g) and g != gspace.fibergroup.identity
        mats = subgroup_matrices(gspace, sid)
        sub = subgroup(gspace.fibergroup, sid)[0]
        if mats is None:
            assert contains_rotations(sub), label
            continue
        keys = {_key(m) for m in mats}
        for a in mats:  # closed under products, orthogonal
            np.testing.assert_allclose(a @ a.T, np.eye(len(a)), atol=1e-9)
            for b in mats:
                assert _key(a @ b) in keys, label


def test_orbit_classes_are_unions_of_orbits():
    gspace = GSPACES["D4"]
    points = np.stack(np.meshgrid(np.arange(-2, 3), np.arange(-2, 3), indexing="ij"), -1).reshape(-1, 2).astype(float)
    mats = subgroup_matrices(gspace, (0, 4))
    labels = orbit_classes(points, mats)
    assert len(set(labels.tolist())) == 6  # D4 on a 5x5 grid: centre, 4 edge-adjacent rings of 4 or 8
    for a in mats:
        moved = points @ a.T
        for p, q in zip(points, moved):
            i = int(np.argmin(np.linalg.norm(points - p, axis=1)))
            j = int(np.argmin(np.linalg.norm(points - q, axis=1)))
            assert labels[i] == labels[j]
    circles = orbit_classes(points, None)  # every rotation: equal radius, one class
    assert len(set(circles.tolist())) == len({round(float(np.hypot(*p)), 6) for p in points})
