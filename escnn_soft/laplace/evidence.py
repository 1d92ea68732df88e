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
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from escnn import nn as enn
from torch import Tensor, nn

from escnn_soft.distributed import is_distributed, rank, sum_over_ranks, world_size
from escnn_soft.laplace.curvature import SlotStats, Term, _connected, plan_terms
from escnn_soft.laplace.exact import dense_ggn
from escnn_soft.laplace.hooks import OpCall, OpRecorder
from escnn_soft.nn.base import SoftModule

__all__ = ["DEFAULT_EXCLUDED", "LaplaceEvidence", "likelihood_hyperparameters", "register_module_type",
           "supported_module_types"]

_SUPPORTED: list[type] = [nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, enn.R2Conv, enn.R3Conv, enn.Linear,
                          SoftModule]

#: module types whose parameters ``exclude="default"`` leaves out of the Laplace approximation:
#: normalisation layers and escnn's non-linearities (the biases of gated and norm non-linearities)
DEFAULT_EXCLUDED: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, enn.InnerBatchNorm, enn.IIDBatchNorm1d,
    enn.IIDBatchNorm2d, enn.IIDBatchNorm3d, enn.NormBatchNorm, enn.GNormBatchNorm, enn.InducedNormBatchNorm,
    enn.GatedNonLinearity1, enn.GatedNonLinearity2, enn.GatedNonLinearityUniform, enn.InducedGatedNonLinearity1,
    enn.NormNonLinearity, enn.InducedNormNonLinearity)


def register_module_type(cls: type) -> None:
    """Declare that layers of type ``cls`` expand a filter (and bias) from their parameters and call
    ``torch.nn.functional.linear``/``conv{1,2,3}d`` with it, so their curvature can be collected."""
    if cls not in _SUPPORTED:
        _SUPPORTED.append(cls)


def supported_module_types() -> list[str]:
    """Names of the layer types whose parameters get curvature."""
    return [f"{c.__module__}.{c.__qualname__}" for c in _SUPPORTED]


def _is_supported(module: nn.Module) -> bool:
    return isinstance(module, tuple(_SUPPORTED))


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


def _default_hyperparameters(model: nn.Module) -> list[Tensor]:
    """The trainable hyperparameters of the soft layers in ``model``.

    The ``hyperparameter_parameters()`` of every :class:`escnn_soft.nn.SoftModule` (the soft-layer contract,
    :mod:`escnn_soft.nn.base`) in module order, shared tensors once: relaxed layers' log amplitudes,
    lengthscales, variances and smoothness, probabilistic layers' likelihood coefficients, doubly-stochastic
    layers' Sinkhorn ``logits``.
    """
    found: list[Tensor] = []
    for m in model.modules():
        if isinstance(m, SoftModule):
            hp = m.hyperparameter_parameters()
            found += list(hp.values()) if isinstance(hp, dict) else list(hp)
    return list({id(t): t for t in found if t.requires_grad}.values())


def likelihood_hyperparameters(model: nn.Module) -> list[Tensor]:
    """The trainable coefficients of every distinct :class:`escnn_soft.GroupLikelihood` in ``model`` (shared
    likelihoods once), in module order: ``hyperparameters="likelihoods"``, λ tuned by the evidence.

    Raises:
        ValueError: there is nothing to tune: ``model`` has no probabilistic layer, or every likelihood's
            coefficients are frozen (``requires_grad=False``).
    """
    from escnn_soft.likelihood import GroupLikelihood

    liks = {id(m): m for m in model.modules() if isinstance(m, GroupLikelihood)}
    if not liks:
        raise ValueError(f"hyperparameters='likelihoods': nothing to tune, the {type(model).__name__} has no "
                         "GroupLikelihood (no probabilistic layer); build it with method='probabilistic' "
                         "(escnn_soft.soften or escnn_soft.models.build_model), or pass hyperparameters=None to "
                         "tune only the prior precisions and the other soft layers' hyperparameters")
    found = [p for lik in liks.values() for p in lik.parameters() if p.requires_grad]
    if not found:
        raise ValueError(f"hyperparameters='likelihoods': nothing to tune, the coefficients of all {len(liks)} "
                         "likelihood(s) are frozen (requires_grad=False); call "
                         "likelihood.coefficients.requires_grad_(True) to let the evidence tune λ")
    return list({id(t): t for t in found}.values())


def _output(out: Any) -> Tensor:
    return out.tensor if isinstance(out, enn.GeometricTensor) else out


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, enn.GeometricTensor):
        return enn.GeometricTensor(x.tensor.to(device), x.type)
    return x.to(device)


class LaplaceEvidence:
    """Differentiable Laplace log marginal likelihood of a network with layer-wise priors.

    Example::

        ev = LaplaceEvidence(model, "classification")
        ev.fit(train_loader)
        (-ev.log_marginal_likelihood()).backward()   # gradients on ev.log_prior_precision

    Args:
        model: a network whose trained tensors all belong to supported layers
            (:func:`supported_module_types`), are excluded, or are hyperparameters.
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
            (:func:`likelihood_hyperparameters`, an error if there are none).
        exclude: modules whose parameters stay point estimates outside the approximation: ``"default"``
            (normalisation layers and escnn non-linearities, :data:`DEFAULT_EXCLUDED`), ``None``, or an
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
        if likelihood not in ("classification", "regression"):
            raise ValueError(f"likelihood: {likelihood!r}; use 'classification' or 'regression'")
        if hessian not in ("kron", "kfac", "full"):
            raise ValueError(f"hessian: {hessian!r}; use 'kron' (Kronecker-factored GGN), 'kfac' (its dense "
                             "pull-back, tiny layers) or 'full' (exact GGN, tiny models)")
        if prior_structure not in ("layerwise", "parameterwise", "scalar"):
            raise ValueError(f"prior_structure: {prior_structure!r}; use 'layerwise', 'parameterwise' or 'scalar'")
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"mc_samples: {mc_samples!r}; must be an int >= 1")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        try:
            positive = bool((torch.as_tensor(prior_precision, dtype=torch.float64) > 0).all())
        except (TypeError, ValueError, RuntimeError):
            positive = False
        if not positive:
            raise ValueError(f"prior_precision: {prior_precision!r}; must be > 0 (a number, or one value per group)")
        if isinstance(sigma_noise, bool) or not isinstance(sigma_noise, (int, float)) or not sigma_noise > 0:
            raise ValueError(f"sigma_noise: {sigma_noise!r}; must be a number > 0")
        self.model = model
        self.likelihood = likelihood
        self.hessian = hessian
        self.prior_structure = prior_structure
        self.stochastic = stochastic
        self.mc_samples = mc_samples
        self.network_hyperparameters = self._hyperparameters(hyperparameters)
        self._modules = dict(model.named_modules())
        self.params, self._targets = self._laplace_parameters(exclude)
        first = self.params[0][1]
        self._device, self._dtype = first.device, first.dtype
        if prior_structure == "layerwise":
            names = [layer for _, _, layer, _ in self.params]
        elif prior_structure == "parameterwise":
            names = [name for name, _, _, _ in self.params]
        else:
            names = ["all"] * len(self.params)
        self.groups: list[str] = list(dict.fromkeys(names))
        self._group_of = [self.groups.index(n) for n in names]
        init = torch.as_tensor(prior_precision, dtype=self._dtype, device=self._device).log()
        self.log_prior_precision = nn.Parameter(init.expand(len(self.groups)).clone())
        self.log_sigma_noise: nn.Parameter | None = None
        if likelihood == "regression":
            self.log_sigma_noise = nn.Parameter(torch.tensor(math.log(sigma_noise), dtype=self._dtype,
                                                             device=self._device))
        self._fitted = False
        #: names of trained parameters left out of the approximation after fit() (they act outside the ops)
        self.point_estimates: list[str] = []
        self._in_laplace = [True] * len(self.params)

    # ------------------------------------------------------------------------------------------------
    # parameters

    def _hyperparameters(self, given: str | Iterable[str | Tensor] | None) -> list[Tensor]:
        named = dict(self.model.named_parameters())
        if given is None:
            return _default_hyperparameters(self.model)
        if isinstance(given, str):
            if given == "likelihoods":
                return likelihood_hyperparameters(self.model)
            raise ValueError(f"hyperparameters: {given!r}; use None (every soft layer's hyperparameters), "
                             "'likelihoods' (the probabilistic layers' likelihood coefficients) or a list of "
                             "tensors or parameter names")
        if not isinstance(given, Iterable):
            raise TypeError(f"hyperparameters: expected None, 'likelihoods' or a list of tensors or parameter "
                            f"names, got {type(given).__name__} ({given!r})")
        out = []
        for h in given:
            if isinstance(h, str):
                if h not in named:
                    raise KeyError(f"hyperparameters: no parameter named {h!r} in the model")
                h = named[h]
            out.append(h)
        return out

    def _laplace_parameters(self, exclude: str | None | Iterable[Any]
                            ) -> tuple[list[tuple[str, Tensor, str, str]], dict[nn.Module, str]]:
        modules = dict(self.model.named_modules())
        excluded_types: tuple[type, ...] = ()
        excluded_paths: list[str] = []
        excluded_modules: list[nn.Module] = []
        if exclude == "default":
            excluded_types = DEFAULT_EXCLUDED
        elif isinstance(exclude, str):
            raise ValueError(f"exclude: {exclude!r}; use 'default', None or an iterable of types, modules, "
                             "module paths or parameter names")
        elif exclude is not None:
            for e in exclude:
                if isinstance(e, type):
                    excluded_types += (e,)
                elif isinstance(e, nn.Module):
                    excluded_modules.append(e)
                else:
                    excluded_paths.append(str(e))
        hyper = {id(h) for h in self.network_hyperparameters}
        params: list[tuple[str, Tensor, str, str]] = []
        targets: dict[nn.Module, str] = {}
        unsupported: dict[str, str] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad or id(p) in hyper or p.numel() == 0 or name in excluded_paths:
                continue
            path = name.rsplit(".", 1)[0] if "." in name else ""
            ancestors = [".".join(path.split(".")[:k]) for k in range(len(path.split(".")), 0, -1)] if path else []
            ancestors.append("")
            if any(isinstance(modules[a], excluded_types) or modules[a] in excluded_modules
                   or any(a == e or a.startswith(e + ".") for e in excluded_paths) for a in ancestors):
                continue
            layer = next((a for a in ancestors if _is_supported(modules[a])), None)
            if layer is None:
                unsupported[path or "<root>"] = type(modules[path]).__name__
                continue
            targets[modules[layer]] = layer
            params.append((name, p, layer, type(modules[layer]).__name__))
        if unsupported:
            listing = "; ".join(f"'{k}' ({v})" for k, v in unsupported.items())
            raise TypeError(f"model: unsupported layer types with trained parameters: {listing}. Supported: "
                            f"{', '.join(supported_module_types())}. Pass exclude=[...] to keep them as point "
                            "estimates, hyperparameters=[...] if they are hyperparameters, or "
                            "escnn_soft.laplace.register_module_type(cls) if the layer expands a filter "
                            "and calls a linear/conv op")
        if not params:
            raise ValueError(f"model: the {type(self.model).__name__} has no trained parameters in supported layers "
                             f"({', '.join(supported_module_types())}); check exclude=... and hyperparameters=...")
        return params, targets

    def hyperparameters(self) -> list[Tensor]:
        """Log prior precisions, log noise (regression) and the network's hyperparameters."""
        own = [self.log_prior_precision] + ([self.log_sigma_noise] if self.log_sigma_noise is not None else [])
        return own + self.network_hyperparameters

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
    # fitting

    def _check_batch(self, f: Tensor, y: Tensor) -> None:
        if self.likelihood == "regression":
            if y.shape != f.shape:
                raise ValueError(f"regression targets of shape {tuple(y.shape)} do not match the model "
                                 f"outputs of shape {tuple(f.shape)}; they must be equal")
            return
        if f.ndim != 2:
            raise ValueError(f"classification needs (batch, classes) logits; the model returned shape "
                             f"{tuple(f.shape)}")
        if y.shape != f.shape[:1] or y.dtype.is_floating_point:
            raise ValueError(f"classification targets must be integer class indices of shape "
                             f"({f.shape[0]},); got {y.dtype} of shape {tuple(y.shape)}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= f.shape[1]):
            raise ValueError(f"classification targets must lie in [0, {f.shape[1]}); got "
                             f"[{int(y.min())}, {int(y.max())}]")

    def _nll(self, f: Tensor, y: Tensor) -> Tensor:
        """Summed loss whose Hessian the GGN uses: cross-entropy, or :math:`\\tfrac12\\lVert y - f\\rVert^2`."""
        if self.likelihood == "classification":
            return F.cross_entropy(f, y, reduction="sum")
        return 0.5 * (f - y).pow(2).sum()

    def _columns(self, f: Tensor, y: Tensor) -> Tensor:
        """``(batch, outputs, R)``: :math:`\\sum_r s_r s_r^\\top` is the loss Hessian w.r.t. :math:`f` (exactly,
        or in expectation with ``stochastic``), in units where the regression noise is 1."""
        n, c = f.shape[0], f.shape[-1]
        if self.likelihood == "regression":
            if self.stochastic:
                return torch.randn(n, c, self.mc_samples, dtype=f.dtype, device=f.device) / math.sqrt(self.mc_samples)
            return torch.eye(c, dtype=f.dtype, device=f.device).expand(n, c, c)
        p = f.softmax(-1)
        if self.stochastic:
            draws = torch.multinomial(p.detach(), self.mc_samples, replacement=True)
            onehot = F.one_hot(draws, c).to(f.dtype).transpose(1, 2)
            return (p.unsqueeze(-1) - onehot) / math.sqrt(self.mc_samples)
        sq = p.sqrt()
        return torch.diag_embed(sq) - p.unsqueeze(-1) * sq.unsqueeze(1)

    def _nonfinite(self, calls: Sequence[OpCall], what: str) -> FloatingPointError:
        for call in calls:
            if not bool(torch.isfinite(call.output).all()):
                return FloatingPointError(f"{what}: the output of layer '{call.module}' is not finite")
        return FloatingPointError(f"{what}: every recorded layer output is finite; the problem is after the "
                                  "last supported layer or in the targets")

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
        if not isinstance(loader, Iterable):
            raise TypeError(f"loader: expected an iterable of (x, y) batches (e.g. a torch DataLoader), "
                            f"got {type(loader).__name__} ({loader!r})")
        self._fitted = False
        hyper = self.network_hyperparameters
        params = [p for _, p, _, _ in self.params]
        terms: list[Term] | None = None
        stats: dict[Any, SlotStats] = {}
        h_full: Tensor | None = None
        loss: Tensor | None = None
        n_seen, n_outputs = 0, 0
        batches = loader
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(loader, desc="Laplace fit", leave=False)
        with _curvature_mode(self.model, self._targets), torch.enable_grad():
            for batch in batches:
                x, y = _to(batch[0], self._device), batch[1].to(self._device)
                with OpRecorder(self._targets) as rec:
                    f = _output(self.model(x))
                self._check_batch(f, y)
                nll = self._nll(f, y)
                if not bool(torch.isfinite(nll)):
                    raise self._nonfinite(rec.calls, "non-finite loss")
                n_seen += f.shape[0]
                n_outputs = f.shape[-1]
                loss = (nll if differentiable else nll.detach()) + (0 if loss is None else loss)
                if self.hessian == "full":
                    hb = dense_ggn(self.model, params, x, y, _output, self._columns, differentiable)
                    h_full = hb if h_full is None else h_full + hb
                    continue
                if terms is None:
                    terms, stats = plan_terms(rec.calls, rec.expansions, self.params, self._modules, hyper,
                                              differentiable, blocks=self.hessian == "kron")
                self._accumulate(rec.calls, stats, f, y, differentiable)
        if is_distributed():
            n_seen, loss, h_full = self._sum_over_ranks(n_seen, loss, stats, h_full, differentiable)
        if n_seen == 0:
            raise ValueError("loader: it yielded no batches: cannot fit the Laplace approximation on no data; pass a "
                             "loader over at least one (x, y) batch")
        self.n_data = n_seen if n_data is None else int(n_data)
        self.n_outputs = n_outputs
        scale = self.n_data / n_seen
        self._loss = loss * scale
        self._theta = [p.detach().clone() for p in params]
        if self.hessian == "full":
            self._H = h_full * scale
            self._check_full()
        else:
            for s in stats.values():
                s.check_finite()
            self._set_point_estimates({t.param_index for t in terms})
            self._terms = terms
            self._spectra = [(t.param_index, t.spectra(stats, scale)) for t in terms]
            for i, blocks in self._spectra:
                if not all(bool(torch.isfinite(v).all()) for b in blocks for v in b):
                    name, _, layer, kind = self.params[i]
                    raise FloatingPointError(f"non-finite curvature for '{name}' at layer '{layer}' ({kind})")
        self._fitted = True
        return self

    def _sum_over_ranks(self, n_seen: int, loss: Tensor | None, stats: dict[Any, SlotStats], h_full: Tensor | None,
                        differentiable: bool) -> tuple[int, Tensor, Tensor | None]:
        """Under a process group, each rank has fitted its shard: sum the sample counts, the loss and every
        curvature statistic over the ranks (:func:`escnn_soft.distributed.sum_over_ranks`), so that the fit is
        the fit on the union of the shards. With ``differentiable`` the sums keep the graph; the gradients of
        a replicated evidence must then be averaged over ranks (:func:`escnn_soft.distributed.average_gradients`,
        as :func:`marglik_training` does)."""
        counts = torch.zeros(world_size(), dtype=torch.float64, device=self._device)
        counts[rank()] = n_seen
        counts = sum_over_ranks([counts])[0]
        empty = [r for r, c in enumerate(counts.tolist()) if c == 0]
        if empty:  # every rank raises the same error, before the collectives that need every rank's statistics
            raise ValueError(f"loader: rank(s) {empty} yielded no batches; under torch.distributed every rank must "
                             "fit at least one batch (shard the data with a DistributedSampler over enough samples)")
        slot_n = sum_over_ranks([torch.tensor([float(st.n) for st in stats.values()], dtype=torch.float64,
                                              device=self._device)])[0]
        tensors: list[Tensor] = [loss] + ([h_full] if h_full is not None else [])
        places: list[tuple[Any, str, Any]] = []
        for key, st in stats.items():
            for attr in ("G", "A"):
                if getattr(st, attr) is not None:
                    tensors.append(getattr(st, attr))
                    places.append((key, attr, None))
            for attr in ("A_g", "A_f", "A_z"):
                for k, v in getattr(st, attr).items():
                    tensors.append(v)
                    places.append((key, attr, k))
        reduced = sum_over_ranks(tensors, differentiable)
        loss, rest = reduced[0], reduced[1:]
        if h_full is not None:
            h_full, rest = rest[0], rest[1:]
        for (key, attr, k), value in zip(places, rest):
            if k is None:
                setattr(stats[key], attr, value)
            else:
                getattr(stats[key], attr)[k] = value
        for st, n in zip(stats.values(), slot_n.tolist()):
            st.n = int(n)
        return int(counts.sum()), loss, h_full

    def _set_point_estimates(self, covered: set) -> None:
        """Parameters reaching no recorded op stay point estimates (warned once per set)."""
        outside = [i for i in range(len(self.params)) if i not in covered]
        names = [self.params[i][0] for i in outside]
        if names and names != self.point_estimates:
            warnings.warn(f"escnn_soft.laplace: {names} act outside the filter and bias of the layers' linear/conv "
                          "operations (e.g. after a position-dependent combination); they are kept as point "
                          "estimates without prior or curvature. Pass them in exclude=[...] or "
                          "hyperparameters=[...] to silence this.", stacklevel=3)
        self.point_estimates = names
        self._in_laplace = [i not in outside for i in range(len(self.params))]

    def _accumulate(self, calls: Sequence[OpCall], stats: dict[Any, SlotStats], f: Tensor, y: Tensor,
                    differentiable: bool) -> None:
        """Add a batch: input statistics from the recorded op inputs, output-gradient statistics from one
        backward pass per loss-Hessian column (a loop: faster than a batched backward on CPU).

        When the output is the output of the last op and its input :math:`u` has fewer entries per sample
        than there are columns (a linear head on few features), the columns are first carried through that
        op alone to :math:`u`, :math:`t_r = (\\partial f / \\partial u)^\\top s_r`, and replaced there by the
        rows of the triangular factor of :math:`T^\\top = QR` per sample (:math:`R^\\top R = T T^\\top`,
        one column per entry of :math:`u`): the same curvature from fewer backward passes through the network.
        """
        used = [c for c in calls if c.key in stats]
        for call in used:
            stats[call.key].add_inputs(call, differentiable)
        cols = self._columns(f, y)
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

    def _check_full(self) -> None:
        if bool(torch.isfinite(self._H).all()):
            return
        offset = 0
        for name, p, layer, kind in self.params:
            block = self._H[offset:offset + p.numel()]
            if not bool(torch.isfinite(block).all()):
                raise FloatingPointError(f"non-finite curvature for '{name}' at layer '{layer}' ({kind})")
            offset += p.numel()

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
            d = torch.as_tensor(prior_precision, dtype=self._dtype, device=self._device)
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

    def _h(self, sigma_noise: float | Tensor | None) -> Tensor:
        if self.likelihood == "classification":
            if sigma_noise is not None:
                raise ValueError("sigma_noise applies only to likelihood='regression'")
            return torch.ones((), dtype=self._dtype, device=self._device)
        sigma = self.sigma_noise if sigma_noise is None else torch.as_tensor(sigma_noise, dtype=self._dtype,
                                                                               device=self._device)
        return sigma.pow(-2)

    def log_likelihood(self, sigma_noise: float | Tensor | None = None) -> Tensor:
        """:math:`\\log p(\\mathcal{D}\\mid\\theta_*)`: minus the summed cross-entropy, or
        :math:`-\\tfrac{1}{2\\sigma^2}\\sum\\lVert y - f\\rVert^2 - N D \\log(\\sigma\\sqrt{2\\pi})`."""
        self._require_fit()
        h = self._h(sigma_noise)
        if self.likelihood == "classification":
            return -self._loss
        return -h * self._loss + 0.5 * self.n_data * self.n_outputs * (h.log() - math.log(2 * math.pi))

    def _group_log_dets(self, delta: Tensor, h: Tensor) -> Tensor:
        """:math:`\\log\\det(hH + P_0)` restricted to each group (exactly the sum for ``"kron"``; the
        diagonal blocks for ``"full"``)."""
        out = [delta.new_zeros(()) for _ in self.groups]
        if self.hessian != "full":
            for i, blocks in self._spectra:
                g = self._group_of[i]
                for factors in blocks:
                    spec = factors[0]
                    for v in factors[1:]:
                        spec = (spec.unsqueeze(-1) * v).reshape(-1)
                    out[g] = out[g] + torch.log(h * spec + delta[g]).sum()
            return torch.stack(out)
        for i, ((offset, label), (_, p, _, _)) in enumerate(zip(self._row_labels(), self.params)):
            block = self._H[offset:offset + p.numel(), offset:offset + p.numel()]
            g = self._group_of[i]
            out[g] = out[g] + _logdet(h * block + delta[g] * torch.eye(p.numel(), dtype=block.dtype,
                                                                       device=block.device), [(0, label)])
        return torch.stack(out)

    def _row_labels(self) -> list[tuple[int, str]]:
        """``(first row in the dense GGN, "'parameter' at layer 'layer'")`` for every parameter."""
        out, offset = [], 0
        for name, p, layer, _ in self.params:
            out.append((offset, f"'{name}' at layer '{layer}'"))
            offset += p.numel()
        return out

    def _delta_vector(self, delta: Tensor) -> Tensor:
        return torch.cat([delta[g].expand(p.numel()) for g, (_, p, _, _) in zip(self._group_of, self.params)])

    def log_det_posterior_precision(self, prior_precision: float | Tensor | None = None,
                                    sigma_noise: float | Tensor | None = None) -> Tensor:
        """:math:`\\log\\det(hH + P_0)`."""
        self._require_fit()
        delta, h = self._delta(prior_precision), self._h(sigma_noise)
        if self.hessian == "full":
            return _logdet(h * self._H + torch.diag(self._delta_vector(delta)), self._row_labels())
        return self._group_log_dets(delta, h).sum()

    def _sizes(self) -> Tensor:
        sizes = torch.zeros(len(self.groups), dtype=self._dtype, device=self._device)
        for g, (_, p, _, _), inside in zip(self._group_of, self.params, self._in_laplace):
            if inside:
                sizes[g] += p.numel()
        return sizes

    def _sq_norms(self) -> Tensor:
        norms = torch.zeros(len(self.groups), dtype=self._dtype, device=self._device)
        for g, t, inside in zip(self._group_of, self._theta, self._in_laplace):
            if inside:
                norms[g] += t.pow(2).sum()
        return norms

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
        log_det_ratio = self.log_det_posterior_precision(delta, sigma_noise) - (self._sizes() * delta.log()).sum()
        scatter = (delta * self._sq_norms()).sum()
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
            log_dets = self._group_log_dets(delta, self._h(None))
            sizes, norms = self._sizes(), self._sq_norms()
        modules = dict(self.model.named_modules())
        rows = []
        for g, name in enumerate(self.groups):
            first = self._group_of.index(g)
            layer, kind = self.params[first][2], self.params[first][3]
            ratio = float(log_dets[g] - sizes[g] * delta[g].log())
            scatter = float(delta[g] * norms[g])
            row: dict[str, Any] = {"name": name, "layer_type": kind if self.prior_structure != "scalar" else "-",
                                   "n_params": int(sizes[g]), "prior_precision": float(delta[g]),
                                   "log_det": float(log_dets[g]), "log_det_ratio": ratio, "scatter": scatter,
                                   "contribution": -0.5 * (ratio + scatter)}
            module = modules[layer]
            if self.prior_structure == "layerwise" and isinstance(module, SoftModule):
                row["degree"] = module.degree()
            rows.append(row)
        return rows


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
