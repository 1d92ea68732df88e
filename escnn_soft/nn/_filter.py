"""What every soft layer does with its expanded filter: cache it in evaluation mode, export it to plain torch.

* :class:`FilterCache` — the one evaluation-mode cache of the soft layers (the probabilistic layers' filter
  :math:`k_\\lambda`, the relaxed family's filter and bias, the non-stationary relaxed layers' position gains).
* :func:`plain_conv` / :func:`plain_linear` — the one export path: a ``torch.nn.Conv1d/2d/3d`` or
  ``torch.nn.Linear`` holding a given filter (or matrix) and bias, on their device and dtype, in eval mode.
* :func:`convolve` / :func:`conv_output_shape` — the one way the soft convolutions apply their filter and
  predict their output shape (``evaluate_output_shape``), as ``torch.nn.Conv{d}d`` does.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

import torch

__all__ = ["FilterCache", "conv_output_shape", "convolve", "plain_conv", "plain_linear"]

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


def _per_dimension(padding: int | tuple[int, ...], d: int) -> tuple[int, ...]:
    return tuple(padding) if isinstance(padding, (tuple, list)) else (int(padding),) * d


def convolve(x: torch.Tensor, filt: torch.Tensor, bias: torch.Tensor | None, *, stride: int = 1,
             padding: int | tuple[int, ...] = 0, dilation: int = 1, groups: int = 1,
             padding_mode: str = "zeros") -> torch.Tensor:
    """:math:`y = K \\star x + b` with ``torch.nn.functional.conv{d}d`` (``d = filt.dim() - 2``); padding modes other
    than ``"zeros"`` pad explicitly first, as ``torch.nn.Conv{d}d`` does."""
    d = filt.dim() - 2
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[d]
    pads = _per_dimension(padding, d)
    if padding_mode == "zeros":
        return conv(x, filt, bias, stride, pads, dilation, groups)
    both_sides = tuple(q for p in reversed(pads) for q in (p, p))
    return conv(torch.nn.functional.pad(x, both_sides, padding_mode), filt, bias, stride, 0, dilation, groups)


def conv_output_shape(input_shape: tuple[int, ...], in_channels: int, out_channels: int, kernel_size: int, *,
                      stride: int = 1, padding: int | tuple[int, ...] = 0, dilation: int = 1, d: int = 2
                      ) -> tuple[int, ...]:
    """The output shape of :func:`convolve` on ``input_shape`` ``(batch, in_channels, *d sizes)``:
    :math:`\\lfloor (n + 2p - \\delta (k - 1) - 1) / s \\rfloor + 1` per dimension.

    Raises:
        ValueError: ``input_shape`` is not ``(batch, in_channels, ...)`` with ``d`` spatial sizes.
    """
    if len(input_shape) != 2 + d or input_shape[1] != in_channels:
        dims = ", ".join("DHW"[3 - d:])
        raise ValueError(f"input_shape: expected (batch, {in_channels}, {dims}), got {tuple(input_shape)}")
    extent = dilation * (kernel_size - 1) + 1
    size = [(n + 2 * p - extent) // stride + 1 for n, p in zip(input_shape[2:], _per_dimension(padding, d))]
    return (input_shape[0], out_channels, *size)

