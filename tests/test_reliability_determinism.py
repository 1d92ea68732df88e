"""Determinism (same seed, same numbers) and isolation (two models, or one model on two devices or dtypes, share
no parameters, buffers or caches)."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

import escnn_soft as es
from escnn_soft.data import DoubleMNIST, clear_cache
from escnn_soft.models import METHODS, build_model
from escnn_soft.nn._filter import FilterCache
from escnn_soft.nn.base import iter_modules


def _train(method: str, device: str = "cpu", steps: int = 3):
    """A few Adam steps (with the soft layers' regularisers) of a small DoubleMNIST net from seed 0."""
    torch.manual_seed(0)
    model = build_model(method, group="C4", width=1, n_classes=10).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 1, 56, 56, generator=gen).to(device), torch.randint(0, 10, (4,), generator=gen).to(device)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + es.regularization_loss(model)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        out = model.eval()(x)
    return losses, {k: v.detach().cpu() for k, v in model.state_dict().items()}, out.cpu()


# --- determinism -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["probabilistic", "relaxed"])
def test_training_twice_with_one_seed_is_bit_identical_on_cpu(method):
    """In one process: the second model reuses escnn's (privatised) basis caches and our memoised
    representations, which must not change a single bit."""
    first, second = _train(method), _train(method)
    assert first[0] == second[0]
    assert first[1].keys() == second[1].keys()
    for k, v in first[1].items():
        assert torch.equal(v, second[1][k]), k
    assert torch.equal(first[2], second[2])
    assert first[0][-1] < first[0][0]  # it did train


def test_doublemnist_build_is_bit_identical_whatever_the_global_rng_and_threads():
    kwargs = {"n_images": 200, "seed": 5}
    first = DoubleMNIST("O2", "train", **kwargs)
    clear_cache()
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(9)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        again = DoubleMNIST("O2", "train", **kwargs)
    finally:
        torch.set_num_threads(threads)
    for name in ("images", "labels", "source_indices", "transforms", "artefact_angles"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["probabilistic", "relaxed"])
def test_cuda_tolerances(method):
    """CUDA is not bit-reproducible (cuDNN picks algorithms, atomics reorder sums): two CUDA runs agree to
    1e-5 relative, CUDA and CPU to 1e-3 after three training steps (TF32 is allowed for cuDNN convolutions by
    default: 10 bits of mantissa)."""
    cpu, cuda, again = _train(method), _train(method, "cuda"), _train(method, "cuda")
    torch.testing.assert_close(torch.tensor(cuda[0]), torch.tensor(again[0]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cuda[2], again[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(cuda[0]), torch.tensor(cpu[0]), rtol=1e-3, atol=1e-4)
    scale = float(cpu[2].abs().max())
    torch.testing.assert_close(cuda[2], cpu[2], rtol=1e-3, atol=1e-3 * scale)


# --- isolation ---------------------------------------------------------------------------------------------------

def _tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every tensor a model holds: parameters, buffers and plain attributes (the eval caches, inside
    :class:`~escnn_soft.nn._filter.FilterCache`), also inside tuples, lists and dicts."""
    out: list[tuple[str, torch.Tensor]] = []

    def visit(obj, path: str, depth: int) -> None:
        if isinstance(obj, FilterCache):
            visit(obj.tensors(), f"{path}.cached", depth)
        elif isinstance(obj, torch.Tensor):
            out.append((path, obj))
        elif depth < 3 and isinstance(obj, (tuple, list)):
            for i, v in enumerate(obj):
                visit(v, f"{path}[{i}]", depth + 1)
        elif depth < 3 and isinstance(obj, dict):
            for k, v in obj.items():
                visit(v, f"{path}[{k!r}]", depth + 1)

    for i, m in enumerate(iter_modules(model)):
        for k, v in vars(m).items():
            if k != "_modules":
                visit(v, f"{i}:{type(m).__name__}.{k}", 0)
    return out


def _storages(model: torch.nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for _, t in _tensors(model) if t.numel()}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "cnn"])
def test_two_models_share_no_tensor_and_no_cache(method):
    x = torch.rand(2, 1, 56, 56, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    a = build_model(method, group="C4", width=1, n_classes=10).eval()
    torch.manual_seed(1)
    b = build_model(method, group="C4", width=1, n_classes=10).eval()
    with torch.no_grad():
        ya, yb = a(x), b(x)  # fills every eval cache
        if method not in ("strict", "ds"):  # the soft layers' caches are seen by _tensors
            assert any(".cached" in path for path, _ in _tensors(a))
        assert not _storages(a) & _storages(b)
        for p in a.parameters():
            p.add_(0.01 * torch.randn_like(p))
        assert torch.equal(b(x), yb)  # b's caches did not see a's update
        if method != "strict":  # escnn's R2Conv keeps its eval-mode filter until .train() (documented by escnn)
            ya_cached = a(x)
            assert not torch.equal(ya_cached, ya)
            torch.testing.assert_close(ya_cached, a.train().eval()(x), rtol=0, atol=0)  # = rebuilt caches
        dtypes = [t.dtype for _, t in _tensors(b)]
        a.double()  # moving one model never moves the other
        assert [t.dtype for _, t in _tensors(b)] == dtypes
        assert torch.equal(b(x), yb)


def _soft_layers() -> dict[str, torch.nn.Module]:
    from escnn import gspaces
    from escnn import nn as enn

    c4 = gspaces.rot2dOnR2(4)
    reg = enn.FieldType(c4, [c4.regular_repr])
    reg2 = enn.FieldType(c4, 2 * [c4.regular_repr])
    so2 = gspaces.rot2dOnR2(-1, maximum_frequency=3)
    t2 = enn.FieldType(so2, [so2.trivial_repr, so2.irrep(1)])
    g0 = gspaces.no_base_space(so2.fibergroup)
    t0 = enn.FieldType(g0, [g0.trivial_repr, g0.irrep(1)])
    return {"ProbabilisticR2Conv": es.nn.ProbabilisticR2Conv(t2, t2, 3, padding=1),
            "ProbabilisticLinear": es.nn.ProbabilisticLinear(t0, t0),
            "RelaxedR2Conv": es.nn.RelaxedR2Conv(reg, reg, 3, padding=1),
            "RelaxedR2Conv, bank_fraction 0.5": es.nn.RelaxedR2Conv(reg2, reg2, 3, padding=1, bank_fraction=0.5),
            "RelaxedR2Conv, bank fractions 0.5": es.nn.RelaxedR2Conv(reg2, reg2, 3, padding=1, bank_fraction=0.5,
                                                                     bank_in_fraction=0.5),
            "RPPR2Conv": es.nn.RPPR2Conv(reg, reg, 3, padding=1),
            "RSteerR2Conv": es.nn.RSteerR2Conv(reg, reg, 3, padding=1),
            "DSLiftingConv": es.nn.DSLiftingConv(enn.FieldType(c4, [c4.trivial_repr]), 2, 3, padding=1),
            "DSGroupConv": es.nn.DSGroupConv(reg, 2, 3, padding=1)}


def _cast_everything(model: torch.nn.Module, forward) -> None:
    """After an eval forward (caches full), ``.double()`` converts every floating tensor the model holds, caches
    included, and the float64 forward equals the float64 filter; ``.float()`` converts back."""
    model.eval()
    with torch.no_grad():
        forward(model, torch.float32)
        caches = [v for m in iter_modules(model) for v in vars(m).values() if isinstance(v, FilterCache)]
        assert all(c.tensors() for c in caches)  # the caches are full (the checks below see them)
        model.double()
        stale = [p for p, t in _tensors(model) if t.is_floating_point() and t.dtype != torch.float64]
        assert not stale, stale
        assert forward(model, torch.float64).dtype == torch.float64
        model.float()
        stale = [p for p, t in _tensors(model) if t.is_floating_point() and t.dtype != torch.float32]
        assert not stale, stale
        assert forward(model, torch.float32).dtype == torch.float32
        model.to("meta")  # a device move also reaches every floating tensor and cache
        stale = [p for p, t in _tensors(model) if t.is_floating_point() and t.device.type != "meta"]
        assert not stale, stale


@pytest.mark.parametrize("name", ["ProbabilisticR2Conv", "ProbabilisticLinear", "RelaxedR2Conv",
                                  "RelaxedR2Conv, bank_fraction 0.5", "RelaxedR2Conv, bank fractions 0.5", "RPPR2Conv", "RSteerR2Conv", "DSLiftingConv",
                                  "DSGroupConv"])
def test_dtype_and_device_moves_reach_every_buffer_and_cache_of_a_layer(name):
    torch.manual_seed(0)
    layer = _soft_layers()[name]
    size = () if layer.in_type.gspace.dimensionality == 0 else (9, 9)

    def forward(m, dtype):
        return m(m.in_type(torch.randn(2, m.in_type.size, *size, dtype=dtype))).tensor

    _cast_everything(layer, forward)


@pytest.mark.parametrize("method", ["strict", "probabilistic", "relaxed"])
def test_dtype_and_device_moves_reach_every_buffer_and_cache_of_a_net(method):
    """escnn's GatedNonLinearity1 cannot run in float64, so the float64 forward is the feature extractor's
    first block."""
    torch.manual_seed(0)
    model = build_model(method, group="C4", width=1, n_classes=10)

    def forward(m, dtype):
        x = torch.rand(2, 1, 56, 56, dtype=dtype)
        if dtype == torch.float64:
            return m.blocks[0][0](m.in_type(x)).tensor
        return m(x)

    _cast_everything(model, forward)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["strict", "probabilistic", "relaxed", "ds"])
def test_to_cuda_moves_every_tensor_and_leaves_a_cpu_copy_alone(method):
    torch.manual_seed(0)
    model = build_model(method, group="C4", width=1, n_classes=10).train()
    twin = copy.deepcopy(model).cuda().eval()  # escnn's eval-mode R2Conv filter is not a leaf: copy in train mode
    model.eval()
    x = torch.rand(2, 1, 56, 56)
    with torch.no_grad():
        y = model(x)
        stale = [p for p, t in _tensors(twin) if t.is_floating_point() and t.device.type != "cuda"]
        assert not stale, stale
        torch.testing.assert_close(twin(x.cuda()).cpu(), y, rtol=1e-3, atol=1e-3 * float(y.abs().max()))
        assert all(t.device.type == "cpu" for _, t in _tensors(model))
        assert torch.equal(model(x), y)
