"""``escnn-soft train`` across processes: resume in a new process with another hash seed, torchrun on 2
ranks, and the optimiser state by parameter name."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from escnn_soft.models import build_model
from escnn_soft.ordering import optimizer_state_by_name, restore_optimizer_state
from tests.distributed.test_distributed import ROOT, free_port

TINY = ["--n-images", "200", "--width", "1", "--group", "C4", "--report-images", "0", "--batch-size", "32"]
ALL_METHODS = ["--method", "probabilistic", "--compare", "cnn,strict,relaxed,rpp,rsteer,ds"]


def train(args: list[str], hash_seed: int, launcher: list[str] | None = None, timeout: float = 600) -> str:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = (launcher or [sys.executable]) + ["-m", "escnn_soft.cli", "train", *TINY, "--threads", "1", *args]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def states(folder: Path, method: str) -> tuple[dict, list, dict]:
    ckpt = torch.load(folder / f"{method}.pt", weights_only=True)
    return ckpt["state_dict"], ckpt["history"], ckpt["optimizer_by_name"]


def assert_same_run(a: Path, b: Path, methods: list[str]) -> None:
    for method in methods:
        (sa, ha, oa), (sb, hb, ob) = states(a, method), states(b, method)
        assert sorted(sa) == sorted(sb), method
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{method}: {k}"
        assert ha == hb, method
        assert sorted(oa["state"]) == sorted(ob["state"])
        for name, state in oa["state"].items():
            for key, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(ob["state"][name][key])), (method, name)


def test_resume_in_a_new_process_with_another_hash_seed_equals_an_uninterrupted_run(tmp_path):
    """Every method of the CLI: epoch 1 under hash seed 1, resumed for epoch 2 under hash seed 2, against
    both epochs under hash seed 3: weights, history and optimiser state bit-identical (CPU)."""
    methods = ["probabilistic", "cnn", "strict", "relaxed", "rpp", "rsteer", "ds"]
    train([*ALL_METHODS, "--epochs", "1", "--out", str(tmp_path / "resumed")], 1)
    printed = train([*ALL_METHODS, "--epochs", "2", "--out", str(tmp_path / "resumed"), "--resume"], 2)
    assert printed.count("resuming after epoch 1") == len(methods)
    train([*ALL_METHODS, "--epochs", "2", "--out", str(tmp_path / "straight")], 3)
    assert_same_run(tmp_path / "resumed", tmp_path / "straight", methods)
    # λ over training: the resumed run's record starts at the initial λ, as the uninterrupted one
    recorded = [torch.load(tmp_path / run / "probabilistic.pt", weights_only=True)["likelihood_history"]
                for run in ("resumed", "straight")]
    assert recorded[0] == recorded[1] and recorded[0]["epochs"] == [0, 1, 2]
    assert (tmp_path / "resumed" / "probabilistic_likelihood_history.png").stat().st_size > 0


def test_torchrun_two_ranks_trains_and_resumes(tmp_path):
    """``torchrun --nproc-per-node 2 -m escnn_soft.cli train`` (gloo): finishes, rank 0 alone writes, and a
    run resumed under torchrun equals an uninterrupted one."""
    def torchrun() -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(free_port())]

    args = ["--method", "probabilistic", "--compare", "strict"]
    train([*args, "--epochs", "1", "--out", str(tmp_path / "resumed")], 1, torchrun())
    printed = train([*args, "--epochs", "2", "--out", str(tmp_path / "resumed"), "--resume"], 2, torchrun())
    assert "2 processes (gloo)" in printed and printed.count("test accuracy") == 3  # 2 methods + hardened, once
    train([*args, "--epochs", "2", "--out", str(tmp_path / "straight")], 3, torchrun())
    assert_same_run(tmp_path / "resumed", tmp_path / "straight", ["probabilistic", "strict"])
    assert (tmp_path / "straight" / "results.json").is_file()
    # one process on the same global batches sees other batches (a DistributedSampler shuffles differently),
    # but trains the same number of epochs on the same data
    _, history, _ = states(tmp_path / "straight", "probabilistic")
    assert len(history) == 2 and all(0.0 <= h["accuracy"] <= 1.0 for h in history)


def _adam_after_one_step(model: torch.nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 1, 56, 56)).sum().backward()
    opt.step()
    return opt


def test_optimizer_state_is_restored_by_name_whatever_the_parameter_order():
    torch.manual_seed(0)
    source = build_model("probabilistic", group="C4", width=1)
    saved = {"optimizer_by_name": optimizer_state_by_name(_adam_after_one_step(source), source)}
    target = build_model("probabilistic", group="C4", width=1)
    for module in target.modules():  # another process's order: every module's parameters reversed
        module._parameters = dict(reversed(list(module._parameters.items())))
    opt = torch.optim.Adam(target.parameters(), lr=1e-3)
    restore_optimizer_state(opt, target, saved)
    by_name = dict(target.named_parameters())
    for name, state in saved["optimizer_by_name"]["state"].items():
        restored = opt.state[by_name[name]]
        assert torch.equal(restored["exp_avg"], state["exp_avg"]) and restored["exp_avg"].shape == by_name[name].shape


def test_optimizer_state_of_another_model_names_the_parameters():
    source = build_model("probabilistic", group="C4", width=1)
    saved = {"optimizer_by_name": optimizer_state_by_name(_adam_after_one_step(source), source)}
    other = build_model("strict", group="C4", width=1)
    with pytest.raises(ValueError, match=r"'blocks\.0\.0\.likelihood\.coefficients' is in the checkpoint, not in"):
        restore_optimizer_state(torch.optim.Adam(other.parameters()), other, saved, "run/strict.pt")


def test_positional_optimizer_state_of_old_checkpoints_gets_a_clear_error():
    model = build_model("strict", group="C4", width=1)
    old = {"optimizer": torch.optim.Adam(model.parameters()).state_dict()}
    with pytest.raises(ValueError, match="stored by position.*start a new run folder"):
        restore_optimizer_state(torch.optim.Adam(model.parameters()), model, old, "old.pt")
