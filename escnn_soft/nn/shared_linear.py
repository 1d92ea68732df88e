"""Learned parameter sharing (Yeh et al., AISTATS 2022): a linear layer whose weights are ``θ = A ψ``.

:class:`SharedLinear` holds ``n_shared`` free values :math:`\\psi` and an assignment of each of the
:math:`d = \\text{out}\\times\\text{in}` weights to one of them,

.. math::
    \\theta = A\\,\\psi,\\qquad A_{i\\cdot} = \\operatorname{softmax}(\\Lambda_{i\\cdot}),

a row-stochastic :math:`d\\times n_{\\text{shared}}` matrix that :meth:`SharedLinear.harden` (or ``hard=True``)
replaces by the one-hot matrix of its row-wise argmax — a parameter-sharing scheme that
:func:`escnn_soft.metrics.partition_distance` compares with an oracle scheme.

Sharing is found by bilevel optimisation: the values :math:`\\psi` fit the training split (inner problem),
the assignment logits :math:`\\Lambda` the validation split (outer problem),

.. math::
    \\min_\\Lambda\\; L_{\\text{out}}(\\psi^*(\\Lambda), \\Lambda)\\quad\\text{s.t.}\\quad
    \\psi^*(\\Lambda) = \\arg\\min_\\psi L_{\\text{in}}(\\psi, \\Lambda).

:func:`implicit_hypergradient` differentiates through :math:`\\psi^*` with the implicit function theorem,

.. math::
    \\frac{dL_{\\text{out}}}{d\\Lambda} = \\partial_\\Lambda L_{\\text{out}}
    - \\partial^2_{\\Lambda\\psi} L_{\\text{in}}\\, v,\\qquad
    (\\partial^2_{\\psi\\psi} L_{\\text{in}} + \\lambda I)\\, v = \\partial_\\psi L_{\\text{out}},

solving for :math:`v` by conjugate gradients or a truncated Neumann series
:math:`v \\approx \\alpha\\sum_{j=0}^{J}(I-\\alpha H)^j\\,\\partial_\\psi L_{\\text{out}}`, with Hessian-vector
products from double back-propagation. :class:`BilevelTrainer` runs the loop (a few inner steps, then one
outer step), either with that hypergradient (``method="implicit"``) or, more simply, alternating plain
gradient steps that treat :math:`\\psi` as fixed in the outer step (``method="alternating"``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from escnn_soft.nn._filter import plain_linear
from escnn_soft.nn.base import SoftModule

__all__ = ["BilevelTrainer", "SharedLinear", "implicit_hypergradient"]


class SharedLinear(torch.nn.Module, SoftModule):
    """Linear layer ``y = x θᵀ + b`` with learned weight sharing ``θ = A ψ`` (``A`` row-stochastic).

    Args:
        in_features, out_features: sizes as in :class:`torch.nn.Linear`; ``d = in * out`` shared weights.
        n_shared: number ``k`` of free values, ``1 <= k <= d``.
        bias: add an (unshared) bias per output.
        hard: use the hardened one-hot assignment (argmax of each row) instead of the softmax.
        entropy_weight: weight of the mean row entropy of ``A`` in :meth:`penalty` (pushes rows to one-hot).
        usage_weight: weight of the entropy of the mean group usage ``(1/d) sum_i A_i`` in :meth:`penalty`
            (prefers schemes with fewer groups — parsimony — when the data do not tell them apart).
        init_scale: standard deviation of the initial assignment logits (near-uniform rows when small).

    Parameters: ``values`` (ψ, shape ``(k,)``), ``logits`` (Λ, shape ``(d, k)``), ``bias``. Use
    ``values`` (and ``bias``) as the inner parameters and ``logits`` as the outer ones of a bilevel problem.
    """

    def __init__(self, in_features: int, out_features: int, n_shared: int, bias: bool = True, hard: bool = False,
                 entropy_weight: float = 0.0, usage_weight: float = 0.0, init_scale: float = 0.01) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        d = in_features * out_features
        if isinstance(n_shared, bool) or not isinstance(n_shared, int) or not 1 <= n_shared <= d:
            raise ValueError(f"n_shared: expected an integer between 1 and the number of weights d = "
                             f"{in_features}*{out_features} = {d}, got {n_shared!r}; pick 1 <= n_shared <= {d} "
                             f"(n_shared = {d} allows no sharing at all)")
        for name, value in (("entropy_weight", entropy_weight), ("usage_weight", usage_weight),
                            ("init_scale", init_scale)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.n_shared = n_shared
        self.hard = hard
        self.entropy_weight = float(entropy_weight)
        self.usage_weight = float(usage_weight)
        self.logits = torch.nn.Parameter(init_scale * torch.randn(d, n_shared))
        self.values = torch.nn.Parameter(torch.randn(n_shared) / in_features ** 0.5)
        self.bias = torch.nn.Parameter(torch.zeros(out_features)) if bias else None

    def assignment(self, hard: bool | None = None) -> torch.Tensor:
        """``A`` of shape ``(d, k)``: softmax of the logits, or the one-hot argmax if hardened."""
        hard = self.hard if hard is None else hard
        if hard:
            return F.one_hot(self.logits.argmax(dim=1), self.n_shared).to(self.logits.dtype)
        return torch.softmax(self.logits, dim=1)

    def scheme(self) -> list[int]:
        """The hardened sharing scheme: the group of each of the ``d`` weights (row-major ``(out, in)``)."""
        return self.logits.argmax(dim=1).tolist()

    def weight(self) -> torch.Tensor:
        """``θ = A ψ`` as an ``(out_features, in_features)`` matrix."""
        return (self.assignment() @ self.values).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected a tensor of shape (..., {self.in_features}), got {tuple(x.shape)}; "
                             f"its last dimension must be in_features={self.in_features}")
        return F.linear(x, self.weight(), self.bias)

    def harden(self) -> SharedLinear:
        """Switch to the one-hot argmax assignment (in place; returns ``self``)."""
        self.hard = True
        return self

    def export(self) -> torch.nn.Linear:
        """A plain :class:`torch.nn.Linear` with the current weights."""
        with torch.no_grad():
            return plain_linear(self.weight(), self.bias)

    def penalty(self) -> torch.Tensor:
        """``entropy_weight * mean_i H(A_i) + usage_weight * H(mean_i A_i)`` (entropies in nats)."""
        A = torch.softmax(self.logits, dim=1)
        logA = torch.log_softmax(self.logits, dim=1)
        out = self.logits.new_zeros(())
        if self.entropy_weight > 0:
            out = out + self.entropy_weight * (-(A * logA).sum(dim=1).mean())
        if self.usage_weight > 0:
            usage = A.mean(dim=0)
            out = out + self.usage_weight * (-(usage * usage.clamp_min(1e-30).log()).sum())
        return out

    @torch.no_grad()
    def degree(self) -> dict[str, Any]:
        """Keys: ``n_shared``; ``groups_used`` (distinct groups of the hardened scheme); ``group_sizes``
        (weights per used group, largest first); ``mean_row_entropy`` of ``A`` (0 = already hard);
        ``scheme`` (the hardened labels, only when ``d <= 256``)."""
        labels = self.logits.argmax(dim=1)
        sizes = torch.bincount(labels, minlength=self.n_shared)
        A = torch.softmax(self.logits, dim=1)
        ent = float(-(A * torch.log_softmax(self.logits, dim=1)).sum(dim=1).mean())
        out: dict[str, Any] = {
            "n_shared": self.n_shared,
            "groups_used": int((sizes > 0).sum()),
            "group_sizes": sorted((int(s) for s in sizes if s > 0), reverse=True),
            "mean_row_entropy": round(ent, 6),
        }
        if labels.numel() <= 256:
            out["scheme"] = labels.tolist()
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, n_shared={self.n_shared}, "
                f"bias={self.bias is not None}, hard={self.hard}")


# ---------------------------------------------------------------------------------------------------------
# bilevel optimisation
# ---------------------------------------------------------------------------------------------------------

def _flat_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def implicit_hypergradient(inner_loss: torch.Tensor, outer_loss: torch.Tensor,
                           inner_params: Sequence[torch.Tensor], outer_params: Sequence[torch.Tensor],
                           solver: str = "cg", iters: int = 20, damping: float = 1e-3,
                           neumann_alpha: float = 0.1) -> list[torch.Tensor]:
    """Gradient of ``outer_loss`` w.r.t. ``outer_params`` through the inner optimum (implicit function theorem).

    .. math::
        g = \\partial_\\Lambda L_{out} - \\partial^2_{\\Lambda\\psi} L_{in}\\,(H + \\lambda I)^{-1}\\partial_\\psi L_{out},
        \\qquad H = \\partial^2_{\\psi\\psi} L_{in}.

    Args:
        inner_loss: scalar :math:`L_{in}` evaluated at the (approximate) inner optimum, with its graph.
        outer_loss: scalar :math:`L_{out}` at the same point, with its graph.
        inner_params: :math:`\\psi` (the parameters the inner problem optimises).
        outer_params: :math:`\\Lambda` (the hyper-parameters, e.g. ``SharedLinear.logits``).
        solver: ``"cg"`` (conjugate gradients on the damped Hessian) or ``"neumann"`` (truncated series
            :math:`\\alpha\\sum_{j\\le J}(I-\\alpha H)^j`, which needs :math:`\\alpha < 2/\\lambda_{max}(H)`).
        iters: CG iterations or Neumann terms ``J``.
        damping: :math:`\\lambda`, added to :math:`H` for CG (keeps it positive definite).
        neumann_alpha: :math:`\\alpha` of the Neumann series.

    Returns:
        one gradient tensor per outer parameter (zeros where it has none).
    """
    if solver not in ("cg", "neumann"):
        raise ValueError(f"solver: expected 'cg' or 'neumann', got {solver!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters: expected an integer >= 1, got {iters!r}")
    inner_params, outer_params = list(inner_params), list(outer_params)
    g_in = torch.autograd.grad(inner_loss, inner_params, create_graph=True, allow_unused=True)
    g_in = [g if g is not None else torch.zeros_like(p) for g, p in zip(g_in, inner_params)]
    g_out_in = torch.autograd.grad(outer_loss, inner_params, retain_graph=True, allow_unused=True)
    g_out_in = [g if g is not None else torch.zeros_like(p) for g, p in zip(g_out_in, inner_params)]
    direct = torch.autograd.grad(outer_loss, outer_params, allow_unused=True)

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        hv = torch.autograd.grad(g_in, inner_params, grad_outputs=v, retain_graph=True, allow_unused=True)
        return [h.detach() if h is not None else torch.zeros_like(x) for h, x in zip(hv, v)]

    b = [g.detach() for g in g_out_in]
    if solver == "cg":
        v = [torch.zeros_like(x) for x in b]
        r = [x.clone() for x in b]
        p = [x.clone() for x in b]
        rr = _flat_dot(r, r)
        for _ in range(iters):
            if float(rr) <= 1e-20:
                break
            Ap = [h + damping * q for h, q in zip(hvp(p), p)]
            step = rr / _flat_dot(p, Ap).clamp_min(1e-30)
            v = [x + step * q for x, q in zip(v, p)]
            r = [x - step * a for x, a in zip(r, Ap)]
            rr_new = _flat_dot(r, r)
            p = [x + (rr_new / rr) * q for x, q in zip(r, p)]
            rr = rr_new
    else:
        term = [neumann_alpha * x for x in b]
        v = [t.clone() for t in term]
        for _ in range(iters):
            term = [t - neumann_alpha * h for t, h in zip(term, hvp(term))]
            v = [x + t for x, t in zip(v, term)]
    mixed = torch.autograd.grad(g_in, outer_params, grad_outputs=v, allow_unused=True)
    out = []
    for d, m, p in zip(direct, mixed, outer_params):
        g = torch.zeros_like(p) if d is None else d.detach()
        out.append(g if m is None else g - m.detach())
    return out


class BilevelTrainer:
    """Alternating inner/outer optimisation of a bilevel problem (learned parameter sharing).

    Each :meth:`step` takes ``inner_steps`` optimiser steps on ``inner_loss_fn()`` w.r.t. ``inner_params``,
    then one step on the outer parameters with

    * ``method="implicit"``: the implicit-function hypergradient (:func:`implicit_hypergradient`, solver
      ``"cg"`` or ``"neumann"``) of ``outer_loss_fn()``;
    * ``method="alternating"``: the plain gradient of ``outer_loss_fn()`` with the inner parameters held
      fixed (cheaper; ignores how :math:`\\psi^*` moves with the assignment).

    ``outer_loss_fn`` should include the regulariser on the assignment (e.g. ``layer.penalty()``).

    Args:
        inner_params, outer_params: disjoint parameter lists (e.g. ``[layer.values]`` and ``[layer.logits]``).
        inner_lr, outer_lr: Adam learning rates (ignored if optimisers are passed).
        inner_steps: inner steps per outer step (warm-started from the previous inner solution).
        method: ``"implicit"`` or ``"alternating"``.
        solver, solver_iters, damping, neumann_alpha: passed to :func:`implicit_hypergradient`.
    """

    def __init__(self, inner_params: Sequence[torch.nn.Parameter], outer_params: Sequence[torch.nn.Parameter],
                 inner_lr: float = 0.05, outer_lr: float = 0.1, inner_steps: int = 20, method: str = "implicit",
                 solver: str = "cg", solver_iters: int = 20, damping: float = 1e-3, neumann_alpha: float = 0.1,
                 inner_optimizer: torch.optim.Optimizer | None = None,
                 outer_optimizer: torch.optim.Optimizer | None = None) -> None:
        if method not in ("implicit", "alternating"):
            raise ValueError(f"method: expected 'implicit' or 'alternating', got {method!r}")
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
            raise ValueError(f"inner_steps: expected an integer >= 1, got {inner_steps!r}")
        self.inner_params = list(inner_params)
        self.outer_params = list(outer_params)
        if not self.inner_params or not self.outer_params:
            raise ValueError("inner_params, outer_params: both need at least one parameter")
        if {id(p) for p in self.inner_params} & {id(p) for p in self.outer_params}:
            raise ValueError("inner_params, outer_params: a parameter appears in both; the two levels must be disjoint")
        self.inner_steps = inner_steps
        self.method = method
        self.solver = solver
        self.solver_iters = solver_iters
        self.damping = damping
        self.neumann_alpha = neumann_alpha
        self.inner_optimizer = inner_optimizer or torch.optim.Adam(self.inner_params, lr=inner_lr)
        self.outer_optimizer = outer_optimizer or torch.optim.Adam(self.outer_params, lr=outer_lr)

    def step(self, inner_loss_fn: Callable[[], torch.Tensor], outer_loss_fn: Callable[[], torch.Tensor]
             ) -> dict[str, float]:
        """One outer iteration; returns the last inner loss and the outer loss (floats)."""
        for _ in range(self.inner_steps):
            self.inner_optimizer.zero_grad()
            inner = inner_loss_fn()
            inner.backward(inputs=self.inner_params)
            self.inner_optimizer.step()
        self.outer_optimizer.zero_grad()
        if self.method == "implicit":
            inner = inner_loss_fn()
            outer = outer_loss_fn()
            grads = implicit_hypergradient(inner, outer, self.inner_params, self.outer_params, self.solver,
                                           self.solver_iters, self.damping, self.neumann_alpha)
            for p, g in zip(self.outer_params, grads):
                p.grad = g
        else:
            inner = inner_loss_fn().detach()
            outer = outer_loss_fn()
            outer.backward(inputs=self.outer_params)
        self.outer_optimizer.step()
        return {"inner_loss": float(inner.detach()), "outer_loss": float(outer.detach())}
