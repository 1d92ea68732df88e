"""Observation likelihoods of the Laplace evidence: what the loss, its Hessian and the data fit term are.

Each likelihood gives

* the summed loss :math:`\\sum_n \\ell(f_n, y_n)` whose Hessian the GGN uses (in units where a Gaussian's noise
  is 1),
* a square root of that Hessian, :math:`\\sum_r s_{n,r} s_{n,r}^\\top = \\nabla_f^2 \\ell(f_n, y_n)`, exactly or
  by Monte-Carlo samples,
* the precision :math:`h` that multiplies the curvature (:math:`1`, or :math:`1/\\sigma^2`), and
* :math:`\\log p(\\mathcal D \\mid \\theta_*)` from the summed loss.

:class:`Categorical` (``"classification"``, softmax cross-entropy) and :class:`Gaussian` (``"regression"``,
learnable noise :math:`\\sigma`) are the two; :func:`make_likelihood` builds one by name.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LIKELIHOODS", "Categorical", "Gaussian", "ObservationLikelihood", "make_likelihood"]


class ObservationLikelihood:
    """Base class (module docstring). ``dtype``/``device``: those of the network's parameters."""

    #: the name :class:`~escnn_soft.laplace.LaplaceEvidence` takes as ``likelihood=``
    name: str = ""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device

    def hyperparameters(self) -> list[Tensor]:
        """The likelihood's own learnable hyperparameters (the evidence tunes them)."""
        return []

    def check_batch(self, f: Tensor, y: Tensor) -> None:
        """Raise a ``ValueError`` naming what is wrong when ``(f, y)`` cannot be scored."""
        raise NotImplementedError

    def loss(self, f: Tensor, y: Tensor) -> Tensor:
        """The summed loss whose Hessian the GGN uses."""
        raise NotImplementedError

    def hessian_sqrt(self, f: Tensor, y: Tensor, stochastic: bool = False, mc_samples: int = 1) -> Tensor:
        """``(batch, outputs, R)`` columns :math:`s_{n,r}` with :math:`\\sum_r s_{n,r} s_{n,r}^\\top` the loss
        Hessian with respect to :math:`f_n` (exactly, or in expectation with ``stochastic``, from ``mc_samples``
        samples)."""
        raise NotImplementedError

    def precision(self, sigma_noise: float | Tensor | None = None) -> Tensor:
        """:math:`h`, the factor of the curvature and of the loss in the log likelihood."""
        return torch.ones((), dtype=self.dtype, device=self.device)

    def log_likelihood(self, loss: Tensor, n_data: int, n_outputs: int,
                       sigma_noise: float | Tensor | None = None) -> Tensor:
        """:math:`\\log p(\\mathcal D \\mid \\theta_*)` from the summed :meth:`loss` over ``n_data`` samples."""
        raise NotImplementedError


class Categorical(ObservationLikelihood):
    """Softmax cross-entropy on ``(batch, classes)`` logits, integer targets:
    :math:`\\log p(\\mathcal D \\mid \\theta_*) = -\\sum_n \\ell_\\text{CE}(f_n, y_n)`, loss Hessian
    :math:`\\operatorname{diag}(p) - p p^\\top = (\\operatorname{diag}(\\sqrt p) - p \\sqrt p^\\top)
    (\\cdot)^\\top`, or :math:`\\mathbb E_{\\hat y \\sim p}[(p - e_{\\hat y})(p - e_{\\hat y})^\\top]`."""

    name = "classification"

    def check_batch(self, f: Tensor, y: Tensor) -> None:
        if f.ndim != 2:
            raise ValueError(f"classification needs (batch, classes) logits; the model returned shape "
                             f"{tuple(f.shape)}")
        if y.shape != f.shape[:1] or y.dtype.is_floating_point:
            raise ValueError(f"classification targets must be integer class indices of shape "
                             f"({f.shape[0]},); got {y.dtype} of shape {tuple(y.shape)}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= f.shape[1]):
            raise ValueError(f"classification targets must lie in [0, {f.shape[1]}); got "
                             f"[{int(y.min())}, {int(y.max())}]")

    def loss(self, f: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(f, y, reduction="sum")

    def hessian_sqrt(self, f: Tensor, y: Tensor, stochastic: bool = False, mc_samples: int = 1) -> Tensor:
        p = f.softmax(-1)
        if stochastic:
            draws = torch.multinomial(p.detach(), mc_samples, replacement=True)
            onehot = F.one_hot(draws, f.shape[-1]).to(f.dtype).transpose(1, 2)
            return (p.unsqueeze(-1) - onehot) / math.sqrt(mc_samples)
        sq = p.sqrt()
        return torch.diag_embed(sq) - p.unsqueeze(-1) * sq.unsqueeze(1)

    def precision(self, sigma_noise: float | Tensor | None = None) -> Tensor:
        if sigma_noise is not None:
            raise ValueError("sigma_noise applies only to likelihood='regression'")
        return super().precision()

    def log_likelihood(self, loss: Tensor, n_data: int, n_outputs: int,
                       sigma_noise: float | Tensor | None = None) -> Tensor:
        self.precision(sigma_noise)  # rejects a noise
        return -loss


class Gaussian(ObservationLikelihood):
    """Gaussian observations :math:`y \\sim \\mathcal N(f, \\sigma^2 I)` with a learnable
    :math:`\\log\\sigma` (:attr:`log_sigma_noise`): loss :math:`\\tfrac12\\lVert y - f\\rVert^2`, :math:`h =
    \\sigma^{-2}`, :math:`\\log p(\\mathcal D\\mid\\theta_*) = -h\\,\\text{loss} + \\tfrac{ND}{2}(\\log h -
    \\log 2\\pi)`."""

    name = "regression"

    def __init__(self, dtype: torch.dtype, device: torch.device, sigma_noise: float = 1.0) -> None:
        super().__init__(dtype, device)
        _check_sigma_noise(sigma_noise)
        self.log_sigma_noise = nn.Parameter(torch.tensor(math.log(sigma_noise), dtype=dtype, device=device))

    def hyperparameters(self) -> list[Tensor]:
        return [self.log_sigma_noise]

    def check_batch(self, f: Tensor, y: Tensor) -> None:
        if y.shape != f.shape:
            raise ValueError(f"regression targets of shape {tuple(y.shape)} do not match the model "
                             f"outputs of shape {tuple(f.shape)}; they must be equal")

    def loss(self, f: Tensor, y: Tensor) -> Tensor:
        return 0.5 * (f - y).pow(2).sum()

    def hessian_sqrt(self, f: Tensor, y: Tensor, stochastic: bool = False, mc_samples: int = 1) -> Tensor:
        n, c = f.shape[0], f.shape[-1]
        if stochastic:
            return torch.randn(n, c, mc_samples, dtype=f.dtype, device=f.device) / math.sqrt(mc_samples)
        return torch.eye(c, dtype=f.dtype, device=f.device).expand(n, c, c)

    def precision(self, sigma_noise: float | Tensor | None = None) -> Tensor:
        if sigma_noise is None:
            return (-2 * self.log_sigma_noise).exp()
        return torch.as_tensor(sigma_noise, dtype=self.dtype, device=self.device).pow(-2)

    def log_likelihood(self, loss: Tensor, n_data: int, n_outputs: int,
                       sigma_noise: float | Tensor | None = None) -> Tensor:
        h = self.precision(sigma_noise)
        return -h * loss + 0.5 * n_data * n_outputs * (h.log() - math.log(2 * math.pi))


#: ``likelihood=`` name -> class
LIKELIHOODS: dict[str, type[ObservationLikelihood]] = {"classification": Categorical, "regression": Gaussian}


def make_likelihood(name: str, dtype: torch.dtype, device: torch.device, sigma_noise: float = 1.0
                    ) -> ObservationLikelihood:
    """The likelihood called ``name`` (:data:`LIKELIHOODS`); ``sigma_noise`` is the initial noise of a Gaussian."""
    if name not in LIKELIHOODS:
        raise ValueError(f"likelihood: {name!r}; use 'classification' or 'regression'")
    _check_sigma_noise(sigma_noise)
    if name == "regression":
        return Gaussian(dtype, device, sigma_noise)
    return Categorical(dtype, device)


def _check_sigma_noise(sigma_noise: float) -> None:
    if isinstance(sigma_noise, bool) or not isinstance(sigma_noise, (int, float)) or not sigma_noise > 0:
        raise ValueError(f"sigma_noise: {sigma_noise!r}; must be a number > 0")
