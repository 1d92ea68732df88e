"""torch.distributed helpers: the process group of a ``torchrun`` launch, reductions the Laplace evidence
and the training loops use, and the recipe for a user's own loop.

Recipe (a user's own loop, ``torchrun --nproc-per-node N train.py``)::

    import escnn_soft as es, torch, torch.distributed as dist
    ctx = es.distributed.init_from_env("cuda")          # or "cpu" (gloo); reads torchrun's environment
    model = build_my_escnn_model().to(ctx.device)       # built after 'import escnn_soft': one order everywhere
    es.check_same_order(model)                          # optional: a clear error instead of DDP's
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ctx.device_ids)
    sampler = torch.utils.data.DistributedSampler(train_set, seed=0, drop_last=True)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in DataLoader(train_set, batch_size=global_batch // ctx.world_size, sampler=sampler):
            loss = F.cross_entropy(ddp(x), y) + es.regularization_loss(model)
            opt.zero_grad(); loss.backward(); opt.step()

``regularization_loss`` is computed on each rank from the same (replicated) parameters, so it is the same
everywhere; its gradient flows into the parameters DDP already averages. escnn's batch norms
(``IIDBatchNorm2d``, ``InnerBatchNorm``, ...) are not ``torch.nn.BatchNorm`` subclasses, so
``SyncBatchNorm.convert_sync_batchnorm`` leaves them alone: each rank normalises with its own batch
statistics (as plain DDP does for torch's batch norm), and DDP's ``broadcast_buffers`` copies rank 0's
running statistics to every rank at each forward, so the replicas stay identical.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = ["DistContext", "average_gradients", "init_from_env", "is_distributed", "rank", "sum_over_ranks",
           "world_size"]


def is_distributed() -> bool:
    """Whether a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@dataclass
class DistContext:
    """Where this process runs: ``rank`` of ``world_size``, its ``local_rank`` on the node and ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, plots and reports."""
        return self.rank == 0

    @property
    def device_ids(self) -> list[int] | None:
        """``device_ids`` for ``DistributedDataParallel``: the local GPU, or ``None`` on CPU."""
        return [self.device.index] if self.device.type == "cuda" else None


def init_from_env(device: str = "cpu") -> DistContext:
    """Initialise the process group from ``torchrun``'s environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) when ``WORLD_SIZE`` > 1: backend ``nccl`` for
    ``device='cuda'`` (each rank on GPU ``LOCAL_RANK``), ``gloo`` for ``'cpu'``. Without that environment (or
    with one rank) nothing is initialised and the context is rank 0 of 1 on ``device``. A process group that
    is already initialised is used as it is."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    n = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda': no CUDA device is available here; use device='cpu' (gloo)")
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local}, but this node has {torch.cuda.device_count()} CUDA devices; "
                               "start at most that many processes per node (torchrun --nproc-per-node)")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if n > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local, dev)
    return DistContext(device=dev)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the output gradient: the gradient of a replicated loss of
    the sum, on each rank, is then ``world_size`` times the rank's own share; :func:`average_gradients`
    over ranks turns that into the gradient of the single-process loss."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


def sum_over_ranks(tensors: Sequence[torch.Tensor], differentiable: bool = False) -> list[torch.Tensor]:
    r""":math:`\sum_r t_r` over the ranks for each tensor (the tensors themselves without a process group), in
    one collective: the tensors are flattened into one buffer (all on one device, of one dtype).
    ``differentiable`` keeps the autograd graph (then call :func:`average_gradients` on the leaves after
    ``backward``/``grad``, see :class:`_SumOverRanks`)."""
    tensors = list(tensors)
    if not is_distributed() or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    if differentiable and flat.requires_grad:
        flat = _SumOverRanks.apply(flat)
    else:
        flat = flat.detach().clone()
        dist.all_reduce(flat)
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def average_gradients(tensors: Iterable[torch.Tensor]) -> None:
    """Replace the ``.grad`` of each tensor by its mean over the ranks (a no-op without a process group).
    Every rank must call it with the same tensors in the same order; a missing gradient counts as zero."""
    if not is_distributed():
        return
    n = world_size()
    for t in tensors:
        g = t.grad if t.grad is not None else torch.zeros_like(t)
        g = g.contiguous()
        dist.all_reduce(g)
        t.grad = g / n
