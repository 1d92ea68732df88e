"""Draw docs/likelihood_square_vs_softmax.png: λ on SO(2) from the same coefficients, both parameterisations.

The coefficients c (irreps of frequency 0..2, standard normal) are used as the logits λ′ of the softmax
parameterisation (L=2, L_out=4) and as f of the square one (L=4, so L_out=4: the same layer pathways). Drawn:
the softmax values on its grid (dots), the band-limited series the layers use for it (line), and
λ = f²/∫f² (line).

    .venv/bin/python benchmarks/plot_square_vs_softmax.py
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import torch
from escnn import group

from escnn_soft import GroupLikelihood

OUT = Path(__file__).resolve().parents[1] / "docs" / "likelihood_square_vs_softmax.png"


def main() -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    G = group.so2_group()
    theta = np.linspace(0.0, 2 * math.pi, 721)
    elements = [G.element(t, "radians") for t in theta]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=False)
    for seed, ax in enumerate(axes):
        softmax = GroupLikelihood(G, L=2, L_out=4)
        square = GroupLikelihood(G, L=4, parameterisation="square")
        c = torch.randn(softmax.coefficients.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        with torch.no_grad():
            softmax.coefficients.copy_(c)
            square.coefficients.copy_(c)
            series = softmax.density(elements).numpy()
            grid = softmax.density().numpy()
            lam = square.density(elements).numpy()
        grid_angles = np.degrees([g.to("radians") for g in softmax.grid])
        ax.plot(np.degrees(theta), series, color="tab:orange", label="softmax: series the layers use")
        ax.plot(grid_angles, grid, "o", ms=3, color="tab:orange", alpha=0.6, label="softmax: grid values")
        ax.plot(np.degrees(theta), lam, color="tab:blue", label="square: f² / ∫f²")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.axhline(1.0, color="k", lw=0.6, ls="--")
        ax.set_title(f"seed {seed}: min softmax series {series.min():.2f}, min square {lam.min():.2f}", fontsize=8)
        ax.set_xlabel("rotation angle (degrees)")
        ax.set_xticks([0, 90, 180, 270, 360])
    axes[0].set_ylabel("λ(h)")
    axes[0].legend(fontsize=7)
    fig.suptitle("λ over SO(2) at the same standard-normal coefficients (irreps 0..2): "
                 "softmax (L=2, L_out=4) vs square (L=4)", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main()
