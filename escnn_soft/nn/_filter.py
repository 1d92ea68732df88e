"""What every soft layer does with its expanded filter: cache it in evaluation mode, export it to plain torch.

* :class:`FilterCache` — the one evaluation-mode cache of the soft layers (the probabilistic layers' filter
  :math:`k_\\lambda`, the relaxed family's filter and bias, the non-stationary relaxed layers' position gains).
* :func:`plain_conv` / :func:`plain_linear` — the one export path: a ``torch.nn.Conv1d/2d/3d`` or
  ``torch.nn.Linear`` holding a given filter (or matrix) and bias, on their device and dtype, in eval mode.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

import torch

__all__ = ["FilterCache", "plain_conv", "plain_linear"]

T = TypeVar("T")
M = TypeVar("M", bound=torch.nn.Module)


class FilterCache(Generic[T]):
    """The value of ``expand()`` kept while a layer is in evaluation mode and none of its parameters changed.

    :meth:`get` recomputes in training mode, and whenever autograd needs the graph (gradients enabled and a
    parameter requires grad); otherwise the value is reused while the key — every parameter's storage, version
    counter (bumped by optimiser steps, ``load_state_dict``, in-place edits), dtype and device, plus an optional
    ``extra`` key such as an output shape — is unchanged, so it is never stale. The owner calls :meth:`clear`
    when entering training mode and in ``_apply`` (``.to()``, ``.double()``), so no copy on the old device lingers.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: T | None = None

    def clear(self) -> None:
        self._key, self._value = None, None

    def tensors(self) -> list[torch.Tensor]:
        """The cached tensors (none when empty)."""
        value = self._value
        items = value if isinstance(value, (tuple, list)) else [value]
        return [t for t in items if isinstance(t, torch.Tensor)]

    def get(self, training: bool, parameters: Iterable[torch.Tensor], expand: Callable[[], T],
            extra: Hashable = None) -> T:
        params = [p for p in parameters if p is not None]
        if training or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return expand()
        key = (extra, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params))
        if self._value is None or key != self._key:
            with torch.no_grad():
                self._value = expand()
            self._key = key
        return self._value


def plain_conv(filt: torch.Tensor, bias: torch.Tensor | None, *, stride: int = 1,
               padding: int | tuple[int, ...] = 0, dilation: int = 1, groups: int = 1,
               padding_mode: str = "zeros") -> torch.nn.Module:
    """A plain ``torch.nn.Conv{d}d`` (``d = filt.dim() - 2``) holding ``filt`` (``(C_out, C_in/groups, k, ...)``)
    and ``bias``, on their device and dtype, in eval mode."""
    d = filt.dim() - 2
    cls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[d]
    return _holding(cls(filt.shape[1] * groups, filt.shape[0], tuple(filt.shape[2:]), stride=stride, padding=padding,
                        dilation=dilation, groups=groups, bias=bias is not None, padding_mode=padding_mode), filt, bias)


def plain_linear(matrix: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    """A plain ``torch.nn.Linear`` holding ``matrix`` (``(out, in)``) and ``bias``, on their device and dtype."""
    return _holding(torch.nn.Linear(matrix.shape[1], matrix.shape[0], bias=bias is not None), matrix, bias)


def _holding(module: M, weight: torch.Tensor, bias: torch.Tensor | None) -> M:
    """``module`` on ``weight``'s device and dtype, holding ``weight`` and ``bias``, in eval mode."""
    module = module.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)
    return module.eval()
