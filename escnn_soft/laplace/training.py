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
``marglik_batch_size``, on a random subset scaled by :math:`N/M`; with ``low_memory=True`` the gradient comes from
:meth:`LaplaceEvidence.evidence_gradient` instead (the same gradient, two passes holding one batch's graph each).

λ by the evidence (the probabilistic layers): ``hyperparameters="likelihoods"`` (or the default ``None``, which
includes them) makes every layer's likelihood coefficients hyperparameters: they get no prior and no curvature, the
weight optimiser never sees them (the task loss does not move λ), and only the evidence's Adam steps change them,
starting from the uniform λ of the strict layer. At the uniform λ the layers' pathway weights :math:`w_\\psi` do
not reach the output (the filter holds them as :math:`w_\\psi \\tilde B(\\hat\\Lambda(\\psi))` with
:math:`\\hat\\Lambda(\\psi) = 0`), so their only gradient is the prior's :math:`\\delta w_\\psi / N`, which Adam, being
invariant to the gradient's scale, follows at the full learning rate: within a few dozen steps of the burn-in they
are ~0, and the evidence's gradient with respect to :math:`\\hat\\Lambda(\\psi)`, proportional to them, vanishes
(uniform λ becomes a fixed point however the data look; measured on DoubleMNIST, ``docs/laplace.md``). So the weights
of :meth:`~escnn_soft.nn.base.SoftModule.idle_parameters` are held, not stepped, during every epoch in which the
layer's λ is still uniform on their irrep (``history["held"]`` counts them per epoch). No alignment or KL regulariser
is needed (the Occam factor :math:`-\\tfrac12\\log\\det` of the curvature is what keeps λ symmetric); passing
``extra_loss=escnn_soft.regularization_loss`` is warned about, as those terms act on λ only and so never reach
the weights' optimiser.

Resuming: ``on_epoch_end(epoch, state)`` receives after every epoch a ``torch.save``-able dict (weights' and
hyperparameters' optimiser state by parameter name, log prior precisions, subset generator, history); save it
with the model's weights, and pass it back as ``resume=state`` (into a model holding those weights) to continue
from that epoch: the rest of the run is the same as an uninterrupted one, provided the loader's shuffling and the
global RNG state are restored as well (e.g. a sampler with ``set_epoch``).

Distributed (``torch.distributed`` initialised, ``model`` wrapped in ``DistributedDataParallel``, the loader
over a ``DistributedSampler``): DDP averages the weight gradients; the evidence is fitted on every rank's
shard and summed over ranks (:meth:`LaplaceEvidence.fit`), the random subsets of ``marglik_batch_size`` are
drawn identically on every rank (``seed``) and split between them, and the hyperparameter gradients are
averaged over ranks, so every rank takes the same hyperparameter step as a single process would.
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import trange

from escnn_soft.distributed import average_gradients, rank, sum_over_ranks, world_size
from escnn_soft.laplace.evidence import LaplaceEvidence
from escnn_soft.ordering import optimizer_state_by_name, restore_optimizer_state

__all__ = ["marglik_training", "refresh_batchnorm"]

#: keys of the ``state`` dict given to ``on_epoch_end`` and taken by ``resume``
STATE_KEYS = ("epoch", "groups", "log_prior_precision", "log_sigma_noise", "optimizer", "hyper_optimizer",
              "generator", "history")


def marglik_training(model: nn.Module, train_loader: DataLoader, *, likelihood: str = "classification",
                     hessian: str = "kron", n_epochs: int = 100, lr: float = 1e-3, lr_hyp: float = 1e-1,
                     n_epochs_burnin: int = 10, marglik_frequency: int = 5, n_hypersteps: int = 10,
                     prior_precision: float | Tensor = 1.0, prior_structure: str = "layerwise",
                     sigma_noise: float = 1.0, hyperparameters: str | Iterable[str | Tensor] | None = None,
                     exclude: str | None | Iterable[Any] = "default", stochastic: bool = False,
                     mc_samples: int = 1, marglik_batch_size: int | None = None, low_memory: bool = False,
                     extra_loss: Callable[[nn.Module], Tensor] | None = None, progress: bool = True,
                     seed: int | None = None, on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
                     resume: dict[str, Any] | None = None,
                     lr_schedule: Callable[[int], float] | None = None,
                     lr_hyp_schedule: Callable[[int], float] | None = None,
                     hold_idle: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``model`` and its hyperparameters with the Laplace evidence (module docstring).

    Args:
        model: the network (see :class:`LaplaceEvidence` for which layers are supported), or the network
            wrapped in ``DistributedDataParallel`` (module docstring).
        train_loader: a ``DataLoader`` of ``(x, y)`` batches.
        likelihood, hessian, prior_precision, prior_structure: passed to :class:`LaplaceEvidence`.
        sigma_noise, exclude, stochastic, mc_samples: passed to :class:`LaplaceEvidence`.
        hyperparameters: what the evidence tunes besides the prior precisions (and the noise): ``None`` every
            soft layer's hyperparameters (likelihood coefficients, relaxation amplitudes, ...), ``"likelihoods"``
            exactly the probabilistic layers' λ (a ``ValueError`` if the model has none), or a list of tensors
            or parameter names (:class:`LaplaceEvidence`).
        n_epochs: training epochs.
        lr: Adam learning rate of the weights.
        lr_hyp: Adam learning rate of the hyperparameters.
        n_epochs_burnin: epochs before the first hyperparameter update.
        marglik_frequency: epochs between hyperparameter updates (F).
        n_hypersteps: Adam steps on the hyperparameters per update (n).
        marglik_batch_size: ``None`` fits the evidence on the whole training set; an integer fits it on a
            random subset of that size for every hyperparameter step (a stochastic estimate). With hyperparameters
            inside the network the fit keeps the graph of every sample, so memory grows about linearly with it
            (docs/laplace.md gives measured sizes), unless ``low_memory``.
        low_memory: with hyperparameters inside the network, take each hyperparameter gradient from
            :meth:`LaplaceEvidence.evidence_gradient`: the same gradient (up to summation order), at the memory of
            one batch of the loader instead of the whole fit, for about twice the forward passes.
        extra_loss: added to the training loss (e.g. ``escnn_soft.regularization_loss``).
        progress: tqdm bar over epochs.
        seed: seeds the subset draws (``None``: torch's global generator).
        on_epoch_end: called as ``on_epoch_end(epoch, state)`` after every epoch (1-based), ``state`` holding
            what ``resume`` needs (module docstring); e.g. to write a checkpoint.
        resume: a ``state`` from ``on_epoch_end`` of a run with the same arguments, into a model that holds the
            weights of that epoch: training continues after ``state["epoch"]``.
        lr_schedule: the weights' learning rate of epoch ``e`` (0-based) is ``lr * lr_schedule(e)``, e.g.
            ``lambda e: 0.5 * (1 + math.cos(math.pi * e / n_epochs))`` (``None``: constant ``lr``); the
            hyperparameters keep ``lr_hyp`` unless ``lr_hyp_schedule`` is given.
        lr_hyp_schedule: the hyperparameters' learning rate of the update after epoch ``e`` (0-based) is
            ``lr_hyp * lr_hyp_schedule(e)`` (``None``: constant ``lr_hyp``). With the weights on a schedule that
            decays to 0, the same schedule here makes the late hyperparameter steps small too, so the last ones
            do not change the network after its weights have stopped adapting to it.
        hold_idle: hold the weights the output does not depend on (a probabilistic layer's pathway weights while
            its λ is uniform on their irrep) instead of letting the prior alone move them (module docstring);
            ``False`` steps them like every other weight, which shrinks them during the burn-in (the behaviour
            before this option, kept for comparisons).

    Returns:
        ``(model, history)`` with history keys ``groups`` (prior groups), ``loss`` (mean training loss per
        epoch), ``marglik_epochs``, ``marglik`` (log evidence after each update), ``prior_precision``
        (per group, after each update), ``sigma_noise`` (regression), ``per_layer`` (rows of
        :meth:`LaplaceEvidence.per_layer` after each update), ``held`` (per epoch, how many weights were held
        because the output did not depend on them: module docstring) and ``evidence`` (the fitted
        :class:`LaplaceEvidence`, or ``None`` if no update happened in this call).

    Raises:
        ValueError: bad schedule numbers or learning rates, an empty loader, ``hyperparameters="likelihoods"``
            on a model without (trainable) likelihoods, or a ``resume`` state from another run.
    """
    for name, value, low in (("n_epochs", n_epochs, 1), ("marglik_frequency", marglik_frequency, 1),
                             ("n_hypersteps", n_hypersteps, 1), ("n_epochs_burnin", n_epochs_burnin, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: {value!r}; must be an int >= {low}")
    if marglik_batch_size is not None and (isinstance(marglik_batch_size, bool) or
                                           not isinstance(marglik_batch_size, int) or marglik_batch_size < 1):
        raise ValueError(f"marglik_batch_size: {marglik_batch_size!r}; must be None (the whole training set) "
                         "or an int >= 1")
    if not isinstance(hold_idle, bool):
        raise TypeError(f"hold_idle: expected True or False, got {type(hold_idle).__name__} ({hold_idle!r})")
    if not isinstance(low_memory, bool):
        raise TypeError(f"low_memory: expected True or False, got {type(low_memory).__name__} ({low_memory!r})")
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
    if low_memory and not hyper_ids:
        warnings.warn("marglik_training: low_memory=True has nothing to do: the network has no hyperparameters, so "
                      "the evidence is fitted once per update without autograd graph anyway", stacklevel=2)
    _check_extra_loss(extra_loss, net, hyper_ids)
    weights = [p for p in net.parameters() if p.requires_grad and id(p) not in hyper_ids]
    optimizer = torch.optim.Adam(weights, lr=lr)
    hyper = ev.hyperparameters()
    hyper_optimizer = torch.optim.Adam(hyper, lr=lr_hyp)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    history: dict[str, Any] = {"groups": list(ev.groups), "loss": [], "marglik_epochs": [], "marglik": [],
                               "prior_precision": [], "sigma_noise": [], "per_layer": [], "evidence": None,
                               "held": []}
    hyper_names = _hyper_names(ev, net)
    start = 0
    if resume is not None:
        start = _restore(resume, ev, net, optimizer, hyper_optimizer, hyper_names, generator, history, n_epochs)
    bar = trange(start + 1, n_epochs + 1, desc="marglik training", disable=not progress)
    for epoch in bar:
        if lr_schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr * float(lr_schedule(epoch - 1))
        for epoch_aware in (getattr(train_loader, "sampler", None), dataset):
            if hasattr(epoch_aware, "set_epoch"):  # DistributedSampler's shuffle, DoubleMNIST's re-drawn elements
                epoch_aware.set_epoch(epoch - 1)
        held = _idle_weights(net, hyper_ids) if hold_idle else []
        history["held"].append(sum(t.numel() for t in held))
        history["loss"].append(_train_epoch(model, train_loader, ev, optimizer, n_data, extra_loss, held))
        postfix = {"loss": f"{history['loss'][-1]:.4g}"}
        if epoch > n_epochs_burnin and (epoch - n_epochs_burnin) % marglik_frequency == 0:
            if lr_hyp_schedule is not None:
                for group in hyper_optimizer.param_groups:
                    group["lr"] = lr_hyp * float(lr_hyp_schedule(epoch - 1))
            marglik = _hyper_update(ev, train_loader, hyper, hyper_optimizer, n_hypersteps, marglik_batch_size,
                                    generator, low_memory)
            history["marglik_epochs"].append(epoch)
            history["marglik"].append(marglik)
            history["prior_precision"].append(ev.prior_precision.detach().cpu().tolist())
            if likelihood == "regression":
                history["sigma_noise"].append(float(ev.sigma_noise.detach()))
            history["per_layer"].append(ev.per_layer())
            history["evidence"] = ev
            postfix["marglik"] = f"{marglik:.4g}"
        bar.set_postfix(postfix)
        if on_epoch_end is not None:
            on_epoch_end(epoch, _state(epoch, ev, net, optimizer, hyper_optimizer, hyper_names, generator, history))
    return model, history


@torch.no_grad()
def refresh_batchnorm(model: nn.Module, loader: Iterable) -> nn.Module:
    """Re-estimate the running statistics of every batch-norm layer of ``model`` at its current weights: one pass
    over ``loader`` in training mode, cumulative average (``momentum=None``), no parameter changes; returns
    ``model`` in evaluation mode.

    Call it after :func:`marglik_training` when the network has batch norm and the evidence tunes hyperparameters
    inside it (λ, relaxation amplitudes): the last hyperparameter step follows the last training epoch, so the
    running statistics belong to the previous filters, and evaluation-mode outputs can be far off (DoubleMNIST,
    λ by the evidence: test accuracy 0.05 before, see ``benchmarks/results_marglik.md``).
    """
    from escnn import nn as enn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    norms += [m for m in model.modules() if isinstance(m, (enn.IIDBatchNorm1d, enn.IIDBatchNorm2d, enn.IIDBatchNorm3d,
                                                           enn.InnerBatchNorm, enn.NormBatchNorm, enn.GNormBatchNorm,
                                                           enn.InducedNormBatchNorm))
              and hasattr(m, "momentum")]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for batch in loader:
            model(batch[0])
    finally:
        for m, momentum in saved:
            m.momentum = momentum
    return model.eval()


def _idle_weights(net: nn.Module, hyper_ids: set[int]) -> list[Tensor]:
    """The weights held this epoch: :meth:`~escnn_soft.nn.base.SoftModule.idle_parameters` of every soft layer whose
    hyperparameters the evidence tunes (those stay fixed during the epoch, so the set does too)."""
    from escnn_soft.nn.base import SoftModule, iter_modules

    held: dict[int, Tensor] = {}
    for m in iter_modules(net):
        if isinstance(m, SoftModule) and any(id(h) in hyper_ids for h in m.hyperparameter_parameters().values()):
            held.update((id(t), t) for t in m.idle_parameters())
    return list(held.values())


def _check_extra_loss(extra_loss: Callable[[nn.Module], Tensor] | None, net: nn.Module, hyper_ids: set[int]) -> None:
    """Warn when ``extra_loss`` is :func:`escnn_soft.regularization_loss` with alignment/KL weights while the
    evidence tunes the likelihoods: those terms depend on λ only, which the weights' optimiser does not train."""
    from escnn_soft.regularization import likelihoods, regularization_loss

    if extra_loss is None:
        return
    fn, kwargs = extra_loss, {}
    if isinstance(fn, functools.partial):
        fn, kwargs = fn.func, dict(fn.keywords)
    if fn is not regularization_loss or (kwargs.get("align_weight", 5.0) == 0 and kwargs.get("kl_weight", 3.0) == 0):
        return
    tuned = [lik for lik in likelihoods(net) if any(id(p) in hyper_ids for p in lik.parameters())]
    if tuned:
        warnings.warn(f"marglik_training: extra_loss=regularization_loss adds the alignment and KL terms of "
                      f"{len(tuned)} likelihood(s) whose coefficients the evidence tunes; those terms depend on λ "
                      "only and λ is not trained by the training loss, so they change nothing (λ is set by the "
                      "evidence alone). Pass extra_loss=None, or functools.partial(regularization_loss, "
                      "align_weight=0, kl_weight=0) to keep other soft layers' penalties.", stacklevel=3)


def _hyper_names(ev: LaplaceEvidence, net: nn.Module) -> list[str]:
    """A name for each tensor of ``ev.hyperparameters()``, the same in every process."""
    names = {id(p): n for n, p in net.named_parameters()}
    out = ["log_prior_precision"] + (["log_sigma_noise"] if ev.log_sigma_noise is not None else [])
    for i, h in enumerate(ev.network_hyperparameters):
        out.append(names.get(id(h), f"<hyperparameter {i}>"))
    return out


def _optimizer_state(optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, Any]:
    sd = optimizer.state_dict()
    return {"state": {names[i]: v for i, v in sd["state"].items()},
            "param_groups": [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[i] for i in g["params"]]}
                             for g in sd["param_groups"]]}


def _load_optimizer_state(optimizer: torch.optim.Optimizer, names: list[str], saved: dict[str, Any],
                          what: str) -> None:
    saved_names = [n for g in saved["param_groups"] for n in g["params"]]
    if sorted(saved_names) != sorted(names):
        missing = [n for n in names if n not in saved_names][:3]
        extra = [n for n in saved_names if n not in names][:3]
        raise ValueError(f"resume: the {what} optimiser state is for other tensors (not in the state: {missing}; "
                         f"only in the state: {extra}); resume a run of the same model with the same "
                         "hyperparameters=... argument")
    index = {n: i for i, n in enumerate(names)}
    sd = optimizer.state_dict()
    sd["state"] = {index[n]: v for n, v in saved["state"].items()}
    optimizer.load_state_dict(sd)


def _state(epoch: int, ev: LaplaceEvidence, net: nn.Module, optimizer: torch.optim.Optimizer,
           hyper_optimizer: torch.optim.Optimizer, hyper_names: list[str], generator: torch.Generator | None,
           history: dict[str, Any]) -> dict[str, Any]:
    """What :func:`marglik_training` needs to continue after ``epoch`` (besides the model's weights)."""
    return {"epoch": epoch, "groups": list(ev.groups),
            "log_prior_precision": ev.log_prior_precision.detach().cpu().clone(),
            "log_sigma_noise": None if ev.log_sigma_noise is None else ev.log_sigma_noise.detach().cpu().clone(),
            "optimizer": optimizer_state_by_name(optimizer, net),
            "hyper_optimizer": _optimizer_state(hyper_optimizer, hyper_names),
            "generator": None if generator is None else generator.get_state(),
            "history": {k: v for k, v in history.items() if k != "evidence"}}


def _restore(state: dict[str, Any], ev: LaplaceEvidence, net: nn.Module, optimizer: torch.optim.Optimizer,
             hyper_optimizer: torch.optim.Optimizer, hyper_names: list[str], generator: torch.Generator | None,
             history: dict[str, Any], n_epochs: int) -> int:
    """Load a ``state`` of :func:`_state` (``resume=``); returns the epoch it was taken after."""
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
        raise ValueError(f"resume: expected the state dict given to on_epoch_end (keys {', '.join(STATE_KEYS)}); "
                         f"missing {missing}")
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= n_epochs:
        raise ValueError(f"resume: the state is after epoch {epoch!r}, outside 0..n_epochs={n_epochs}")
    if list(state["groups"]) != list(ev.groups):
        raise ValueError(f"resume: the state's prior groups {list(state['groups'])} differ from this model's "
                         f"{list(ev.groups)}; resume with the same model and prior_structure")
    if (state["log_sigma_noise"] is None) != (ev.log_sigma_noise is None):
        raise ValueError("resume: the state is from a run with another likelihood (classification/regression)")
    if (state["generator"] is None) != (generator is None):
        raise ValueError("resume: the state is from a run with another seed argument (None vs an int)")
    with torch.no_grad():
        ev.log_prior_precision.copy_(torch.as_tensor(state["log_prior_precision"]))
        if ev.log_sigma_noise is not None:
            ev.log_sigma_noise.copy_(torch.as_tensor(state["log_sigma_noise"]))
    try:
        restore_optimizer_state(optimizer, net, {"optimizer_by_name": state["optimizer"]}, "resume state")
    except ValueError as err:
        raise ValueError(f"resume: the weights' optimiser state does not fit this model: {err}") from None
    _load_optimizer_state(hyper_optimizer, hyper_names, state["hyper_optimizer"], "hyperparameters'")
    if generator is not None:
        generator.set_state(state["generator"])
    for key, value in state["history"].items():
        history[key] = value
    history["evidence"] = None
    return epoch


def _train_epoch(model: nn.Module, loader: DataLoader, ev: LaplaceEvidence, optimizer: torch.optim.Optimizer,
                 n_data: int, extra_loss: Callable[[nn.Module], Tensor] | None, held: list[Tensor]) -> float:
    """One epoch on the MAP objective, the ``held`` tensors not stepped (their gradient dropped, so Adam leaves
    them and their moments alone); returns the mean loss per sample."""
    model.train()
    total, seen = 0.0, 0
    for batch in loader:
        x, y = ev.to_device(batch)
        optimizer.zero_grad()
        loss = ev.map_loss(model(x), y, n_data)
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"non-finite training loss ({float(loss)}) at batch {seen // max(1, len(y))}")
        loss.backward()
        for t in held:
            t.grad = None
        optimizer.step()
        total += float(loss.detach()) * len(y)
        seen += len(y)
    if seen == 0:
        raise ValueError("train_loader yielded no batches")
    counts = torch.tensor([total, float(seen)], dtype=torch.float64, device=ev.device)
    total_seen = sum_over_ranks([counts])[0].tolist()
    return total_seen[0] / total_seen[1]


def _hyper_update(ev: LaplaceEvidence, loader: DataLoader, hyper: list[Tensor],
                  optimizer: torch.optim.Optimizer, steps: int, batch_size: int | None,
                  generator: torch.Generator | None, low_memory: bool = False) -> float:
    """``steps`` Adam steps on the negative log evidence; returns the last evidence value."""
    in_network = bool(ev.network_hyperparameters)
    n_data = len(loader.dataset)
    if batch_size is None and not in_network:
        ev.fit(loader, n_data=n_data)
    marglik = math.nan
    for _ in range(steps):
        data = loader
        if batch_size is not None:
            # the same draw on every rank (same seed), split between the ranks
            idx = torch.randperm(n_data, generator=generator)[:batch_size].tolist()[rank()::world_size()]
            data = DataLoader(Subset(loader.dataset, idx), batch_size=loader.batch_size or batch_size)
        optimizer.zero_grad()
        if in_network and low_memory:
            value, grads = ev.evidence_gradient(data, hyper, n_data=n_data)
            grads = [None if g is None else -g for g in grads]
        else:
            if batch_size is not None or in_network:
                ev.fit(data, differentiable=in_network, n_data=n_data)
            value = ev.log_marginal_likelihood()
            grads = torch.autograd.grad(-value, hyper, allow_unused=True)
        for t, g in zip(hyper, grads):
            t.grad = g
        average_gradients(hyper)
        optimizer.step()
        marglik = float(value.detach())
    return marglik
