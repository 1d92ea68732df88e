"""Benchmark 1 of issue 17: 3D tetris chirality with strict O(3), strict SO(3), probabilistic O(3) and relaxed O(3).

The data are :class:`escnn_soft.data.Tetris3D` (eight tetracubes, two of them mirror images of each other),
under exact octahedral rotations (``--rotations octa``) or Haar-random SO(3) rotations (``so3``). An
O(3)-invariant network gives a piece and its mirror image the same output, so strict O(3) cannot separate
the chiral pair (at most 7/8 accuracy); strict SO(3) can. The soft O(3) networks start as the strict O(3)
network (the same weights shape, zero relaxation / uniform λ) and may learn to break the reflections:

* ``probabilistic`` — every R3Conv a :class:`~escnn_soft.nn.ProbabilisticR3Conv` with λ over O(3), band limit
  ``--lambda-L`` (default 2; ``--lambda-L 0`` leaves λ only the trivial and the determinant irrep,
  λ(h) = 1 + c·det h: every such λ is SO(3)-invariant, so the layer may break reflections, never rotations —
  the probabilistic counterpart of ``relaxed``, told the answer through λ's family);
* ``relaxed`` — every R3Conv a :class:`~escnn_soft.nn.RelaxedR3Conv` relaxed over SO(3)
  (``relaxed_subgroup='so3'``: the relaxation may break reflections, never rotations; told the answer);
* ``relaxed-trivial`` — the same relaxed over the trivial group (``relaxed_subgroup=None``): the relaxation may
  break rotations and reflections alike, so whether it keeps SO(3) is found from the data, as for λ;
* ``rpp-chain`` — every R3Conv an :class:`~escnn_soft.nn.RPPR3Conv` with the subgroup chain O(3) ⊃ SO(3) ⊃ 1
  (``pathways=['so3', None]``): one level that breaks the reflections and keeps SO(3), one that breaks SO(3),
  orthogonal to each other and to the O(3) filters, each with its own prior precision; trained by
  :func:`escnn_soft.laplace.marglik_training` with ``prior_structure="parameterwise"``, so the Laplace evidence
  chooses per layer which level to open (not told the answer: both are offered).

``--lambda-by evidence`` trains the probabilistic network's λ by the Laplace evidence instead
(:func:`escnn_soft.laplace.marglik_training`, ``hyperparameters="likelihoods"``, the regularisers off, the evidence
fitted on a random subset of ``--marglik-batch`` training samples per λ step; the tensor-product non-linearities'
weights stay point estimates): the question is whether the Occam factor prefers the λ that keeps SO(3) (uniform on
the rotations, zero on the reflections) where the paper's alignment/KL terms do not.

Network: three steerable conv blocks (kernels 5, 3, 3) with batch norm and a non-linearity, a 1x1 conv to
invariant scalar fields, global average pooling, a linear classifier. ``--act tensor`` (default): fields of one
scalar and two vectors (``(0,0)⊕(1,1)⊕(1,1)`` for O(3), ``0⊕1⊕1`` for SO(3)) and escnn's ``TensorProductModule``;
the product of a field's two vectors holds their cross product, a vector for SO(3) but a pseudo-vector for O(3)
(which the O(3) output type drops), so only the SO(3) network can build the pseudo-scalars that tell a piece from
its mirror image. ``--act gated``: gated non-linearity on scalar and vector fields; ``--act fourier``:
``FourierELU`` on band-limited regular fields (irreps up to frequency 1, pseudo-irreps included for O(3)); neither
has a product of two vectors, and no network separates the chiral pair with them at this scale. Training: Adam,
cross-entropy + ``es.regularization_loss``.

Reported per run: test accuracy, accuracy on the chiral pair, and per layer the kept subgroup read from
``degree()`` — the largest of O(3) ⊃ SO(3) ⊃ full octahedral ⊃ octahedral whose measure passes: a relaxed
layer's relative equivariance error on the subgroup's grid-exact elements below ``--tol`` (default 1e-3), a
probabilistic layer's ``equivariant_fraction`` at least ``--threshold`` (default 0.99, as ``es.harden``).

Usage::

    python benchmarks/tetris3d.py [--rotations octa so3] [--methods strict-O3 strict-SO3 probabilistic relaxed relaxed-trivial rpp-chain]
        [--epochs 15] [--n-per-class 48] [--seed 0] [--out benchmarks/results_3d_tetris.json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from escnn import gspaces
from escnn import nn as enn
from escnn.group import directsum

import escnn_soft as es
from escnn_soft.data import Tetris3D

METHODS = ("strict-O3", "strict-SO3", "probabilistic", "relaxed", "relaxed-trivial", "rpp-chain")
#: O(3) subgroups of degree(), largest first
O3_ORDER = ("O3", "SO3", "full_octahedral", "octahedral")


class TetrisNet(torch.nn.Module):
    """Three steerable conv blocks (tensor-product, gated or Fourier non-linearity), a 1x1 conv to scalars, global
    average pooling, a linear head."""

    def __init__(self, group: str, n_scalars: int = 4, n_vectors: int = 4, n_invariant: int = 16, n_classes: int = 8,
                 act: str = "tensor"):
        super().__init__()
        gs = gspaces.flipRot3dOnR3(maximum_frequency=2) if group == "O3" else gspaces.rot3dOnR3(maximum_frequency=2)
        scalar = gs.trivial_repr
        t = enn.FieldType(gs, [scalar])
        blocks = []
        if act == "tensor":    # n_scalars fields of one scalar and two vectors each, a learned quadratic non-linearity
            vector = gs.irrep(1, 1) if group == "O3" else gs.irrep(1)
            rho = directsum([scalar, vector, vector], name="scalar_2vectors")
            feat = enn.FieldType(gs, [rho] * n_scalars)
            for k in (5, 3, 3):
                blocks += [enn.R3Conv(t, feat, k, padding=k // 2), enn.IIDBatchNorm3d(feat),
                           enn.TensorProductModule(feat, feat)]
                t = feat
        elif act == "fourier":   # n_scalars band-limited regular fields (irreps up to frequency 1), ELU on a grid
            nonlin = enn.FourierELU(gs, n_scalars, irreps=gs.fibergroup.bl_irreps(1), type="thomson_cube", N=2)
            feat = nonlin.in_type
            for k in (5, 3, 3):
                nonlin = enn.FourierELU(gs, n_scalars, irreps=gs.fibergroup.bl_irreps(1), type="thomson_cube", N=2)
                blocks += [enn.R3Conv(t, feat, k, padding=k // 2), enn.IIDBatchNorm3d(feat), nonlin]
                t = feat
        else:
            vector = gs.irrep(1, 1) if group == "O3" else gs.irrep(1)
            feat = enn.FieldType(gs, [scalar] * n_scalars + [vector] * n_vectors)
            gated_in = enn.FieldType(gs, [scalar] * (n_scalars + n_vectors)) + feat
            for k in (5, 3, 3):
                blocks += [enn.R3Conv(t, gated_in, k, padding=k // 2), enn.IIDBatchNorm3d(gated_in),
                           enn.GatedNonLinearity1(gated_in)]
                t = feat
        self.input_type = enn.FieldType(gs, [scalar])
        self.features = enn.SequentialModule(*blocks)
        self.invariant = enn.R3Conv(feat, enn.FieldType(gs, [scalar] * n_invariant), 1)
        self.head = torch.nn.Sequential(torch.nn.BatchNorm1d(n_invariant), torch.nn.ELU(),
                                        torch.nn.Linear(n_invariant, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.invariant(self.features(self.input_type(x))).tensor
        return self.head(y.mean(dim=(2, 3, 4)))


#: ``--chain`` names of O(3) subgroup ids
CHAIN_IDS = {"so3": "so3", "octa": (False, "octa"), "trivial": None}


def build(method: str, n_scalars: int = 4, n_vectors: int = 4, n_invariant: int = 16, act: str = "tensor",
          relaxed_kwargs: dict | None = None, lambda_L: int = 2, chain: tuple[str, ...] = ("so3", "trivial")
          ) -> torch.nn.Module:
    kw = {"n_scalars": n_scalars, "n_vectors": n_vectors, "n_invariant": n_invariant, "act": act}
    if method == "strict-SO3":
        return TetrisNet("SO3", **kw)
    net = TetrisNet("O3", **kw)
    if method == "probabilistic":
        es.soften(net, method="probabilistic", L=lambda_L)
    elif method in ("relaxed", "relaxed-trivial"):
        es.soften(net, method="relaxed", relaxed_subgroup="so3" if method == "relaxed" else None,
                  **(relaxed_kwargs or {}))
    elif method == "rpp-chain":
        es.soften(net, method="rpp", pathways=[CHAIN_IDS[name] for name in chain])
    return net


def kept_subgroups(model: torch.nn.Module, tol: float, threshold: float = 0.99) -> dict[str, dict]:
    """Per soft layer: the kept subgroup and the per-subgroup measure it was read from."""
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, es.nn.SoftModule):
            continue
        d = m.degree()
        if "subgroups" in d:   # probabilistic: equivariant fraction of the λ-weighted kernel per subgroup
            measure = {k: v["equivariant_fraction"] for k, v in d["subgroups"].items()}
            kept = next((k for k in O3_ORDER if measure.get(k, 0.0) >= threshold), "trivial")
        else:                  # relaxed: relative equivariance error on the grid-exact elements of each subgroup
            measure = d["equivariance_error"]
            kept = next((k for k in O3_ORDER if measure.get(k, 1.0) < tol), "trivial")
        out[name] = {"kept": kept, "measure": {k: round(float(v), 6) for k, v in measure.items()}}
    return out


def evaluate(model: torch.nn.Module, data: Tetris3D) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(data.volumes[i:i + 64]).argmax(1) for i in range(0, len(data), 64)])
    correct = pred == data.labels
    pair = (data.labels == 0) | (data.labels == 1)
    return float(correct.float().mean()), float(correct[pair].float().mean())


def plot_likelihoods(model: torch.nn.Module, prefix: str) -> list[str]:
    """One PNG of λ (the SO(3)/O(3) axis-angle slices of ``GroupLikelihood.plot``) per probabilistic layer."""
    import matplotlib.pyplot as plt

    paths = []
    for name, m in model.named_modules():
        if isinstance(m, es.nn.ProbabilisticR3Conv):
            fig = m.likelihood.plot()
            fig.suptitle(f"λ of layer {name}")
            paths.append(f"{prefix}_{name.replace('.', '_')}.png")
            fig.savefig(paths[-1], dpi=80)
            plt.close(fig)
    return paths


def run(method: str, rotations: str, epochs: int, n_per_class: int, seed: int, lr: float, tol: float,
        threshold: float = 0.99, plot_dir: str | None = None, size: int = 11, scale: float = 2.0,
        width: tuple[int, int, int] = (4, 4, 16), act: str = "tensor", lambda_by: str = "regularisers",
        lr_hyp: float = 0.05, marglik_batch: int = 64, relaxed_kwargs: dict | None = None,
        align_weight: float = 5.0, kl_weight: float = 3.0, lambda_L: int = 2, low_memory: bool = False,
        hypersteps: int = 5, level_precision: float = 1.0, chain: tuple[str, ...] = ("so3", "trivial")) -> dict:
    torch.manual_seed(seed)
    train = Tetris3D("train", rotations, n_per_class=n_per_class, seed=seed, size=size, scale=scale)
    test = Tetris3D("test", rotations, n_per_class=n_per_class, seed=seed, size=size, scale=scale)
    start = time.perf_counter()
    model = build(method, *width, act=act, relaxed_kwargs=relaxed_kwargs, lambda_L=lambda_L, chain=chain)
    built = time.perf_counter() - start
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    extra: dict = {}
    if (method == "probabilistic" and lambda_by == "evidence") or method == "rpp-chain":
        from escnn_soft.laplace import (
            DEFAULT_EXCLUDED,
            ParameterRegistry,
            marglik_training,
            refresh_batchnorm,
        )

        is_chain = method == "rpp-chain"   # one prior precision per tensor (per level)
        exclude = (*DEFAULT_EXCLUDED, enn.TensorProductModule)
        delta0: float | torch.Tensor = 1.0
        if is_chain:   # the levels start at --level-precision (closed for a large one), every other tensor at 1
            groups = ParameterRegistry(model, hyperparameters=[], exclude=exclude, prior_structure="parameterwise").groups
            delta0 = torch.tensor([level_precision if ".chain." in g else 1.0 for g in groups])
        # escnn's TensorProductModule has no Laplace support: its quadratic map's weights stay point estimates
        model, hist = marglik_training(model, loader, n_epochs=epochs, lr=lr, lr_hyp=lr_hyp,
                                       n_epochs_burnin=epochs // 4, marglik_frequency=max(1, epochs // 12),
                                       n_hypersteps=hypersteps, marglik_batch_size=None if is_chain else marglik_batch,
                                       low_memory=low_memory and not is_chain,
                                       prior_structure="parameterwise" if is_chain else "layerwise",
                                       prior_precision=delta0, hyperparameters=[] if is_chain else "likelihoods",
                                       progress=False, seed=seed, exclude=exclude)
        extra = {"lambda_by": "evidence", "lr_hyp": lr_hyp, "hypersteps": hypersteps, "marglik": hist["marglik"],
                 **({"level_precision": level_precision, "chain": list(chain)} if is_chain
                    else {"marglik_batch": marglik_batch})}
        if is_chain:   # the evidence's prior precision of every level and its filter's norm relative to the strict one
            delta = dict(zip(hist["groups"], hist["prior_precision"][-1]))
            extra["levels"] = {name: [{"subgroup": p["subgroup"], "norm_ratio": p["norm_ratio"],
                                       "prior_precision": delta.get(f"{name}.chain.{k}.weights")}
                                      for k, p in enumerate(m.degree()["pathways"])]
                               for name, m in model.named_modules() if isinstance(m, es.nn.RPPR3Conv)}
        # the last λ step follows the last epoch: re-estimate the batch-norm statistics at the final filters
        extra["test_accuracy_before_bn_refresh"] = evaluate(model, test)[0]
        refresh_batchnorm(model, loader)
    else:
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        for _ in range(epochs):
            model.train()
            for x, y in loader:
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(x), y) + es.regularization_loss(
                    model, align_weight=align_weight, kl_weight=kl_weight)
                loss.backward()
                opt.step()
    trained = time.perf_counter() - start
    acc, pair = evaluate(model, test)
    plots = plot_likelihoods(model, f"{plot_dir}/tetris_{rotations}_{method}") if plot_dir else []
    return {"plots": plots, "act": act, "size": size, "scale": scale, "width": list(width), "lr": lr, "method": method, "rotations": rotations, "seed": seed, "epochs": epochs, "n_train": len(train),
            "test_accuracy": acc, "chiral_pair_accuracy": pair, "build_s": built, "train_s": trained,
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "layers": kept_subgroups(model, tol, threshold), **extra,
            **({"relaxed_kwargs": relaxed_kwargs}
               if method.startswith("relaxed") and relaxed_kwargs and set(relaxed_kwargs.values()) != {1.0} else {}),
            **({"lambda_L": lambda_L} if method == "probabilistic" and lambda_L != 2 else {}),
            **({"align_weight": align_weight, "kl_weight": kl_weight}
               if method == "probabilistic" and lambda_by == "regularisers" and (align_weight, kl_weight) != (5.0, 3.0)
               else {})}


def table(rows: list[dict]) -> str:
    lines = ["| rotations | network | test accuracy | chiral pair accuracy | kept subgroup per soft layer | train (s) |",
             "|---|---|---:|---:|---|---:|"]
    for r in rows:
        kept = ", ".join(f"{n}: {v['kept']}" for n, v in r["layers"].items()) or "—"
        lines.append(f"| {r['rotations']} | {r['method']} | {r['test_accuracy']:.3f} | {r['chiral_pair_accuracy']:.3f} "
                     f"| {kept} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rotations", nargs="+", default=["octa", "so3"], choices=["octa", "so3"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--n-per-class", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--tol", type=float, default=1e-3, help="relaxed layers: equivariance error below this")
    parser.add_argument("--threshold", type=float, default=0.99,
                        help="probabilistic layers: equivariant fraction at least this")
    parser.add_argument("--out", default=None, help="write the rows (JSON) to this file")
    parser.add_argument("--plot-dir", default=None, help="save the λ of each probabilistic layer here (PNG)")
    parser.add_argument("--size", type=int, default=11, help="voxel grid size (odd)")
    parser.add_argument("--scale", type=float, default=2.0, help="cube side in voxels")
    parser.add_argument("--width", type=int, nargs=3, default=[4, 4, 16], metavar=("SCALARS", "VECTORS", "INVARIANT"),
                        help="fields per block and invariant fields (fourier: SCALARS regular fields, VECTORS unused)")
    parser.add_argument("--act", default="tensor", choices=["gated", "fourier", "tensor"],
                        help="tensor (default): fields of a scalar and two vectors, escnn's TensorProductModule "
                             "(quadratic); gated: gated scalar + vector fields; fourier: FourierELU on band-limited "
                             "regular fields")
    parser.add_argument("--lambda-by", default="regularisers", choices=["regularisers", "evidence"],
                        help="probabilistic: λ trained with the paper's regularisers (default) or by the Laplace "
                             "evidence (marglik_training, regularisers off)")
    parser.add_argument("--align-weight", type=float, default=5.0,
                        help="--lambda-by regularisers: α_align of es.regularization_loss (paper: 5)")
    parser.add_argument("--kl-weight", type=float, default=3.0,
                        help="--lambda-by regularisers: α_KL of es.regularization_loss (paper: 3)")
    parser.add_argument("--lr-hyp", type=float, default=0.05,
                        help="--lambda-by evidence: Adam lr of λ; rpp-chain: of the log prior precisions")
    parser.add_argument("--marglik-batch", type=int, default=64,
                        help="--lambda-by evidence: samples per evidence estimate (5 λ steps every epochs/12 "
                             "epochs after a burn-in of epochs/4)")
    parser.add_argument("--hypersteps", type=int, default=5,
                        help="evidence (--lambda-by evidence, rpp-chain): Adam steps per update; with lr-hyp they bound "
                             "how far a prior precision moves (5 x 0.05 per update: a factor e^0.25)")
    parser.add_argument("--chain", nargs="+", default=["so3", "trivial"], choices=list(CHAIN_IDS),
                        help="rpp-chain: the subgroups of the chain below O(3), largest first")
    parser.add_argument("--level-precision", type=float, default=1.0,
                        help="rpp-chain: initial prior precision of every level (the other tensors start at 1)")
    parser.add_argument("--lambda-L", type=int, default=2,
                        help="probabilistic: band limit of λ over O(3) (0: λ = 1 + c·det h, reflections only)")
    parser.add_argument("--low-memory", action="store_true",
                        help="--lambda-by evidence: two-pass evidence gradients (marglik_training(low_memory=True)), "
                             "the memory of one batch instead of the whole --marglik-batch subset")
    parser.add_argument("--bank-fraction", type=float, default=1.0,
                        help="relaxed: share of the output fields the modulated filters reach (RelaxedR3Conv; default 1, the "
                             "paper's layer)")
    parser.add_argument("--bank-in-fraction", type=float, default=1.0,
                        help="relaxed: share of the input fields the modulated filters read (RelaxedR3Conv; default 1)")
    args = parser.parse_args()
    # the rows record the fractions only where they are not 1 (the paper's layer, this script's default)
    relaxed_kwargs = {"bank_fraction": args.bank_fraction, "bank_in_fraction": args.bank_in_fraction}
    rows = []
    for rotations in args.rotations:
        for method in args.methods:
            rows.append(run(method, rotations, args.epochs, args.n_per_class, args.seed, args.lr, args.tol,
                            args.threshold, args.plot_dir, args.size, args.scale, tuple(args.width),
                            args.act, args.lambda_by, args.lr_hyp, args.marglik_batch, relaxed_kwargs,
                            args.align_weight, args.kl_weight, args.lambda_L, args.low_memory, args.hypersteps,
                            args.level_precision, tuple(args.chain)))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
