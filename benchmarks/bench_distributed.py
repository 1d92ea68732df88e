"""Cost of running distributed: DDP training step on N ranks against one process (same global batch), and
the distributed Laplace fit against a single-process fit on the same data.

    .venv/bin/python benchmarks/bench_distributed.py                  # CPU: gloo, 2 ranks x 1 thread
    .venv/bin/python benchmarks/bench_distributed.py --device cuda    # one GPU per rank (nccl)

Each configuration runs in its own processes (``torch.distributed.run`` for the ranks); a rank reports
the median wall time of its steps after warm-up, and the table gives the slowest rank. One process is
measured with as many threads as the ranks have together and with one thread, so that "2 ranks x 1
thread" can be read against both. Writes ``benchmarks/results_distributed.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _rank_main(args: argparse.Namespace) -> None:
    """One rank (or the single process): time ``--steps`` DDP steps or ``--fits`` Laplace fits."""
    import escnn_soft as es
    from escnn_soft.models import build_model

    torch.set_num_threads(args.threads)
    ctx = es.distributed.init_from_env(args.device)
    torch.manual_seed(0)
    model = build_model(args.method, group=args.group, width=args.width).to(ctx.device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 1, 56, 56, generator=g).to(ctx.device)
    y = torch.randint(0, 100, (args.batch,), generator=g).to(ctx.device)
    share = slice(ctx.rank * args.batch // ctx.world_size, (ctx.rank + 1) * args.batch // ctx.world_size)
    times = []
    if args.what == "step":
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ctx.device_ids) if ctx.world_size > 1 \
            else model
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for i in range(args.warmup + args.steps):
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net(x[share]), y[share]) + es.regularization_loss(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    else:
        data = torch.utils.data.TensorDataset(x[share], y[share])
        loader = torch.utils.data.DataLoader(data, batch_size=32)
        ev = es.laplace.LaplaceEvidence(model, stochastic=True)
        for i in range(1 + args.steps):
            t0 = time.perf_counter()
            ev.fit(loader)
            value = float(ev.log_marginal_likelihood())
            if i >= 1:
                times.append(time.perf_counter() - t0)
        if ctx.is_main:
            print(f"evidence {value:.3f}", file=sys.stderr)
    result = {"rank": ctx.rank, "median_s": statistics.median(times)}
    Path(args.out, f"rank{ctx.rank}.json").write_text(json.dumps(result))
    if ctx.world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(what: str, ranks: int, threads: int, args: argparse.Namespace) -> float:
    """Slowest rank's median seconds for one configuration, in new processes."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable]
        if ranks > 1:
            cmd += ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port", str(_free_port())]
        cmd += [__file__, "--rank-main", "--what", what, "--threads", str(threads), "--out", out,
                "--method", args.method, "--group", args.group, "--width", str(args.width), "--batch",
                str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return max(json.loads(p.read_text())["median_s"] for p in Path(out).glob("rank*.json"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--what", default="step", choices=("step", "laplace"), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--method", default="probabilistic")
    p.add_argument("--group", default="SO2")
    p.add_argument("--width", type=int, default=2)
    p.add_argument("--batch", type=int, default=32, help="global batch (steps) / images (Laplace fit)")
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args()
    if args.rank_main:
        _rank_main(args)
        return
    n = args.ranks
    per_rank_threads = 1  # the ranks together use as many threads as the first single-process column
    rows = []
    for what, label in (("step", f"DDP training step, global batch {args.batch}"),
                        ("laplace", f"Laplace fit (kron, MC GGN) on {args.batch} images")):
        single_n = _run(what, 1, n * per_rank_threads, args)
        single_1 = _run(what, 1, per_rank_threads, args)
        dist_n = _run(what, n, per_rank_threads, args)
        rows.append((label, single_n, single_1, dist_n))
    header = (f"{args.method} DoubleMNIST network, group {args.group}, width {args.width}, device {args.device}, "
              f"torch {torch.__version__}; medians of {args.steps} after {args.warmup} warm-up, slowest rank")
    lines = [header, "",
             (f"| | 1 process, {n} threads (ms) | 1 process, 1 thread (ms) | {n} ranks x 1 thread (ms) "
             f"| {n} ranks / 1 process {n} threads | {n} ranks / 1 process 1 thread |"),
             "|---|---|---|---|---|---|"]
    for label, a, b, c in rows:
        lines.append(f"| {label} | {1e3 * a:.1f} | {1e3 * b:.1f} | {1e3 * c:.1f} | {c / a:.2f}x | {c / b:.2f}x |")
    text = "\n".join(lines)
    print(text)
    (HERE / "results_distributed.md").write_text(
        "# Distributed cost\n\nCommand: `.venv/bin/python benchmarks/bench_distributed.py"
        + (" --device cuda" if args.device == "cuda" else "") + "`\n\n" + text + "\n")


if __name__ == "__main__":
    main()
