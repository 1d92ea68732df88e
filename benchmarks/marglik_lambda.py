"""λ trained by the task loss, by the task loss + the paper's regularisers, or by the Laplace evidence (issue 16.2).

The probabilistic SO(2) DoubleMNIST network of ``escnn-soft train`` (default arch, width 1, λ band limit 4 as in the thesis,
grid read-out) on C1, C4 and SO2 data, three ways of training λ:

* ``task``: λ is trained with the weights by the cross-entropy alone (α_align = α_KL = 0);
* ``reg``: the paper's recipe, cross-entropy + 5·alignment + 3·KL (``escnn-soft train``'s default);
* ``reg_align``: the alignment term alone (α_align = 5, α_KL = 0), to tell which regulariser holds λ uniform;
* ``evidence``: :func:`escnn_soft.laplace.marglik_training` with ``hyperparameters="likelihoods"``: λ is not
  trained by the loss at all, only by Adam steps on the Laplace evidence (with the layer-wise prior
  precisions), no alignment/KL term. Burn-in for half the epochs, then every epoch 5 hyperparameter steps on
  a random subset of 128 training images (Monte-Carlo GGN, one backward pass per image); constant learning
  rate of the weights;
* ``evidence_cos``: the same with the cosine learning-rate schedule of the other two modes
  (``marglik_training(lr_schedule=...)``); with ``--hyp-schedule cosine`` the hyperparameter steps follow the same
  cosine (``lr_hyp_schedule``), so the last λ steps are small too (the factor is 0.5 at the first update of the
  medium scale and 0.006 at the last: pass about 5x the constant recipe's ``--lr-hyp`` for the same total step).

Before the test, every model's batch-norm statistics are re-estimated at its final weights (one pass over the
training images): the evidence's last λ step follows the last training epoch, and with the stale statistics
of the previous filters the evidence model's test accuracy collapsed (C4: 0.05; recorded as
``test_accuracy_before_bn_refresh``).

Every cell (symmetry, mode, seed) writes ``<out>/<symmetry>_<mode>_s<seed>.json`` (and its weights to
``runs/<out name>/``, not committed) when it finishes, and its state after every epoch to
``runs/<out name>/<cell>.partial.pt``, so an interrupted run continues where it stopped, in a new process (finished
cells are skipped, a started one resumes after its last epoch and equals an uninterrupted run); ``--report-only`` writes the table
``benchmarks/results_marglik.md`` (``results_marglik_medium.md`` for ``--scale medium``; ``<out>/results.md`` for
another ``--out``) from whatever cells exist. A cell records, per layer, the equivariant fraction per subgroup and
where λ put its mass (the share within ±22.5° of the quarter turns, and λ over the angle per layer as
``<out>/<cell>_lambda.png``); ``--backfill`` adds both to older cells from their saved weights.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/marglik_lambda.py              # 9 cells, seed 0
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/marglik_lambda.py --report-only
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/marglik_lambda.py --scale medium --seeds 0,1   # issue 16's scale
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from escnn_soft.data import DoubleMNIST
from escnn_soft.doublemnist.reporting import quarter_turn_mass
from escnn_soft.doublemnist.training import cosine_lr, evaluate, set_lr, train_epoch
from escnn_soft.laplace import refresh_batchnorm
from escnn_soft.metrics import LikelihoodHistory
from escnn_soft.models import build_model
from escnn_soft.nn.base import SoftModule
from escnn_soft.ordering import optimizer_state_by_name, restore_optimizer_state
from escnn_soft.regularization import regularization_loss

HERE = Path(__file__).resolve().parent
MODES = ("task", "reg", "reg_align", "evidence", "evidence_cos")
#: the regulariser of each loss-trained mode (``task``: none)
REGULARIZERS = {"reg": regularization_loss, "reg_align": functools.partial(regularization_loss, kl_weight=0.0)}
SYMMETRIES = ("C1", "C4", "SO2")
SUBGROUPS = ("C2", "C4", "SO2")


def _degrees(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Per probabilistic layer: the equivariant fraction per subgroup (1 = exactly equivariant)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, SoftModule) and hasattr(m, "likelihood"):
            d = m.degree()
            out[name] = {s: round(d["subgroups"][s]["equivariant_fraction"], 4) for s in SUBGROUPS}
    return out


def _mass(model: torch.nn.Module, png: Path) -> dict[str, float]:
    """Per probabilistic layer: the share of λ within ±22.5° of the quarter turns (0.5 uniform, 1 on C4); λ of
    every layer over the rotation angle is plotted to ``png``."""
    import matplotlib.pyplot as plt

    history = LikelihoodHistory()
    history.record(model, 0)
    recorded = history.to_dict()
    layers = recorded["layers"]
    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers), 2.4), sharey=True, squeeze=False)
    for ax, (name, rec) in zip(axes[0], layers.items()):
        ax.plot(rec["x"], rec["density"]["rotations"][-1])
        for q in (0, 90, 180, 270):
            ax.axvline(q, color="grey", lw=0.5, ls=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("angle (degrees)")
    axes[0][0].set_ylabel("λ (mean 1)")
    fig.suptitle(png.stem)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return {k: round(v, 4) for k, v in quarter_turn_mass(recorded).items()}


def _build(args: argparse.Namespace | dict) -> torch.nn.Module:
    cfg = args if isinstance(args, dict) else vars(args)
    size = ({"width": cfg["width"]} if cfg["arch"] == "default" else
            {"arch": "thesis", "width_multiplier": cfg["width_multiplier"]})
    return build_model("probabilistic", group="SO2", L=cfg["L"], **size)


def backfill(out: Path) -> None:
    """Add ``quarter_turn_mass`` to finished cells that lack it, from their saved weights (``runs/``)."""
    weights = HERE.parent / "runs" / out.name
    for path in sorted(out.glob("*.json")):
        cell = json.loads(path.read_text())
        state = weights / f"{path.stem}.pt"
        if "quarter_turn_mass" in cell:
            continue
        if not state.is_file():
            print(f"{path.name}: no saved weights at {state}; quarter_turn_mass left out", flush=True)
            continue
        model = _build(cell["config"])
        model.load_state_dict(torch.load(state, map_location="cpu", weights_only=True))
        cell["quarter_turn_mass"] = _mass(model, out / f"{path.stem}_lambda.png")
        path.write_text(json.dumps(cell, indent=1))
        print(f"{path.name}: quarter_turn_mass {cell['quarter_turn_mass']}", flush=True)


def run_cell(symmetry: str, mode: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one cell; after every epoch its state goes to ``runs/<out name>/<cell>.partial.pt``, from which a new
    process continues (the same run as an uninterrupted one: weights, optimiser state by parameter name, the
    evidence's state, the shuffling generator and the global RNG are restored)."""
    torch.manual_seed(seed)
    kw = {"symmetry": symmetry, "n_images": args.n_images, "seed": seed}
    train, test = DoubleMNIST(split="train", **kw), DoubleMNIST(split="test", **kw)
    model = _build(args)
    weights = HERE.parent / "runs" / Path(args.out).name  # runs/ is not committed
    weights.mkdir(parents=True, exist_ok=True)
    partial = weights / f"{symmetry}_{mode}_s{seed}.partial.pt"
    saved = torch.load(partial, map_location="cpu", weights_only=True) if partial.is_file() else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        torch.set_rng_state(saved["rng"])
        print(f"{partial.name}: resuming after epoch {saved['epoch']}", flush=True)
    spent = saved["seconds"] if saved is not None else 0.0
    t0 = time.time()

    def checkpoint(epoch: int, **state: object) -> None:
        tmp = partial.with_suffix(".tmp")
        torch.save({"epoch": epoch, "model": model.state_dict(), "rng": torch.get_rng_state(),
                    "seconds": spent + time.time() - t0, **state}, tmp)
        tmp.replace(partial)

    extra: dict = {}
    if mode.startswith("evidence"):
        from escnn_soft.laplace import marglik_training

        def cosine(epoch: int) -> float:
            return cosine_lr(1.0, epoch, args.epochs)

        shuffle = torch.Generator().manual_seed(seed)
        if saved is not None:
            shuffle.set_state(saved["shuffle"])
        data = DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=shuffle)
        model, hist = marglik_training(model, data, n_epochs=args.epochs, lr=args.lr, lr_hyp=args.lr_hyp,
                                       n_epochs_burnin=args.epochs // 2, marglik_frequency=1,
                                       n_hypersteps=args.hypersteps, marglik_batch_size=args.marglik_batch,
                                       low_memory=args.low_memory, hold_idle=not args.no_hold,
                                       hyperparameters="likelihoods", stochastic=True, progress=False, seed=seed,
                                       lr_schedule=cosine if mode == "evidence_cos" else None,
                                       lr_hyp_schedule=cosine if args.hyp_schedule == "cosine" else None,
                                       on_epoch_end=lambda e, state: checkpoint(e, evidence=state,
                                                                                 shuffle=shuffle.get_state()),
                                       resume=saved["evidence"] if saved is not None else None)
        extra = {"marglik": hist["marglik"], "train_loss": hist["loss"], "held": hist["held"],
                 "per_layer": [{k: r[k] for k in ("name", "n_params", "prior_precision", "log_det_ratio", "scatter",
                                                  "contribution")} for r in hist["per_layer"][-1]]}
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        losses = saved["losses"] if saved is not None else []
        if saved is not None:
            restore_optimizer_state(optimizer, model, saved, partial)
        for epoch in range(saved["epoch"] if saved is not None else 0, args.epochs):
            set_lr(optimizer, cosine_lr(args.lr, epoch, args.epochs))
            train.set_epoch(epoch)
            loader = DataLoader(train, batch_size=args.batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            losses.append(train_epoch(model, loader, optimizer, torch.device("cpu"), regularize=mode in REGULARIZERS,
                                      progress=False, regularizer=REGULARIZERS.get(mode, regularization_loss))["loss"])
            checkpoint(epoch + 1, losses=losses, optimizer_by_name=optimizer_state_by_name(optimizer, model))
        extra = {"train_loss": losses}
    test_loader = DataLoader(test, batch_size=256)
    stale = evaluate(model, test_loader, torch.device("cpu"))["accuracy"]
    train.set_epoch(args.epochs - 1)
    refresh_batchnorm(model, DataLoader(train, batch_size=args.batch_size))
    test_stats = evaluate(model, test_loader, torch.device("cpu"))
    torch.save(model.state_dict(), weights / f"{symmetry}_{mode}_s{seed}.pt")
    cell = {"symmetry": symmetry, "mode": mode, "seed": seed, "test_accuracy": test_stats["accuracy"],
            "test_accuracy_before_bn_refresh": stale,
            "seconds": round(spent + time.time() - t0, 1), **({"resumed": True} if saved is not None else {}),
            "degrees": _degrees(model),
            "quarter_turn_mass": _mass(model, Path(args.out) / f"{symmetry}_{mode}_s{seed}_lambda.png"), **extra,
            "config": {**{k: getattr(args, k) for k in ("n_images", "epochs", "arch", "width", "width_multiplier", "L",
                                                        "lr", "lr_hyp", "batch_size", "hypersteps", "marglik_batch")},
                       "hold_idle": not args.no_hold, "hyp_schedule": args.hyp_schedule}}
    partial.unlink(missing_ok=True)
    return cell


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.3f} ± {std:.3f}"


#: issue 14's medium-scale probabilistic runs (benchmarks/doublemnist.py --scale medium): the ``reg`` recipe on the same
#: network, data and schedule, without the batch-norm refresh; the reference KL weighting where that run exists
ISSUE14_RUNS = (("doublemnist_medium_klmean", "KL mean"), ("doublemnist_medium", "KL sum, 6x the reference"))
ISSUE14_MODE = "reg (issue 14 run)"


def issue14_reg_cells(seeds: list[int]) -> list[dict]:
    """The ``reg`` cells a medium-scale report has no own run for, read from issue 14's runs (:data:`ISSUE14_RUNS`):
    test accuracy, equivariant fractions and quarter-turn mass of the probabilistic network, marked as such."""
    cells = []
    for symmetry in SYMMETRIES:
        for seed in seeds:
            for folder, kl in ISSUE14_RUNS:
                path = HERE / folder / "runs" / f"probabilistic-{symmetry}-{seed}" / "results.json"
                if not path.is_file():
                    continue
                run = json.loads(path.read_text())["probabilistic"]
                degrees = {layer: {g: d["subgroups"][g]["equivariant_fraction"] for g in SUBGROUPS}
                           for layer, d in run["degrees"].items() if "subgroups" in d}
                cells.append({"symmetry": symmetry, "mode": ISSUE14_MODE, "seed": seed, "kl": kl,
                              "test_accuracy": run["test_accuracy"], "degrees": degrees,
                              "quarter_turn_mass": quarter_turn_mass(run["likelihood_history"])})
                break
    return cells


def report(out: Path, with_issue14: bool = False) -> str:
    cells = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    own = {c["seed"] for c in cells}
    if with_issue14 and not any(c["mode"] == "reg" for c in cells):
        cells += issue14_reg_cells(sorted(own))
    modes = [*MODES, *([ISSUE14_MODE] if any(c["mode"] == ISSUE14_MODE for c in cells) else [])]
    if not cells:
        return "no finished cells"
    cfg = cells[0]["config"]
    held = cfg.get("hold_idle", any(cells[0].get("held", [])))  # cells before the option: held iff any were held
    net = (f"thesis network, k = {cfg['width_multiplier']}" if cfg.get("arch") == "thesis" else
           f"default arch, width {cfg['width']}")
    seeds = sorted({c["seed"] for c in cells})
    lines = ["# λ by task loss, regularisers or the Laplace evidence (issue 16.2)\n",
             (f"DoubleMNIST, probabilistic SO(2) network ({net}, λ band limit {cfg['L']}), "
             f"{cfg['n_images']} images (8:1:1), {cfg['epochs']} epochs, batch {cfg['batch_size']}, Adam lr {cfg['lr']}; "
             f"evidence: burn-in {cfg['epochs'] // 2} epochs, then every epoch {cfg['hypersteps']} Adam steps "
             f"(lr {cfg['lr_hyp']}{', cosine-annealed' if cfg.get('hyp_schedule') == 'cosine' else ''}) on a {cfg['marglik_batch']}-image subset, pathway weights "
             f"{'held while λ is uniform' if held else 'shrunk by the prior during the burn-in (not held)'}"
             f"; seeds {seeds}. Machine: "
             f"{platform.machine()}, 1 thread, shared. Generated by `benchmarks/marglik_lambda.py --report-only`.\n"),
             "## Test accuracy\n", "| λ trained by | " + " | ".join(SYMMETRIES) + " |",
             "|---|" + "---|" * len(SYMMETRIES)]
    for mode in modes:
        row = [_fmt([c["test_accuracy"] for c in cells if c["mode"] == mode and c["symmetry"] == s]) for s in SYMMETRIES]
        lines.append(f"| {mode} | " + " | ".join(row) + " |")
    for mode in ("evidence", "evidence_cos"):
        row = [_fmt([c["test_accuracy_before_bn_refresh"] for c in cells if c["mode"] == mode and c["symmetry"] == s
                     and "test_accuracy_before_bn_refresh" in c]) for s in SYMMETRIES]
        if any(r != "–" for r in row):
            lines.append(f"| {mode}, stale batch-norm statistics | " + " | ".join(row) + " |")
    borrowed = [c for c in cells if c["mode"] == ISSUE14_MODE]
    if borrowed:
        lines += ["", f"`{ISSUE14_MODE}`: no `reg` cell of this experiment yet, so issue 14's medium-scale probabilistic "
                  "run with the same network, data and schedule stands in (`benchmarks/doublemnist.py --scale medium`; "
                  "batch-norm statistics not refreshed before the test): " + ", ".join(
                      f"{c['symmetry']} seed {c['seed']} ({c['kl']})" for c in borrowed) + "."]
    lines += ["", "## Equivariant fraction per layer and subgroup (C2 / C4 / SO2; 1 = exactly equivariant)\n"]
    layers = next(iter(cells))["degrees"].keys()
    lines += ["| data | λ by | " + " | ".join(layers) + " |", "|---|---|" + "---|" * len(layers)]
    for s in SYMMETRIES:
        for mode in modes:
            found = [c for c in cells if c["mode"] == mode and c["symmetry"] == s]
            if not found:
                continue
            row = []
            for layer in layers:
                vals = [sum(c["degrees"][layer][g] for c in found) / len(found) for g in SUBGROUPS]
                row.append(" / ".join(f"{v:.2f}" for v in vals))
            lines.append(f"| {s} | {mode} | " + " | ".join(row) + " |")
    massed = [c for c in cells if "quarter_turn_mass" in c]
    if massed:
        lines += ["", "## Where λ put its mass: share within ±22.5° of the quarter turns (0.50 uniform, 1 on C4)\n",
                  "| data | λ by | seed | " + " | ".join(layers) + " |", "|---|---|---|" + "---|" * len(layers)]
        lines += [f"| {c['symmetry']} | {c['mode']} | {c['seed']} | " +
                  " | ".join(f"{c['quarter_turn_mass'].get(k, float('nan')):.2f}" for k in layers) + " |"
                  for c in massed]
    ev = [c for c in cells if c["mode"] == "evidence_cos"] or [c for c in cells if c["mode"] == "evidence"]
    if ev:
        lines += ["", f"## Evidence ({ev[0]['mode']}): per-layer Occam terms at the last update (seed-mean)\n",
                  "contribution = −½(log-det ratio + δ‖θ‖²); prior precision δ learned.\n",
                  "| data | layer | params | δ | log-det ratio | δ‖θ‖² | contribution |", "|---|---|---|---|---|---|---|"]
        for s in SYMMETRIES:
            found = [c for c in ev if c["symmetry"] == s]
            if not found:
                continue
            for i, r in enumerate(found[0]["per_layer"]):
                mean = {k: sum(c["per_layer"][i][k] for c in found) / len(found)
                        for k in ("prior_precision", "log_det_ratio", "scatter", "contribution")}
                lines.append(f"| {s} | {r['name']} | {r['n_params']} | {mean['prior_precision']:.3g} | "
                             f"{mean['log_det_ratio']:.1f} | {mean['scatter']:.1f} | {mean['contribution']:.1f} |")
        lines += ["", "Log evidence per update: " + "; ".join(
            f"{c['symmetry']} s{c['seed']}: " + ", ".join(f"{m:.0f}" for m in c["marglik"]) for c in ev)]
    lines += ["", "Run time per cell (s): " + ", ".join(f"{c['symmetry']}/{c['mode']}/s{c['seed']} {c['seconds']:.0f}"
                                                    for c in cells if "seconds" in c)]
    notes = out / "NOTES.md"  # hand-written: deviations and reading, kept across --report-only
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    return "\n".join(lines) + "\n"


#: presets of ``--scale``: ``small`` is the default arguments; ``medium`` is benchmarks/doublemnist.py's medium scale
SCALES = {"small": {}, "medium": {"n_images": 10000, "epochs": 20, "arch": "thesis", "width_multiplier": 3}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=tuple(SCALES), default="small",
                   help="small: the defaults below; medium: the thesis network at k = 3, 10,000 images, 20 epochs "
                        "(benchmarks/doublemnist.py --scale medium), results in marglik_lambda_medium/")
    p.add_argument("--symmetries", default=",".join(SYMMETRIES))
    p.add_argument("--modes", default=",".join(MODES))  # evidence cells first when time is short
    p.add_argument("--seeds", default="0")
    p.add_argument("--n-images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--arch", choices=("default", "thesis"), default="default")
    p.add_argument("--width", type=int, default=1)
    p.add_argument("--width-multiplier", type=int, default=3)
    p.add_argument("--L", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--lr-hyp", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hypersteps", type=int, default=5)
    p.add_argument("--marglik-batch", type=int, default=128)
    p.add_argument("--low-memory", action="store_true",
                   help="evidence cells: two-pass evidence gradients (marglik_training(low_memory=True)): the same "
                        "steps, memory of one batch instead of the whole --marglik-batch subset")
    p.add_argument("--no-hold", action="store_true",
                   help="let the prior shrink the pathway weights during the burn-in (marglik_training(hold_idle="
                        "False): the recipe before the weights were held), for the comparison")
    p.add_argument("--hyp-schedule", choices=("constant", "cosine"), default="constant",
                   help="evidence cells: constant --lr-hyp, or scaled by the weights' cosine of the epoch each update "
                        "follows (marglik_training(lr_hyp_schedule=...))")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="cells folder (default marglik_lambda/, or marglik_lambda_medium/)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--backfill", action="store_true",
                   help="add the quarter-turn mass to finished cells from their saved weights (runs/), then report")
    args = p.parse_args()
    for key, value in SCALES[args.scale].items():
        setattr(args, key, value)
    suffix = "" if args.scale == "small" else f"_{args.scale}"
    args.out = args.out or str(HERE / f"marglik_lambda{suffix}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.backfill:
        backfill(out)
    elif not args.report_only:
        for seed in map(int, args.seeds.split(",")):
            for symmetry in args.symmetries.split(","):
                for mode in args.modes.split(","):
                    path = out / f"{symmetry}_{mode}_s{seed}.json"
                    if path.is_file():
                        continue
                    cell = run_cell(symmetry, mode, seed, args)
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(json.dumps(cell, indent=1))
                    tmp.replace(path)
                    print(f"{symmetry} {mode} s{seed}: test accuracy {cell['test_accuracy']:.3f} in {cell['seconds']:.0f} s; "
                          f"{cell['degrees']}", flush=True)
    text = report(out, with_issue14=args.scale == "medium")
    default_out = out.resolve() == (HERE / f"marglik_lambda{suffix}").resolve()
    (HERE / f"results_marglik{suffix}.md" if default_out else out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
