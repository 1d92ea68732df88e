"""Ablations of the probabilistic DoubleMNIST network (METHODS section 1): regularisers and likelihood step size.

Trains the probabilistic SO(2) network of ``escnn-soft train`` (same data, seed, Adam and cosine schedule)
with one change per variant and prints one JSON line per variant: training and test accuracy and each
layer's non-equivariant fraction.

* ``default``: α_align = 5, α_KL = 3, the likelihood learns at the network's learning rate;
* ``noreg``: α_align = α_KL = 0;
* ``lik_lr0.1``: the likelihood parameters learn 10x slower;
* ``frozen``: the likelihood stays uniform (the strict kernel space with the probabilistic layer's code);
* ``L4``: likelihoods band-limited at frequency 4 instead of 2 (sharper λ, more pathways), regularisers on;
* ``noreg_L4``: both changes.

``--readout`` picks the networks' read-out (``grid``, as in ``--scale small``, or ``halves``).

    .venv/bin/python benchmarks/doublemnist_ablation.py --symmetry SO2 --epochs 12
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from escnn_soft.data import DoubleMNIST
from escnn_soft.doublemnist.training import cosine_lr, evaluate
from escnn_soft.models import READOUTS, build_model, method_summary
from escnn_soft.regularization import regularization_loss

#: variant: (α_align, α_KL, likelihood learning-rate factor, likelihood band limit L)
VARIANTS = {"default": (5.0, 3.0, 1.0, 2), "noreg": (0.0, 0.0, 1.0, 2), "lik_lr0.1": (5.0, 3.0, 0.1, 2),
            "frozen": (5.0, 3.0, 0.0, 2), "L4": (5.0, 3.0, 1.0, 4), "noreg_L4": (0.0, 0.0, 1.0, 4)}


def run(variant: str, symmetry: str, epochs: int, n_images: int, seed: int, lr: float, readout: str) -> dict:
    align, kl, lik_factor, band_limit = VARIANTS[variant]
    torch.manual_seed(seed)
    data = {split: DoubleMNIST(symmetry=symmetry, split=split, n_images=n_images, seed=seed) for split in ("train", "test")}
    model = build_model("probabilistic", group="SO2", width=2, readout=readout, L=band_limit)
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if "likelihood" not in n], "factor": 1.0},
              {"params": [p for n, p in named if "likelihood" in n], "factor": lik_factor}]
    optimizer = torch.optim.Adam(groups, lr=lr)
    t0 = time.time()
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(lr, epoch, epochs) * group["factor"]
        model.train()
        loader = DataLoader(data["train"], batch_size=32, shuffle=True,
                            generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        correct = total = 0
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y) + regularization_loss(model, align, kl)
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
    test = evaluate(model, DataLoader(data["test"], batch_size=256), torch.device("cpu"))
    return {"variant": variant, "symmetry": symmetry, "epochs": epochs, "seed": seed, "readout": readout,
            "train_accuracy": round(correct / total, 3), "test_accuracy": test["accuracy"],
            "nonequivariant_fraction": [round(d["nonequivariant_fraction"], 3) for d in method_summary(model).values()],
            "seconds": round(time.time() - t0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--symmetry", default="SO2")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--readout", default="grid", choices=READOUTS)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        print(json.dumps(run(variant, args.symmetry, args.epochs, args.n_images, args.seed, args.lr, args.readout)),
              flush=True)


if __name__ == "__main__":
    main()
