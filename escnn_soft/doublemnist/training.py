"""Plain training and evaluation loops used by the command line and the benchmarks."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from escnn_soft.distributed import sum_over_ranks
from escnn_soft.regularization import regularization_loss

__all__ = ["cosine_lr", "evaluate", "set_lr", "train_epoch"]


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of epoch ``epoch`` (0-based) of ``epochs`` on a cosine schedule from ``lr``:
    :math:`\\eta_e = \\eta\\,\\tfrac12\\big(1 + \\cos(\\pi e / E)\\big)`.

    A function of the epoch index only (no scheduler state), so an interrupted run resumes on the same schedule.
    """
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                device: torch.device, regularize: bool = True, desc: str = "train",
                progress: bool = True,
                regularizer: Callable[[torch.nn.Module], torch.Tensor] = regularization_loss) -> dict[str, float]:
    """One epoch of cross-entropy training plus ``regularizer(model)`` (if ``regularize``; default
    :func:`escnn_soft.regularization_loss` with the paper's weights, e.g. ``functools.partial(regularization_loss,
    kl_weight=0)`` for the alignment term alone).

    ``model`` may be wrapped in ``DistributedDataParallel``; the returned statistics are then those of the
    whole epoch over every rank's shard (summed over the ranks)."""
    model.train()
    total, correct, loss_sum, reg_sum = 0, 0, 0.0, 0.0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        reg = regularizer(model) if regularize else loss.new_zeros(())
        (loss + reg).backward()
        optimizer.step()
        total += len(y)
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += float(loss.detach()) * len(y)
        reg_sum += float(reg.detach()) * len(y)
    if total == 0:
        raise ValueError("loader: it yielded no batch; check the dataset size and batch_size")
    # under torch.distributed: the statistics of the whole epoch, over every rank's shard
    total, correct, loss_sum, reg_sum = sum_over_ranks(
        [torch.tensor([total, correct, loss_sum, reg_sum], dtype=torch.float64, device=device)])[0].tolist()
    return {"loss": loss_sum / total, "regularization": reg_sum / total, "accuracy": correct / total}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device,
             max_batches: int | None = None) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` (eval mode) on ``loader``."""
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    if total == 0:
        raise ValueError("loader: it yielded no batch; check the dataset size and batch_size")
    return {"loss": loss_sum / total, "accuracy": correct / total}
