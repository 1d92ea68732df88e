"""Which tensors the Laplace approximation covers, and their prior groups (METHODS section 4).

A network's trained tensors fall into three kinds:

* **Laplace parameters** :math:`\\theta` (:class:`LaplaceParameter`): a Gaussian prior
  :math:`\\mathcal N(0, \\delta_g^{-1} I)` with the precision :math:`\\delta_g` of their prior group :math:`g`,
  and curvature;
* **hyperparameters** :math:`\\eta`: no prior, no curvature; the evidence is differentiable in them
  (relaxation amplitudes, likelihood coefficients, Sinkhorn logits);
* **point estimates**: excluded tensors (normalisation layers, escnn's non-linearities by default).

:class:`ParameterRegistry` makes that split once and holds the prior groups
(``"layerwise"``: one :math:`\\delta` per layer; ``"parameterwise"``: per tensor, laplace-torch's per-layer
convention; ``"scalar"``: one), with the per-group sizes :math:`n_g` and squared norms
:math:`\\lVert\\theta_g\\rVert^2` the evidence and the MAP objective need.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from escnn import nn as enn
from torch import Tensor, nn

from escnn_soft.nn.base import SoftModule

__all__ = ["DEFAULT_EXCLUDED", "PRIOR_STRUCTURES", "LaplaceParameter", "ParameterRegistry",
           "likelihood_hyperparameters", "register_module_type", "soft_hyperparameters", "supported_module_types"]

_SUPPORTED: list[type] = [nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, enn.R2Conv, enn.R3Conv, enn.Linear,
                          SoftModule]

#: module types whose parameters ``exclude="default"`` leaves out of the Laplace approximation:
#: normalisation layers and escnn's non-linearities (the biases of gated and norm non-linearities)
DEFAULT_EXCLUDED: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, enn.InnerBatchNorm, enn.IIDBatchNorm1d,
    enn.IIDBatchNorm2d, enn.IIDBatchNorm3d, enn.NormBatchNorm, enn.GNormBatchNorm, enn.InducedNormBatchNorm,
    enn.GatedNonLinearity1, enn.GatedNonLinearity2, enn.GatedNonLinearityUniform, enn.InducedGatedNonLinearity1,
    enn.NormNonLinearity, enn.InducedNormNonLinearity)

#: the prior structures: one precision per layer, per trained tensor, or one for all
PRIOR_STRUCTURES = ("layerwise", "parameterwise", "scalar")


def register_module_type(cls: type) -> None:
    """Declare that layers of type ``cls`` expand a filter (and bias) from their parameters and call
    ``torch.nn.functional.linear``/``conv{1,2,3}d`` with it, so their curvature can be collected."""
    if cls not in _SUPPORTED:
        _SUPPORTED.append(cls)


def supported_module_types() -> list[str]:
    """Names of the layer types whose parameters get curvature."""
    return [f"{c.__module__}.{c.__qualname__}" for c in _SUPPORTED]


def soft_hyperparameters(model: nn.Module) -> list[Tensor]:
    """The trainable hyperparameters of the soft layers in ``model`` (``hyperparameters=None``).

    The ``hyperparameter_parameters()`` of every :class:`escnn_soft.nn.SoftModule` (the soft-layer contract,
    :mod:`escnn_soft.nn.base`) in module order, shared tensors once: relaxed layers' log amplitudes,
    lengthscales, variances and smoothness, probabilistic layers' likelihood coefficients, doubly-stochastic
    layers' Sinkhorn ``logits``.
    """
    found: list[Tensor] = []
    for m in model.modules():
        if isinstance(m, SoftModule):
            hp = m.hyperparameter_parameters()
            found += list(hp.values()) if isinstance(hp, dict) else list(hp)
    return list({id(t): t for t in found if t.requires_grad}.values())


def likelihood_hyperparameters(model: nn.Module) -> list[Tensor]:
    """The trainable coefficients of every distinct :class:`escnn_soft.GroupLikelihood` in ``model`` (shared
    likelihoods once), in module order: ``hyperparameters="likelihoods"``, λ tuned by the evidence.

    Raises:
        ValueError: there is nothing to tune: ``model`` has no probabilistic layer, or every likelihood's
            coefficients are frozen (``requires_grad=False``).
    """
    from escnn_soft.likelihood import GroupLikelihood

    liks = {id(m): m for m in model.modules() if isinstance(m, GroupLikelihood)}
    if not liks:
        raise ValueError(f"hyperparameters='likelihoods': nothing to tune, the {type(model).__name__} has no "
                         "GroupLikelihood (no probabilistic layer); build it with method='probabilistic' "
                         "(escnn_soft.soften or escnn_soft.models.build_model), or pass hyperparameters=None to "
                         "tune only the prior precisions and the other soft layers' hyperparameters")
    found = [p for lik in liks.values() for p in lik.parameters() if p.requires_grad]
    if not found:
        raise ValueError(f"hyperparameters='likelihoods': nothing to tune, the coefficients of all {len(liks)} "
                         "likelihood(s) are frozen (requires_grad=False); call "
                         "likelihood.coefficients.requires_grad_(True) to let the evidence tune λ")
    return list({id(t): t for t in found}.values())


class LaplaceParameter(NamedTuple):
    """One trained tensor inside the Laplace approximation."""

    #: its name in ``model.named_parameters()``
    name: str
    #: the tensor itself
    tensor: Tensor
    #: path of the supported layer it belongs to (``""``: the model itself)
    layer: str
    #: that layer's class name
    layer_type: str

    def describe(self) -> str:
        return f"'{self.name}' at layer '{self.layer}'"


class ParameterRegistry:
    """The split of ``model``'s trained tensors (module docstring) and the prior groups of the Laplace parameters.

    Args:
        model: the network.
        hyperparameters: ``None`` (the soft layers' own, :func:`soft_hyperparameters`), ``"likelihoods"``
            (:func:`likelihood_hyperparameters`) or tensors / parameter names.
        exclude: ``"default"`` (:data:`DEFAULT_EXCLUDED`), ``None``, or an iterable of module types, modules,
            module paths (a path also excludes its children) or parameter names.
        prior_structure: one of :data:`PRIOR_STRUCTURES`.

    Attributes:
        params: the Laplace parameters, in ``model.named_parameters()`` order.
        hyperparameters: the network's hyperparameters.
        targets: supported layer -> its path, for every layer holding a Laplace parameter.
        groups: the prior groups' names (layer paths, parameter names, or ``["all"]``).
        group_of: the group index of each Laplace parameter.
        in_laplace: whether each Laplace parameter reaches a recorded op (see :meth:`set_point_estimates`).
        point_estimates: names of the Laplace parameters left out because they reach no recorded op.
    """

    def __init__(self, model: nn.Module, *, hyperparameters: str | Iterable[str | Tensor] | None = None,
                 exclude: str | None | Iterable[Any] = "default", prior_structure: str = "layerwise") -> None:
        if prior_structure not in PRIOR_STRUCTURES:
            raise ValueError(f"prior_structure: {prior_structure!r}; use 'layerwise', 'parameterwise' or 'scalar'")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.prior_structure = prior_structure
        self.hyperparameters = _resolve_hyperparameters(model, hyperparameters)
        self.params, self.targets = _select(model, self.hyperparameters, exclude)
        if prior_structure == "layerwise":
            keys = [p.layer for p in self.params]
        elif prior_structure == "parameterwise":
            keys = [p.name for p in self.params]
        else:
            keys = ["all"] * len(self.params)
        self.groups: list[str] = list(dict.fromkeys(keys))
        self.group_of: list[int] = [self.groups.index(k) for k in keys]
        self.in_laplace: list[bool] = [True] * len(self.params)
        self.point_estimates: list[str] = []

    @property
    def tensors(self) -> list[Tensor]:
        """The Laplace parameters' tensors, in order."""
        return [p.tensor for p in self.params]

    def set_point_estimates(self, covered: set[int]) -> None:
        """Parameters (indices into :attr:`params`) outside ``covered`` reach no recorded op: they stay point
        estimates, with no prior and no curvature (warned once per set)."""
        outside = [i for i in range(len(self.params)) if i not in covered]
        names = [self.params[i].name for i in outside]
        if names and names != self.point_estimates:
            warnings.warn(f"escnn_soft.laplace: {names} act outside the filter and bias of the layers' linear/conv "
                          "operations (e.g. after a position-dependent combination); they are kept as point "
                          "estimates without prior or curvature. Pass them in exclude=[...] or "
                          "hyperparameters=[...] to silence this.", stacklevel=3)
        self.point_estimates = names
        self.in_laplace = [i not in outside for i in range(len(self.params))]

    def group_sizes(self, like: Tensor) -> Tensor:
        """:math:`n_g`, the number of entries of each group's Laplace parameters (dtype and device of ``like``)."""
        sizes = like.new_zeros(len(self.groups))
        for g, p, inside in zip(self.group_of, self.params, self.in_laplace):
            if inside:
                sizes[g] += p.tensor.numel()
        return sizes

    def squared_norms(self, tensors: list[Tensor] | None = None) -> Tensor:
        """:math:`\\lVert\\theta_g\\rVert^2` per group, of ``tensors`` (one per parameter, e.g. a snapshot of the
        MAP) or of the current tensors (``None``, with their autograd graph)."""
        tensors = self.tensors if tensors is None else tensors
        parts: list[list[Tensor]] = [[] for _ in self.groups]
        for g, t, inside in zip(self.group_of, tensors, self.in_laplace):
            if inside:
                parts[g].append(t.pow(2).sum())
        zero = tensors[0].new_zeros(())
        return torch.stack([sum(p, zero) for p in parts])

    def delta_vector(self, delta: Tensor) -> Tensor:
        """The prior precision of every entry of the concatenated Laplace parameters (the diagonal of
        :math:`P_0`)."""
        return torch.cat([delta[g].expand(p.tensor.numel()) for g, p in zip(self.group_of, self.params)])


def _resolve_hyperparameters(model: nn.Module, given: str | Iterable[str | Tensor] | None) -> list[Tensor]:
    if given is None:
        return soft_hyperparameters(model)
    if isinstance(given, str):
        if given == "likelihoods":
            return likelihood_hyperparameters(model)
        raise ValueError(f"hyperparameters: {given!r}; use None (every soft layer's hyperparameters), "
                         "'likelihoods' (the probabilistic layers' likelihood coefficients) or a list of "
                         "tensors or parameter names")
    if not isinstance(given, Iterable):
        raise TypeError(f"hyperparameters: expected None, 'likelihoods' or a list of tensors or parameter "
                        f"names, got {type(given).__name__} ({given!r})")
    named = dict(model.named_parameters())
    out = []
    for h in given:
        if isinstance(h, str):
            if h not in named:
                raise KeyError(f"hyperparameters: no parameter named {h!r} in the model")
            h = named[h]
        out.append(h)
    return out


def _select(model: nn.Module, hyperparameters: list[Tensor], exclude: str | None | Iterable[Any]
            ) -> tuple[list[LaplaceParameter], dict[nn.Module, str]]:
    """The Laplace parameters of ``model`` and the supported layers holding them (module docstring)."""
    modules = dict(model.named_modules())
    excluded_types: tuple[type, ...] = ()
    excluded_paths: list[str] = []
    excluded_modules: list[nn.Module] = []
    if exclude == "default":
        excluded_types = DEFAULT_EXCLUDED
    elif isinstance(exclude, str):
        raise ValueError(f"exclude: {exclude!r}; use 'default', None or an iterable of types, modules, "
                         "module paths or parameter names")
    elif exclude is not None:
        for e in exclude:
            if isinstance(e, type):
                excluded_types += (e,)
            elif isinstance(e, nn.Module):
                excluded_modules.append(e)
            else:
                excluded_paths.append(str(e))
    hyper = {id(h) for h in hyperparameters}
    supported = tuple(_SUPPORTED)
    params: list[LaplaceParameter] = []
    targets: dict[nn.Module, str] = {}
    unsupported: dict[str, str] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in hyper or p.numel() == 0 or name in excluded_paths:
            continue
        path = name.rsplit(".", 1)[0] if "." in name else ""
        ancestors = [".".join(path.split(".")[:k]) for k in range(len(path.split(".")), 0, -1)] if path else []
        ancestors.append("")
        if any(isinstance(modules[a], excluded_types) or modules[a] in excluded_modules
               or any(a == e or a.startswith(e + ".") for e in excluded_paths) for a in ancestors):
            continue
        layer = next((a for a in ancestors if isinstance(modules[a], supported)), None)
        if layer is None:
            unsupported[path or "<root>"] = type(modules[path]).__name__
            continue
        targets[modules[layer]] = layer
        params.append(LaplaceParameter(name, p, layer, type(modules[layer]).__name__))
    if unsupported:
        listing = "; ".join(f"'{k}' ({v})" for k, v in unsupported.items())
        raise TypeError(f"model: unsupported layer types with trained parameters: {listing}. Supported: "
                        f"{', '.join(supported_module_types())}. Pass exclude=[...] to keep them as point "
                        "estimates, hyperparameters=[...] if they are hyperparameters, or "
                        "escnn_soft.laplace.register_module_type(cls) if the layer expands a filter "
                        "and calls a linear/conv op")
    if not params:
        raise ValueError(f"model: the {type(model).__name__} has no trained parameters in supported layers "
                         f"({', '.join(supported_module_types())}); check exclude=... and hyperparameters=...")
    return params, targets
