"""3D tetris: the eight tetracube pieces, voxelised under random rotations (a chirality benchmark).

Each piece is four unit cubes glued face to face. Two of the pieces, ``chiral_left`` and ``chiral_right``,
are mirror images of each other and no rotation maps one onto the other: a network invariant to O(3)
(rotations and reflections) gives them the same output and cannot separate them (at best 7/8 accuracy on
balanced classes), while an SO(3)-invariant network can. The other six are achiral.

A sample is the occupancy of a rotated piece on an ``size``³ voxel grid: every cube has side ``scale``
voxels, the piece is centred on the grid centre (the centroid of its cube centres), and a voxel's value is
the fraction of its ``supersample``³ sub-points inside the piece (an antialiased rendering in [0, 1]).
Two rotation variants (``rotations``):

* ``"octa"`` — one of the 24 rotations of the octahedral group, applied to the voxelised piece as an exact
  permutation of the grid about its centre (no interpolation: the samples of one piece are exact grid
  rotations of each other, the grid-exact elements of escnn's SO(3)/O(3) gspaces);
* ``"so3"`` — a Haar-random rotation of SO(3), applied to the piece before voxelising (the rendering
  interpolates).

Everything is generated in memory, no download. Samples are a pure function of ``(seed, split, index)``:
the training and test splits draw their rotations from different streams; classes are balanced
(``n_per_class`` samples each, in class-major order shuffled by the seed).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["PIECES", "ROTATIONS", "SPLITS", "Tetris3D", "octahedral_rotations", "voxelise"]

#: name -> integer cube positions of the eight tetracubes (the two chiral ones first)
PIECES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "chiral_left": ((0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 1, 0)),
    "chiral_right": ((0, 0, 0), (0, 0, 1), (1, 0, 0), (1, -1, 0)),
    "square": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)),
    "line": ((0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 0, 3)),
    "corner": ((0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)),
    "L": ((0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0)),
    "T": ((0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 1)),
    "zigzag": ((0, 0, 0), (1, 0, 0), (1, 1, 0), (2, 1, 0)),
}
ROTATIONS: tuple[str, ...] = ("octa", "so3")
SPLITS: tuple[str, ...] = ("train", "test")


def octahedral_rotations() -> np.ndarray:
    """The 24 rotation matrices (``24 x 3 x 3``, integer) of the octahedral group: signed permutation matrices of
    determinant +1, the identity first."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            a = np.zeros((3, 3), dtype=np.int64)
            a[np.arange(3), perm] = signs
            if round(np.linalg.det(a)) == 1:
                mats.append(a)
    mats.sort(key=lambda a: (not np.array_equal(a, np.eye(3)), tuple(a.ravel())))
    return np.stack(mats)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A Haar-random rotation matrix (normalised Gaussian quaternion)."""
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def voxelise(cubes: Sequence[Sequence[int]], rotation: np.ndarray, size: int, scale: float,
             supersample: int = 2) -> np.ndarray:
    """Occupancy ``(size, size, size)`` of the piece made of unit ``cubes``, scaled by ``scale`` voxels per cube,
    centred (centroid of the cube centres on the grid centre) and rotated by ``rotation`` (3x3, acting on the
    array's index coordinates about the centre): the fraction of each voxel's ``supersample``³ sub-points inside."""
    centres = np.asarray(cubes, dtype=np.float64)
    centres = (centres - centres.mean(0)) * scale
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    axis = np.arange(size) - (size - 1) / 2
    fine = (axis[:, None] + offsets[None, :]).reshape(-1)                 # size * supersample sub-point coordinates
    pts = np.stack(np.meshgrid(fine, fine, fine, indexing="ij"), axis=-1).reshape(-1, 3)
    local = pts @ rotation                                                  # R^T x for each row x
    inside = np.zeros(len(pts), dtype=bool)
    for c in centres:
        inside |= np.all(np.abs(local - c) <= scale / 2, axis=1)
    occ = inside.reshape(size, supersample, size, supersample, size, supersample)
    return occ.mean(axis=(1, 3, 5))


def _rotate_grid(volume: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """``volume`` rotated about its centre by an integer signed-permutation ``rotation`` (an exact permutation)."""
    n = volume.shape[0]
    idx = np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), axis=-1).reshape(-1, 3) - (n - 1) // 2
    target = idx @ rotation.T + (n - 1) // 2
    out = np.empty_like(volume)
    out[target[:, 0], target[:, 1], target[:, 2]] = volume.reshape(-1)
    return out


def _check(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(repr, allowed))}")


def _positive_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")


class Tetris3D(Dataset):
    """The 3D tetris chirality dataset (module docstring): ``(volume (1, size, size, size), label)`` pairs.

    Args:
        split: ``"train"`` or ``"test"`` (independent rotation streams of one seed).
        rotations: ``"octa"`` (exact grid rotations of the octahedral group) or ``"so3"`` (Haar-random
            rotations, rendered by supersampling).
        n_per_class: samples per piece (balanced classes).
        size: odd grid size (a centre voxel, so that the octahedral rotations are exact); at least large
            enough for every piece in every orientation.
        scale: cube side in voxels (> 0).
        supersample: sub-points per voxel and axis for the rendering (>= 1).
        seed: the seed of every draw.

    Attributes:
        classes: piece names, in label order (``PIECES``).
        chiral_pair: the labels of the two mirror-image pieces, ``(0, 1)``.
        rotation_matrices: ``(len, 3, 3)`` float64, the rotation of each sample (in the array's index frame).
    """

    classes: tuple[str, ...] = tuple(PIECES)
    chiral_pair: tuple[int, int] = (0, 1)

    def __init__(self, split: str = "train", rotations: str = "octa", n_per_class: int = 64, size: int = 11,
                 scale: float = 2.0, supersample: int = 2, seed: int = 0):
        _check("split", split, SPLITS)
        _check("rotations", rotations, ROTATIONS)
        _positive_int("n_per_class", n_per_class, 1)
        _positive_int("supersample", supersample, 1)
        _positive_int("size", size, 3)
        if size % 2 == 0:
            raise ValueError(f"size: {size} is even; use an odd size (a centre voxel keeps the octahedral rotations "
                             f"exact), e.g. {size + 1}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"scale: expected a number > 0 (cube side in voxels), got {scale!r}")
        # every piece must fit in every orientation: its farthest cube corner from the centroid
        reach = max(np.linalg.norm((np.asarray(c, float) - np.mean(c, 0)), axis=1).max() for c in PIECES.values())
        radius = (reach + np.sqrt(3) / 2) * scale
        if radius > (size - 1) / 2 + 0.5:
            need = 2 * int(np.ceil(radius - 0.5)) + 1
            raise ValueError(f"size: {size} is too small for pieces of scale {scale} (they reach {radius:.2f} voxels "
                             f"from the centre); use size >= {need} or a smaller scale")
        self.split, self.rotations, self.size, self.scale = split, rotations, size, float(scale)
        self.n_per_class, self.supersample, self.seed = n_per_class, supersample, seed
        rng = np.random.default_rng([seed, SPLITS.index(split), ROTATIONS.index(rotations)])
        labels = np.repeat(np.arange(len(PIECES)), n_per_class)
        labels = labels[rng.permutation(len(labels))]
        octa = octahedral_rotations()
        canonical = {k: voxelise(c, np.eye(3), size, scale, supersample) for k, c in enumerate(PIECES.values())}
        volumes, mats = [], []
        for label in labels:
            if rotations == "octa":
                r = octa[rng.integers(len(octa))]
                volumes.append(_rotate_grid(canonical[int(label)], r))
            else:
                r = _random_rotation(rng)
                volumes.append(voxelise(PIECES[self.classes[label]], r, size, scale, supersample))
            mats.append(np.asarray(r, dtype=np.float64))
        self.volumes = torch.as_tensor(np.stack(volumes), dtype=torch.float32)[:, None]
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.rotation_matrices = np.stack(mats)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.volumes[index], self.labels[index]

    def __repr__(self) -> str:
        return (f"Tetris3D(split={self.split!r}, rotations={self.rotations!r}, n={len(self)}, size={self.size}, "
                f"scale={self.scale:g}, seed={self.seed})")
