"""How the likelihoods of a model's probabilistic layers moved during training (issue 16, part 3).

:class:`LikelihoodHistory` records, per probabilistic layer (``ProbabilisticR2Conv``/``R3Conv``/``Linear``) and
per epoch,

* λ over the group on a fixed set of elements: SO(2) and O(2) at ``n_angles`` equally spaced angles,
  O(2) with the reflections as a second row; finite groups at every element, D_N with the reflections as
  a second row; SO(3) (and the rotoinversions of O(3) as a second row) the mean of λ over ``n_axes``
  rotation axes (a Fibonacci lattice on the sphere) as a function of the rotation angle
  :math:`\\omega \\in [0°, 180°]`, :math:`\\bar\\lambda(\\omega) = \\tfrac1A \\sum_a \\lambda(R_{a}(\\omega))`;
* the layer's ``equivariant_fraction`` per subgroup (``layer.degree()``:
  :math:`1 - \\lVert k_{\\lambda - P_S\\lambda}\\rVert / \\lVert k_\\lambda\\rVert`).

Usage from any training loop::

    history = es.metrics.LikelihoodHistory()
    for epoch in range(epochs):
        train_one_epoch(...)
        history.record(model, epoch)
    json.dump(history.to_dict(), open("likelihoods.json", "w"))
    history.plot("likelihoods.png")
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from escnn.group import O2, O3, SO2, SO3, DihedralGroup, Group, GroupElement

__all__ = ["LikelihoodHistory"]


def _probabilistic_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from escnn_soft.nn import ProbabilisticLinear, ProbabilisticR2Conv, ProbabilisticR3Conv

    kinds = (ProbabilisticR2Conv, ProbabilisticR3Conv, ProbabilisticLinear)
    return [(name or "(model)", m) for name, m in model.named_modules() if isinstance(m, kinds)]


def _fibonacci_axes(n: int) -> np.ndarray:
    """``n`` unit vectors spread evenly over the sphere (the Fibonacci lattice)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = math.pi * (1.0 + math.sqrt(5.0)) * k
    r = np.sqrt(1.0 - z ** 2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _sampling(group: Group, n_angles: int, n_axes: int) -> dict[str, Any]:
    """Where λ is recorded: ``{"x_label", "x", "rows": {row name: elements}}``; a row holds the same number of
    elements for every x (averaged), x-major."""
    if group.order() > 0:
        elements = list(group.elements)
        if isinstance(group, DihedralGroup):
            rows = {"rotations": [g for g in elements if g.value[0] == 0],
                    "reflections": [g for g in elements if g.value[0] == 1]}
            x = [str(g) for g in rows["rotations"]]
        else:
            rows, x = {"elements": elements}, [str(g) for g in elements]
        return {"x_label": "element", "x": x, "rows": rows}
    if isinstance(group, (SO2, O2)):
        theta = 2 * math.pi * np.arange(n_angles) / n_angles
        if isinstance(group, SO2):
            rows = {"rotations": [group.element(float(t), "radians") for t in theta]}
        else:
            rows = {"rotations": [group.element((0, float(t)), "radians") for t in theta],
                    "reflections": [group.element((1, float(t)), "radians") for t in theta]}
        return {"x_label": "angle (degrees)", "x": np.degrees(theta).tolist(), "rows": rows}
    if isinstance(group, (SO3, O3)):
        omega = np.linspace(0.0, math.pi, n_angles // 2 + 1)
        axes = _fibonacci_axes(n_axes)
        quats = [np.concatenate([a * math.sin(w / 2), [math.cos(w / 2)]]) for w in omega for a in axes]
        if isinstance(group, SO3):
            rows = {"rotations": [group.element(q, "Q") for q in quats]}
        else:
            rows = {"rotations": [group.element((0, q), "Q") for q in quats],
                    "rotoinversions": [group.element((1, q), "Q") for q in quats]}
        return {"x_label": "rotation angle (degrees), mean over axes", "x": np.degrees(omega).tolist(),
                "rows": rows}
    raise ValueError(f"model: a probabilistic layer lives on {group}, which LikelihoodHistory cannot sample; "
                     f"supported are finite groups, SO(2), O(2), SO(3) and O(3)")


class LikelihoodHistory:
    """λ of every probabilistic layer and its equivariant fraction per subgroup, epoch by epoch (module docstring).

    Args:
        n_angles: angles at which λ is recorded on SO(2)/O(2) (``n_angles // 2 + 1`` rotation angles on
            SO(3)/O(3)).
        n_axes: rotation axes λ is averaged over on SO(3)/O(3).
        subgroups: ``{name: escnn subgroup id}`` for the equivariant fractions; ``None``: each layer's
            :func:`~escnn_soft.subgroups.default_subgroups`.
    """

    def __init__(self, n_angles: int = 72, n_axes: int = 32, subgroups: dict[str, Any] | None = None):
        for name, value, low in (("n_angles", n_angles, 2), ("n_axes", n_axes, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is invalid: use an int >= {low}")
        if subgroups is not None and not isinstance(subgroups, dict):
            raise TypeError(f"subgroups: expected a dict {{name: escnn subgroup id}} or None, "
                            f"got {type(subgroups).__name__} ({subgroups!r})")
        self.n_angles, self.n_axes, self.subgroups = n_angles, n_axes, subgroups
        self.epochs: list[int] = []
        self.layers: dict[str, dict[str, Any]] = {}
        self._elements: dict[str, dict[str, list[GroupElement]]] = {}

    def record(self, model: torch.nn.Module, epoch: int) -> None:
        """Append λ and the equivariant fractions of every probabilistic layer of ``model`` for ``epoch``.

        Epochs must increase from one call to the next, and ``model`` must keep the same probabilistic
        layers. Nothing in the model changes (evaluated under ``torch.no_grad()``, mode untouched).
        """
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise TypeError(f"epoch: expected an int, got {type(epoch).__name__} ({epoch!r})")
        if self.epochs and epoch <= self.epochs[-1]:
            raise ValueError(f"epoch={epoch} does not follow the last recorded epoch {self.epochs[-1]}; record "
                             f"each epoch once, in increasing order")
        layers = _probabilistic_layers(model)
        if not layers:
            raise ValueError("model: it has no probabilistic layer (ProbabilisticR2Conv, ProbabilisticR3Conv or "
                             "ProbabilisticLinear), so there is no likelihood to record")
        if self.layers and [n for n, _ in layers] != list(self.layers):
            raise ValueError(f"model: its probabilistic layers {[n for n, _ in layers]} differ from those recorded "
                             f"so far {list(self.layers)}; use one LikelihoodHistory per model")
        with torch.no_grad():
            for name, layer in layers:
                lik = layer.likelihood
                if name not in self._elements:
                    sampling = _sampling(lik.group, self.n_angles, self.n_axes)
                    self._elements[name] = sampling["rows"]
                if name not in self.layers:
                    self.layers[name] = {"group": lik.group.name, "parameterisation": lik.parameterisation,
                                         "x_label": sampling["x_label"], "x": sampling["x"],
                                         "density": {row: [] for row in sampling["rows"]}, "equivariant_fraction": {}}
                entry = self.layers[name]
                for row, elements in self._elements[name].items():
                    values = lik.density(elements).double().cpu().numpy().reshape(len(entry["x"]), -1).mean(axis=1)
                    entry["density"][row].append(values.tolist())
                fractions = {sub: v["equivariant_fraction"] for sub, v in layer.degree(self.subgroups)["subgroups"].items()}
                for sub, value in fractions.items():
                    entry["equivariant_fraction"].setdefault(sub, []).append(value)
        self.epochs.append(int(epoch))

    def to_dict(self) -> dict[str, Any]:
        """``{"epochs": [...], "n_angles", "n_axes", "layers": {name: {"group", "parameterisation", "x_label",
        "x", "density": {row: [[λ per x] per epoch]}, "equivariant_fraction": {subgroup: [per epoch]}}}}``:
        plain lists, floats and strings (JSON-able, and loadable from a checkpoint with ``weights_only=True``)."""
        return {"epochs": list(self.epochs), "n_angles": self.n_angles, "n_axes": self.n_axes,
                "layers": copy.deepcopy(self.layers)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], subgroups: dict[str, Any] | None = None) -> LikelihoodHistory:
        """The history :meth:`to_dict` wrote (e.g. into a checkpoint), ready to record further epochs of the same
        model (a resumed run)."""
        if not isinstance(data, dict) or not {"epochs", "layers"} <= set(data):
            raise ValueError("data: expected the dict LikelihoodHistory.to_dict() returns (keys 'epochs', 'layers')")
        history = cls(int(data.get("n_angles", 72)), int(data.get("n_axes", 32)), subgroups)
        history.epochs = [int(e) for e in data["epochs"]]
        history.layers = copy.deepcopy(data["layers"])
        return history

    @staticmethod
    def applies_to(model: torch.nn.Module) -> bool:
        """Whether ``model`` has a probabilistic layer, i.e. anything to record."""
        return bool(_probabilistic_layers(model))

    def plot(self, path: str | None = None) -> Any:
        """One figure for the run: per layer, λ over the group against the epoch as a heat map (one row per
        coset: rotations, then reflections for O(2)/D_N, rotoinversions for O(3)), next to the equivariant
        fraction per subgroup against the epoch. Drawn on an Agg canvas (no window); saved as PNG to
        ``path`` when given. Returns the matplotlib ``Figure``.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if not self.epochs:
            raise ValueError("plot: nothing recorded yet; call record(model, epoch) after each epoch first")
        heights = [len(entry["density"]) for entry in self.layers.values()]
        fig = Figure(figsize=(11.0, 1.2 + 1.9 * sum(heights)), constrained_layout=True)
        FigureCanvasAgg(fig)
        grid = fig.add_gridspec(sum(heights), 2, width_ratios=[3.0, 2.0])
        epochs = np.asarray(self.epochs)
        extent_y = (epochs[0] - 0.5, epochs[-1] + 0.5)
        start = 0
        for (name, entry), height in zip(self.layers.items(), heights):
            values = np.asarray([entry["density"][row] for row in entry["density"]])  # (rows, epochs, x)
            vmin, vmax = min(0.0, float(values.min())), max(1.0, float(values.max()))
            finite = entry["x_label"] == "element"
            for k, row in enumerate(entry["density"]):
                ax = fig.add_subplot(grid[start + k, 0])
                x = np.arange(len(entry["x"])) if finite else np.asarray(entry["x"])
                step = (x[1] - x[0]) if len(x) > 1 else 1.0
                image = ax.imshow(values[k], aspect="auto", origin="lower", cmap="viridis", vmin=vmin, vmax=vmax,
                                  interpolation="nearest",
                                  extent=(x[0] - step / 2, x[-1] + step / 2, *extent_y))
                ax.set_ylabel("epoch", fontsize=8)
                ax.set_title(f"{name} ({entry['group']}, {entry['parameterisation']}): λ, {row}", fontsize=8)
                if finite:
                    labels = entry["x"] if row != "reflections" else [str(g) for g in self._elements[name][row]]
                    ax.set_xticks(x, labels, rotation=90, fontsize=6)
                else:
                    ax.set_xlabel(entry["x_label"], fontsize=8)
                fig.colorbar(image, ax=ax, label="λ(h)")
            ax = fig.add_subplot(grid[start:start + height, 1])
            for sub, fractions in entry["equivariant_fraction"].items():
                ax.plot(epochs, fractions, marker="o", ms=3, label=sub)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("epoch", fontsize=8)
            ax.set_ylabel("equivariant fraction", fontsize=8)
            ax.set_title(f"{name}: filter share equivariant to each subgroup", fontsize=8)
            ax.legend(fontsize=6, ncol=2)
            start += height
        if path is not None:
            fig.savefig(path, dpi=100)
        return fig
