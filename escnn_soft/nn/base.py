"""The contract every soft layer of escnn_soft follows.

A soft layer is an :class:`escnn.nn.EquivariantModule` (it takes and returns
:class:`escnn.nn.GeometricTensor`, implements ``evaluate_output_shape`` and ``export()``) that also
inherits :class:`SoftModule`, which adds:

* ``degree()`` — a small, JSON-serialisable dict saying what the layer learned about its own
  equivariance (the meaning of the keys is per method and documented by each layer);
* ``penalty()`` — the layer's own regulariser, already multiplied by the layer's weights, as a
  scalar tensor. :func:`escnn_soft.regularization_loss` sums these over a model;
* ``hyperparameter_parameters()`` — the layer's own hyperparameter tensors, an ordered ``{name: tensor}``
  dict (empty by default), that the Laplace evidence tunes (:class:`escnn_soft.laplace.LaplaceEvidence`
  with ``hyperparameters=None`` collects them over a model in module order, keeping the trainable ones);
  relaxed layers: their log-scale amplitude, lengthscale, variances or smoothness; probabilistic layers:
  their likelihood's coefficients; doubly-stochastic layers: the Sinkhorn ``logits``;
* ``idle_parameters()`` — the trained tensors the layer's output does not depend on at the current
  hyperparameters (empty by default): a probabilistic layer's pathway weights while λ has no component on
  the pathway's irrep (the uniform λ of the strict layer). :func:`escnn_soft.laplace.marglik_training` holds
  them where they are until the evidence opens λ, since their only gradient is the prior's;
* ``plot()`` — a matplotlib figure of what the layer learned, or ``None`` (the default) when the layer has
  nothing to plot; ``plot_kind`` names the figure (the command line writes it to
  ``<name>_<plot_kind>_<layer>.png``). Probabilistic layers plot their likelihood λ (``"likelihood"``),
  doubly-stochastic layers their learned matrices (``"matrices"``).

Code that works over every soft layer (the command line, the Laplace evidence) uses only this contract,
never the layer classes.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch

__all__ = ["SoftModule", "iter_modules"]


def iter_modules(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model.modules()`` in the same order, deduplicated by identity.

    ``Module.modules()`` puts every module in a set, and escnn's basis modules hash by copying tensors
    to NumPy: too slow for code that runs on every forward or training step.
    """
    seen = set()
    stack = [model]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        yield m
        stack.extend(reversed([c for c in m._modules.values() if c is not None]))


def first_parameter(model: torch.nn.Module) -> torch.Tensor | None:
    """The first parameter of ``model`` (for its dtype and device), found without hashing modules."""
    return next((p for m in iter_modules(model) for p in m._parameters.values() if p is not None), None)


class SoftModule:
    """Mixin marking a module as a soft (learnably equivariant) layer."""

    def degree(self) -> dict[str, Any]:
        """What this layer learned about its equivariance, as a small dict."""
        raise NotImplementedError(f"{type(self).__name__} must implement degree()")

    def penalty(self) -> torch.Tensor:
        """The layer's own weighted regulariser (a scalar tensor); zero by default."""
        ref = first_parameter(self)  # type: ignore[arg-type]
        return ref.new_zeros(()) if ref is not None else torch.zeros(())

    #: the name of what :meth:`plot` shows, used in file names (``<name>_<plot_kind>_<layer>.png``)
    plot_kind: ClassVar[str] = "plot"

    def hyperparameter_parameters(self) -> dict[str, torch.Tensor]:
        """The layer's own hyperparameter tensors that the Laplace evidence tunes, ``{name: tensor}`` in a
        fixed order; empty by default (a layer without hyperparameters)."""
        return {}

    def idle_parameters(self) -> list[torch.Tensor]:
        """The trained tensors the layer's output does not depend on at the current hyperparameter values, whose
        gradient is therefore exactly zero but for a prior's; empty by default."""
        return []

    def plot(self) -> Any:
        """A matplotlib figure of what the layer learned, or ``None`` (the default): nothing to plot."""
        return None

    def coefficient_blocks(self, param: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] | None:
        """The block layout of one of the layer's trained tensors in its filter, for the Laplace curvature:
        ``[(start, out channels (n_o, d_o), in channels (n_i, d_i), basis (K, d_o, d_i S))]``, the coefficients
        ``param[start:start + n_o n_i K]`` in (out field, in field, basis) order; ``None`` (the default) lets the
        curvature find the layout itself (escnn's expansions, or probing)."""
        return None
