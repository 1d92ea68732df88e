"""Cost and accuracy of the Laplace evidence (escnn_soft.laplace).

**Cost.** The network is the DoubleMNIST classifier of :mod:`escnn_soft.models` (strict escnn, SO(2),
5 conv blocks with kernels 7, 5, 3, 3, 3 on a 57x57 input, gated non-linearities, a 1x1 invariant
convolution, batch-norm, linear head; 100 classes) on embedded DoubleMNIST training images, batch 64.
Measured on CPU (``--threads``), per 1000 training images:

* ``epoch``: one training epoch (forward, cross-entropy, backward, Adam step);
* ``fit (MC)``: :meth:`LaplaceEvidence.fit` of every conv/linear layer with the Monte-Carlo GGN
  (one sampled label per image: one extra backward pass);
* ``fit (exact)``: the exact type-2 GGN (100 loss-Hessian columns per image, carried through the linear
  head to its 64 inputs and compressed there: 64 backward passes through the network);
* the same two fits of laplace-torch's ``KronLaplace`` (curvlinops backend: KFAC, one sampled label per
  image, or one backward pass per class) on the plain CNN of the same width (``PlainDoubleMNISTNet``, batch-norm parameters frozen since KronLaplace cannot handle them), and
  of our evidence on that plain CNN.

Every measurement is repeated ``--rounds`` times, interleaved (so that all see the same load on a shared
machine), and the median is kept. The exact fits run on ``--n-exact`` images, the rest on ``--n-train``.

**Accuracy.** On tiny C4 networks (two escnn layers and a linear head, 20 random 7x7 images, 3 classes):
the per-layer log-determinant ratio :math:`\\log\\det(H_l + \\delta I) - n_l \\log\\delta` of the Kronecker
structure (``kron``) and of the same KFAC curvature pulled back densely (``kfac``) relative to the exact
GGN block (``full``).

Usage::

    python benchmarks/bench_laplace.py [--n-train 512] [--n-exact 64] [--rounds 5] [--threads 1] \\
        [--machine-note "shared, 2 cores"] [--out benchmarks/results_laplace.md]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch

import escnn_soft as es
from escnn_soft.doublemnist.networks import PlainDoubleMNISTNet, _gated_types, build_model, make_gspace
from escnn_soft.laplace import LaplaceEvidence


def _loader(n: int, batch_size: int) -> torch.utils.data.DataLoader:
    data = es.data.DoubleMNIST("SO2", "train")
    subset = torch.utils.data.TensorDataset(data.images[:n], data.labels[:n])
    return torch.utils.data.DataLoader(subset, batch_size=batch_size)


def _epoch(model: torch.nn.Module, loader) -> Callable[[], None]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def run() -> None:
        model.train()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
    return run


def _ours(model: torch.nn.Module, loader, stochastic: bool) -> Callable[[], None]:
    return lambda: LaplaceEvidence(model, stochastic=stochastic).fit(loader)


def _kronlaplace(model: torch.nn.Module, loader, stochastic: bool) -> Callable[[], None]:
    from laplace import KronLaplace
    from laplace.curvature import CurvlinopsGGN

    def run() -> None:
        la = KronLaplace(model, "classification", backend=CurvlinopsGGN, backend_kwargs={"stochastic": stochastic})
        la.fit(loader)
    return run


def _time(jobs: dict[str, Callable[[], None]], rounds: int, per: dict[str, int]) -> dict[str, float]:
    """Median of ``rounds`` interleaved runs, in seconds per 1000 images."""
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(rounds):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
            print(f"  round {r + 1}: {name:32s} {times[name][-1]:8.2f} s", flush=True)
    return {k: statistics.median(v) / per[k] * 1000 for k, v in times.items()}


def cost(n_train: int, n_exact: int, batch_size: int, rounds: int, machine_note: str) -> list[str]:
    torch.manual_seed(0)
    steerable = build_model("strict", "SO2").eval()
    width = _gated_types(make_gspace("SO2"), 2, 2)[0].size
    plain = PlainDoubleMNISTNet(width).eval()
    for m in plain.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.requires_grad_(False)
            m.bias.requires_grad_(False)
    train, exact = _loader(n_train, batch_size), _loader(n_exact, batch_size)
    jobs = {
        "escnn: epoch": _epoch(steerable, train),
        "escnn: fit (MC)": _ours(steerable, train, True),
        "escnn: fit (exact)": _ours(steerable, exact, False),
        "plain CNN: epoch": _epoch(plain, train),
        "plain CNN: ours, fit (MC)": _ours(plain, train, True),
        "plain CNN: ours, fit (exact)": _ours(plain, exact, False),
        "plain CNN: KronLaplace (MC)": _kronlaplace(plain, train, True),
        "plain CNN: KronLaplace (exact)": _kronlaplace(plain, exact, False),
    }
    per = {k: (n_exact if "exact" in k else n_train) for k in jobs}
    t = _time(jobs, rounds, per)
    n_steer = sum(p.numel() for p in steerable.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    lines = [
        (f"Network: DoubleMNIST, SO(2), width 2 ({width} channels per block; {n_steer} escnn parameters, "
         f"{n_plain} plain-CNN parameters), 100 classes, batch {batch_size}; {torch.get_num_threads()} CPU "
         f"thread(s), {platform.processor() or platform.machine()}{'; ' + machine_note if machine_note else ''}, "
         f"torch {torch.__version__}. Seconds per 1000 training images (median of {rounds} interleaved rounds; "
         f"exact fits on {n_exact} images, the rest on {n_train})."),
        "",
        "| measurement | s / 1000 images | ratio |",
        "|---|---:|---|",
    ]
    ratios = {
        "escnn: fit (MC)": ("escnn: epoch", "x escnn epoch"),
        "escnn: fit (exact)": ("escnn: epoch", "x escnn epoch"),
        "plain CNN: ours, fit (MC)": ("plain CNN: KronLaplace (MC)", "x KronLaplace (MC)"),
        "plain CNN: ours, fit (exact)": ("plain CNN: KronLaplace (exact)", "x KronLaplace (exact)"),
        "plain CNN: KronLaplace (MC)": ("plain CNN: epoch", "x plain epoch"),
        "plain CNN: KronLaplace (exact)": ("plain CNN: epoch", "x plain epoch"),
    }
    for name, value in t.items():
        ref = ratios.get(name)
        ratio = f"{value / t[ref[0]]:.2f} {ref[1]}" if ref else ""
        lines.append(f"| {name} | {value:.1f} | {ratio} |")
    lines += ["",
              (f"escnn fit vs KronLaplace fit on the plain CNN of the same width: MC "
               f"{t['escnn: fit (MC)'] / t['plain CNN: KronLaplace (MC)']:.2f}x, exact "
               f"{t['escnn: fit (exact)'] / t['plain CNN: KronLaplace (exact)']:.2f}x.")]
    return lines


class _TinyNet(torch.nn.Module):
    """Two escnn convolutions on the given field types, tanh, a linear head (3 classes, 7x7 input)."""

    def __init__(self, types) -> None:
        from escnn import nn as enn

        super().__init__()
        self.types = types
        self.c1 = enn.R2Conv(types[0], types[1], 3, padding=1, recompute=True)
        self.c2 = enn.R2Conv(types[1], types[2], 3, stride=2, recompute=True)
        self.out = torch.nn.Linear(types[2].size * 9, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from escnn import nn as enn

        y = self.c1(enn.GeometricTensor(x, self.types[0]))
        y = self.c2(enn.GeometricTensor(torch.tanh(y.tensor), self.types[1]))
        return self.out(torch.tanh(y.tensor).flatten(1))


def accuracy(seeds: int = 3) -> list[str]:
    from escnn import gspaces
    from escnn import nn as enn

    g = gspaces.rot2dOnR2(4)
    reg, triv, ir1 = g.regular_repr, g.trivial_repr, g.irrep(1)
    configs = {"regular fields (1 -> 3 reg -> 2 reg)": ([triv], [reg] * 3, [reg] * 2),
               "mixed fields (2 triv -> 2 reg + 2 irrep1 + triv -> reg + irrep1)":
                   ([triv] * 2, [reg] * 2 + [ir1] * 2 + [triv], [reg, ir1])}
    lines = ["| network | layer | δ | kron / exact - 1 | kfac / exact - 1 |", "|---|---|---:|---:|---:|"]
    for label, reprs in configs.items():
        types = [enn.FieldType(g, list(r)) for r in reprs]
        errors: dict[tuple, list[tuple]] = {}
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = _TinyNet(types).double()
            x = torch.randn(20, types[0].size, 7, 7, dtype=torch.float64)
            data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.randint(0, 3, (20,))),
                                               batch_size=10)
            fits = {h: LaplaceEvidence(model, hessian=h).fit(data) for h in ("kron", "kfac", "full")}
            for delta in (0.1, 1.0):
                rows = {h: ev.per_layer(delta) for h, ev in fits.items()}
                for i, layer in enumerate(("c1", "c2")):
                    exact = rows["full"][i]["log_det_ratio"]
                    errors.setdefault((layer, delta), []).append(
                        (rows["kron"][i]["log_det_ratio"] / exact - 1, rows["kfac"][i]["log_det_ratio"] / exact - 1))
        for (layer, delta), errs in errors.items():
            kron = ", ".join(f"{e[0]:+.2f}" for e in errs)
            kfac = ", ".join(f"{e[1]:+.2f}" for e in errs)
            lines.append(f"| {label} | {layer} | {delta} | {kron} | {kfac} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-exact", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--machine-note", default="", help="e.g. 'shared with other jobs'")
    parser.add_argument("--out", default=None, help="write the markdown tables to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    command = (f"python benchmarks/bench_laplace.py --n-train {args.n_train} --n-exact {args.n_exact} "
               f"--rounds {args.rounds} --threads {args.threads}")
    lines = ["# Laplace evidence: cost and accuracy", "", f"Command: `{command}`", "", "## Cost (CPU)", ""]
    lines += cost(args.n_train, args.n_exact, args.batch_size, args.rounds, args.machine_note)
    lines += ["", "## Accuracy of the Kronecker structure vs the exact GGN (3 seeds each)", ""]
    lines += accuracy()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
