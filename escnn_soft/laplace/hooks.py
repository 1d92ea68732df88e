"""Recording the expanded conv/linear operations of a model during a forward pass.

A layer supported by :mod:`escnn_soft.laplace` may build its filter any way it likes,
:math:`W = f(\\theta, \\eta)` (a plain parameter in ``torch.nn.Conv2d``, a basis expansion
:math:`W = \\sum_b w_b B_b` in escnn's ``R2Conv``, a basis expansion plus extra pathways in a soft
layer), as long as it then calls ``torch.nn.functional.linear`` or ``conv{1,2,3}d`` with it. The
:class:`OpRecorder` intercepts those calls with a :class:`torch.overrides.TorchFunctionMode` while a
target module's forward runs, and keeps for each call

* the op input :math:`x` (for the input-patch covariance :math:`A`),
* the expanded filter :math:`W` and bias :math:`b` with their autograd graph (to pull the curvature
  back to the trained tensors through :math:`J = \\partial\\,\\mathrm{vec}(W) / \\partial \\theta`),
* a zero tensor added to the op output: gradients with respect to it are the output gradients
  (for the output-gradient covariance :math:`G`), also when a later op works in place.

It also records the inputs of every escnn ``BlocksBasisExpansion`` called inside a target, which tells
which trained tensors are basis-expansion coefficients and in which block layout.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from typing_extensions import Self

from escnn_soft._escnn import BlocksBasisExpansion

__all__ = ["OpCall", "OpRecorder", "output_gram", "unfold_patches"]

_CONV_DIMS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_LINEAR_ARGS = ("input", "weight", "bias")


def _tuple(v: Any, d: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * d
    v = tuple(int(i) for i in v)
    return v * d if len(v) == 1 else v


@dataclass
class OpCall:
    """One expanded ``linear``/``conv`` call made inside a target module's forward.

    ``d`` is 0 for ``linear`` and the spatial dimension for ``conv{d}d``. ``padding`` holds
    (left, right) zero padding per spatial dimension.
    """

    module: str
    index: int
    d: int
    x: Tensor
    weight: Tensor
    bias: Tensor | None
    output: Tensor
    probe: Tensor
    stride: tuple[int, ...] = ()
    padding: tuple[tuple[int, int], ...] = ()
    dilation: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, int]:
        """``(module path, call index within one forward of that module)``."""
        return self.module, self.index

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])


@dataclass
class _Frame:
    name: str
    calls: int = 0


class _Interceptor(TorchFunctionMode):
    """Routes ``linear``/``conv`` calls to :meth:`OpRecorder._record`; active only inside a target."""

    def __init__(self, recorder: OpRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear or func in _CONV_DIMS:
            return self.recorder._record(func, args, kwargs)
        return func(*args, **kwargs)


class OpRecorder:
    """Context manager recording :class:`OpCall` s of the ``targets`` (module -> path).

    Forward hooks on the targets keep a stack of the layers being run; while it is not empty a
    :class:`torch.overrides.TorchFunctionMode` intercepts the ``linear``/``conv`` calls, so the rest of
    the network runs untouched.
    """

    def __init__(self, targets: dict[nn.Module, str]) -> None:
        self.targets = targets
        self.calls: list[OpCall] = []
        self.expansions: list[tuple[str, BlocksBasisExpansion, Tensor]] = []
        self._stack: list[_Frame] = []
        self._handles: list[Any] = []
        self._mode = _Interceptor(self)

    def __enter__(self) -> Self:
        for module, name in self.targets.items():
            self._handles.append(module.register_forward_pre_hook(self._push(name)))
            self._handles.append(module.register_forward_hook(self._pop))
            for sub in module.modules():
                if isinstance(sub, BlocksBasisExpansion):
                    self._handles.append(sub.register_forward_hook(self._expansion))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._stack:  # a forward raised inside a target
            self._stack.clear()
            self._mode.__exit__(None, None, None)

    def _push(self, name: str):
        def hook(module: nn.Module, inputs: Any) -> None:
            if not self._stack:
                self._mode.__enter__()
            self._stack.append(_Frame(name))
        return hook

    def _pop(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._stack.pop()
        if not self._stack:
            self._mode.__exit__(None, None, None)

    def _expansion(self, module: BlocksBasisExpansion, inputs: Any, output: Any) -> None:
        if self._stack:
            self.expansions.append((self._stack[-1].name, module, inputs[0]))

    def _record(self, func, args: tuple, kwargs: dict[str, Any]) -> Tensor:
        names = _LINEAR_ARGS if func is F.linear else _CONV_ARGS
        bound = dict(zip(names, args))
        bound.update(kwargs)
        weight = bound["weight"]
        out = func(*args, **kwargs)
        if not weight.requires_grad:
            return out
        frame = self._stack[-1]
        # a leaf view of a single zero: differentiating w.r.t. it gives dL/d(out)
        probe = out.new_zeros(()).expand(out.shape).detach().requires_grad_(True)
        out = out + probe
        d = _CONV_DIMS.get(func, 0)
        call = OpCall(frame.name, frame.calls, d, bound["input"], weight, bound.get("bias"), out, probe)
        frame.calls += 1
        if d:
            if int(bound.get("groups", 1)) != 1:
                raise NotImplementedError(
                    f"layer '{frame.name}': grouped convolutions (groups={bound['groups']}) are not "
                    "supported by escnn_soft.laplace")
            kernel = tuple(weight.shape[2:])
            call.stride = _tuple(bound.get("stride", 1), d)
            call.dilation = _tuple(bound.get("dilation", 1), d)
            call.padding = _padding(bound.get("padding", 0), kernel, call.dilation)
        self.calls.append(call)
        return out


def _padding(padding: Any, kernel: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """(left, right) zero padding per dimension, as ``torch.nn.functional.conv*d`` applies it."""
    if isinstance(padding, str):
        if padding == "valid":
            return tuple((0, 0) for _ in kernel)
        total = [dl * (k - 1) for k, dl in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in total)
    return tuple((p, p) for p in _tuple(padding, len(kernel)))


def unfold_patches(call: OpCall, x: Tensor) -> Tensor:
    r"""Input patches of ``call`` as columns ``(batch, c_in * prod(kernel), positions)``.

    Column ``p`` is ordered like the rows of ``weight.reshape(c_out, -1).T``, so that the op is
    :math:`y_{n,p} = W\, x_{n,p} + b` at every position :math:`p` (``x`` may hold a subset of the input
    channels, in which case the patches are those of the subset). For ``linear`` every dimension
    between the batch and the features counts as a position.
    """
    if call.d == 0:
        return x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2)
    if call.d == 2:  # im2col
        (top, bottom), (left, right) = call.padding
        if top != bottom or left != right:
            x = F.pad(x, [left, right, top, bottom])
            top = left = 0
        return F.unfold(x, call.kernel, dilation=call.dilation, padding=(top, left), stride=call.stride)
    pads: list[int] = []
    for left, right in reversed(call.padding):
        pads += [left, right]
    if any(pads):
        x = F.pad(x, pads)
    for i, (k, s, dl) in enumerate(zip(call.kernel, call.stride, call.dilation)):
        x = x.unfold(2 + i, dl * (k - 1) + 1, s)
        if dl > 1:
            x = x[..., ::dl]
    d = call.d
    n, c = x.shape[:2]
    perm = (0, 1) + tuple(range(2 + d, 2 + 2 * d)) + tuple(range(2, 2 + d))
    return x.permute(perm).reshape(n, c * int(torch.tensor(call.kernel).prod()), -1)


def output_gram(call: OpCall, g: Tensor) -> Tensor:
    """:math:`\\sum_{n,p} g_{n,p} g_{n,p}^\\top` (``c_out x c_out``) of output gradients ``(batch, c_out, *spatial)``
    (or ``(batch, *, c_out)`` for ``linear``), summed over samples and positions."""
    c_out = call.weight.shape[0]
    if call.d == 0:
        rows = g.reshape(-1, c_out)
        return rows.T @ rows
    per_sample = g.reshape(g.shape[0], c_out, -1)  # no copy: the channels stay the rows
    return torch.bmm(per_sample, per_sample.transpose(1, 2)).sum(0)
