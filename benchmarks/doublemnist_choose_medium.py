"""Choose the ``medium`` scale of the DoubleMNIST comparison by measurement (issue 14).

The rule: the thesis network with the smallest width multiplier k and the fewest epochs at which the plain CNN
reaches >= 0.75 test accuracy on DoubleMNIST-C4 and its training accuracy is no longer the limit (training
accuracy above test accuracy), while one run of the costliest compared method (probabilistic, λ band limit 4)
stays within about 45 minutes on this 2-core machine (one thread per run, two runs at a time).

Every (k, epochs) cell is one ``escnn-soft train --method cnn`` process of :mod:`doublemnist` (same data,
schedule and flags as the comparison, 10,000 images, batch 32, Adam 5e-3 on the cosine schedule, re-drawn
training elements), cached in ``--out/runs``; the probabilistic network's training step is timed in this
process (median of 5 steps after one warm-up, one thread) to predict a comparison run's length.

    .venv/bin/python benchmarks/doublemnist_choose_medium.py --ks 2,3,4,6 --epochs 10,20,30
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doublemnist

from escnn_soft.models import build_model
from escnn_soft.regularization import regularization_loss


def step_seconds(method: str, k: int, batch_size: int, rounds: int = 5) -> float:
    """Median seconds of one training step (forward, loss + regularisers, backward, Adam), one thread."""
    torch.manual_seed(0)
    model = build_model(method, group="SO2", arch="thesis", width_multiplier=k,
                        **({"L": 4} if method == "probabilistic" else {}))
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    x, y = torch.rand(batch_size, 1, 56, 56), torch.randint(0, 100, (batch_size,))
    times = []
    for _ in range(rounds + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y) + regularization_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", default="2,3,4,6")
    p.add_argument("--epochs", default="10,20,30")
    p.add_argument("--n-images", type=int, default=10000)
    p.add_argument("--symmetry", default="C4")
    p.add_argument("--out", default="benchmarks/doublemnist_medium/choice")
    cfg = p.parse_args(argv)
    ks = [int(v) for v in cfg.ks.split(",")]
    epochs = [int(v) for v in cfg.epochs.split(",")]
    torch.set_num_threads(1)
    run_cfg = argparse.Namespace(group="SO2", n_images=cfg.n_images, batch_size=32, arch="thesis", readout="flatten",
                                 lr=5e-3, L=4, device="cpu", threads=1, width=None)
    out = Path(cfg.out)
    rows = []
    n_train = int(0.8 * cfg.n_images)
    for k in ks:
        step = step_seconds("probabilistic", k, 32)
        for e in epochs:
            run_cfg.width_multiplier, run_cfg.epochs = k, e
            res = doublemnist._run("cnn", cfg.symmetry, 0, run_cfg, out / "runs" / f"cnn-k{k}-e{e}")
            train_acc = res["train"].get("accuracy", float("nan"))
            minutes = step * (n_train // 32) * e / 60
            rows.append((k, e, res["test_accuracy"], train_acc, minutes))
            print(f"k={k} epochs={e}: CNN test {res['test_accuracy']:.3f}, train {train_acc:.3f}; probabilistic run "
                  f"≈ {minutes:.0f} min (step {step * 1000:.0f} ms)", flush=True)
    lines = [(f"CNN on DoubleMNIST-{cfg.symmetry}, thesis network, {cfg.n_images} images, batch 32, Adam 5e-3 cosine, "
             "seed 0; predicted minutes of one probabilistic run (λ band limit 4, one thread, training steps only)."),
             "", "| k | epochs | CNN test | CNN train | probabilistic run (min) | meets the rule |", "|---|---|---|---|---|---|"]
    chosen = None
    for k, e, test, train, minutes in rows:
        ok = test >= 0.75 and train > test and minutes <= 45
        if ok and chosen is None:
            chosen = (k, e)
        lines.append(f"| {k} | {e} | {test:.3f} | {train:.3f} | {minutes:.0f} | {'yes' if ok else 'no'} |")
    lines += ["", f"Chosen: k = {chosen[0]}, {chosen[1]} epochs." if chosen else
              "No cell meets the rule: the medium scale keeps the cell closest to it (see benchmarks/RESULTS.md)."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "choice.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
