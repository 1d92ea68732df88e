"""The DoubleMNIST comparison (METHODS section 6): every method on every symmetry, over seeds.

Each run is one ``escnn-soft train --method M --compare '' --symmetry S --seed K`` in its own process
(``--workers`` at a time, one thread each), so escnn's global caches never leak between runs and an
interrupted comparison resumes where it stopped: a finished run leaves ``runs/M-S-K/results.json`` and is
not run again. The table gives the test accuracy (mean ± standard deviation over seeds) beside the reference
numbers of METHODS section 6 (Veefkind's thesis, table 8.3: 10,000 images, 5 seeds, SO(2) network), the
accuracy of the hardened soft models, and what each layer learned.

    .venv/bin/python benchmarks/doublemnist.py --scale small --seeds 1   # this CPU machine, about an hour
    .venv/bin/python benchmarks/doublemnist.py --scale paper --device cuda

Scales (every setting can be overridden on the command line):

* ``small``: the default network at width 2 (grid read-out), 2,000 images (1,600 train), 12 epochs, λ band limit 2,
  2 seeds, 2 workers; ~1.5 min per run on this CPU machine.
* ``medium``: the thesis network at k = 3, 10,000 images, 20 epochs, batch 32, Adam 5e-3 (cosine), λ band limit 4,
  2 seeds; ~30 min per steerable run here. Chosen by ``doublemnist_choose_medium.py`` (the smallest k and fewest
  epochs at which the thesis CNN reaches >= 0.75 on C4 data).
* ``paper``: the reference protocol (METHODS section 6): the thesis network (k = 6), 10,000 images, 50 epochs,
  batch 256, Adam 5e-4, λ band limit 4, 5 seeds, for a GPU (``--nproc-per-node N``: each run under ``torchrun``).

Every run trains on re-drawn group elements each epoch (the reference loader's protocol).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from escnn_soft.doublemnist.config import SYMMETRIES
from escnn_soft.doublemnist.reporting import quarter_turn_mass
from escnn_soft.models import ARCHS, METHODS, READOUTS

#: the medium scale, chosen by benchmarks/doublemnist_choose_medium.py (its table: doublemnist_medium/choice/choice.md)
MEDIUM_IMAGES, MEDIUM_K, MEDIUM_EPOCHS = 10000, 3, 20

SCALES = {
    "small": {"n_images": 2000, "epochs": 12, "arch": "default", "width": 2, "width_multiplier": None, "L": 2,
              "seeds": 2, "workers": 2, "batch_size": 32, "lr": 5e-3, "readout": "grid"},
    "medium": {"n_images": MEDIUM_IMAGES, "epochs": MEDIUM_EPOCHS, "arch": "thesis", "width": None,
               "width_multiplier": MEDIUM_K, "L": 4, "seeds": 2, "workers": 1, "batch_size": 32, "lr": 5e-3,
               "readout": "flatten"},
    # the reference protocol (METHODS section 6): the thesis network, Adam 5e-4, batch 256, 50 epochs, 5 seeds
    "paper": {"n_images": 10000, "epochs": 50, "arch": "thesis", "width": None, "width_multiplier": 6, "L": 4,
              "seeds": 5, "workers": 1, "batch_size": 256, "lr": 5e-4, "readout": "flatten"},
}

#: METHODS section 6: test accuracy on C1 / C4 / SO(2) / D1 / D4 / O(2) data (thesis table 8.3)
REFERENCE = {
    "probabilistic": {"C1": .953, "C4": .922, "SO2": .901, "D1": .932, "D4": .863, "O2": .823},
    "strict": {"C1": .936, "C4": .485, "SO2": .474, "D1": .890, "D4": .430, "O2": .403},
    "rpp": {"C1": .935, "C4": .890, "SO2": .870, "D1": .899, "D4": .821, "O2": .779},
    "cnn": {"C1": .962, "C4": .868, "SO2": .807, "D1": .919, "D4": .711, "O2": .649},
}


def _run(method: str, symmetry: str, seed: int, cfg: argparse.Namespace, folder: Path) -> dict:
    """One training run in a fresh process; its results.json (cached on disk)."""
    result = folder / "results.json"
    if result.is_file():
        return json.loads(result.read_text())[method]
    launcher = [sys.executable] if cfg.nproc_per_node == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(cfg.nproc_per_node)]
    cmd = [*launcher, "-m", "escnn_soft.cli", "train", "--method", method, "--compare", "",
           "--symmetry", symmetry, "--group", cfg.group, "--seed", str(seed), "--epochs", str(cfg.epochs),
           "--n-images", str(cfg.n_images), "--batch-size", str(cfg.batch_size), "--arch", cfg.arch,
           "--readout", cfg.readout, "--lr", str(cfg.lr), "--L", str(cfg.L), "--device", cfg.device,
           "--threads", str(cfg.threads), "--report-images", "0", "--out", str(folder)]
    cmd += (["--width", str(cfg.width)] if cfg.arch == "default" else ["--width-multiplier", str(cfg.width_multiplier)])
    if method == "probabilistic":
        cmd += ["--parameterisation", getattr(cfg, "parameterisation", "softmax")]
    if method == "relaxed":
        cmd += ["--bank-fraction", str(getattr(cfg, "bank_fraction", 1.0)),
                "--bank-in-fraction", str(getattr(cfg, "bank_in_fraction", 1.0))]
    if (folder / f"{method}.pt").is_file():
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads), "TQDM_DISABLE": "1"}
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"run {method}/{symmetry}/seed {seed} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    out = json.loads(result.read_text())[method]
    print(f"  {method:>13} {symmetry:>3} seed {seed}: test accuracy {out['test_accuracy']:.3f}"
          + (f", hardened {out['hardened']['test_accuracy']:.3f}" if "hardened" in out else "")
          + f" ({time.time() - t0:.0f} s)", flush=True)
    return out


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _headline(method: str, degree: dict) -> str:
    """The one number per layer that says what it learned (legend in :func:`tables`)."""
    if method == "probabilistic":
        return f"{1.0 - degree['nonequivariant_fraction']:.2f}"
    if method in ("relaxed", "rpp", "rsteer"):
        return f"{degree['relative_norm']:.2f}"
    if method == "ds":
        return f"{degree['partition_distance_matched'] / (degree['order'] * degree['matrix_size']):.2f}"
    return ""


def tables(results: dict, cfg: argparse.Namespace) -> str:
    """Markdown: accuracy table with the references, hardened accuracy, learned degree per layer, verdicts."""
    syms = cfg.symmetries
    size = f"width {cfg.width}" if cfg.arch == "default" else f"thesis network, k = {cfg.width_multiplier}"
    lines = [(f"Test accuracy, mean ± std over up to {cfg.seeds} seeds ({cfg.n_images} images, {cfg.epochs} epochs, "
             f"{size}, group {cfg.group}, read-out {cfg.readout!r}, batch {cfg.batch_size}, lr {cfg.lr}, λ band "
             f"limit {cfg.L}, {cfg.parameterisation} likelihoods"
             + (f"; relaxed: modulated filters on ρ = {cfg.bank_fraction:g} of the output and ρ_in = "
                f"{cfg.bank_in_fraction:g} of the input fields" if "relaxed" in cfg.methods else "")
             + "); in brackets the reference of METHODS section 6."), "",
             "| method | " + " | ".join(syms) + " | mean |", "|---" * (len(syms) + 2) + "|"]
    means: dict[str, dict[str, float]] = {}
    for m in cfg.methods:
        cells, means[m] = [], {}
        for s in syms:
            accs = [r["test_accuracy"] for r in results.get((m, s), [])]
            if accs:
                means[m][s] = statistics.mean(accs)
            ref = REFERENCE.get(m, {}).get(s)
            cells.append(_mean_std(accs) + (f" ({ref:.3f})" if ref is not None else ""))
        avg = statistics.mean(means[m].values()) if means[m] else float("nan")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {avg:.3f} |")
    soft = [m for m in cfg.methods if any("hardened" in r for s in syms for r in results.get((m, s), []))]
    if soft:
        lines += ["", "Hardened models (`es.harden`, threshold 0.99): test accuracy, mean ± std.", "",
                  "| method | " + " | ".join(syms) + " |", "|---" * (len(syms) + 1) + "|"]
        for m in soft:
            cells = [_mean_std([r["hardened"]["test_accuracy"] for r in results.get((m, s), []) if "hardened" in r])
                     for s in syms]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", ("What each layer learned (seed 0): probabilistic, 1 − non-equivariant fraction of λ (1 = strictly "
              "SO(2)-equivariant); relaxed/RPP/R-steer, relative norm of the non-equivariant part of the filter "
              "(0 = strict); DS, partition distance of the hardened sharing to the true group action, as a "
              "fraction of the filter entries (0 = the regular group convolution)."), ""]
    for m in [m for m in cfg.methods if m in ("probabilistic", "relaxed", "rpp", "rsteer", "ds")]:
        first = results.get((m, syms[0]), [])
        if not first or not first[0].get("degrees"):
            continue
        layers = list(first[0]["degrees"])
        lines += [f"| {m} | " + " | ".join(layers) + " |", "|---" * (len(layers) + 1) + "|"]
        for s in syms:
            runs = results.get((m, s), [])
            if runs:
                lines.append(f"| {s} | " + " | ".join(_headline(m, runs[0]["degrees"][k]) for k in layers) + " |")
        lines.append("")
    mass_rows = [(s, quarter_turn_mass(runs[0]["likelihood_history"])) for s in syms
                 for runs in [results.get(("probabilistic", s), [])] if runs and runs[0].get("likelihood_history")]
    mass_rows = [(s, m) for s, m in mass_rows if m]
    if mass_rows:
        layers = list(mass_rows[0][1])
        lines += [("Where λ put its mass (seed 0, last epoch): the share of each probabilistic layer's λ (rotations) "
                   "within ±22.5° of the quarter turns; uniform λ gives 0.50, λ concentrated on C4 gives 1."), "",
                  "| data | " + " | ".join(layers) + " |", "|---" * (len(layers) + 1) + "|"]
        lines += [f"| {s} | " + " | ".join(f"{m.get(k, float('nan')):.2f}" for k in layers) + " |" for s, m in mass_rows]
        lines.append("")
    lines += _verdicts(means, syms)
    return "\n".join(lines)


def _verdicts(means: dict[str, dict[str, float]], syms: list[str]) -> list[str]:
    """The expected shape of the result (the thesis's, as issue 14 states it), checked on the means."""
    p, s, r, c = (means.get(m, {}) for m in ("probabilistic", "strict", "rpp", "cnn"))
    out = ["Expected shape (thesis):"]
    if "C1" in p and "C1" in s:
        out.append(f"- probabilistic ≥ strict − 0.01 on C1: {'yes' if p['C1'] >= s['C1'] - 0.01 else 'NO'} "
                   f"({p['C1']:.3f} vs {s['C1']:.3f})")
    for sym in ("C4", "SO2", "D4", "O2"):
        if sym in p and sym in s:
            out.append(f"- probabilistic − strict ≥ +0.15 on {sym}: "
                       f"{'yes' if p[sym] - s[sym] >= 0.15 else 'NO'} ({p[sym]:.3f} vs {s[sym]:.3f})")
    common = [x for x in syms if x in p and x in r]
    if common:
        pm, rm = statistics.mean(p[x] for x in common), statistics.mean(r[x] for x in common)
        out.append(f"- probabilistic ≥ RPP − 0.02 on average over {', '.join(common)}: "
                   f"{'yes' if pm >= rm - 0.02 else 'NO'} ({pm:.3f} vs {rm:.3f})")
    if "SO2" in p and "SO2" in c:
        out.append(f"- probabilistic > CNN on SO2: {'yes' if p['SO2'] > c['SO2'] else 'NO'} "
                   f"({p['SO2']:.3f} vs {c['SO2']:.3f})")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=tuple(SCALES), default="small")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--symmetries", default=",".join(SYMMETRIES))
    p.add_argument("--group", default="SO2")
    p.add_argument("--arch", default=None, choices=ARCHS, help="network (models.py); default: from --scale")
    for key in ("n_images", "epochs", "width", "width_multiplier", "L", "seeds", "workers", "batch_size"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None, help="default: from --scale")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--readout", default=None, choices=READOUTS, help="read-out of every network (models.py); "
                   "default: from --scale")
    p.add_argument("--parameterisation", default="softmax", choices=("softmax", "square"),
                   help="likelihoods of the probabilistic runs (escnn-soft train --parameterisation)")
    p.add_argument("--bank-fraction", type=float, default=1.0,
                   help="relaxed runs: share of the output fields the modulated filters reach (escnn-soft train "
                        "--bank-fraction; default 1 here, the paper's layer, where the library's default is 0.25)")
    p.add_argument("--bank-in-fraction", type=float, default=1.0,
                   help="relaxed runs: share of the input fields the modulated filters read (escnn-soft train "
                        "--bank-in-fraction)")
    p.add_argument("--threads", type=int, default=1, help="threads per run")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="processes per run under torchrun (DDP; --batch-size is the global batch), e.g. one per GPU")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", default=None, help="default benchmarks/doublemnist_<scale>")
    p.add_argument("--markdown", default=None, help="write the tables here (default <out>/results.md)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: tabulate the runs already finished in --out (e.g. of an interrupted comparison)")
    cfg = p.parse_args(argv)
    for key, value in SCALES[cfg.scale].items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    cfg.methods = [m for m in cfg.methods.split(",") if m]
    cfg.symmetries = [s for s in cfg.symmetries.split(",") if s]
    for m in cfg.methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown method {m!r}; choose from {', '.join(METHODS)}")
    for s in cfg.symmetries:
        if s not in SYMMETRIES:
            raise SystemExit(f"--symmetries: unknown symmetry {s!r}; choose from {', '.join(SYMMETRIES)}")
    out = Path(cfg.out or f"benchmarks/doublemnist_{cfg.scale}")
    jobs = [(m, s, k) for k in range(cfg.seeds) for s in cfg.symmetries for m in cfg.methods]
    print(f"DoubleMNIST comparison, scale {cfg.scale}: {len(jobs)} runs, {cfg.workers} at a time; folder {out}")
    t0 = time.time()
    results: dict[tuple[str, str], list[dict]] = {}
    if cfg.report_only:
        for m, s, k in jobs:
            done = out / "runs" / f"{m}-{s}-{k}" / "results.json"
            if done.is_file():
                results.setdefault((m, s), []).append(json.loads(done.read_text())[m])
        print(f"{sum(map(len, results.values()))} of {len(jobs)} runs finished")
    else:
        with ThreadPoolExecutor(cfg.workers) as pool:
            futures = {job: pool.submit(_run, *job, cfg, out / "runs" / "-".join(map(str, job))) for job in jobs}
            for (m, s, _), fut in futures.items():
                results.setdefault((m, s), []).append(fut.result())
    device = torch.cuda.get_device_name(0) if cfg.device == "cuda" else f"CPU ({platform.processor() or 'x86_64'}, " \
             f"{os.cpu_count()} cores, {cfg.threads} thread per run, {cfg.workers} runs at a time)"
    took = "" if cfg.report_only else f"; {(time.time() - t0) / 60:.0f} min"
    text = (f"## DoubleMNIST comparison, scale {cfg.scale} ({device}, torch {torch.__version__}{took})\n\n"
            f"Command: `.venv/bin/python benchmarks/doublemnist.py {shlex.join(sys.argv[1:] if argv is None else argv)}`"
            "\n\n" + tables(results, cfg) + "\n")
    print("\n" + text)
    Path(cfg.markdown or out / "results.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
