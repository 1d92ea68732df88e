"""Laplace approximation of the marginal likelihood with layer-wise priors (METHODS section 4).

.. math::
    \\log p(\\mathcal{D} \\mid \\eta) \\approx \\log p(\\mathcal{D} \\mid \\theta_*, \\eta)
    - \\tfrac12 \\sum_l \\delta_l \\lVert \\theta_{*,l} \\rVert^2
    - \\tfrac12 \\big[\\log\\det(h H + P_0) - \\log\\det P_0\\big],
    \\qquad P_0 = \\operatorname{diag}(\\delta_l I_{n_l}),

with :math:`H` the GGN of the summed negative log likelihood at the MAP :math:`\\theta_*` (Kronecker-factored,
:mod:`escnn_soft.laplace.curvature`, or exact, :mod:`escnn_soft.laplace.exact`), :math:`h = 1` for
classification and :math:`h = 1/\\sigma^2` for Gaussian regression, and one prior precision
:math:`\\delta_l` per layer (``prior_structure="layerwise"``), per trained tensor (``"parameterwise"``, the
"layer-wise" of laplace-torch) or shared (``"scalar"``). This equals laplace-torch's
``log_likelihood - 0.5 * (log_det_ratio + scatter)`` with a zero prior mean.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from escnn import nn as enn
from torch import Tensor, nn

from escnn_soft.distributed import is_distributed, rank, sum_over_ranks, world_size
from escnn_soft.laplace.hooks import OpCall, OpRecorder
from escnn_soft.laplace.likelihoods import ObservationLikelihood, make_likelihood
from escnn_soft.laplace.parameters import LaplaceParameter, ParameterRegistry
from escnn_soft.laplace.structures import CURVATURES, Batch, CurvatureStructure
from escnn_soft.nn.base import SoftModule

__all__ = ["LaplaceEvidence", "model_output"]


@contextlib.contextmanager
def _curvature_mode(model: nn.Module, targets: Iterable[nn.Module]) -> Iterator[None]:
    """Evaluation mode for the model, but targets expand their filter at every call.

    escnn layers cache their filter in evaluation mode (a buffer without graph to the weights); setting
    only their ``training`` flag makes them expand it again while normalisation and dropout stay in
    evaluation mode. Every module's mode is restored afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for t in targets:
        t.training = True
    try:
        yield
    finally:
        model.train(modes[0][1])
        for m, mode in modes:
            if m.training != mode:
                m.train(mode)


def model_output(out: Any) -> Tensor:
    """The tensor :math:`f` of a model output (a tensor, or the ``.tensor`` of a ``GeometricTensor``)."""
    return out.tensor if isinstance(out, enn.GeometricTensor) else out


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The random state that Monte-Carlo curvature columns on ``device`` draw from."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class LaplaceEvidence:
    """Differentiable Laplace log marginal likelihood of a network with layer-wise priors.

    Example::

        ev = LaplaceEvidence(model, "classification")
        ev.fit(train_loader)
        (-ev.log_marginal_likelihood()).backward()   # gradients on ev.log_prior_precision

    Args:
        model: a network whose trained tensors all belong to supported layers
            (:func:`~escnn_soft.laplace.supported_module_types`), are excluded, or are hyperparameters.
        likelihood: ``"classification"`` (softmax cross-entropy on ``(batch, classes)`` logits, integer
            targets) or ``"regression"`` (Gaussian with learnable noise :math:`\\sigma`, targets shaped like
            the outputs).
        hessian: ``"kron"`` (Kronecker-factored GGN, structured pull-back), ``"kfac"`` (the same per-op
            Kronecker GGN :math:`G \\otimes A` pulled back densely, :math:`J^\top (G \\otimes A) J`, for tiny
            layers: isolates the error of the field Kronecker structure) or ``"full"`` (exact dense GGN,
            tiny models).
        prior_precision: initial :math:`\\delta` (scalar or one value per group).
        prior_structure: ``"layerwise"`` (one :math:`\\delta` per layer), ``"parameterwise"`` (one per
            trained tensor, laplace-torch's per-layer convention) or ``"scalar"``.
        sigma_noise: initial observation noise (regression).
        hyperparameters: tensors (or parameter names) inside the network that are hyperparameters, not
            weights: they get no prior and no curvature, and the evidence is differentiable w.r.t. them
            after ``fit(..., differentiable=True)``. ``None`` (default): the soft layers' own (relaxation
            amplitudes and lengthscales, every likelihood's coefficients, Sinkhorn logits);
            ``"likelihoods"``: exactly the probabilistic layers' likelihood coefficients
            (:func:`~escnn_soft.laplace.likelihood_hyperparameters`, an error if there are none).
        exclude: modules whose parameters stay point estimates outside the approximation: ``"default"``
            (normalisation layers and escnn non-linearities, :data:`~escnn_soft.laplace.DEFAULT_EXCLUDED`), ``None``, or an
            iterable of module types, modules, module paths (a path also excludes its children) or
            parameter names.
        stochastic: Monte-Carlo GGN (``mc_samples`` sampled targets per input) instead of the exact
            loss-Hessian square root; needed for many classes, where the exact one costs a backward pass
            per class.
    """

    def __init__(self, model: nn.Module, likelihood: str = "classification", hessian: str = "kron", *,
                 prior_precision: float | Tensor = 1.0, prior_structure: str = "layerwise",
                 sigma_noise: float = 1.0, hyperparameters: str | Iterable[str | Tensor] | None = None,
                 exclude: str | None | Iterable[Any] = "default", stochastic: bool = False,
                 mc_samples: int = 1) -> None:
        if hessian not in CURVATURES:
            raise ValueError(f"hessian: {hessian!r}; use 'kron' (Kronecker-factored GGN), 'kfac' (its dense "
                             "pull-back, tiny layers) or 'full' (exact GGN, tiny models)")
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"mc_samples: {mc_samples!r}; must be an int >= 1")
        try:
            positive = bool((torch.as_tensor(prior_precision, dtype=torch.float64) > 0).all())
        except (TypeError, ValueError, RuntimeError):
            positive = False
        if not positive:
            raise ValueError(f"prior_precision: {prior_precision!r}; must be > 0 (a number, or one value per group)")
        self.model = model
        self.likelihood = likelihood
        self.hessian = hessian
        self.prior_structure = prior_structure
        self.stochastic = stochastic
        self.mc_samples = mc_samples
        #: the split of the network's tensors and the prior groups (checks ``model``, ``prior_structure``,
        #: ``hyperparameters`` and ``exclude``)
        self.registry = ParameterRegistry(model, hyperparameters=hyperparameters, exclude=exclude,
                                          prior_structure=prior_structure)
        first = self.registry.params[0].tensor
        #: the observation likelihood (:mod:`escnn_soft.laplace.likelihoods`; checks ``likelihood`` and ``sigma_noise``)
        self.data_likelihood: ObservationLikelihood = make_likelihood(likelihood, first.dtype, first.device,
                                                                      sigma_noise)
        #: the curvature structure (:mod:`escnn_soft.laplace.structures`)
        self.curvature: CurvatureStructure = CURVATURES[hessian](self.registry, dict(model.named_modules()))
        init = torch.as_tensor(prior_precision, dtype=first.dtype, device=first.device).log()
        self.log_prior_precision = nn.Parameter(init.expand(len(self.groups)).clone())
        self._fitted = False

    # ------------------------------------------------------------------------------------------------
    # parameters

    @property
    def params(self) -> list[LaplaceParameter]:
        """The Laplace parameters (name, tensor, layer path, layer type), in ``named_parameters()`` order."""
        return self.registry.params

    @property
    def groups(self) -> list[str]:
        """The prior groups' names (layer paths, parameter names, or ``["all"]``)."""
        return self.registry.groups

    @property
    def network_hyperparameters(self) -> list[Tensor]:
        """The network's tensors that are hyperparameters (no prior, no curvature)."""
        return self.registry.hyperparameters

    @property
    def point_estimates(self) -> list[str]:
        """Names of trained parameters left out of the approximation after :meth:`fit` (they act outside the
        ops)."""
        return self.registry.point_estimates

    @property
    def device(self) -> torch.device:
        return self.log_prior_precision.device

    @property
    def dtype(self) -> torch.dtype:
        return self.log_prior_precision.dtype

    @property
    def log_sigma_noise(self) -> nn.Parameter | None:
        """:math:`\\log\\sigma` (regression), else ``None``."""
        return getattr(self.data_likelihood, "log_sigma_noise", None)

    def hyperparameters(self) -> list[Tensor]:
        """Log prior precisions, log noise (regression) and the network's hyperparameters."""
        return [self.log_prior_precision] + self.data_likelihood.hyperparameters() + self.network_hyperparameters

    @property
    def prior_precision(self) -> Tensor:
        """:math:`\\delta` per group (``self.groups``)."""
        return self.log_prior_precision.exp()

    @property
    def sigma_noise(self) -> Tensor:
        if self.log_sigma_noise is None:
            raise AttributeError("sigma_noise exists only for likelihood='regression'")
        return self.log_sigma_noise.exp()

    # ------------------------------------------------------------------------------------------------
    # the MAP objective

    def to_device(self, batch: Sequence[Any]) -> tuple[Any, Tensor]:
        """``(x, y)`` of a loader batch on the parameters' device (``x`` a tensor or ``GeometricTensor``)."""
        x = batch[0]
        if isinstance(x, enn.GeometricTensor):
            x = enn.GeometricTensor(x.tensor.to(self.device), x.type)
        else:
            x = x.to(self.device)
        return x, batch[1].to(self.device)

    def map_loss(self, output: Any, y: Tensor, n_data: int) -> Tensor:
        """The MAP objective of a batch of :math:`B` of :math:`N` samples, per sample:

        .. math::
            \\frac{h}{B}\\sum_{n\\in\\text{batch}} \\ell(f_n, y_n)
            + \\frac{1}{2N} \\sum_g \\delta_g \\lVert\\theta_g\\rVert^2,

        with the current prior precisions and noise held fixed (no gradient reaches them). ``output`` is the
        model's output (tensor or ``GeometricTensor``).
        """
        f = model_output(output)
        self.data_likelihood.check_batch(f, y)
        with torch.no_grad():
            delta = self.prior_precision.detach()
            h = self.data_likelihood.precision().detach()
        prior = 0.5 * (delta * self.registry.squared_norms()).sum()
        return h * self.data_likelihood.loss(f, y) / f.shape[0] + prior / n_data

    # ------------------------------------------------------------------------------------------------
    # fitting

    def _nonfinite(self, calls: Sequence[OpCall], what: str) -> FloatingPointError:
        for call in calls:
            if not bool(torch.isfinite(call.output).all()):
                return FloatingPointError(f"{what}: the output of layer '{call.module}' is not finite")
        return FloatingPointError(f"{what}: every recorded layer output is finite; the problem is after the "
                                  "last supported layer or in the targets")

    def _columns(self, f: Tensor, y: Tensor) -> Tensor:
        return self.data_likelihood.hessian_sqrt(f, y, self.stochastic, self.mc_samples)

    def fit(self, loader: Iterable, *, differentiable: bool = False, n_data: int | None = None,
            progress: bool = False) -> LaplaceEvidence:
        """Accumulate the loss and the curvature at the current weights over ``loader``.

        Args:
            loader: yields ``(x, y)`` batches (e.g. a ``DataLoader``).
            differentiable: keep the autograd graph of the loss and the curvature, so that
                :meth:`log_marginal_likelihood` is differentiable w.r.t. the network's hyperparameters
                (memory grows with the data seen).
            n_data: size of the whole training set when ``loader`` covers a subset of :math:`M` samples;
                the loss and :math:`G` are scaled by :math:`N/M` (a stochastic estimate).
            progress: show a tqdm bar over batches.

        Under an initialised ``torch.distributed`` process group of several ranks, every rank fits its own
        shard (e.g. through a ``DistributedSampler``) and the loss, sample counts and curvature statistics are
        summed over the ranks, so the evidence equals the single-process evidence on the union of the shards;
        ``n_data`` is then the size of the whole training set, not of a shard.
        """
        self._check_loader(loader)
        self._fitted = False
        self.curvature.reset()
        n_seen, loss, n_outputs = self._accumulate(loader, differentiable, differentiable, progress)
        return self._complete(n_seen, loss, n_outputs, n_data)

    def evidence_gradient(self, loader: Iterable, inputs: Sequence[Tensor], *, n_data: int | None = None,
                          prior_precision: float | Tensor | None = None, sigma_noise: float | Tensor | None = None,
                          progress: bool = False) -> tuple[Tensor, list[Tensor | None]]:
        r"""The log evidence on ``loader`` and its gradient w.r.t. ``inputs``, holding one batch's graph at a time.

        ``fit(loader, differentiable=True)`` followed by autograd keeps the graph of every sample, so its memory
        grows linearly with the data. The data enter the evidence :math:`E` only through sums over samples: the
        loss :math:`L = \sum_n \ell_n` and the curvature statistics :math:`S = \sum_n s_n` (Kronecker factors,
        or the dense GGN). With :math:`\phi` the inputs,

        .. math::
            \frac{dE}{d\phi} = \frac{\partial E}{\partial \phi}
            + \sum_b \Big(\frac{\partial E}{\partial L}\,\frac{d L_b}{d\phi}
            + \Big\langle \frac{\partial E}{\partial S}, \frac{d S_b}{d\phi} \Big\rangle\Big),

        where :math:`\partial E / \partial \phi` is the part through what the fit derives once from the
        hyperparameters (the planned bases of the basis expansions) and the prior precisions. A first pass fits
        without graph and gives :math:`\partial E/\partial L`, :math:`\partial E/\partial S` and
        :math:`\partial E/\partial\phi`; a second pass recomputes each batch's :math:`L_b, S_b` with graph and
        backpropagates :math:`\tfrac{\partial E}{\partial L} L_b + \langle \tfrac{\partial E}{\partial S},
        S_b\rangle`. The result equals autograd through ``fit(..., differentiable=True)`` up to floating-point
        summation order, at the memory of one batch and about twice the forward passes. The batches are held
        (both passes must see the same ones, Monte-Carlo curvature columns included: the random state is replayed).

        Under a process group of several ranks, as with ``fit(..., differentiable=True)``, each rank returns a
        gradient whose mean over the ranks (:func:`escnn_soft.distributed.average_gradients`) is the gradient of
        the evidence on the union of the shards.

        Args:
            loader: ``(x, y)`` batches, as for :meth:`fit`.
            inputs: the tensors to differentiate with respect to (hyperparameters, prior precisions, ...).
            n_data, progress: as for :meth:`fit`.
            prior_precision, sigma_noise: as for :meth:`log_marginal_likelihood`.

        Returns:
            ``(log evidence, gradients)``: the evidence without graph and one gradient per input (``None`` for an
            input the evidence does not depend on). Afterwards the object is fitted as by ``fit(loader)``.
        """
        self._check_loader(loader)
        inputs = list(inputs)
        batches = [self.to_device(b) for b in loader]
        rng = _rng_state(self.device)
        self._fitted = False
        self.curvature.reset()
        n_seen, loss, n_outputs = self._accumulate(batches, False, True, progress)
        leaves = {k: v.detach().requires_grad_() for k, v in self.curvature.statistics().items()}
        self.curvature.set_statistics(leaves)
        loss_leaf = loss.detach().requires_grad_()
        self._complete(n_seen, loss_leaf, n_outputs, n_data)
        finished = self.curvature.statistics()
        value = self.log_marginal_likelihood(prior_precision, sigma_noise)
        out = torch.autograd.grad(value, [*inputs, loss_leaf, *leaves.values()], allow_unused=True)
        grads: list[Tensor | None] = list(out[:len(inputs)])
        d_loss, d_stats = out[len(inputs)], dict(zip(leaves, out[len(inputs) + 1:]))
        share = float(world_size())  # each rank's share of the summed statistics, as fit(differentiable=True)
        _set_rng_state(rng, self.device)
        self.curvature.clear_statistics()
        with _curvature_mode(self.model, self.registry.targets), torch.enable_grad():
            for x, y in batches:
                nll, _ = self._add_batch(x, y, True, True)
                surrogate = nll * (0.0 if d_loss is None else d_loss)
                for place, s in self.curvature.statistics().items():
                    if d_stats.get(place) is not None:
                        surrogate = surrogate + (d_stats[place] * s).sum()
                self.curvature.clear_statistics()
                if surrogate.requires_grad:
                    for i, g in enumerate(torch.autograd.grad(surrogate * share, inputs, allow_unused=True)):
                        if g is not None:
                            grads[i] = g if grads[i] is None else grads[i] + g
        self.curvature.set_statistics(finished)
        self.curvature.detach()
        self._loss = self._loss.detach()
        return value.detach(), grads

    @staticmethod
    def _check_loader(loader: Any) -> None:
        if not isinstance(loader, Iterable):
            raise TypeError(f"loader: expected an iterable of (x, y) batches (e.g. a torch DataLoader), "
                            f"got {type(loader).__name__} ({loader!r})")

    def _accumulate(self, loader: Iterable, differentiable: bool, plan_graph: bool, progress: bool
                    ) -> tuple[int, Tensor, int]:
        """Add every batch's loss and curvature (summed over the ranks): ``(samples, summed loss, outputs)``."""
        loss: Tensor | None = None
        n_seen, n_outputs = 0, 0
        batches = loader
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(loader, desc="Laplace fit", leave=False)
        with _curvature_mode(self.model, self.registry.targets), torch.enable_grad():
            for batch in batches:
                x, y = self.to_device(batch)
                nll, f = self._add_batch(x, y, differentiable, plan_graph)
                n_seen += f.shape[0]
                n_outputs = f.shape[-1]
                loss = (nll if differentiable else nll.detach()) + (0 if loss is None else loss)
        if is_distributed():
            n_seen, loss = self._sum_over_ranks(n_seen, loss, differentiable)
        if n_seen == 0:
            raise ValueError("loader: it yielded no batches: cannot fit the Laplace approximation on no data; pass a "
                             "loader over at least one (x, y) batch")
        return n_seen, loss, n_outputs

    def _add_batch(self, x: Any, y: Tensor, differentiable: bool, plan_graph: bool) -> tuple[Tensor, Tensor]:
        """Forward one batch under the recorder and add its curvature: ``(summed loss, output f)``."""
        with OpRecorder(self.registry.targets) as rec:
            f = model_output(self.model(x))
        self.data_likelihood.check_batch(f, y)
        nll = self.data_likelihood.loss(f, y)
        if not bool(torch.isfinite(nll)):
            raise self._nonfinite(rec.calls, "non-finite loss")
        self.curvature.add_batch(Batch(self.model, x, y, f, rec, self._columns, model_output), differentiable,
                                 plan_graph)
        return nll, f

    def _complete(self, n_seen: int, loss: Tensor, n_outputs: int, n_data: int | None) -> LaplaceEvidence:
        """Scale the data terms by :math:`N/M`, finish the curvature and take the point estimates."""
        self.n_data = n_seen if n_data is None else int(n_data)
        self.n_outputs = n_outputs
        scale = self.n_data / n_seen
        self._loss = loss * scale
        self._theta = [p.detach().clone() for p in self.registry.tensors]
        self.registry.set_point_estimates(self.curvature.finish(scale))
        self._fitted = True
        return self

    def _sum_over_ranks(self, n_seen: int, loss: Tensor | None, differentiable: bool) -> tuple[int, Tensor]:
        """Under a process group, each rank has fitted its shard: sum the sample counts, the loss and every
        curvature statistic over the ranks (:func:`escnn_soft.distributed.sum_over_ranks`), so that the fit is
        the fit on the union of the shards. With ``differentiable`` the sums keep the graph; the gradients of
        a replicated evidence must then be averaged over ranks (:func:`escnn_soft.distributed.average_gradients`,
        as :func:`marglik_training` does)."""
        counts = torch.zeros(world_size(), dtype=torch.float64, device=self.device)
        counts[rank()] = n_seen
        counts = sum_over_ranks([counts])[0]
        empty = [r for r, c in enumerate(counts.tolist()) if c == 0]
        if empty:  # every rank raises the same error, before the collectives that need every rank's statistics
            raise ValueError(f"loader: rank(s) {empty} yielded no batches; under torch.distributed every rank must "
                             "fit at least one batch (shard the data with a DistributedSampler over enough samples)")
        loss = sum_over_ranks([loss], differentiable)[0]
        self.curvature.sum_over_ranks(differentiable)
        return int(counts.sum()), loss

    # ------------------------------------------------------------------------------------------------
    # evidence

    def _require_fit(self) -> None:
        if not self._fitted:
            raise RuntimeError("LaplaceEvidence: call fit(loader) first")

    def _delta(self, prior_precision: float | Tensor | None) -> Tensor:
        """:math:`\\delta` per group: the learnable one (``None``) or an override; checked finite and > 0
        (:math:`\\delta = 0` makes :math:`\\log\\det(hH + P_0) - \\log\\det P_0` NaN for a singular :math:`H`)."""
        if prior_precision is None:
            d = self.prior_precision
        else:
            d = torch.as_tensor(prior_precision, dtype=self.dtype, device=self.device)
            if d.numel() == 1:
                d = d.reshape(1).expand(len(self.groups))
            elif d.shape != (len(self.groups),):
                raise ValueError(f"prior_precision: expected a scalar or {len(self.groups)} values (groups "
                                 f"{self.groups}); got shape {tuple(d.shape)}")
        bad = ~(torch.isfinite(d) & (d > 0))
        if bool(bad.any()):
            g = int(bad.nonzero()[0, 0])
            source = "the value passed" if prior_precision is not None else "exp(log_prior_precision)"
            raise ValueError(f"prior_precision: {float(d[g])!r} for group '{self.groups[g]}' ({source}); it must be "
                             f"finite and > 0, as it lifts the curvature's zero eigenvalues (dead layers, zero "
                             f"inputs); use e.g. 1e-4 or more")
        return d

    def log_likelihood(self, sigma_noise: float | Tensor | None = None) -> Tensor:
        """:math:`\\log p(\\mathcal{D}\\mid\\theta_*)`: minus the summed cross-entropy, or
        :math:`-\\tfrac{1}{2\\sigma^2}\\sum\\lVert y - f\\rVert^2 - N D \\log(\\sigma\\sqrt{2\\pi})`."""
        self._require_fit()
        return self.data_likelihood.log_likelihood(self._loss, self.n_data, self.n_outputs, sigma_noise)

    def log_det_posterior_precision(self, prior_precision: float | Tensor | None = None,
                                    sigma_noise: float | Tensor | None = None) -> Tensor:
        """:math:`\\log\\det(hH + P_0)`."""
        self._require_fit()
        return self.curvature.log_det(self._delta(prior_precision), self.data_likelihood.precision(sigma_noise))

    def log_marginal_likelihood(self, prior_precision: float | Tensor | None = None,
                                sigma_noise: float | Tensor | None = None) -> Tensor:
        """Laplace log evidence (module docstring); differentiable w.r.t. the prior precisions, the noise
        and, after ``fit(..., differentiable=True)``, the network's hyperparameters.

        Args:
            prior_precision: ``None`` uses the learnable ``exp(log_prior_precision)``; a scalar or one value
                per group overrides it (as in laplace-torch).
            sigma_noise: ``None`` uses the learnable noise (regression only).
        """
        self._require_fit()
        delta = self._delta(prior_precision)
        sizes = self.registry.group_sizes(delta)
        log_det_ratio = self.log_det_posterior_precision(delta, sigma_noise) - (sizes * delta.log()).sum()
        scatter = (delta * self.registry.squared_norms(self._theta)).sum()
        return self.log_likelihood(sigma_noise) - 0.5 * (log_det_ratio + scatter)

    def per_layer(self, prior_precision: float | Tensor | None = None) -> list[dict[str, Any]]:
        """One row per prior group: its precision and contributions to the evidence.

        Keys: ``name``, ``layer_type``, ``n_params``, ``prior_precision``, ``log_det`` (of the group's block
        of the posterior precision), ``log_det_ratio`` (``log_det - n_params * log(prior_precision)``),
        ``scatter`` (:math:`\\delta\\lVert\\theta_*\\rVert^2`), ``contribution``
        (:math:`-\\tfrac12(\\text{log\\_det\\_ratio} + \\text{scatter})`), and ``degree`` (the soft layer's
        :meth:`degree`, for layer-wise groups of soft layers).
        """
        self._require_fit()
        with torch.no_grad():
            delta = self._delta(prior_precision)
            log_dets = self.curvature.group_log_dets(delta, self.data_likelihood.precision())
            sizes, norms = self.registry.group_sizes(delta), self.registry.squared_norms(self._theta)
        modules = dict(self.model.named_modules())
        rows = []
        for g, name in enumerate(self.groups):
            first = self.params[self.registry.group_of.index(g)]
            ratio = float(log_dets[g] - sizes[g] * delta[g].log())
            scatter = float(delta[g] * norms[g])
            row: dict[str, Any] = {"name": name,
                                   "layer_type": first.layer_type if self.prior_structure != "scalar" else "-",
                                   "n_params": int(sizes[g]), "prior_precision": float(delta[g]),
                                   "log_det": float(log_dets[g]), "log_det_ratio": ratio, "scatter": scatter,
                                   "contribution": -0.5 * (ratio + scatter)}
            module = modules[first.layer]
            if self.prior_structure == "layerwise" and isinstance(module, SoftModule):
                row["degree"] = module.degree()
            rows.append(row)
        return rows
