"""Marginal-likelihood training (Immer et al., ICML 2021; van der Ouderaa et al., NeurIPS 2023).

Weights are trained on the MAP objective

.. math::
    \\frac{1}{N}\\Big[\\frac{N}{M} h \\sum_{n \\in \\text{batch}} \\ell(f(x_n), y_n)
    + \\tfrac12 \\sum_l \\delta_l \\lVert\\theta_l\\rVert^2\\Big]
    (+\\ \\text{extra\\_loss}),

and after ``n_epochs_burnin`` epochs, every ``marglik_frequency`` epochs, the Laplace evidence is fitted
and ``n_hypersteps`` Adam steps maximise it over the hyperparameters: log prior precisions, log noise
(regression) and the network's own hyperparameters (relaxation amplitudes, lengthscales, likelihood
coefficients). When the network has hyperparameters the curvature is rebuilt with autograd graph at every
step (:meth:`LaplaceEvidence.fit` with ``differentiable=True``), on the whole training set or, with
``marglik_batch_size``, on a random subset scaled by :math:`N/M`.

Distributed (``torch.distributed`` initialised, ``model`` wrapped in ``DistributedDataParallel``, the loader
over a ``DistributedSampler``): DDP averages the weight gradients; the evidence is fitted on every rank's
shard and summed over ranks (:meth:`LaplaceEvidence.fit`), the random subsets of ``marglik_batch_size`` are
drawn identically on every rank (``seed``) and split between them, and the hyperparameter gradients are
averaged over ranks, so every rank takes the same hyperparameter step as a single process would.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import trange

from escnn_soft.distributed import average_gradients, rank, sum_over_ranks, world_size
from escnn_soft.laplace.evidence import LaplaceEvidence, _output, _to

__all__ = ["marglik_training"]


def marglik_training(model: nn.Module, train_loader: DataLoader, *, likelihood: str = "classification",
                     hessian: str = "kron", n_epochs: int = 100, lr: float = 1e-3, lr_hyp: float = 1e-1,
                     n_epochs_burnin: int = 10, marglik_frequency: int = 5, n_hypersteps: int = 10,
                     prior_precision: float | Tensor = 1.0, prior_structure: str = "layerwise",
                     sigma_noise: float = 1.0, hyperparameters: Iterable[str | Tensor] | None = None,
                     exclude: str | None | Iterable[Any] = "default", stochastic: bool = False,
                     mc_samples: int = 1, marglik_batch_size: int | None = None,
                     extra_loss: Callable[[nn.Module], Tensor] | None = None, progress: bool = True,
                     seed: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``model`` and its hyperparameters with the Laplace evidence (module docstring).

    Args:
        model: the network (see :class:`LaplaceEvidence` for which layers are supported), or the network
            wrapped in ``DistributedDataParallel`` (module docstring).
        train_loader: a ``DataLoader`` of ``(x, y)`` batches.
        likelihood, hessian, prior_precision, prior_structure: passed to :class:`LaplaceEvidence`.
        sigma_noise, hyperparameters, exclude, stochastic, mc_samples: passed to :class:`LaplaceEvidence`.
        n_epochs: training epochs.
        lr: Adam learning rate of the weights.
        lr_hyp: Adam learning rate of the hyperparameters.
        n_epochs_burnin: epochs before the first hyperparameter update.
        marglik_frequency: epochs between hyperparameter updates (F).
        n_hypersteps: Adam steps on the hyperparameters per update (n).
        marglik_batch_size: ``None`` fits the evidence on the whole training set; an integer fits it on a
            random subset of that size for every hyperparameter step (a stochastic estimate).
        extra_loss: added to the training loss (e.g. ``escnn_soft.regularization_loss``).
        progress: tqdm bar over epochs.
        seed: seeds the subset draws (``None``: torch's global generator).

    Returns:
        ``(model, history)`` with history keys ``groups`` (prior groups), ``loss`` (mean training loss per
        epoch), ``marglik_epochs``, ``marglik`` (log evidence after each update), ``prior_precision``
        (per group, after each update), ``sigma_noise`` (regression), ``per_layer`` (rows of
        :meth:`LaplaceEvidence.per_layer` after each update) and ``evidence`` (the fitted
        :class:`LaplaceEvidence`, or ``None`` if no update happened).
    """
    for name, value, low in (("n_epochs", n_epochs, 1), ("marglik_frequency", marglik_frequency, 1),
                             ("n_hypersteps", n_hypersteps, 1), ("n_epochs_burnin", n_epochs_burnin, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: {value!r}; must be an int >= {low}")
    if marglik_batch_size is not None and (isinstance(marglik_batch_size, bool) or
                                           not isinstance(marglik_batch_size, int) or marglik_batch_size < 1):
        raise ValueError(f"marglik_batch_size: {marglik_batch_size!r}; must be None (the whole training set) "
                         "or an int >= 1")
    for name, value in (("lr", lr), ("lr_hyp", lr_hyp)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}: {value!r}; must be a learning rate > 0 (e.g. 1e-3)")
    if not isinstance(train_loader, DataLoader):
        raise TypeError(f"train_loader: expected a torch.utils.data.DataLoader (its dataset is subsampled), "
                        f"got {type(train_loader).__name__}")
    dataset = train_loader.dataset
    n_data = len(dataset)
    if n_data == 0:
        raise ValueError("train_loader: it has an empty dataset (0 samples); pass a loader over the training set")
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    ev = LaplaceEvidence(net, likelihood, hessian, prior_precision=prior_precision,
                         prior_structure=prior_structure, sigma_noise=sigma_noise, hyperparameters=hyperparameters,
                         exclude=exclude, stochastic=stochastic, mc_samples=mc_samples)
    hyper_ids = {id(h) for h in ev.network_hyperparameters}
    weights = [p for p in net.parameters() if p.requires_grad and id(p) not in hyper_ids]
    optimizer = torch.optim.Adam(weights, lr=lr)
    hyper = ev.hyperparameters()
    hyper_optimizer = torch.optim.Adam(hyper, lr=lr_hyp)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    history: dict[str, Any] = {"groups": list(ev.groups), "loss": [], "marglik_epochs": [], "marglik": [],
                               "prior_precision": [], "sigma_noise": [], "per_layer": [], "evidence": None}
    bar = trange(1, n_epochs + 1, desc="marglik training", disable=not progress)
    for epoch in bar:
        for epoch_aware in (getattr(train_loader, "sampler", None), dataset):
            if hasattr(epoch_aware, "set_epoch"):  # DistributedSampler's shuffle, DoubleMNIST's re-drawn elements
                epoch_aware.set_epoch(epoch - 1)
        history["loss"].append(_train_epoch(model, train_loader, ev, optimizer, n_data, extra_loss))
        postfix = {"loss": f"{history['loss'][-1]:.4g}"}
        if epoch > n_epochs_burnin and (epoch - n_epochs_burnin) % marglik_frequency == 0:
            marglik = _hyper_update(ev, train_loader, hyper, hyper_optimizer, n_hypersteps, marglik_batch_size,
                                    generator)
            history["marglik_epochs"].append(epoch)
            history["marglik"].append(marglik)
            history["prior_precision"].append(ev.prior_precision.detach().cpu().tolist())
            if likelihood == "regression":
                history["sigma_noise"].append(float(ev.sigma_noise))
            history["per_layer"].append(ev.per_layer())
            history["evidence"] = ev
            postfix["marglik"] = f"{marglik:.4g}"
        bar.set_postfix(postfix)
    return model, history


def _train_epoch(model: nn.Module, loader: DataLoader, ev: LaplaceEvidence, optimizer: torch.optim.Optimizer,
                 n_data: int, extra_loss: Callable[[nn.Module], Tensor] | None) -> float:
    """One epoch on the MAP objective; returns the mean loss per sample."""
    model.train()
    with torch.no_grad():
        delta = ev.prior_precision.detach()
        h = ev._h(None).detach()
    total, seen = 0.0, 0
    for batch in loader:
        x, y = _to(batch[0], ev._device), batch[1].to(ev._device)
        optimizer.zero_grad()
        f = _output(model(x))
        ev._check_batch(f, y)
        nll = h * ev._nll(f, y) / f.shape[0]
        prior = sum(0.5 * delta[g] * p.pow(2).sum()
                    for g, (_, p, _, _), inside in zip(ev._group_of, ev.params, ev._in_laplace) if inside)
        loss = nll + prior / n_data
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"non-finite training loss ({float(loss)}) at batch {seen // max(1, len(y))}")
        loss.backward()
        optimizer.step()
        total += float(loss) * len(y)
        seen += len(y)
    if seen == 0:
        raise ValueError("train_loader yielded no batches")
    counts = torch.tensor([total, float(seen)], dtype=torch.float64, device=ev._device)
    total_seen = sum_over_ranks([counts])[0].tolist()
    return total_seen[0] / total_seen[1]


def _hyper_update(ev: LaplaceEvidence, loader: DataLoader, hyper: list[Tensor],
                  optimizer: torch.optim.Optimizer, steps: int, batch_size: int | None,
                  generator: torch.Generator | None) -> float:
    """``steps`` Adam steps on the negative log evidence; returns the last evidence value."""
    in_network = bool(ev.network_hyperparameters)
    n_data = len(loader.dataset)
    if batch_size is None and not in_network:
        ev.fit(loader, n_data=n_data)
    marglik = math.nan
    for _ in range(steps):
        if batch_size is not None:
            # the same draw on every rank (same seed), split between the ranks
            idx = torch.randperm(n_data, generator=generator)[:batch_size].tolist()[rank()::world_size()]
            subset = DataLoader(Subset(loader.dataset, idx), batch_size=loader.batch_size or batch_size)
            ev.fit(subset, differentiable=in_network, n_data=n_data)
        elif in_network:
            ev.fit(loader, differentiable=True, n_data=n_data)
        optimizer.zero_grad()
        value = ev.log_marginal_likelihood()
        grads = torch.autograd.grad(-value, hyper, allow_unused=True)
        for t, g in zip(hyper, grads):
            t.grad = g
        average_gradients(hyper)
        optimizer.step()
        marglik = float(value)
    return marglik
