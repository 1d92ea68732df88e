"""Per-layer × per-subgroup equivariance report of a model (METHODS section 5).

For every layer :math:`f_l` (an escnn ``EquivariantModule`` inside the model acting on the model's gspace)
and every subgroup :math:`H` of interest, represented by a finite set :math:`T_H` of test elements,

.. math::
    \\varepsilon_l(H) = \\frac{1}{|T_H \\setminus \\{e\\}|} \\sum_{h \\in T_H \\setminus \\{e\\}}
    \\mathbb{E}_b \\frac{\\lVert h\\cdot f_l(x_{l,b}) - f_l(h\\cdot x_{l,b})\\rVert}{\\lVert f_l(x_{l,b})\\rVert},

where :math:`x_l` is the input layer :math:`l` received during one forward pass of the model on ``x``.

The model itself is one more row, on ``x``, when what its output should do is known
(``SubgroupReport.model_row``):

* ``"equivariance"``: the model returns a :class:`GeometricTensor`; ``h`` acts on it by escnn's action of its
  field type. An equivariant model reads 0 on exact subgroups and about the reference on the others.
* ``"invariance"``: the model returns a plain tensor taken to be invariant (:math:`h\\cdot y = y`), either because
  ``model_output="invariant"`` says so, or (``"auto"``) because the last escnn layer of the forward pass returns
  trivial fields on a single pixel, from which a plain head (flatten, linear) can only compute invariants. An
  invariant model reads 0 / about the reference.
* left out (``None``, with a note): a plain tensor otherwise, e.g. a read-out that flattens a grid of invariant
  maps and so keeps the orientation on purpose. Its "invariance error" would be of order 1 by design and says
  nothing about broken equivariance; the layers' rows do. Pass ``model_output="invariant"`` to measure it anyway.

A subgroup is *exact* when all of its test elements map the pixel grid onto itself
(:func:`~escnn_soft.metrics.is_grid_exact`): then :math:`\\varepsilon` is zero up to rounding for a strict
layer. Otherwise the transformation interpolates and even a strict layer shows an error; each cell
then also carries a *reference* error, the same mean over :math:`T_H` of

* the error of the matching layer of a strict ``reference`` model, when one is passed, or else
* the round-trip interpolation floor of the layer's output :math:`y = f_l(x_l)` (of its input for a
  model returning plain, invariant tensors),
  :math:`\\varepsilon_{rt}(h) = \\mathbb{E}_b \\lVert h^{-1}\\cdot(h\\cdot y_b) - y_b\\rVert / \\lVert y_b\\rVert`,
  the part of :math:`y` that interpolating by :math:`h` cannot carry. A strict escnn layer's error is
  of this size (0.5 to 1.2 times it in our measurements, on smooth and on white-noise inputs), so only
  an error well above it reveals broken equivariance,

with :math:`\\varepsilon_{rt}(h) = 0` for grid-exact :math:`h`.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from escnn.group import Group, GroupElement
from escnn.gspaces import GSpace
from escnn.nn import EquivariantModule, GeometricTensor, SequentialModule

from escnn_soft.metrics.equivariance import is_grid_exact, relative_error, transform
from escnn_soft.subgroups import default_subgroups, subgroup, subgroup_elements

__all__ = ["MODEL_OUTPUTS", "MODEL_ROW", "SubgroupReport", "subgroup_report"]

MODEL_ROW = "(model)"
"""Name of the row holding the whole model's error."""

MODEL_OUTPUTS = ("auto", "invariant", "omit")
"""Values of ``subgroup_report(model_output=...)``: what the model row measures (module docstring)."""

def _resolve(group: Group, subgroups: Any) -> list[tuple[str, list[GroupElement]]]:
    """``[(name, test elements)]`` from the ``subgroups`` argument of :func:`subgroup_report`."""
    defaults = default_subgroups(group)
    if subgroups is None:
        return [(name, subgroup_elements(group, sid)) for name, sid in defaults.items()]
    if isinstance(subgroups, Mapping):
        items = list(subgroups.items())
    elif isinstance(subgroups, (list, tuple)):
        items = [(None, spec) for spec in subgroups]
    else:
        raise ValueError(f"subgroups: expected a list (or a dict name -> spec), got {type(subgroups).__name__} "  # noqa: TRY004
                         f"({subgroups!r}); e.g. subgroups={list(defaults)}")
    fix = (f"pass names from {list(defaults)}, escnn subgroup ids of {group.name}, or lists of its "
           "GroupElements")
    out: list[tuple[str, list[GroupElement]]] = []
    for i, (name, spec) in enumerate(items):
        if isinstance(spec, str) and spec in defaults:
            label, elements = spec, subgroup_elements(group, defaults[spec])
        elif isinstance(spec, (list, tuple)) and spec and all(isinstance(g, GroupElement) for g in spec):
            foreign = [g for g in spec if g.group != group]
            if foreign:
                raise ValueError(f"subgroups: element {foreign[0]} of {foreign[0].group.name} is not in "
                                 f"{group.name}; {fix}")
            label, elements = f"elements{i}", [g for g in spec if g != group.identity]
        else:
            try:
                elements = subgroup_elements(group, spec)
                label = subgroup(group, spec)[0].name
                if label in [n for n, _ in out]:
                    label = f"{label}{spec}"  # e.g. the flips and the rotations by 180 degrees are both "C2"
            except (AssertionError, KeyError, IndexError, TypeError, ValueError) as e:  # escnn's ways to reject an id
                raise ValueError(f"subgroups: {spec!r} is not a subgroup of {group.name} ({e}); {fix}") from None
        if not elements:
            raise ValueError(f"subgroups: {spec!r} holds only the identity, nothing to measure; {fix}")
        out.append((name if name is not None else label, elements))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"subgroups: names {names} are not unique; pass a dict {{name: spec}}")
    return out


@dataclass
class SubgroupReport:
    """Errors per layer (rows, in forward order, then :data:`MODEL_ROW`) × subgroup (columns).

    ``error[row][col]`` is :math:`\\varepsilon`; ``reference[row][col]`` the reference error of a
    strict layer for inexact subgroups (``None`` for exact ones, or when a ``reference`` model has no
    such layer); ``exact[col]`` whether all test elements of the subgroup are grid-exact.
    ``model_row`` is what the :data:`MODEL_ROW` row measures: ``"equivariance"`` (output fields),
    ``"invariance"`` (a plain output taken as invariant) or ``None`` when the row is left out (module docstring).
    """

    group: str
    subgroups: list[str]
    exact: dict[str, bool]
    elements: dict[str, list[str]]
    layers: list[str]
    layer_types: dict[str, str]
    error: dict[str, dict[str, float]]
    reference: dict[str, dict[str, float | None]]
    reference_kind: str = "roundtrip"
    notes: list[str] = field(default_factory=list)
    model_row: str | None = "equivariance"

    def table(self, digits: int = 4) -> str:
        """Plain-text table; inexact columns are starred and show ``error (reference)``."""
        def cell(row: str, col: str) -> str:
            text = f"{self.error[row][col]:.{digits}f}"
            if not self.exact[col]:
                ref = self.reference[row][col]
                text += " (-)" if ref is None else f" ({ref:.{digits}f})"
            return text
        header = ["layer"] + [c if self.exact[c] else c + "*" for c in self.subgroups]
        rows = [[f"{r} [{self.layer_types[r]}]"] + [cell(r, c) for c in self.subgroups] for r in self.layers]
        widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]
        fmt = lambda line: "  ".join(s.ljust(w) if i == 0 else s.rjust(w)
                                     for i, (s, w) in enumerate(zip(line, widths)))
        lines = [f"Relative equivariance error per layer and subgroup of {self.group}", fmt(header),
                 "-" * len(fmt(header))] + [fmt(r) for r in rows]
        if not all(self.exact.values()):
            what = ("the strict reference model's error" if self.reference_kind == "model"
                    else "round-trip interpolation floor of the layer output")
            lines.append(f"* interpolated elements: error (reference = {what})")
        if self.model_row is not None:
            lines.append(f"{MODEL_ROW}: {_MODEL_ROW_MEANING[self.model_row]}")
        return "\n".join(lines + self.notes)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``json.dumps`` works on it as is)."""
        out = {
            "group": self.group,
            "reference_kind": self.reference_kind,
            "model_row": self.model_row,
            "subgroups": [{"name": c, "exact": self.exact[c], "elements": self.elements[c]}
                          for c in self.subgroups],
            "rows": [{"name": r, "type": self.layer_types[r],
                      "errors": {c: {"error": self.error[r][c], "reference": self.reference[r][c]}
                                 for c in self.subgroups}} for r in self.layers],
            "notes": list(self.notes),
        }
        json.dumps(out)  # fail here rather than in the caller's writer
        return out

    def plot(self, path: str | None = None, ax: Any = None) -> Any:
        """Heatmap of :math:`\\log_{10}\\varepsilon` (rows = layers, columns = subgroups; starred = interpolated).

        Drawn without pyplot on an Agg canvas, so it never opens a window. Saves a PNG to ``path``
        when given. Returns the matplotlib ``Figure``.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure

        data = np.array([[self.error[r][c] for c in self.subgroups] for r in self.layers])
        floor = 1e-8
        if ax is None:
            fig = Figure(figsize=(4.0 + 1.5 * len(self.subgroups), 1.0 + 0.45 * len(self.layers)),
                         constrained_layout=True)
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        image = ax.imshow(np.clip(data, floor, None), cmap="viridis", aspect="auto",
                          norm=LogNorm(vmin=floor, vmax=max(1.0, float(data.max()))))
        for i, r in enumerate(self.layers):
            for j, c in enumerate(self.subgroups):
                ref = self.reference[r][c]
                text = f"{data[i, j]:.1e}" + ("" if ref is None else f"\n(ref {ref:.1e})")
                colour = "white" if data[i, j] < 1e-2 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
        ax.set_xticks(range(len(self.subgroups)),
                      [c if self.exact[c] else c + "*" for c in self.subgroups])
        ax.set_yticks(range(len(self.layers)), [f"{r} {self.layer_types[r]}" for r in self.layers], fontsize=8)
        ax.set_title(f"equivariance error ({self.group}; * = interpolated)", fontsize=9)
        fig.colorbar(image, ax=ax, label="relative error")
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


_MODEL_ROW_MEANING = {
    "equivariance": "the model's output fields, acted on by escnn (an equivariant model reads 0, or about the "
                    "reference)",
    "invariance": "the model's plain output, taken as invariant (an invariant model reads 0, or about the "
                  "reference)",
}


def _layers(model: torch.nn.Module, gspace: GSpace) -> list[tuple[str, EquivariantModule]]:
    """Every escnn module below ``model`` acting on ``gspace`` (containers ``SequentialModule`` excluded)."""
    return [(name, m) for name, m in model.named_modules()
            if name and isinstance(m, EquivariantModule) and not isinstance(m, SequentialModule)
            and m.in_type.gspace == gspace and m.out_type.gspace == gspace]


def _record(model: Callable, layers: list[tuple[str, EquivariantModule]], x: GeometricTensor
            ) -> tuple[Any, dict[str, tuple[GeometricTensor, GeometricTensor]]]:
    """Run ``model(x)`` once; return its output and each layer's (input, output) at its first call."""
    inputs: dict[str, GeometricTensor] = {}
    seen: dict[str, tuple[GeometricTensor, GeometricTensor]] = {}

    def copy(t: GeometricTensor) -> GeometricTensor:
        return GeometricTensor(t.tensor.detach().clone(), t.type)

    def pre_hook(name: str):
        def hook(module, args):
            if name not in inputs and args and isinstance(args[0], GeometricTensor):
                inputs[name] = copy(args[0])  # before an in-place layer overwrites it
        return hook

    def post_hook(name: str):
        def hook(module, args, output):
            if name in inputs and name not in seen and isinstance(output, GeometricTensor):
                seen[name] = (inputs[name], copy(output))
        return hook

    handles = []
    for name, m in layers:
        handles += [m.register_forward_pre_hook(pre_hook(name)), m.register_forward_hook(post_hook(name))]
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return y, seen


def _model_row_kind(y: Any, group: Group, seen: dict[str, tuple[GeometricTensor, GeometricTensor]],
                    model_output: str) -> str | None:
    """What the model row measures for the output ``y`` (module docstring); ``None``: leave the row out."""
    if isinstance(y, GeometricTensor):
        if y.type.gspace.fibergroup != group:
            raise ValueError(f"model: returns fields of {y.type.gspace.fibergroup.name}, not of {group.name}; "
                             "return fields of the input's group, or a plain tensor for invariant outputs")
        if model_output == "invariant":
            raise ValueError(f"model_output='invariant': the model returns a GeometricTensor of {y.type}, which "
                             "escnn knows how to transform; use model_output='auto' (its equivariance is measured)")
        return None if model_output == "omit" else "equivariance"
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"model: returns {type(y).__name__}; expected a GeometricTensor or a torch.Tensor")  # noqa: TRY004
    if model_output != "auto":
        return "invariance" if model_output == "invariant" else None
    last = list(seen.values())[-1][1] if seen else None
    pointwise_invariant = (last is not None and all(r.is_trivial() for r in last.type.representations)
                           and all(n == 1 for n in last.tensor.shape[2:]))
    return "invariance" if pointwise_invariant else None


def _model_output_action(kind: str) -> Callable[[Any, GroupElement], torch.Tensor]:
    """How an element acts on the model's output: escnn's action, or none for invariant plain tensors."""
    if kind == "equivariance":
        return lambda out, g: transform(out, g).tensor
    return lambda out, g: out


def _tensor(y: Any) -> torch.Tensor:
    return y.tensor if isinstance(y, GeometricTensor) else y


class _Unique:
    """The distinct elements of several subgroups (GroupElement equality is tolerance based)."""

    def __init__(self) -> None:
        self.elements: list[GroupElement] = []

    def index(self, g: GroupElement) -> int:
        for i, h in enumerate(self.elements):
            if h == g:
                return i
        self.elements.append(g)
        return len(self.elements) - 1


def _errors(model: Callable, layers: list[tuple[str, EquivariantModule]], x: GeometricTensor,
            elements: Sequence[GroupElement], exact: Sequence[bool], floor: bool, model_output: str
            ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, str], str | None]:
    """Per row, the error of each element and, when ``floor``, its round-trip interpolation floor; and what
    the model row measures (``None``: left out).

    The floor is taken on the row's output, or on its input when the output is a plain (invariant)
    tensor, which interpolation does not touch; it is 0 for grid-exact elements.
    """
    group = x.type.gspace.fibergroup
    y, seen = _record(model, layers, x)
    kind = _model_row_kind(y, group, seen, model_output)
    rows: dict[str, tuple[Callable, GeometricTensor, Any, Callable]] = {}
    for name, layer in layers:
        if name in seen:
            rows[name] = (layer, seen[name][0], seen[name][1], lambda o, g: transform(o, g).tensor)
    if kind is not None:
        rows[MODEL_ROW] = (model, x, y, _model_output_action(kind))
    errors: dict[str, list[float]] = {}
    floors: dict[str, list[float]] = {}
    types: dict[str, str] = {}
    with torch.no_grad():
        for name, (f, inp, out, act_out) in rows.items():
            types[name] = type(f).__name__
            errors[name] = [relative_error(act_out(out, g), _tensor(f(transform(inp, g))), _tensor(out))
                            for g in elements]
            if floor:
                z = out if isinstance(out, GeometricTensor) else inp
                floors[name] = [0.0 if ex else relative_error(transform(transform(z, g), ~g).tensor, z.tensor, z.tensor)
                                for g, ex in zip(elements, exact)]
    return errors, floors, types, kind


def subgroup_report(model: Callable, x: GeometricTensor,
                    subgroups: None | Sequence[Any] | Mapping[str, Any] = None,
                    reference: Callable | None = None, model_output: str = "auto") -> SubgroupReport:
    """Equivariance error of every layer of ``model`` and of the model, per subgroup of interest.

    Args:
        model: a callable on :class:`GeometricTensor` of ``x.type`` (usually an escnn
            ``EquivariantModule``); its output is a :class:`GeometricTensor` of the same group or a plain
            tensor (see ``model_output``). Layers are all escnn ``EquivariantModule`` s inside it (except
            ``SequentialModule`` containers) whose input and output types live on ``x``'s gspace,
            measured on the input they receive at their first call. Evaluated in eval mode (restored
            after) and without gradients; use float64 for exact results.
        x: a batch of input fields.
        subgroups: ``None`` for :func:`escnn_soft.subgroups.default_subgroups` of the group, or a list
            whose items are names of those defaults (``"C4"``), escnn subgroup ids (``(None, 4)``;
            ``None`` = the whole group) or lists of ``GroupElement`` s, or a dict ``{name: item}``.
        reference: optional strict model with the same module names (e.g. the escnn model a soft model
            was made from): its errors on ``x`` are the reference of inexact subgroups. Default: the
            round-trip interpolation floor (module docstring).
        model_output: what the model row measures. ``"auto"``: the equivariance of output fields; for a plain
            tensor its invariance when the last escnn layer returns trivial fields on one pixel, else the row
            is left out (a grid read-out keeps the orientation by design). ``"invariant"``: a plain output is
            invariant, measure it. ``"omit"``: no model row.

    Returns:
        a :class:`SubgroupReport`.

    Raises:
        ValueError: naming the argument, the value and the fix.
    """
    if not isinstance(x, GeometricTensor):
        raise TypeError(f"x: expected a GeometricTensor, got {type(x).__name__}; use model.in_type(tensor)")
    if isinstance(model, EquivariantModule) and model.in_type != x.type:
        raise ValueError(f"x: its field type {x.type} differs from model.in_type {model.in_type}; "
                         "build x with model.in_type(tensor)")
    if not callable(model):
        raise TypeError(f"model: {model!r} is not callable; pass a torch module taking GeometricTensors")
    if reference is not None and not callable(reference):
        raise TypeError(f"reference: {reference!r} is not callable; pass the strict model (a torch module taking "
                        "GeometricTensors) or None")
    if model_output not in MODEL_OUTPUTS:
        raise ValueError(f"model_output: expected one of {MODEL_OUTPUTS}, got {model_output!r}; 'invariant' for "
                         "a model returning plain invariant tensors (e.g. logits after group pooling)")
    gspace = x.type.gspace
    group = gspace.fibergroup
    columns = _resolve(group, subgroups)
    unique = _Unique()
    index = {name: [unique.index(g) for g in elements] for name, elements in columns}
    elements = unique.elements
    exact_el = [is_grid_exact(gspace, g) for g in elements]

    def measure(m: Callable, floor: bool, output: str):
        modules = list(m.modules()) if isinstance(m, torch.nn.Module) else []
        modes = [mod.training for mod in modules]
        for mod in modules:
            mod.train(False)
        try:
            layers = _layers(m, gspace) if isinstance(m, torch.nn.Module) else []
            return _errors(m, layers, x, elements, exact_el, floor, output)
        finally:
            for mod, mode in zip(modules, modes):
                mod.train(mode)

    errors, floors, types, kind = measure(model, floor=reference is None, output=model_output)
    if not errors:
        raise ValueError(f"model: no escnn layer on {gspace} found inside it and its plain output is not known to "
                         "be invariant, so there is nothing to report; pass model_output='invariant' if the model "
                         "is meant to be invariant")
    if reference is not None:  # the reference's model row measures what the model's does
        ref_output = {"equivariance": "auto", "invariance": "invariant", None: "omit"}[kind]
        ref_errors = measure(reference, floor=False, output=ref_output)[0]
        floors = {row: [0.0 if ex else e for e, ex in zip(ref_errors[row], exact_el)]
                  for row in errors if row in ref_errors}
    rows = list(errors)
    exact = {name: all(exact_el[i] for i in idx) for name, idx in index.items()}

    def mean(values: list[float], idx: list[int]) -> float:
        return float(np.mean([values[i] for i in idx]))

    notes = []
    if rows == [MODEL_ROW]:
        notes.append(f"note: no escnn layer on {gspace} found inside the model; only the model row is shown")
    if kind is None and model_output == "auto":
        notes.append(f"note: no {MODEL_ROW} row: the model returns a plain tensor that is not known to be invariant "
                     "(e.g. a grid read-out, which keeps the orientation by design); pass model_output='invariant' "
                     "to measure its invariance")
    return SubgroupReport(
        group=group.name, subgroups=[n for n, _ in columns], exact=exact,
        elements={n: [str(g) for g in els] for n, els in columns}, layers=rows, layer_types=types,
        error={r: {n: mean(errors[r], idx) for n, idx in index.items()} for r in rows},
        reference={r: {n: (None if exact[n] or r not in floors else mean(floors[r], idx))
                       for n, idx in index.items()} for r in rows},
        reference_kind="model" if reference is not None else "roundtrip", notes=notes, model_row=kind)
