"""The checkpoint format of ``escnn-soft train``: weights, metadata, history, optimiser and RNG state.

A checkpoint is one ``torch.save`` of a dict that ``torch.load(path, weights_only=True)`` reads:

* ``state_dict``: the model's weights by name, without escnn's eval-only expanded filters (portable between
  train and eval mode);
* ``meta``: method, group, architecture and its size arguments, read-out, data (symmetry, images, re-drawing),
  version and the field types of every equivariant layer, so a
  mismatch is reported layer by layer;
* ``history``: one dict of training statistics per finished epoch;
* ``optimizer_by_name``: the optimiser state keyed by **parameter name**
  (:func:`escnn_soft.ordering.optimizer_state_by_name`), so
  it restores onto the right tensors in a process whose parameters are listed in another order;
* ``rng``: torch's CPU generator state;
* ``likelihood_history`` (probabilistic runs of ``escnn-soft train``): λ of every layer per epoch
  (:meth:`escnn_soft.metrics.LikelihoodHistory.to_dict`), so a resumed run keeps plotting the whole run.

Checkpoints written before the optimiser state was keyed by name hold ``optimizer`` (torch's positional
state dict, whose order depended on the writing process's hash seed); their weights load as before, and
resuming from one raises a clear error (:func:`escnn_soft.ordering.restore_optimizer_state`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from escnn_soft.doublemnist.networks import build_model, pathway_subgroups
from escnn_soft.ordering import optimizer_state_by_name, restore_optimizer_state

__all__ = ["load_checkpoint", "model_kwargs", "resume_state", "save_checkpoint"]


def model_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`~escnn_soft.doublemnist.networks.build_model` that rebuild the network ``meta`` describes."""
    arch = meta.get("arch", "default")  # checkpoints from before the thesis network hold the default one
    kwargs: dict[str, Any] = {"group": meta["group"], "arch": arch,
                              # checkpoints from before the read-out option pooled per half
                              "readout": meta.get("readout", "halves")}
    if arch == "default":
        kwargs.update(width=meta["width"], max_frequency=meta["max_frequency"])
    else:
        kwargs["width_multiplier"] = meta["width_multiplier"]
    if meta["method"] == "probabilistic":
        kwargs["L"] = meta["L"]
        # checkpoints from before the square parameterisation used the softmax one
        kwargs["parameterisation"] = meta.get("parameterisation", "softmax")
    if meta["method"] == "relaxed":  # checkpoints from before bank_(in_)fraction modulated every field
        kwargs["bank_fraction"] = meta.get("bank_fraction", 1.0)
        kwargs["bank_in_fraction"] = meta.get("bank_in_fraction", 1.0)
    if meta["method"] == "rpp" and meta.get("pathways"):  # a subgroup chain (names; checkpoints before it had none)
        kwargs["pathways"] = pathway_subgroups(meta["group"], meta["pathways"])
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
    from escnn_soft.doublemnist.networks import PlainDoubleMNISTNet

    out: dict[str, Any] = {"field_types": _field_types(model)}
    method = "cnn" if isinstance(model, PlainDoubleMNISTNet) else getattr(model, "method", None)
    if method is not None:
        out["method"] = method
    gspace = getattr(model, "gspace", None)
    if gspace is not None:
        out["group"] = gspace.fibergroup.name.replace("(", "").replace(")", "")  # SO(2) -> SO2, as in GROUPS
    return out


def _size(meta: dict[str, Any]) -> str:
    """``"arch 'default', width 2"`` / ``"arch 'thesis', width_multiplier 6"``: the network a checkpoint holds."""
    arch = meta.get("arch", "default")
    key = "width" if arch == "default" else "width_multiplier"
    return f"arch {arch!r}, {key} {meta.get(key)!r}"


# What checkpoints written before a run option existed did, so that they keep resuming with that option's old value.
_LEGACY_META: dict[str, Any] = {"arch": "default", "redraw": False, "parameterisation": "softmax",
                                "bank_fraction": 1.0, "bank_in_fraction": 1.0, "pathways": []}


def _differences(saved: dict[str, Any], current: dict[str, Any], what: str) -> list[str]:
    """What differs between a checkpoint's metadata and ``current`` (every key of ``current``; the field types layer
    by layer, the first three differing layers and a count), as ``'key: checkpoint X, <what> Y'``."""
    saved = {**_LEGACY_META, **saved}
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


def _portable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the buffers escnn's ``R2Conv``/``R3Conv``/``Linear`` build in ``.eval()``
    (``filter``/``matrix``, ``expanded_bias``: the expanded weights, present only in eval mode and in a model never
    switched to train mode), so that a checkpoint saved in either mode loads into a model in either mode."""
    from escnn_soft._escnn import MODE_DEPENDENT_BUFFERS, keeps_mode_dependent_buffers

    state = model.state_dict()
    for name, m in _named_modules(model):
        if keeps_mode_dependent_buffers(m):
            for key in MODE_DEPENDENT_BUFFERS:
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
                    optimizer: torch.optim.Optimizer | None = None, extra: dict[str, Any] | None = None) -> None:
    """State dict + metadata (method, group, widths, version, and the field types of every equivariant layer) +
    history (+ optimiser state keyed by parameter name, :func:`optimizer_state_by_name`, and RNG state for
    ``--resume``) (+ ``extra`` entries, e.g. ``likelihood_history``), loadable with ``weights_only=True``.

    The state dict is the same in train and eval mode (escnn's eval-only expanded filters are left out). Written
    to a temporary file and renamed, so an interrupted run never leaves a truncated checkpoint."""
    payload: dict[str, Any] = {"state_dict": _portable_state_dict(model),
                               "meta": {**meta, "field_types": _field_types(model)}, "history": history,
                               "rng": torch.get_rng_state()}
    if optimizer is not None:
        payload["optimizer_by_name"] = optimizer_state_by_name(optimizer, model)
    for key, value in (extra or {}).items():  # e.g. the likelihood history of the run
        if key in payload:
            raise ValueError(f"extra: key {key!r} is part of the checkpoint format; use another name")
        payload[key] = value
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
        target = build_model(meta["method"], **model_kwargs(meta)).train()
        problem, what = "does not match the model it describes", "its metadata builds"
    else:
        target, problem, what = model, "was saved from a different model", "model"
    differences = _differences(meta, _description(target), what) or _state_differences(ckpt["state_dict"], target)
    if differences:
        raise ValueError(f"checkpoint: {path} {problem} (method {meta.get('method')!r}, group {meta.get('group')!r}, "
                         f"{_size(meta)}): " + "; ".join(differences))
    _load_state(target, ckpt["state_dict"])
    return (target.to(device) if model is None else target), meta, ckpt.get("history", [])


def resume_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 meta: dict[str, Any]) -> list[dict[str, float]]:
    """Load weights, optimiser state (by parameter name) and RNG state of an interrupted run into ``model``
    and ``optimizer``; returns the history so far.

    Raises:
        ValueError: the checkpoint was written by a run with other arguments (what differs is named), or its
            optimiser state cannot be restored (:func:`restore_optimizer_state`).
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    differences = _differences(ckpt["meta"], {**meta, "field_types": _field_types(model)}, "this run")
    if differences:
        raise ValueError(f"{path} was written by a different run: " + "; ".join(differences)
                         + "; use the same arguments (or a new --out folder)")
    _load_state(model, ckpt["state_dict"])
    restore_optimizer_state(optimizer, model, ckpt, path)
    torch.set_rng_state(ckpt["rng"])
    return list(ckpt.get("history", []))
