"""Issue 8 ("Scale"): construction time of wide and 3D layers, and memory of the DoubleMNIST network.

Every measurement runs in a fresh Python process (``torch.set_num_threads(threads)``, ``OMP_NUM_THREADS``
set to the same value), so escnn's process-wide caches (sampled bases, tensor-product decompositions) are
cold unless stated; timings are the median over ``--repeats`` such processes. escnn's disk caches
(Clebsch–Gordan coefficients, Thomson grids, kept by joblib next to the escnn package) are never cleared.

a. **Wide layer**: one convolution with ``--channels`` (512) input and output channels, kernel 5,
   padding 2, on two field types: regular fields of C8 and SO(2) irreps of frequency 0, 1, 2 (as many
   copies as fit, the rest trivial). For escnn's ``R2Conv`` (its own sampled-basis cache shared between
   layers), the strict layer of ``escnn_soft.models`` (``R2Conv`` + a private copy of its basis) and every
   soft 2D layer (``DSGroupConv`` on the regular fields only):

   * *cold build*: the first layer built in the process (field types are built before the clock starts);
   * *escnn He loop*: the part of the cold build spent in escnn's ``_generalized_he_init_variances`` (a
     Python loop over every basis coefficient), timed by wrapping that function in the child process;
   * *warm build*: a second identical layer in the same process (escnn's caches warm);
   * *private*: whether the second layer shares no parameter or buffer storage with the first
     (``untyped_storage().data_ptr()`` of every tensor of every submodule);
   * *fwd+bwd*: forward and backward (of the mean squared output) at batch 2 on a 33×33 input, in training
     mode, after one untimed warm-up pass.

b. **SO(3) network**: three ``R3Conv`` layers on ``gspaces.rot3dOnR3()`` (trivial → SO(3) irreps of
   frequency 0, 1, 2, ``--so3-copies`` copies → the same → the same), kernel 5, strict escnn vs
   ``ProbabilisticR3Conv``: cold and warm construction of the whole network and fwd+bwd at batch 2 on a
   17³ input. The probabilistic layers' likelihood needs a Thomson grid of SO(3), which escnn computes
   numerically once and caches on disk; the report lists the grids on disk before the run, with the time
   their first-ever computation took (joblib's own record).

c. **DoubleMNIST memory**: ``build_model(method, group, width)`` for every method of
   ``escnn_soft.models.METHODS`` (read at run time), one training step (forward, cross-entropy +
   ``regularization_loss``, backward) at batch ``--batch`` on 56×56 inputs. On the CPU the step's memory is
   the growth of the process's peak resident set size (``ru_maxrss``) during the step, i.e. how far the step
   raised the peak above everything before it (imports, construction, the batch); on CUDA,
   ``torch.cuda.max_memory_allocated`` during the step minus the memory allocated before it. Also the bytes
   of the model's parameters and buffers (distinct storages). One process per method.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py [--quick] [--repeats 3] [--channels 512]
        [--batch 256] [--device cpu] [--machine-note "shared, 2 cores"] [--out benchmarks/results_scale.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LAYERS = ("escnn R2Conv", "strict (private)", "probabilistic", "relaxed", "rpp", "rsteer", "ds")
FIELDS = ("C8 regular", "SO2 irreps 0-2")
TIMED = ("cold", "he", "warm", "fwd_bwd")


# ------------------------------------------------------------------------------------------------------
# child processes (run as ``bench_scale.py --child KIND SPEC``)
# ------------------------------------------------------------------------------------------------------

def _time_he_loop() -> list[float]:
    """Wrap escnn's He-variance loop so that its time is recorded; must run before escnn_soft is imported."""
    import escnn.nn.init as escnn_init

    spent: list[float] = []
    original = escnn_init._generalized_he_init_variances

    def timed(basismanager):
        t0 = time.perf_counter()
        out = original(basismanager)
        spent.append(time.perf_counter() - t0)
        return out

    escnn_init._generalized_he_init_variances = timed
    return spent


def _storages(module) -> set[int]:
    """Storage addresses of every parameter and buffer of ``module`` and its submodules."""
    from escnn_soft.nn.base import iter_modules

    return {t.untyped_storage().data_ptr() for m in iter_modules(module)
            for t in [*m._parameters.values(), *m._buffers.values()] if t is not None and t.numel()}


def _wide_field_type(fields: str, channels: int):
    from escnn import gspaces
    from escnn import nn as enn

    from escnn_soft.models import make_gspace

    if fields == "C8 regular":
        gs = gspaces.rot2dOnR2(8)
        return enn.FieldType(gs, [gs.regular_repr] * (channels // 8))
    gs = make_gspace("SO2")
    irreps = [gs.irrep(0), gs.irrep(1), gs.irrep(2)]
    return enn.FieldType(gs, irreps * (channels // 5) + [gs.irrep(0)] * (channels % 5))


def _layer_maker(layer: str) -> Callable:
    from escnn import nn as enn

    from escnn_soft import nn as snn
    from escnn_soft.models import conv_factory

    if layer == "escnn R2Conv":
        return lambda t: enn.R2Conv(t, t, 5, padding=2)
    if layer == "strict (private)":
        strict = conv_factory("strict")
        return lambda t: strict(t, t, 5, 2)
    classes = {"probabilistic": snn.ProbabilisticR2Conv, "relaxed": snn.RelaxedR2Conv, "rpp": snn.RPPR2Conv,
               "rsteer": snn.RSteerR2Conv, "ds": snn.DSGroupConv}
    return lambda t: classes[layer](t, t, 5, padding=2)


def _fwd_bwd(module, x) -> float:
    """Seconds of one forward + backward pass after an untimed warm-up pass."""
    module.train()
    for _ in range(2):
        module.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        module(x).tensor.square().mean().backward()
        elapsed = time.perf_counter() - t0
    return elapsed


def _child_layer(spec: dict[str, Any]) -> dict[str, Any]:
    he = _time_he_loop()
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    ft = _wide_field_type(spec["fields"], spec["channels"])
    make = _layer_maker(spec["layer"])
    t0 = time.perf_counter()
    first = make(ft)
    cold = time.perf_counter() - t0
    he_cold = sum(he)
    t0 = time.perf_counter()
    second = make(ft)
    warm = time.perf_counter() - t0
    x = ft(torch.randn(2, ft.size, 33, 33))
    return {"channels": ft.size, "params": sum(p.numel() for p in first.parameters()), "cold": cold,
            "he": he_cold, "warm": warm, "private": not (_storages(first) & _storages(second)),
            "fwd_bwd": _fwd_bwd(first, x)}


def _child_so3(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from escnn import gspaces
    from escnn import nn as enn

    from escnn_soft.nn import ProbabilisticR3Conv

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    gs = gspaces.rot3dOnR3()
    t_in = enn.FieldType(gs, [gs.trivial_repr])
    hidden = enn.FieldType(gs, [gs.irrep(f) for f in range(3)] * spec["copies"])
    conv = enn.R3Conv if spec["method"] == "strict" else ProbabilisticR3Conv

    def build():
        return enn.SequentialModule(conv(t_in, hidden, 5, padding=2), conv(hidden, hidden, 5, padding=2),
                                    conv(hidden, hidden, 5, padding=2))

    t0 = time.perf_counter()
    first = build()
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = build()
    warm = time.perf_counter() - t0
    x = t_in(torch.randn(2, 1, 17, 17, 17))
    grids = sorted({len(m.likelihood.grid) for m in first.modules() if isinstance(m, ProbabilisticR3Conv)})
    return {"channels": hidden.size, "params": sum(p.numel() for p in first.parameters()), "cold": cold,
            "warm": warm, "private": not (_storages(first) & _storages(second)), "fwd_bwd": _fwd_bwd(first, x),
            "thomson_grids": grids}


def _child_memory(spec: dict[str, Any]) -> dict[str, Any]:
    import gc
    import resource

    import torch
    import torch.nn.functional as F

    from escnn_soft.models import build_model
    from escnn_soft.regularization import regularization_loss

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    try:
        model = build_model(spec["method"], group=spec["group"], width=spec["width"]).to(device).train()
    except (ValueError, TypeError, NotImplementedError) as err:
        return {"error": f"{type(err).__name__}: {err}"}
    seen: set[int] = set()
    state_bytes = 0
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            state_bytes += storage.nbytes()
    x = torch.randn(spec["batch"], 1, 56, 56, device=device)
    y = torch.randint(0, 100, (spec["batch"],), device=device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y) + regularization_loss(model)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    step = time.perf_counter() - t0
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"state_mb": state_bytes / 2 ** 20, "rss_before_mb": rss_before / 1024, "step_s": step,
           "step_mb": (rss_after - rss_before) / 1024, "params": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        out["step_mb"] = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    return out


CHILDREN = {"layer": _child_layer, "so3": _child_so3, "memory": _child_memory}


# ------------------------------------------------------------------------------------------------------
# parent: run children, take medians, format
# ------------------------------------------------------------------------------------------------------

def run_child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh process and return its JSON result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_repeated(kind: str, spec: dict[str, Any], repeats: int, keys: tuple[str, ...]) -> dict[str, Any]:
    """``repeats`` fresh processes; timing ``keys`` become medians (``key + '_runs'`` keeps every run)."""
    runs = [run_child(kind, spec) for _ in range(repeats)]
    out = dict(runs[0])
    for key in keys:
        if key in out:
            values = [r[key] for r in runs]
            out[key] = statistics.median(values)
            out[key + "_runs"] = values
    out["private"] = all(r["private"] for r in runs)
    return out


def _ratio(value: float, ref: float | None) -> str:
    return f"{value / ref:.2f}" if ref else "-"


def wide_layer_table(fields: str, rows: dict[str, dict[str, Any]], skipped: dict[str, str]) -> str:
    ref = rows.get("escnn R2Conv")
    lines = [f"Wide layer: {fields}, {next(iter(rows.values()))['channels']} → same channels, kernel 5",
             "",
             ("| layer | params | cold build s | of which escnn He loop s | cold / escnn | warm build s | warm / escnn "
              "| 2nd layer private | fwd+bwd ms | / escnn |"),
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['params']:,} | {r['cold']:.2f} | {r['he']:.2f} | {_ratio(r['cold'], ref and ref['cold'])} "
            f"| {r['warm']:.2f} | {_ratio(r['warm'], ref and ref['warm'])} "
            f"| {'yes' if r['private'] else 'no (shares storage)'} | {1e3 * r['fwd_bwd']:.0f} "
            f"| {_ratio(r['fwd_bwd'], ref and ref['fwd_bwd'])} |")
    for name, reason in skipped.items():
        lines.append(f"| {name} | skipped: {reason} |||||||||")
    return "\n".join(lines)


def so3_table(rows: dict[str, dict[str, Any]], thomson: dict[int, float]) -> str:
    ref = rows["strict"]
    r0 = next(iter(rows.values()))
    lines = [(f"SO(3) network: 3 × R3Conv (1 → {r0['channels']} → {r0['channels']} → {r0['channels']} channels, "
              "irreps of frequency 0–2), kernel 5"),
             "",
             ("| network | params | cold build s | cold / strict | warm build s | warm / strict | 2nd net private "
              "| fwd+bwd ms | / strict |"),
             "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['params']:,} | {r['cold']:.2f} | {_ratio(r['cold'], ref['cold'])} "
                     f"| {r['warm']:.2f} | {_ratio(r['warm'], ref['warm'])} "
                     f"| {'yes' if r['private'] else 'no (shares storage)'} | {1e3 * r['fwd_bwd']:.0f} "
                     f"| {_ratio(r['fwd_bwd'], ref['fwd_bwd'])} |")
    needed = sorted({n for r in rows.values() for n in r["thomson_grids"]})
    status = ", ".join(f"N={n}: {'warm' if n in thomson else 'COLD (computed during this run)'}" for n in needed)
    on_disk = ", ".join(f"N={n} ({s:.1f} s)" for n, s in sorted(thomson.items())) or "none"
    lines += ["", (f"Thomson grids of SO(3) needed by the likelihoods: {status or 'none'}. escnn's disk cache held "
                  f"before the run: {on_disk} (time of the first-ever computation, from joblib). escnn's strict "
                  "R3Conv bases need no Thomson grid.")]
    return "\n".join(lines)


def memory_table(rows: dict[str, dict[str, Any]], group: str, width: int, batch: int, device: str) -> str:
    strict, cnn = rows.get("strict"), rows.get("cnn")
    what = "growth of peak RSS" if device == "cpu" else "CUDA max_memory_allocated above the level before"
    lines = [(f"DoubleMNIST network, group {group}, width {width}, batch {batch}, one training step "
              f"(forward + backward), device {device}; step memory = {what}"),
             "",
             "| method | params | param+buffer MB | / strict | / cnn | step MB | / strict | / cnn | step s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} ||||||||")
            continue
        lines.append(
            f"| {name} | {r['params']:,} | {r['state_mb']:.2f} | {_ratio(r['state_mb'], strict and strict['state_mb'])} "
            f"| {_ratio(r['state_mb'], cnn and cnn['state_mb'])} | {r['step_mb']:.0f} "
            f"| {_ratio(r['step_mb'], strict and strict['step_mb'])} | {_ratio(r['step_mb'], cnn and cnn['step_mb'])} "
            f"| {r['step_s']:.1f} |")
    return "\n".join(lines)


def thomson_on_disk() -> dict[int, float]:
    """``{N: seconds of the first-ever computation}`` for the SO(3) Thomson grids in escnn's joblib cache."""
    from escnn.group import __cache_path__

    root = Path(__cache_path__) / "joblib/escnn/group/groups/_numerical_thomson/thomson_so3"
    out = {}
    for meta in root.glob("*/metadata.json"):
        data = json.loads(meta.read_text())
        out[int(data["input_args"]["N"])] = float(data["duration"])
    return out


def _ds_note(channels: int) -> str:
    g, k = 8, 5
    n = g * k * k
    logits_mb = (g - 1) * n * n * 4 / 2 ** 20
    filt_mb = channels * channels * k * k * 4 / 2 ** 20
    return (f"DSGroupConv on C8, {channels // g} regular fields: {g - 1} learned {n}×{n} matrices "
            f"({logits_mb:.1f} MB of logits), a {filt_mb:.0f} MB expanded filter — feasible, measured")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke mode: 64 channels, batch 8, one repeat")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per timing (median)")
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--so3-copies", type=int, default=2)
    p.add_argument("--group", default="SO2", help="group of the DoubleMNIST networks")
    p.add_argument("--width", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--parts", default="layer,so3,memory", help="comma-separated subset of layer,so3,memory")
    p.add_argument("--machine-note", default="", help="e.g. 'shared with other jobs'")
    p.add_argument("--out", default=None, help="write the report (markdown) to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.channels, args.batch, args.so3_copies = 1, 64, 8, 1
    import torch

    from escnn_soft.models import METHODS

    parts = args.parts.split(",")
    start, load0 = time.perf_counter(), os.getloadavg()
    sections = []
    if "layer" in parts:
        for fields in FIELDS:
            rows, skipped = {}, {}
            for layer in LAYERS:
                if layer == "ds" and fields != "C8 regular":
                    skipped[layer] = "DSGroupConv needs regular fields of a finite group (see the C8 table)"
                    continue
                spec = {"fields": fields, "layer": layer, "channels": args.channels, "threads": args.threads}
                rows[layer] = run_repeated("layer", spec, args.repeats, TIMED)
                print(f"  {fields} / {layer}: {rows[layer]['cold']:.2f} s cold", flush=True)
            table = wide_layer_table(fields, rows, skipped)
            if fields == "C8 regular":
                table += "\n\n" + _ds_note(args.channels)
            print(table + "\n", flush=True)
            sections.append(table)
    if "so3" in parts:
        thomson = thomson_on_disk()
        rows = {}
        for method in ("strict", "probabilistic"):
            spec = {"method": method, "copies": args.so3_copies, "threads": args.threads}
            rows[method] = run_repeated("so3", spec, args.repeats, ("cold", "warm", "fwd_bwd"))
        table = so3_table(rows, thomson)
        print(table + "\n", flush=True)
        sections.append(table)
    if "memory" in parts:
        rows = {}
        for method in METHODS:
            spec = {"method": method, "group": args.group, "width": args.width, "batch": args.batch,
                    "threads": args.threads, "device": args.device}
            rows[method] = run_child("memory", spec)
            print(f"  memory / {method}: {rows[method]}", flush=True)
        table = memory_table(rows, args.group, args.width, args.batch, args.device)
        print(table + "\n", flush=True)
        sections.append(table)
    load1 = os.getloadavg()
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py " + shlex.join(argv or sys.argv[1:])
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else (platform.processor() or platform.machine())
    header = (f"## Scale (issue 8)\n\nCommand: `{command.strip()}`\n\n"
              f"Machine: {device}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s) per "
              f"measurement (`torch.set_num_threads({args.threads})`, `OMP_NUM_THREADS={args.threads}`); load average "
              f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end"
              f"{'; ' + args.machine_note if args.machine_note else ''}. Timings: median of {args.repeats} fresh "
              f"process(es); memory: one process per method. Total run time "
              f"{time.perf_counter() - start:.0f} s.\n")
    report = header + "\n" + "\n\n".join(sections) + "\n"
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(CHILDREN[sys.argv[2]](json.loads(sys.argv[3]))))
    else:
        main()
