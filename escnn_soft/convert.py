"""Swap strict escnn layers for soft ones (:func:`soften`) and back (:func:`harden`)."""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from escnn import nn as enn
from escnn.nn import EquivariantModule

from escnn_soft._escnn import conv_basis_kwargs
from escnn_soft.nn.base import SoftModule
from escnn_soft.ordering import canonical_order_
from escnn_soft.subgroups import default_subgroups, subgroup

__all__ = ["SOFTEN_METHODS", "harden", "soften"]

SOFTEN_METHODS = ("probabilistic", "relaxed", "rpp", "rsteer")
_STRICT_TYPES = (enn.R2Conv, enn.R3Conv, enn.Linear)


def _conv_kwargs(layer: EquivariantModule) -> dict[str, Any]:
    """The constructor arguments of a strict escnn conv that shape its basis and its output."""
    return {"padding": layer.padding, "stride": layer.stride, "dilation": layer.dilation, "padding_mode": layer.padding_mode,
                "bias": layer.bias is not None, **conv_basis_kwargs(layer)}


def _strict_base(layer: torch.nn.Module) -> type | None:
    """The escnn strict type (``R2Conv``, ``R3Conv``, ``Linear``) ``layer`` is, or is a subclass of; ``None`` for
    anything else and for soft layers (some of which subclass escnn's layers themselves)."""
    if isinstance(layer, SoftModule):
        return None
    return next((t for t in _STRICT_TYPES if isinstance(layer, t)), None)


def _soft_class(method: str, layer: EquivariantModule):
    from escnn_soft import nn as snn

    base = _strict_base(layer)
    if method == "probabilistic":
        return {enn.R2Conv: snn.ProbabilisticR2Conv, enn.R3Conv: snn.ProbabilisticR3Conv,
                enn.Linear: snn.ProbabilisticLinear}[base]
    if base is enn.R2Conv:
        return {"relaxed": snn.RelaxedR2Conv, "rpp": snn.RPPR2Conv, "rsteer": snn.RSteerR2Conv}[method]
    if base is enn.R3Conv:
        return {"relaxed": snn.RelaxedR3Conv, "rpp": snn.RPPR3Conv, "rsteer": snn.RSteerR3Conv}[method]
    return None  # the relaxed families are convolutions: Linear layers stay strict


def _same_function(layer: EquivariantModule, new: EquivariantModule) -> float:
    """Relative difference of the two layers' outputs on a random input (eval mode, no grad; modes restored)."""
    from escnn_soft.testing import random_input

    ref = layer.weights
    modes = (layer.training, new.training)
    layer.eval(), new.eval()
    try:
        x = random_input(layer, dtype=ref.dtype, device=ref.device, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a, b = layer(x).tensor, new(x).tensor
    finally:
        layer.train(modes[0]), new.train(modes[1])
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


def _make_soft(layer: EquivariantModule, method: str, kwargs: dict[str, Any],
               skipped: dict[str, str] | None = None, name: str = "") -> EquivariantModule | None:
    cls = _soft_class(method, layer)
    if cls is None:
        return None
    subclass = type(layer) not in _STRICT_TYPES

    def skip(why: str) -> None:
        if skipped is not None:
            skipped[name or "(model)"] = (f"{type(layer).__name__} subclasses escnn's {_strict_base(layer).__name__} "
                                          f"but {why}")

    try:
        if isinstance(layer, enn.Linear):
            new = cls(layer.in_type, layer.out_type, bias=layer.bias is not None, **kwargs)
        else:
            if layer.groups != 1:
                raise ValueError(f"model: layer with groups={layer.groups} cannot be softened; soft layers use "
                                 "groups=1")
            new = cls(layer.in_type, layer.out_type, layer.kernel_size, **{**_conv_kwargs(layer), **kwargs})
    except (AttributeError, TypeError) as err:
        if subclass:
            return skip(f"the {method} layer cannot be built from its attributes ({type(err).__name__}: {err})")
        raise
    if new.weights.shape != layer.weights.shape:
        if subclass:
            return skip(f"its basis has {layer.weights.numel()} elements where the {method} layer built from its "
                        f"arguments has {new.weights.numel()}")
        raise ValueError(f"model: the {method} layer's strict basis has {new.weights.numel()} elements but the "
                         f"original has {layer.weights.numel()}; the original used a custom frequencies_cutoff or "
                         f"basis_filter: pass the same one to soften(..., frequencies_cutoff=..., basis_filter=...)")
    ref = layer.weights
    new = new.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        new.weights.copy_(layer.weights)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    if subclass:
        # a subclass of escnn's layer: replace it only if the soft layer computes what it computed
        try:
            diff = _same_function(layer, new)
        except Exception as err:  # noqa: BLE001 -- a subclass's forward may need more than a GeometricTensor
            return skip(f"its forward failed on a random input ({type(err).__name__}: {err})")
        if not diff <= 1e-4:
            return skip(f"the {method} layer's output differs from it by {diff:.2g} (relative): it overrides how "
                        "the filter or the output is computed")
    return new


def _replace(model: torch.nn.Module, select: Callable[[str, torch.nn.Module], bool],
             make: Callable[[str, torch.nn.Module], torch.nn.Module | None]) -> tuple[torch.nn.Module, list[str]]:
    """Replace every selected module (depth first, parents before children) by ``make(name, module)``."""
    if select("", model):
        new = make("", model)
        return (new, [""]) if new is not None else (model, [])
    replaced: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if any(full.startswith(r + ".") for r in replaced):
                continue
            if select(full, child):
                new = make(full, child)
                if new is not None:
                    setattr(parent, child_name, new)
                    replaced.append(full)
    return model, replaced


def soften(model: torch.nn.Module, method: str = "probabilistic", names: Iterable[str] | None = None,
           types: Iterable[type] = _STRICT_TYPES, **kwargs) -> torch.nn.Module:
    """Replace strict escnn ``R2Conv``/``R3Conv``/``Linear`` layers of ``model`` by soft layers, in place.

    The soft layers get the same field types and basis parameters and a copy of the trained
    ``weights`` and ``bias``; every method initialises its non-equivariant part at zero (uniform λ,
    zero relaxation), so the softened model computes the same function. Works on any module tree
    (escnn ``SequentialModule``, ``ModuleDict``, user classes).

    Subclasses of escnn's ``R2Conv``/``R3Conv``/``Linear`` (e.g. a fork's own conv class) are softened too when
    that is safe: the soft layer is built from the subclass's field types and basis parameters, and kept only if
    it computes the same output on a random input (relative difference at most 1e-4); otherwise the layer stays
    as it is and a warning names it and says why. A warning also says when no layer was replaced at all.

    Args:
        model: the model (changed in place and returned; a model that is itself one strict layer is
            returned as its soft replacement).
        method: ``"probabilistic"`` (R2Conv, R3Conv, Linear), ``"relaxed"``, ``"rpp"`` or ``"rsteer"``
            (R2Conv and R3Conv: :class:`~escnn_soft.nn.RelaxedR2Conv` / :class:`~escnn_soft.nn.RelaxedR3Conv`, ...;
            ``Linear`` layers stay strict).
        names: optional module names (as in ``model.named_modules()``) to soften; default all.
        types: strict layer types to soften (default ``(R2Conv, R3Conv, Linear)``; their subclasses count).
        **kwargs: passed to the soft layers (e.g. ``L=2`` or ``likelihood=...``).
    """
    if method not in SOFTEN_METHODS:
        raise ValueError(f"method={method!r} is not a soft method; choose one of {', '.join(SOFTEN_METHODS)}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    types = tuple(types)
    for t in types:
        if t not in _STRICT_TYPES:
            raise ValueError(f"types: {t!r} cannot be softened; use a subset of (R2Conv, R3Conv, Linear)")
    if isinstance(names, str):
        raise TypeError(f"names: expected an iterable of module names, got the string {names!r}; pass a list, "
                        f"e.g. names=[{names!r}]")
    wanted = set(names) if names is not None else None
    if wanted is not None:
        known = {n for n, _ in model.named_modules()}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(f"names: {unknown} are not modules of the model; valid names include "
                             f"{sorted(n for n, m in model.named_modules() if _strict_base(m) is not None)[:10]}")

    def select(name: str, module: torch.nn.Module) -> bool:
        base = _strict_base(module)
        return base is not None and base in types and (wanted is None or name in wanted)

    skipped: dict[str, str] = {}
    new, replaced = _replace(model, select, lambda name, m: _make_soft(m, method, kwargs, skipped, name))
    for name, why in skipped.items():
        warnings.warn(f"soften: layer {name!r} left strict: {why}", UserWarning, stacklevel=2)
    if not replaced:
        found = sorted({type(m).__name__ for _, m in model.named_modules() if _strict_base(m) is not None})
        if found:
            detail = (f"its escnn layers ({', '.join(found)}) are not among types={[t.__name__ for t in types]}"
                      f"{' or names' if wanted is not None else ''}, or method={method!r} has no soft version of them "
                      f"(the relaxed families replace R2Conv/R3Conv only)")
        else:
            detail = ("it has no escnn R2Conv, R3Conv or Linear layer (nor a subclass of one); soften swaps escnn "
                      "layers only")
        if skipped:
            detail = "every candidate was skipped (see the warnings above)"
        warnings.warn(f"soften: no layer of the {type(model).__name__} was replaced: {detail}", UserWarning,
                      stacklevel=2)
    return canonical_order_(new)


# ----------------------------------------------------------------------------------------- harden
def _strict_layer(layer: EquivariantModule, in_type, out_type) -> EquivariantModule:
    """A strict escnn layer of the same kind and parameters as ``layer`` between the given types (weights left
    uninitialised: :func:`harden` sets them by projection)."""
    if in_type.gspace.dimensionality == 0:
        return enn.Linear(in_type, out_type, bias=layer.bias is not None, initialize=False)
    cls = enn.R2Conv if in_type.gspace.dimensionality == 2 else enn.R3Conv
    kw = {"padding": layer.padding, "stride": layer.stride, "dilation": layer.dilation, "padding_mode": layer.padding_mode,
              "bias": layer.bias is not None, "initialize": False}
    kw.update(conv_basis_kwargs(layer, missing_ok=True))
    return cls(in_type, out_type, layer.kernel_size, **kw)


def _exported(layer: EquivariantModule) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The filter and bias to project, and the relative norm of what the projection cannot keep anyway.

    A layer that exports a plain conv/linear gives its weight (and 0). A non-stationary relaxed layer exports
    position-dependent filters: its filter at the image centre, :math:`K(0,\\cdot)`, is projected, and the
    relative norm of the position-dependent part (its ``degree()['nonstationary_norm']``), which every strict
    layer drops, is returned so that it counts toward the residual.
    """
    plain = layer.export()
    bias = plain.bias.detach() if getattr(plain, "bias", None) is not None else None
    if isinstance(getattr(plain, "weight", None), torch.Tensor):
        return plain.weight.detach(), bias, 0.0
    with torch.no_grad():
        weight = layer.stationary_filter().detach()
    return weight, bias, float(layer.degree()["nonstationary_norm"])


def _project(strict: EquivariantModule, weight: torch.Tensor, iters: int = 500) -> tuple[torch.Tensor, float]:
    """Least-squares coefficients ``w`` of ``strict``'s basis for the filter ``weight`` (conjugate
    gradients on the normal equations; the expansion is linear, so ``A^T A v`` is one autograd call)."""
    expand = strict.basisexpansion
    target = weight.reshape(weight.shape[0], weight.shape[1], -1).to(strict.weights)

    def A(v: torch.Tensor) -> torch.Tensor:
        return expand(v).reshape(target.shape)

    def AtA(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(0.5 * A(v).pow(2).sum(), v)
        return grad

    w0 = torch.zeros_like(strict.weights).requires_grad_(True)
    (b,) = torch.autograd.grad((A(w0) * target).sum(), w0)
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rs = r.dot(r)
    for _ in range(iters):
        if float(rs.sqrt()) <= 1e-12 * float(b.norm()) + 1e-30:
            break
        Ap = AtA(p)
        alpha = rs / p.dot(Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = r.dot(r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    with torch.no_grad():
        residual = float((A(x) - target).norm() / target.norm().clamp_min(1e-30))
    return x.detach(), residual


def _group_size(group, sid, index: int) -> tuple[float, int]:
    H = subgroup(group, sid)[0]
    size = H.order() if H.order() > 0 else (2e9 if sid is None else 1e9)
    return size, index


def _harden_layer(layer: EquivariantModule, threshold: float, subgroups: dict[str, Any] | None,
                  log: dict[str, dict[str, Any]], name: str) -> EquivariantModule:
    from escnn_soft.metrics import WrappedModule

    group = layer.in_type.fibergroup
    candidates = dict(subgroups if subgroups is not None else default_subgroups(group))
    candidates.setdefault(group.name, None)
    if all(sid is not None for sid in candidates.values()):
        candidates[group.name] = None
    for sub_name, sid in candidates.items():
        try:
            subgroup(group, sid)
        except ValueError as err:
            raise ValueError(f"subgroups: entry {sub_name!r} of layer {name!r}: {err}") from None
    order = sorted(candidates.items(), key=lambda kv: _group_size(group, kv[1], list(candidates).index(kv[0])),
                   reverse=True)
    weight, bias, dropped = _exported(layer)
    smallest = math.inf
    for sub_name, sid in order:
        in_t = layer.in_type if sid is None else layer.in_type.restrict(sid)
        out_t = layer.out_type if sid is None else layer.out_type.restrict(sid)
        strict = _strict_layer(layer, in_t, out_t).to(device=weight.device, dtype=weight.dtype)
        coeffs, residual = _project(strict, weight)
        residual = (residual ** 2 + dropped ** 2) ** 0.5
        smallest = min(smallest, residual)
        if residual > 1.0 - threshold:
            continue
        with torch.no_grad():
            strict.weights.copy_(coeffs)
            if bias is not None and strict.bias is not None:
                strict.bias.copy_(torch.linalg.lstsq(strict.bias_expansion.double(), bias.double().unsqueeze(1))
                                  .solution.squeeze(1).to(strict.bias))
        log[name] = {"subgroup": sub_name, "subgroup_id": repr(sid), "residual": residual}
        return strict if sid is None else WrappedModule(strict, layer.in_type, layer.out_type)
    # no subgroup kept: the layer's own filter as a plain layer, exactly (escnn's steerable basis of the trivial group
    # is sampled on rings and band-limited, so a projection onto it would lose part of a free filter)
    log[name] = {"subgroup": "C1", "subgroup_id": "plain", "residual": 0.0, "smallest_subgroup_residual": smallest}
    return WrappedModule(layer.export(), layer.in_type, layer.out_type)


def harden(model: torch.nn.Module, threshold: float = 0.99, subgroups: dict[str, Any] | None = None,
           return_log: bool = False):
    """Replace every soft layer by a strict escnn layer for the largest subgroup it kept, in place.

    For each soft layer the current filter ``k`` (its ``export()``) is projected by least squares onto
    escnn's steerable basis of each candidate subgroup ``S`` (largest first: the whole group, then
    ``default_subgroups``); the first ``S`` whose relative residual ``||k - P_S k|| / ||k||`` is at most
    ``1 - threshold`` is kept. A layer that keeps no subgroup becomes its own plain layer (its ``export()``,
    wrapped to take and return its field types: exactly the soft layer's function, equivariant to nothing;
    logged as subgroup ``"C1"``, id ``"plain"``, with ``smallest_subgroup_residual``). The new layer is an escnn
    ``R2Conv``/``R3Conv``/``Linear`` — on the layer's own field types for the whole group, or on the
    types restricted to ``S`` and wrapped (:class:`escnn_soft.metrics.WrappedModule`) so that it keeps
    composing with the rest of the network — so it is *exactly* ``S``-equivariant. A non-stationary
    :class:`~escnn_soft.nn.RelaxedR2Conv` is hardened from its filter at the image centre, and the relative
    norm of its position-dependent part (which no strict layer can keep) is added to the residual.

    Returns the model, and with ``return_log=True`` also ``{layer name: {subgroup, residual}}``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold!r} is invalid: use a float in (0, 1], e.g. 0.99 (keep a subgroup "
                         f"when at most 1% of the filter norm breaks it)")
    log: dict[str, dict[str, Any]] = {}

    def select(name: str, module: torch.nn.Module) -> bool:
        return isinstance(module, SoftModule) and isinstance(module, EquivariantModule) and hasattr(module, "weights")

    new, _ = _replace(model, select, lambda name, m: _harden_layer(m, threshold, subgroups, log, name or "(model)"))
    canonical_order_(new)
    return (new, log) if return_log else new
