"""``regularization_loss``: the sum of every soft layer's regularisers in a model."""
from __future__ import annotations

import torch

from escnn_soft.likelihood import GroupLikelihood
from escnn_soft.nn.base import SoftModule, first_parameter, iter_modules

__all__ = ["likelihoods", "regularization_loss"]


def likelihoods(model: torch.nn.Module) -> list[GroupLikelihood]:
    """The distinct :class:`GroupLikelihood` objects of ``model``, in module order (shared ones once)."""
    return [m for m in iter_modules(model) if isinstance(m, GroupLikelihood)]


def regularization_loss(model: torch.nn.Module, align_weight: float = 5.0, kl_weight: float = 3.0,
                        generator: torch.Generator | None = None, kl_reduction: str = "mean") -> torch.Tensor:
    """Regulariser of all soft layers of ``model``, to add to the task loss.

    .. math::
        R = \\alpha_{align} \\sum_{l=1}^n D_{align}(\\lambda_l) + \\frac{\\alpha_{KL}}{n} \\sum_{l=1}^n
        KL(\\lambda_l \\,\\|\\, \\mathrm{sg}[\\lambda_{l-1}]) + \\sum_m \\mathrm{penalty}_m

    over the ``n`` distinct likelihoods :math:`\\lambda_l` in module order (the first, and any whose
    predecessor lives on another group, against the uniform density; ``sg`` = detached) plus the
    ``penalty()`` of every other soft layer (relaxed, RPP, R-steer, doubly-stochastic, ...).
    Defaults are the paper's DoubleMNIST weights, :math:`\\alpha_{align} = 5`, :math:`\\alpha_{KL} = 3`, and the
    reference implementation's averaging of the KL terms over the likelihoods (``kl_reduction="mean"``; its
    alignment terms are summed). ``kl_reduction="sum"`` drops the :math:`1/n` (this package's behaviour before
    it was compared with the reference: an ``n`` times stronger KL, 6x on the thesis network).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    for name, w in (("align_weight", align_weight), ("kl_weight", kl_weight)):
        if not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"{name}={w!r} is invalid: use a float >= 0 (0 switches the term off)")
    if kl_reduction not in ("mean", "sum"):
        raise ValueError(f"kl_reduction={kl_reduction!r} is invalid: use 'mean' (the reference implementation's "
                         f"average over the likelihoods) or 'sum'")
    liks = likelihoods(model)
    kl_scale = kl_weight / len(liks) if kl_reduction == "mean" and liks else kl_weight
    ref = first_parameter(model)
    total = ref.new_zeros(()) if ref is not None else torch.zeros(())
    previous: GroupLikelihood | None = None
    for lik in liks:
        if align_weight:
            total = total + align_weight * lik.alignment_loss(generator).to(total)
        if kl_weight:
            reference = previous if previous is not None and previous.group == lik.group else None
            total = total + kl_scale * lik.kl(reference).to(total)
        previous = lik
    for m in iter_modules(model):
        if isinstance(m, SoftModule):
            total = total + m.penalty().to(total)
    return total
