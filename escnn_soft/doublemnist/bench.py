"""Speed and memory of the DoubleMNIST network per method, against strict escnn and plain torch.

Each (group, method) is measured in a fresh Python process, so that construction times include
escnn's basis computations (no warm cache from an earlier method) and peak memory is the process's own:

* ``build``: constructing the network (all layers, bases included);
* ``train step``: forward + backward + Adam step on a batch (median of ``repeats`` after three warm-ups);
* ``eval fwd``: ``torch.no_grad()`` forward in eval mode (filters cached), median after three warm-ups;
* ``peak RSS``: the process's peak resident memory after the measurements.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["format_table", "measure", "run_benchmarks"]

_CHILD = r"""
import json, resource, statistics, sys, time, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
from escnn_soft.doublemnist.networks import build_model
from escnn_soft.regularization import regularization_loss
device = torch.device(args["device"])
kw = {"group": args["group"], "width": args["width"]}
t0 = time.perf_counter()
model = build_model(args["method"], **kw).to(device)
build = time.perf_counter() - t0
x = torch.randn(args["batch_size"], 1, 56, 56, device=device)
y = torch.randint(0, 100, (args["batch_size"],), device=device)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()
steps = []
WARMUP = 3
for i in range(args["repeats"] + WARMUP):
    sync(); t = time.perf_counter()
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y) + regularization_loss(model)
    loss.backward(); opt.step(); sync()
    steps.append(time.perf_counter() - t)
model.eval()
evals = []
with torch.no_grad():
    for i in range(args["repeats"] + WARMUP):
        sync(); t = time.perf_counter(); model(x); sync()
        evals.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
print(json.dumps({"build": build, "step": statistics.median(steps[WARMUP:]), "eval": statistics.median(evals[WARMUP:]),
                  "peak_rss_mb": peak, "cuda_peak_mb": cuda_peak,
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def measure(method: str, group: str = "SO2", width: int = 2, batch_size: int = 32, repeats: int = 5,
            threads: int = 2, device: str = "cpu") -> dict[str, float]:
    """Measure one method in a fresh process (see the module docstring)."""
    args = {"method": method, "group": group, "width": width, "batch_size": batch_size, "repeats": repeats, "threads": threads,
                "device": device}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark of method={method!r}, group={group!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(rows: dict[str, dict[str, float]], title: str) -> str:
    """Plain-text table with ratios against ``strict`` and ``cnn`` (when measured)."""
    strict, cnn = rows.get("strict"), rows.get("cnn")

    def ratio(row, ref, key):
        return f"{row[key] / ref[key]:.2f}x" if ref else "-"

    head = (f"{'method':<14}{'params':>9}{'build s':>9}{'/strict':>9}{'step ms':>9}{'/strict':>9}{'/cnn':>8}"
            f"{'eval ms':>9}{'/strict':>9}{'/cnn':>8}{'peak MB':>9}{'/strict':>9}")
    lines = [title, head, "-" * len(head)]
    for method, r in rows.items():
        lines.append(f"{method:<14}{r['params']:>9d}{r['build']:>9.2f}{ratio(r, strict, 'build'):>9}"
                     f"{1e3 * r['step']:>9.1f}{ratio(r, strict, 'step'):>9}{ratio(r, cnn, 'step'):>8}"
                     f"{1e3 * r['eval']:>9.1f}{ratio(r, strict, 'eval'):>9}{ratio(r, cnn, 'eval'):>8}"
                     f"{r['peak_rss_mb']:>9.0f}{ratio(r, strict, 'peak_rss_mb'):>9}")
    return "\n".join(lines)


def run_benchmarks(group: str = "SO2", methods: Sequence[str] | None = None, width: int = 2,
                   batch_size: int = 32, repeats: int = 5, threads: int = 2, device: str = "cpu") -> str:
    """Table of every available method on ``group`` (DoubleMNIST network, batch ``batch_size``)."""
    from escnn_soft.doublemnist.networks import METHODS

    methods = list(methods or METHODS)
    rows: dict[str, dict[str, float]] = {}
    skipped: list[str] = []
    for method in methods:
        try:
            rows[method] = measure(method, group, width, batch_size, repeats, threads, device)
        except RuntimeError as err:
            if "ImportError" in str(err) or "cannot import" in str(err):
                skipped.append(method)
                continue
            raise
    title = (f"DoubleMNIST network, group {group}, width {width}, batch {batch_size}, {threads} threads, "
             f"device {device} (medians of {repeats})")
    table = format_table(rows, title)
    if skipped:
        table += f"\nnot available: {', '.join(skipped)}"
    return table
