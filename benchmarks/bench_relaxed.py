"""Speed of the relaxed layers (RelaxedR2Conv, RPPR2Conv, RSteerR2Conv) against strict escnn and plain torch.

The network is the DoubleMNIST classifier of :mod:`escnn_soft.models` (5 conv blocks with kernels
7, 5, 3, 3, 3 on a 57x57 input, gated non-linearities, a 1x1 invariant convolution), with every
convolution of the chosen ``method``. Measured on CPU, batch 32:

* ``train``: one training step — forward, cross-entropy + ``es.regularization_loss(model)``,
  backward, Adam step;
* ``eval``: forward in eval mode under ``torch.no_grad()`` (filters cached after the first call).

Methods are interleaved round by round, so that load changes on a shared machine hit all of them
alike, and each figure is the *fastest* of the ``rounds x steps`` samples (five times as many for the
shorter eval pass; interference from other processes only ever adds time), with its ratio to the
strict escnn network. Two clocks:

* wall time — what one waits for;
* CPU time of the process (all threads) — what the step costs; with one thread it does not
  count waiting for a core, so it is the most reproducible figure on a loaded machine.

The whole table is produced for each thread count of ``--threads``.

Usage::

    python benchmarks/bench_relaxed.py [--groups SO2 O2] [--rounds 8] [--steps 2] [--threads 2 1] \\
        [--arch default|thesis] [--width-multiplier 6] [--out benchmarks/results_relaxed.md]

``--arch thesis`` runs the thesis DoubleMNIST network (``build_model(method, group, arch="thesis",
width_multiplier=k)``: gated fields k·(1, 2, 4, 6, 6), band limits (2, 3, L, L, 2)) instead.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from collections.abc import Callable

import torch

import escnn_soft as es
from escnn_soft.models import build_model

METHODS = ("strict", "relaxed", "relaxed (bank 1/4)", "relaxed (bank 1/4, in 1/4)", "relaxed (stationary)", "rpp",
           "rsteer", "cnn")


def _model(method: str, group: str, arch: str = "default", width_multiplier: int | None = None) -> torch.nn.Module:
    kwargs = {} if arch == "default" else {"arch": arch, "width_multiplier": width_multiplier}
    fractions = {"relaxed": (1.0, 1.0), "relaxed (stationary)": (1.0, 1.0), "relaxed (bank 1/4)": (0.25, 1.0),
                 "relaxed (bank 1/4, in 1/4)": (0.25, 0.25)}  # "relaxed": the paper's layer, every field modulated
    if method in fractions:
        kwargs.update(bank_fraction=fractions[method][0], bank_in_fraction=fractions[method][1])
    if method == "relaxed (stationary)":
        kwargs["lengthscale"] = float("inf")
    return build_model("relaxed" if method in fractions else method, group, **kwargs)


def _timer(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool
           ) -> Callable[[], tuple[float, float]]:
    """A closure running one step and returning its (wall, process CPU) time in seconds."""
    if train:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def run() -> None:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y) + es.regularization_loss(model)
            loss.backward()
            opt.step()
    else:
        def run() -> None:
            with torch.no_grad():
                model(x)

    def step() -> tuple[float, float]:
        model.train(train)
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        return time.perf_counter() - wall, time.process_time() - cpu
    return step


def run(groups: list[str], rounds: int, steps: int, batch: int, arch: str = "default",
        width_multiplier: int | None = None) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 56, 56)
    y = torch.randint(0, 100, (batch,))
    rows = []
    for group in groups:
        models = {m: _model(m, group, arch, width_multiplier) for m in METHODS}
        # separate copies for eval, so that the eval cache is not dropped by the training steps
        timers = {(m, mode): _timer(models[m] if mode == "train" else copy.deepcopy(models[m]), x, y, mode == "train")
                  for m in METHODS for mode in ("train", "eval")}
        for t in timers.values():                                   # warm-up (and fill the eval caches)
            t()
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in timers}
        for _ in range(rounds):
            for key, t in timers.items():
                samples[key].extend(t() for _ in range(steps if key[1] == "train" else 5 * steps))
        wall = {k: min(s[0] for s in v) for k, v in samples.items()}
        cpu = {k: min(s[1] for s in v) for k, v in samples.items()}
        for m in METHODS:
            row = {"threads": torch.get_num_threads(), "group": group, "method": m,
                   "params": sum(p.numel() for p in models[m].parameters() if p.requires_grad)}
            for mode in ("train", "eval"):
                row[f"{mode}_wall_ms"] = 1e3 * wall[(m, mode)]
                row[f"{mode}_cpu_ms"] = 1e3 * cpu[(m, mode)]
                row[f"{mode}_cpu_ratio"] = cpu[(m, mode)] / cpu[("strict", mode)]
                row[f"{mode}_wall_ratio"] = wall[(m, mode)] / wall[("strict", mode)]
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| threads | group | method | trainable params | train step wall (ms) | train / strict (wall) "
            "| train / strict (CPU) | eval fwd wall (ms) | eval / strict (wall) | eval / strict (CPU) |")
    lines = [head, "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['group']} | {r['method']} | {r['params']:,} | {r['train_wall_ms']:.0f} "
                     f"| {r['train_wall_ratio']:.2f} | {r['train_cpu_ratio']:.2f} | {r['eval_wall_ms']:.0f} "
                     f"| {r['eval_wall_ratio']:.2f} | {r['eval_cpu_ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", nargs="+", default=["SO2", "O2"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="training steps per method and round (eval: 5x)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--arch", default="default", choices=["default", "thesis"],
                        help="default: width 2, max frequency 2; thesis: the thesis network (issue 10)")
    parser.add_argument("--width-multiplier", type=int, default=6, help="k of the thesis network (6 = the thesis)")
    parser.add_argument("--out", default=None, help="write the table (markdown) to this file")
    args = parser.parse_args()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows += run(args.groups, args.rounds, args.steps, args.batch, args.arch,
                    args.width_multiplier if args.arch == "thesis" else None)
    text = table(rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    net = ("DoubleMNIST network (escnn_soft.models, width 2, max frequency 2)" if args.arch == "default" else
           f"thesis DoubleMNIST network (escnn_soft.models, arch='thesis', width_multiplier={args.width_multiplier})")
    header = (f"{net}, batch {args.batch}, CPU, "
              f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} "
              f"at the end; fastest of {args.rounds} interleaved rounds x {args.steps} train steps "
              f"({5 * args.steps} eval passes).")
    print(header)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"{header}\n\n{text}\n")


if __name__ == "__main__":
    main()
