"""Curvature structures of the Laplace evidence: how the GGN is stored and what its log-determinant is.

Each structure accumulates the GGN :math:`H` of the summed loss over batches (:meth:`CurvatureStructure.add_batch`),
and then gives the log-determinants the evidence needs,

.. math::
    \\log\\det(hH + P_0) \\quad\\text{and, per prior group } g,\\quad \\log\\det(hH_{gg} + \\delta_g I),

as laplace-torch's ``KronLaplace`` / ``FullLaplace`` do:

* :class:`KronCurvature` (``hessian="kron"``) — Kronecker-factored GGN per trained tensor, with escnn's basis
  coefficients in a Kronecker structure over out fields × in fields × basis (:mod:`escnn_soft.laplace.curvature`);
  the log-determinant is exact for that structure, from Kronecker factors of eigenvalues.
* :class:`KFACCurvature` (``hessian="kfac"``) — the same per-op :math:`G \\otimes A`, pulled back densely
  :math:`J^\\top (G\\otimes A) J` (tiny layers: isolates the error of the field Kronecker structure).
* :class:`FullCurvature` (``hessian="full"``) — the exact dense GGN (:func:`~escnn_soft.laplace.exact.dense_ggn`),
  tiny models; :math:`\\log\\det` by Cholesky.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from escnn_soft.distributed import sum_over_ranks
from escnn_soft.laplace.curvature import SlotStats, Term, _connected, plan_terms
from escnn_soft.laplace.exact import dense_ggn
from escnn_soft.laplace.hooks import OpCall, OpRecorder
from escnn_soft.laplace.parameters import ParameterRegistry

__all__ = ["CURVATURES", "Batch", "CurvatureStructure", "FullCurvature", "KFACCurvature", "KronCurvature"]


@dataclass
class Batch:
    """One recorded batch: what a structure needs to add its curvature."""

    #: the network (in curvature mode)
    model: nn.Module
    #: the inputs
    x: Any
    #: the targets
    y: Tensor
    #: the ``(batch, outputs)`` model output, recorded by ``recorder``
    f: Tensor
    #: the linear/conv calls and basis expansions of the forward pass that gave ``f``
    recorder: OpRecorder
    #: ``(f, y) -> (batch, outputs, R)``: the loss-Hessian square root
    columns: Callable[[Tensor, Tensor], Tensor]
    #: maps a model output (tensor or ``GeometricTensor``) to the tensor :math:`f`
    output: Callable[[Any], Tensor]


class CurvatureStructure:
    """Base class (module docstring): accumulate, sum over ranks, finish, give log-determinants."""

    #: the name :class:`~escnn_soft.laplace.LaplaceEvidence` takes as ``hessian=``
    name: str = ""

    def __init__(self, registry: ParameterRegistry, modules: dict[str, nn.Module]) -> None:
        self.registry, self.modules = registry, modules
        self.reset()

    def reset(self) -> None:
        """Forget the accumulated curvature (a new fit)."""
        raise NotImplementedError

    def add_batch(self, batch: Batch, differentiable: bool, plan_graph: bool = False) -> None:
        """Add the GGN of one batch (with autograd graph when ``differentiable``). ``plan_graph``: keep the graph
        of what the structure derives once per fit from the hyperparameters (the planned bases), even when the
        statistics are added without it."""
        raise NotImplementedError

    def statistics(self) -> dict[Any, Tensor]:
        """Every accumulated statistic, by place. Each is a sum over samples, so the evidence depends on the data
        only through these and the summed loss (:meth:`LaplaceEvidence.evidence_gradient`)."""
        raise NotImplementedError

    def set_statistics(self, values: dict[Any, Tensor]) -> None:
        """Replace the statistics at the places of :meth:`statistics`."""
        raise NotImplementedError

    def clear_statistics(self) -> None:
        """Forget the accumulated statistics but keep the plan: the next batches are added to zero."""
        raise NotImplementedError

    def detach(self) -> None:
        """Drop the autograd graph of the finished curvature."""
        raise NotImplementedError

    def sum_over_ranks(self, differentiable: bool) -> None:
        """Replace every accumulated statistic by its sum over the ranks of the process group."""
        stats = self.statistics()
        self.set_statistics(dict(zip(stats, sum_over_ranks(list(stats.values()), differentiable))))

    def finish(self, scale: float) -> set[int]:
        """Scale the data term by ``scale`` (:math:`N/M`), check it is finite, and return the indices of the
        Laplace parameters it covers (the others reach no recorded op)."""
        raise NotImplementedError

    def group_log_dets(self, delta: Tensor, h: Tensor) -> Tensor:
        """:math:`\\log\\det(hH_{gg} + \\delta_g I)` for every prior group :math:`g`."""
        raise NotImplementedError

    def log_det(self, delta: Tensor, h: Tensor) -> Tensor:
        """:math:`\\log\\det(hH + P_0)`."""
        return self.group_log_dets(delta, h).sum()


class KronCurvature(CurvatureStructure):
    """Kronecker-factored GGN per trained tensor, its curvature terms (:mod:`escnn_soft.laplace.curvature`) planned
    from the first recorded batch.

    Attributes (after :meth:`finish`):
        terms: one :class:`~escnn_soft.laplace.curvature.Term` per covered Laplace parameter.
        spectra: ``(parameter index, blocks)``, each block a list of Kronecker factors of eigenvalues.
    """

    name = "kron"
    #: whether basis-expansion coefficients get their block Kronecker structure (``False``: dense pull-back)
    blocks = True

    def reset(self) -> None:
        self.terms: list[Term] | None = None
        self.stats: dict[Any, SlotStats] = {}
        self.spectra: list[tuple[int, list[list[Tensor]]]] = []

    def add_batch(self, batch: Batch, differentiable: bool, plan_graph: bool = False) -> None:
        """Input statistics from the recorded op inputs, output-gradient statistics from one backward pass per
        loss-Hessian column (a loop: faster than a batched backward on CPU).

        When the output is the output of the last op and its input :math:`u` has fewer entries per sample
        than there are columns (a linear head on few features), the columns are first carried through that
        op alone to :math:`u`, :math:`t_r = (\\partial f / \\partial u)^\\top s_r`, and replaced there by the
        rows of the triangular factor of :math:`T^\\top = QR` per sample (:math:`R^\\top R = T T^\\top`,
        one column per entry of :math:`u`): the same curvature from fewer backward passes through the network.
        """
        rec = batch.recorder
        if self.terms is None:
            self.terms, self.stats = plan_terms(rec.calls, rec.expansions, self.registry.params, self.modules,
                                                self.registry.hyperparameters, differentiable or plan_graph,
                                                blocks=self.blocks)
        stats = self.stats
        used = [c for c in rec.calls if c.key in stats]
        for call in used:
            stats[call.key].add_inputs(call, differentiable)
        f = batch.f
        cols = batch.columns(f, batch.y)
        if not differentiable:
            cols = cols.detach()
        last = used[-1] if used else None
        if differentiable or last is None or not _is_bottleneck(last, used[:-1], f, cols.shape[-1]):
            _backprop(f, cols, used, stats, differentiable)
            return
        u = last.x
        at_u = []
        for r in range(cols.shape[-1]):
            g, t = torch.autograd.grad(f, [last.probe, u], grad_outputs=cols[..., r], retain_graph=True)
            stats[last.key].add_grads(last, g)
            at_u.append(t.reshape(len(u), -1))
        r_factor = torch.linalg.qr(torch.stack(at_u, 1), mode="r")[1]  # (batch, k, k)
        _backprop(u, r_factor.transpose(1, 2).reshape(*u.shape, -1), used[:-1], stats, False)

    def statistics(self) -> dict[Any, Tensor]:
        """Places ``(op key, "G" | "A", None)`` and ``(op key, "A_g" | "A_f" | "A_z", input block)``."""
        out: dict[Any, Tensor] = {}
        for key, st in self.stats.items():
            for attr in ("G", "A"):
                if getattr(st, attr) is not None:
                    out[key, attr, None] = getattr(st, attr)
            for attr in ("A_g", "A_f", "A_z"):
                for k, v in getattr(st, attr).items():
                    out[key, attr, k] = v
        return out

    def set_statistics(self, values: dict[Any, Tensor]) -> None:
        for (key, attr, k), value in values.items():
            if k is None:
                setattr(self.stats[key], attr, value)
            else:
                getattr(self.stats[key], attr)[k] = value

    def clear_statistics(self) -> None:
        for st in self.stats.values():
            st.G = st.A = None
            st.A_g, st.A_f, st.A_z = {}, {}, {}
            st.n = 0

    def detach(self) -> None:
        self.set_statistics({k: v.detach() for k, v in self.statistics().items()})
        self.spectra = [(i, [[v.detach() for v in factors] for factors in blocks]) for i, blocks in self.spectra]

    def sum_over_ranks(self, differentiable: bool) -> None:
        device = self.registry.tensors[0].device
        slot_n = sum_over_ranks([torch.tensor([float(st.n) for st in self.stats.values()], dtype=torch.float64,
                                              device=device)])[0]
        super().sum_over_ranks(differentiable)
        for st, n in zip(self.stats.values(), slot_n.tolist()):
            st.n = int(n)

    def finish(self, scale: float) -> set[int]:
        for s in self.stats.values():
            s.check_finite()
        terms = self.terms or []
        self.spectra = [(t.param_index, t.spectra(self.stats, scale)) for t in terms]
        for i, blocks in self.spectra:
            if not all(bool(torch.isfinite(v).all()) for b in blocks for v in b):
                p = self.registry.params[i]
                raise FloatingPointError(f"non-finite curvature for '{p.name}' at layer '{p.layer}' ({p.layer_type})")
        return {t.param_index for t in terms}

    def group_log_dets(self, delta: Tensor, h: Tensor) -> Tensor:
        """Exactly :math:`\\sum \\log(h\\,\\lambda_1 \\otimes \\lambda_2 \\otimes\\dots + \\delta_g)` over each group's
        blocks."""
        out = [delta.new_zeros(()) for _ in self.registry.groups]
        for i, blocks in self.spectra:
            g = self.registry.group_of[i]
            for factors in blocks:
                spec = factors[0]
                for v in factors[1:]:
                    spec = (spec.unsqueeze(-1) * v).reshape(-1)
                out[g] = out[g] + torch.log(h * spec + delta[g]).sum()
        return torch.stack(out)


class KFACCurvature(KronCurvature):
    """:class:`KronCurvature` with the dense pull-back :math:`J^\\top(G\\otimes A)J` for basis-expansion
    coefficients."""

    name = "kfac"
    blocks = False


class FullCurvature(CurvatureStructure):
    """The exact dense GGN over all Laplace parameters (:attr:`H`, rows in parameter order)."""

    name = "full"

    def reset(self) -> None:
        self.H: Tensor | None = None

    def add_batch(self, batch: Batch, differentiable: bool, plan_graph: bool = False) -> None:
        hb = dense_ggn(batch.model, self.registry.tensors, batch.x, batch.y, batch.output, batch.columns,
                       differentiable)
        self.H = hb if self.H is None else self.H + hb

    def statistics(self) -> dict[Any, Tensor]:
        return {} if self.H is None else {"H": self.H}

    def set_statistics(self, values: dict[Any, Tensor]) -> None:
        self.H = values.get("H", self.H)

    def clear_statistics(self) -> None:
        self.H = None

    def detach(self) -> None:
        if self.H is not None:
            self.H = self.H.detach()

    def finish(self, scale: float) -> set[int]:
        assert self.H is not None
        self.H = self.H * scale
        if not bool(torch.isfinite(self.H).all()):
            for (offset, label), p in zip(self._row_labels(), self.registry.params):
                if not bool(torch.isfinite(self.H[offset:offset + p.tensor.numel()]).all()):
                    raise FloatingPointError(f"non-finite curvature for {label} ({p.layer_type})")
        return set(range(len(self.registry.params)))

    def _row_labels(self) -> list[tuple[int, str]]:
        """``(first row in the dense GGN, "'parameter' at layer 'layer'")`` for every parameter."""
        out, offset = [], 0
        for p in self.registry.params:
            out.append((offset, p.describe()))
            offset += p.tensor.numel()
        return out

    def group_log_dets(self, delta: Tensor, h: Tensor) -> Tensor:
        """The diagonal blocks of the groups' parameters."""
        assert self.H is not None
        out = [delta.new_zeros(()) for _ in self.registry.groups]
        for (offset, label), g, p in zip(self._row_labels(), self.registry.group_of, self.registry.params):
            n = p.tensor.numel()
            block = self.H[offset:offset + n, offset:offset + n]
            eye = torch.eye(n, dtype=block.dtype, device=block.device)
            out[g] = out[g] + _logdet(h * block + delta[g] * eye, [(0, label)])
        return torch.stack(out)

    def log_det(self, delta: Tensor, h: Tensor) -> Tensor:
        assert self.H is not None
        return _logdet(h * self.H + torch.diag(self.registry.delta_vector(delta)), self._row_labels())


#: ``hessian=`` name -> structure
CURVATURES: dict[str, type[CurvatureStructure]] = {"kron": KronCurvature, "kfac": KFACCurvature,
                                                   "full": FullCurvature}


def _backprop(out: Tensor, cols: Tensor, calls: Sequence[OpCall], stats: dict[Any, SlotStats],
              create_graph: bool) -> None:
    """One backward pass from ``out`` per column ``cols[..., r]`` (shaped like ``out``), adding the output
    gradients of ``calls`` to their statistics."""
    probes = [c.probe for c in calls]
    for r in range(cols.shape[-1]):
        grads = torch.autograd.grad(out, probes, grad_outputs=cols[..., r], retain_graph=True,
                                    create_graph=create_graph, allow_unused=True)
        for call, g in zip(calls, grads):
            if g is not None:
                stats[call.key].add_grads(call, g)


def _is_bottleneck(last: OpCall, others: Sequence[OpCall], f: Tensor, n_columns: int) -> bool:
    """Whether the output ``f`` is the output of ``last``, reaches the other ops only through its input
    (its filter and bias do not depend on them), and that input has fewer entries per sample than
    ``n_columns``."""
    u = last.x
    if not others or f is not last.output or not u.requires_grad or u.shape[0] != f.shape[0] or u[0].numel() >= n_columns:
        return False
    probes = [c.probe for c in others]
    return not any(any(_connected(t, probes)) for t in (last.weight, last.bias) if t is not None)


def _logdet(m: Tensor, labels: Sequence[tuple[int, str]]) -> Tensor:
    """:math:`\\log\\det` of a symmetric positive-definite matrix (Cholesky).

    ``labels``: ``(first row, name)`` of the parameter blocks of ``m``, in row order.

    Raises:
        ValueError: ``m`` is not positive definite in its dtype, naming the parameter whose row the
            factorisation fails at: its curvature is (near-)singular (a dead layer, zero inputs) and its prior
            precision too small to lift it.
    """
    chol, info = torch.linalg.cholesky_ex(0.5 * (m + m.T))
    failed = int(info)  # k > 0: the leading minor of order k is not positive definite
    if failed:
        where = next(label for start, label in reversed(labels) if start < failed)
        raise ValueError(f"log det of the posterior precision: it is not positive definite in {m.dtype} at "
                         f"{where} (row {failed - 1}): the curvature there is (near-)singular, e.g. a dead layer "
                         f"or zero inputs, and its prior precision is too small to lift it. Pass a larger "
                         f"prior_precision for it (it acts as damping: about 1e-4 times the largest curvature "
                         f"eigenvalue in float32), fit in float64, or use hessian='kron', whose eigenvalues "
                         f"are clamped at 0")
    return 2 * torch.log(torch.diagonal(chol)).sum()
