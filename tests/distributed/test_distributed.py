"""Runs that must not depend on the process: parameter order across hash seeds, DDP on 2 gloo ranks against
a single process on the concatenated batch, distributed Laplace evidence against the single-process one.

Every rank is a new process with its own ``PYTHONHASHSEED`` (tests/distributed/worker.py), as under torchrun.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("worker.py")
ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(task: str, out: Path, hash_seeds: list[int], timeout: float = 240, device: str = "cpu") -> list[dict]:
    """Run ``task`` on ``len(hash_seeds)`` ranks (new processes, rank r with ``PYTHONHASHSEED=hash_seeds[r]``)
    and return each rank's result."""
    out.mkdir(parents=True, exist_ok=True)
    port = str(free_port())
    procs = []
    for r, seed in enumerate(hash_seeds):
        env = {**os.environ, "PYTHONHASHSEED": str(seed), "RANK": str(r), "LOCAL_RANK": str(r),
               "WORLD_SIZE": str(len(hash_seeds)), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WORKER_DEVICE": device}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), task, str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            p.kill()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log[-3000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(len(hash_seeds))]


def signature_in_new_process(model: str, hash_seed: int, out: Path) -> list:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(WORKER), f"signature:{model}", str(out)], env=env, check=True)
    return torch.load(out / "rank0.pt", weights_only=True)["signature"]


@pytest.mark.parametrize("model", ["doublemnist-probabilistic", "escnn-strict-bn", "escnn-rpp-bn"])
def test_parameter_order_is_the_same_under_every_hash_seed(model, tmp_path):
    signatures = [signature_in_new_process(model, seed, tmp_path / str(seed)) for seed in (1, 2, 3)]
    assert signatures[0] == signatures[1] == signatures[2]
    assert any(kind == "parameter" for kind, _, _ in signatures[0])


def test_without_the_fix_escnn_orders_parameters_by_hash_seed(tmp_path):
    """The defect the fix removes: a strict escnn model built *before* ``import escnn_soft`` lists its
    parameters in a hash-seed-dependent order; ``canonical_order_`` makes it the same again."""
    script = (
        "import sys, torch, escnn.gspaces as gs, escnn.nn as enn\n"
        "g = gs.rot2dOnR2(4)\n"
        "t = enn.FieldType(g, [g.regular_repr, g.irrep(1), g.trivial_repr, g.irrep(2)] * 2)\n"
        "m = enn.SequentialModule(enn.R2Conv(enn.FieldType(g, [g.trivial_repr]), t, 3), enn.IIDBatchNorm2d(t))\n"
        "before = [n for n, _ in m.named_parameters()] + [n for n, _ in m.named_buffers()]\n"
        "import escnn_soft as es\n"
        "es.canonical_order_(m)\n"
        "after = [n for n, _ in m.named_parameters()] + [n for n, _ in m.named_buffers()]\n"
        "print(repr((before, after)))\n")
    results = []
    for seed in range(1, 5):
        env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(ROOT)}
        results.append(eval(subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True,
                                           text=True).stdout))
    assert len({repr(before) for before, _ in results}) > 1  # the defect: escnn alone differs by hash seed
    assert len({repr(after) for _, after in results}) == 1
    assert sorted(results[0][0]) == sorted(results[0][1])  # same names, only the order changed


@pytest.mark.parametrize("model", ["escnn-probabilistic", "escnn-relaxed", "escnn-strict"])
def test_ddp_two_ranks_equal_single_process_on_the_concatenated_batch(model, tmp_path):
    """2 gloo ranks with different hash seeds (101 and 202: equal shapes, different orders before the fix).
    float64; 3 Adam steps. Replicas are identical to the last bit (DDP averages the same gradients on each
    rank); against one process on the whole batch the only difference is the order of the float64 sums of
    the gradient average: 1e-9 relative."""
    ranks = launch(f"ddp:{model}", tmp_path / "ddp", [101, 202])
    single = launch(f"ddp:{model}", tmp_path / "single", [303])[0]
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert list(a) == list(b) == list(single["state"])
    for k in a:
        assert torch.equal(a[k], b[k]), k
        torch.testing.assert_close(a[k], single["state"][k], rtol=1e-9, atol=1e-12, msg=k)
    # the steps changed the weights: a run that did nothing would pass the comparisons above
    assert max(float((a[k] - single["initial"][k]).abs().max()) for k in a) > 1e-3


@pytest.mark.parametrize("model", ["doublemnist-probabilistic", "doublemnist-relaxed", "escnn-probabilistic-bn"])
def test_ddp_replicas_stay_identical_with_batch_norm(model, tmp_path):
    """With escnn's batch norms each rank normalises with its own batch (not the single-process statistics),
    so only the replicas' identity is asserted: wrapping works with different hash seeds, and after 3 steps
    every parameter and buffer is bit-identical on both ranks."""
    a, b = (r["state"] for r in launch(f"ddp:{model}", tmp_path, [1, 2]))
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("hessian", ["kron", "full", "kron-lowmem"])
def test_distributed_laplace_evidence_equals_single_process(hessian, tmp_path):
    """Evidence fitted on 2 interleaved shards (2 ranks) = evidence on the union (1 process): value and its
    gradients w.r.t. the prior precisions and the likelihood coefficients, 1e-6 relative in float64.
    ``kron-lowmem``: the ranks take the gradients from ``evidence_gradient`` (two passes), the single process
    from autograd through the one-graph fit."""
    ranks = launch(f"laplace:{hessian}", tmp_path / "dist", [11, 12])
    single = launch(f"laplace:{hessian.partition('-')[0]}", tmp_path / "single", [13])[0]
    assert ranks[0]["n_data"] == ranks[1]["n_data"] == single["n_data"] == 12
    for r in ranks:
        torch.testing.assert_close(r["value"], single["value"], rtol=1e-6, atol=0)
        assert len(r["grads"]) == len(single["grads"]) >= 3
        for g, g_single in zip(r["grads"], single["grads"]):
            torch.testing.assert_close(g, g_single, rtol=1e-6, atol=1e-9)
    assert any(bool(g.abs().max() > 1e-6) for g in single["grads"][1:])  # the hyperparameters matter


def test_marglik_training_under_ddp_equals_single_process(tmp_path):
    """marglik_training on 2 ranks (DDP, evidence summed over ranks, hyperparameter gradients averaged) takes
    the same weight and hyperparameter steps as one process on the same global batches (float64)."""
    ranks = launch("marglik:-", tmp_path / "dist", [21, 22])
    single = launch("marglik:-", tmp_path / "single", [23])[0]
    for key in ("marglik", "prior_precision", "loss"):
        torch.testing.assert_close(ranks[0][key], single[key], rtol=1e-7, atol=0, msg=key)
    for k, v in single["state"].items():
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]), k
        torch.testing.assert_close(ranks[0]["state"][k], v, rtol=1e-7, atol=1e-10, msg=k)
    assert float((single["prior_precision"] - 1.0).abs().max()) > 1e-3  # the evidence moved the precisions


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (one per nccl rank)")


@pytest.mark.gpu
@two_gpus
def test_ddp_on_cuda_nccl_equals_single_process(tmp_path):
    """The CPU test above on 2 GPUs (nccl): float64, so the same 1e-9 tolerance holds on CUDA."""
    ranks = launch("ddp:escnn-probabilistic", tmp_path / "ddp", [101, 202], device="cuda")
    single = launch("ddp:escnn-probabilistic", tmp_path / "single", [303], device="cuda")[0]
    for k in ranks[0]["state"]:
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]), k
        torch.testing.assert_close(ranks[0]["state"][k], single["state"][k], rtol=1e-9, atol=1e-12, msg=k)


@pytest.mark.gpu
@two_gpus
def test_distributed_laplace_on_cuda_nccl_equals_single_process(tmp_path):
    ranks = launch("laplace:kron", tmp_path / "dist", [11, 12], device="cuda")
    single = launch("laplace:kron", tmp_path / "single", [13], device="cuda")[0]
    torch.testing.assert_close(ranks[0]["value"], single["value"], rtol=1e-6, atol=0)
    for g, g_single in zip(ranks[0]["grads"], single["grads"]):
        torch.testing.assert_close(g, g_single, rtol=1e-6, atol=1e-9)
