"""Tetris3D: balanced, seeded, exact octahedral rotations, the chiral pair, and rendering under SO(3)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from escnn_soft.data import Tetris3D
from escnn_soft.data.tetris import PIECES, _rotate_grid, octahedral_rotations, voxelise


def test_balanced_seeded_and_splits_differ():
    a, b = Tetris3D("train", n_per_class=5, seed=3), Tetris3D("train", n_per_class=5, seed=3)
    assert len(a) == 40 and torch.equal(a.volumes, b.volumes) and torch.equal(a.labels, b.labels)
    assert torch.bincount(a.labels).tolist() == [5] * 8
    test = Tetris3D("test", n_per_class=5, seed=3)
    assert not np.allclose(a.rotation_matrices, test.rotation_matrices)
    x, y = a[0]
    assert x.shape == (1, 11, 11, 11) and x.dtype == torch.float32 and y.dtype == torch.long


def test_octa_samples_are_exact_grid_rotations_of_the_piece():
    rots = octahedral_rotations()
    assert len(rots) == 24 and all(round(np.linalg.det(r)) == 1 for r in rots)
    data = Tetris3D("train", "octa", n_per_class=3)
    for x, y, r in zip(data.volumes, data.labels, data.rotation_matrices):
        canonical = voxelise(PIECES[data.classes[y]], np.eye(3), 11, 2.0)
        np.testing.assert_array_equal(x[0].numpy(), _rotate_grid(canonical, r.astype(np.int64)).astype(np.float32))
        # rendering the rotated piece gives the same voxels: the rotation is grid-exact
        np.testing.assert_allclose(voxelise(PIECES[data.classes[y]], r, 11, 2.0), x[0].numpy(), atol=1e-6)


def _orbit(volume: np.ndarray) -> list[np.ndarray]:
    return [_rotate_grid(volume, r) for r in octahedral_rotations()]


def test_chiral_pair_are_mirror_images_and_no_rotation_relates_them():
    left = voxelise(PIECES["chiral_left"], np.eye(3), 11, 2.0)
    right = voxelise(PIECES["chiral_right"], np.eye(3), 11, 2.0)
    mirrored = left[:, ::-1, :]                          # a reflection of the grid
    assert any(np.array_equal(mirrored, v) for v in _orbit(right))
    assert not any(np.array_equal(left, v) for v in _orbit(right))
    # every other piece equals its own mirror image up to a rotation
    for name in list(PIECES)[2:]:
        v = voxelise(PIECES[name], np.eye(3), 11, 2.0)
        assert any(np.array_equal(v[:, ::-1, :], w) for w in _orbit(v)), name


def test_so3_rendering_keeps_the_volume_and_interpolates():
    data = Tetris3D("test", "so3", n_per_class=2, supersample=3)
    mass = data.volumes.sum(dim=(1, 2, 3, 4))
    torch.testing.assert_close(mass, torch.full_like(mass, 4 * 2.0 ** 3), rtol=0.06, atol=0)
    assert ((data.volumes > 0) & (data.volumes < 1)).any()   # partial voxels: not a grid rotation


@pytest.mark.parametrize("kwargs,arg", [({"split": "val"}, "split"), ({"rotations": "o3"}, "rotations"),
                                        ({"size": 10}, "size"), ({"size": 7}, "size"), ({"scale": 0}, "scale"),
                                        ({"n_per_class": 0}, "n_per_class")])
def test_bad_arguments_name_themselves(kwargs, arg):
    with pytest.raises(ValueError, match=f"^{arg}: "):
        Tetris3D(**kwargs)
