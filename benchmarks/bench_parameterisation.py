"""Training step of the DoubleMNIST probabilistic network with λ parameterised by "softmax" vs "square".

Both networks are built in one process with the same seed (same weights) and timed in interleaved rounds
(one step of each per round, after warm-up), so that load from other jobs on the machine hits both alike.
A step is forward + cross-entropy + ``regularization_loss`` (alignment and KL) + backward + Adam, as in
``escnn_soft.doublemnist.bench``. Also timed: the likelihood part alone (every layer's Fourier matrices and the
regulariser, forward and backward).

    .venv/bin/python benchmarks/bench_parameterisation.py --groups SO2,O2 --L 2,4
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from escnn_soft.models import build_model
from escnn_soft.regularization import likelihoods, regularization_loss

PARAMETERISATIONS = ("softmax", "square")


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    t = time.perf_counter()
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y) + regularization_loss(model)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def _likelihood_part(model: torch.nn.Module) -> float:
    t = time.perf_counter()
    total = regularization_loss(model)
    for lik in likelihoods(model):
        total = total + sum(m.sum() for m in lik.fourier_coefficients().values())
    total.backward()
    return time.perf_counter() - t


def measure(group: str, L: int, width: int, batch_size: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median step and likelihood-part times (seconds) per parameterisation, interleaved."""
    models, opts = {}, {}
    for p in PARAMETERISATIONS:
        torch.manual_seed(0)
        models[p] = build_model("probabilistic", group=group, width=width, L=L, parameterisation=p)
        opts[p] = torch.optim.Adam(models[p].parameters(), lr=1e-3)
        models[p].train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 1, 56, 56, generator=g)
    y = torch.randint(0, 100, (batch_size,), generator=g)
    steps: dict[str, list[float]] = {p: [] for p in PARAMETERISATIONS}
    parts: dict[str, list[float]] = {p: [] for p in PARAMETERISATIONS}
    for r in range(rounds + 3):
        order = PARAMETERISATIONS if r % 2 == 0 else PARAMETERISATIONS[::-1]
        for p in order:
            step = _step(models[p], opts[p], x, y)
            part = _likelihood_part(models[p])
            if r >= 3:  # warm-up rounds
                steps[p].append(step)
                parts[p].append(part)
    return {p: {"step": statistics.median(steps[p]), "likelihood": statistics.median(parts[p]),
                "params": sum(t.numel() for t in models[p].parameters())} for p in PARAMETERISATIONS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="SO2,O2")
    parser.add_argument("--L", default="2,4", help="likelihood band limits, comma-separated")
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"DoubleMNIST probabilistic network, width {args.width}, batch {args.batch_size}, {args.threads} thread(s), "
          f"cpu, medians of {args.rounds} interleaved rounds")
    print(f"{'group':6} {'L':>2} {'params softmax/square':>22} {'step softmax ms':>16} {'step square ms':>15} "
          f"{'ratio':>6} {'λ part softmax ms':>18} {'λ part square ms':>17}")
    for group in args.groups.split(","):
        for L in (int(v) for v in args.L.split(",")):
            m = measure(group, L, args.width, args.batch_size, args.rounds)
            s, q = m["softmax"], m["square"]
            print(f"{group:6} {L:>2} {s['params']:>10}/{q['params']:<11} {1e3 * s['step']:>16.1f} "
                  f"{1e3 * q['step']:>15.1f} {q['step'] / s['step']:>5.3f}x {1e3 * s['likelihood']:>18.2f} "
                  f"{1e3 * q['likelihood']:>17.2f}", flush=True)


if __name__ == "__main__":
    main()
