"""Issue 3 numbers: probabilistic vs strict escnn vs plain torch on the DoubleMNIST network.

Targets (CPU, batch 32, 2 threads): training step <= 1.3x strict, eval forward <= 1.05x strict,
construction <= 2x strict. Each method runs in a fresh process (see escnn_soft.doublemnist.bench).

    .venv/bin/python benchmarks/bench_probabilistic.py [--device cuda] [--out benchmarks/results_probabilistic.md]
"""
import argparse
import platform
from pathlib import Path

import torch

from escnn_soft.doublemnist.bench import run_benchmarks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--groups", default="SO2,O2")
    p.add_argument("--width", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results_probabilistic.md")
    args = p.parse_args()
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "CPU"
    tables = []
    for group in args.groups.split(","):
        table = run_benchmarks(group=group, methods=["cnn", "strict", "probabilistic"], width=args.width,
                               batch_size=args.batch_size, repeats=args.repeats, threads=args.threads,
                               device=args.device)
        print(table, "\n")
        tables.append(table)
    text = (f"## Probabilistic layers ({args.device}: {device_name}, torch {torch.__version__})\n\n"
            "Command: `.venv/bin/python benchmarks/bench_probabilistic.py`\n\n```\n" + "\n\n".join(tables) + "\n```\n")
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
