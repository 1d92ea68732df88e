"""What a trained DoubleMNIST model learned, as text, plots and JSON.

* :func:`describe_degrees` — one line per soft layer (its ``degree()`` and, for probabilistic layers, the
  equivariant fraction per subgroup) and a PNG of every soft layer's ``plot()``;
* :func:`hardened_accuracy` — the test accuracy of the model after :func:`escnn_soft.harden`, and which subgroup
  each layer kept;
* :func:`write_subgroup_report` — the per-layer × per-subgroup equivariance report (txt, json, png);
* :func:`quarter_turn_mass` — where a rotation λ put its mass: the share near the quarter turns.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from escnn_soft.doublemnist.checkpoint import model_kwargs
from escnn_soft.doublemnist.networks import build_model, method_summary
from escnn_soft.doublemnist.training import evaluate

__all__ = ["describe_degrees", "hardened_accuracy", "kept_subgroups", "quarter_turn_mass", "write_subgroup_report"]


def write_subgroup_report(model: torch.nn.Module, test_images: torch.Tensor, out: Path, name: str):
    """Subgroup report of a steerable model on a few test images, written as ``{name}_report.txt/json/png``.

    float32: escnn's gated non-linearity allocates its output in the default dtype, so the network
    cannot run in float64; grid-exact errors are then ~1e-6 instead of ~1e-15.
    """
    import matplotlib.pyplot as plt

    from escnn_soft.metrics import subgroup_report

    model = model.cpu().eval()
    report = subgroup_report(model, model.in_type(test_images.float()))
    (out / f"{name}_report.txt").write_text(report.table() + "\n")
    (out / f"{name}_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    plt.close(report.plot(str(out / f"{name}_report.png")))
    return report


def describe_degrees(model: torch.nn.Module, out: Path, name: str) -> list[str]:
    """One line per soft layer saying what it learned; a PNG of every soft layer's ``plot()`` (the soft-layer
    contract, :mod:`escnn_soft.nn.base`): the likelihood of every probabilistic layer, the learned matrices of
    every DS layer."""
    import matplotlib.pyplot as plt

    from escnn_soft.nn.base import SoftModule

    lines = []
    for layer, deg in method_summary(model).items():
        parts = [f"{k}={v:.3f}" for k, v in deg.items() if isinstance(v, float)]
        subs = deg.get("subgroups", {})
        if subs:  # probabilistic layers: the share of the filter that respects each subgroup
            parts.append("equivariant fraction " + ", ".join(
                f"{s}:{d['equivariant_fraction']:.3f}" for s, d in subs.items() if "equivariant_fraction" in d))
        if deg.get("pathways"):  # an RPP subgroup chain: each level's filter norm relative to the strict filter
            parts.append("levels (norm ratio) " + ", ".join(
                f"{p['subgroup'] or 'trivial'}:{p['norm_ratio']:.3f}" for p in deg["pathways"]))
        lines.append(f"  {layer:<24} " + "; ".join(parts))
    for layer_name, module in model.named_modules():
        fig = module.plot() if isinstance(module, SoftModule) else None
        if fig is not None:
            fig.savefig(out / f"{name}_{module.plot_kind}_{layer_name.replace('.', '_')}.png", dpi=100)
            plt.close(fig)
    return lines


def hardened_accuracy(model: torch.nn.Module, meta: dict[str, Any], test_loader: DataLoader, device: torch.device,
                      threshold: float) -> dict[str, Any]:
    """Test accuracy of a hardened copy of ``model`` (:func:`escnn_soft.harden`: every soft layer replaced by
    the strict escnn layer of the largest subgroup it kept within ``threshold``), and which subgroup each
    layer kept. ``model`` itself is left as it is."""
    from escnn_soft.convert import harden

    copy = build_model(meta["method"], **model_kwargs(meta)).to(device).train()
    copy.load_state_dict(model.state_dict())
    copy, log = harden(copy, threshold=threshold, return_log=True)
    return {"test_accuracy": evaluate(copy, test_loader, device)["accuracy"], "threshold": threshold,
            "layers": {name: entry["subgroup"] for name, entry in log.items()}}


def kept_subgroups(layers: dict[str, str]) -> str:
    """``'SO(2) x3, C4 x2'``: how many layers kept each subgroup."""
    counts: dict[str, int] = {}
    for sub in layers.values():
        counts[sub] = counts.get(sub, 0) + 1
    return ", ".join(f"{sub} x{n}" for sub, n in counts.items())


def quarter_turn_mass(history: dict[str, Any]) -> dict[str, float]:
    """Per layer, the share of λ's last recorded rotation density within ±22.5° of a multiple of 90°.

    ``history`` is :meth:`escnn_soft.metrics.LikelihoodHistory.to_dict`; with :math:`\\lambda(\\theta_i)` at equally
    spaced angles the share is :math:`\\sum_{d(\\theta_i, 90°\\mathbb{Z}) < 22.5°} \\lambda(\\theta_i) / \\sum_i
    \\lambda(\\theta_i)`: 0.5 for uniform λ, 1 for λ concentrated on C4. Layers on groups recorded without an
    angle axis (finite groups, SO(3)/O(3)) are left out.
    """
    out = {}
    for layer, rec in history["layers"].items():
        density = rec["density"].get("rotations")
        if not density or not rec["x_label"].startswith("angle"):
            continue
        angles, values = rec["x"], density[-1]
        near = [v for a, v in zip(angles, values) if min(a % 90.0, 90.0 - a % 90.0) < 22.5]
        out[layer] = sum(near) / sum(values) if sum(values) > 0 else float("nan")
    return out
