"""Speed and memory of every 3D soft layer against escnn's strict R3Conv and a plain torch Conv3d (issue 17).

One layer between gated-style field types of SO(3) or O(3) (``--fields`` copies of scalar + vector fields,
``--kernel`` 3 or 5) on a ``--size``³ input, batch ``--batch``, CPU:

* ``train``: forward, sum of the output + the layer's ``penalty()``, backward, Adam step;
* ``eval``: forward under ``no_grad`` in eval mode (soft layers cache their filter);
* ``peak MB``: the peak of the process's resident memory growth over one training step (``tracemalloc`` does not
  see torch's allocations; this is ``resource.getrusage`` maxrss before/after, in a fresh process per layer);
* ``build s``: construction time of the layer.

Layers: ``strict`` (escnn ``R3Conv``), ``conv3d`` (``torch.nn.Conv3d`` with as many channels), ``relaxed``
(``RelaxedR3Conv`` with every field modulated, ``bank_fraction=bank_in_fraction=1``: the paper's layer),
``relaxed (bank 1/4)`` (``bank_fraction=0.25``), ``relaxed (bank 1/4, in 1/4)``
(``bank_fraction=0.25, bank_in_fraction=0.25``: the layer's default), ``relaxed (stationary)``
(``lengthscale=inf``), ``rpp``, ``rsteer``,
``probabilistic`` (``ProbabilisticR3Conv`` defaults). The fastest of ``--rounds`` interleaved rounds (process CPU
time, one thread) is reported with its ratio to strict. ``--network`` also times the construction of the
tetris network of ``benchmarks/tetris3d.py`` (strict SO(3)) and of its softened versions.

Usage::

    python benchmarks/bench_3d.py [--groups SO3 O3] [--fields 4] [--kernel 3] [--size 15] [--batch 8] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from escnn import gspaces
from escnn import nn as enn

import escnn_soft as es

LAYERS = ("strict", "conv3d", "relaxed", "relaxed (bank 1/4)", "relaxed (bank 1/4, in 1/4)", "relaxed (stationary)",
          "rpp", "rsteer", "probabilistic")


def field_type(group: str, fields: int) -> enn.FieldType:
    gs = gspaces.rot3dOnR3(maximum_frequency=2) if group == "SO3" else gspaces.flipRot3dOnR3(maximum_frequency=2)
    vector = gs.irrep(1) if group == "SO3" else gs.irrep(1, 1)
    return enn.FieldType(gs, [gs.trivial_repr, vector] * fields)


def build(layer: str, group: str, fields: int, kernel: int) -> torch.nn.Module:
    t = field_type(group, fields)
    kw = {"padding": kernel // 2}
    if layer == "strict":
        return enn.R3Conv(t, t, kernel, **kw)
    if layer == "conv3d":
        return torch.nn.Conv3d(t.size, t.size, kernel, **kw)
    cls = {"relaxed": es.nn.RelaxedR3Conv, "relaxed (bank 1/4)": es.nn.RelaxedR3Conv,
           "relaxed (bank 1/4, in 1/4)": es.nn.RelaxedR3Conv,
           "relaxed (stationary)": es.nn.RelaxedR3Conv, "rpp": es.nn.RPPR3Conv,
           "rsteer": es.nn.RSteerR3Conv, "probabilistic": es.nn.ProbabilisticR3Conv}[layer]
    if layer.startswith("relaxed"):  # "relaxed": the paper's layer, every field modulated
        kw.update(bank_fraction=1.0, bank_in_fraction=1.0)
    if layer == "relaxed (stationary)":
        kw["lengthscale"] = float("inf")
    if layer.startswith("relaxed (bank 1/4"):
        kw["bank_fraction"] = 0.25
    if layer == "relaxed (bank 1/4, in 1/4)":
        kw["bank_in_fraction"] = 0.25
    return cls(t, t, kernel, **kw)


def _step_fns(module: torch.nn.Module, x: torch.Tensor):
    plain = isinstance(module, torch.nn.Conv3d)
    wrap = (lambda t: t) if plain else module.in_type
    out = (lambda y: y) if plain else (lambda y: y.tensor)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)

    def train() -> None:
        module.train()
        opt.zero_grad(set_to_none=True)
        loss = out(module(wrap(x))).pow(2).mean()
        if hasattr(module, "penalty"):
            loss = loss + module.penalty()
        loss.backward()
        opt.step()

    def evaluate() -> None:
        module.eval()
        with torch.no_grad():
            module(wrap(x))
    return train, evaluate


def measure_one(layer: str, group: str, fields: int, kernel: int, size: int, batch: int, rounds: int) -> dict:
    """All figures of one layer, in this process (called in a fresh process for the memory figure)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    start = time.perf_counter()
    module = build(layer, group, fields, kernel)
    built = time.perf_counter() - start
    x = torch.randn(batch, field_type(group, fields).size, size, size, size)
    train, evaluate = _step_fns(module, x)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train()
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    evaluate()
    times = {"train": [], "eval": []}
    for _ in range(rounds):
        for mode, fn in (("train", train), ("eval", evaluate)):
            c = time.process_time()
            fn()
            times[mode].append(time.process_time() - c)
    return {"layer": layer, "group": group, "build_s": built, "train_ms": 1e3 * min(times["train"]),
            "eval_ms": 1e3 * min(times["eval"]), "peak_mb": peak,
            "params": sum(p.numel() for p in module.parameters() if p.requires_grad)}


def network_build_times(group: str) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tetris3d

    out = {}
    for method in ("strict-SO3", "strict-O3", "probabilistic", "relaxed"):
        start = time.perf_counter()
        tetris3d.build(method)
        out[method] = time.perf_counter() - start
    return out


def table(rows: list[dict]) -> str:
    lines = [("| group | layer | params | build (s) | train step (ms) | train / strict | eval fwd (ms) | eval / strict "
              "| peak memory growth, train step (MB) |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    strict = {(r["group"]): r for r in rows if r["layer"] == "strict"}
    for r in rows:
        s = strict[r["group"]]
        lines.append(f"| {r['group']} | {r['layer']} | {r['params']:,} | {r['build_s']:.2f} | {r['train_ms']:.1f} | "
                     f"{r['train_ms'] / s['train_ms']:.2f} | {r['eval_ms']:.1f} | {r['eval_ms'] / s['eval_ms']:.2f} | "
                     f"{r['peak_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", nargs="+", default=["SO3", "O3"])
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--size", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--network", action="store_true", help="also time the tetris networks' construction")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)   # internal: measure one layer, print JSON
    args = parser.parse_args()
    if args.one:
        layer, group = args.one.split("|")
        print(json.dumps(measure_one(layer, group, args.fields, args.kernel, args.size, args.batch, args.rounds)))
        return
    rows = []
    for group in args.groups:
        for layer in LAYERS:
            cmd = [sys.executable, __file__, "--one", f"{layer}|{group}", "--fields", str(args.fields), "--kernel",
                   str(args.kernel), "--size", str(args.size), "--batch", str(args.batch), "--rounds", str(args.rounds)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ,
                                                                                     "OMP_NUM_THREADS": "1"})
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"fields: {args.fields} x (scalar + vector), kernel {args.kernel}, input {args.size}^3, batch {args.batch}, "
          f"CPU, 1 thread, torch {torch.__version__}; fastest of {args.rounds} rounds (process CPU time)")
    print(table(rows))
    if args.network:
        print("tetris network construction (s):", json.dumps(network_build_times("SO3")))


if __name__ == "__main__":
    main()
