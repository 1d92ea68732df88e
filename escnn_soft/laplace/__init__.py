"""Laplace evidence for escnn and soft layers (METHODS section 4).

* :class:`LaplaceEvidence` — the one entry point: differentiable log marginal likelihood with layer-wise prior
  precisions, built from three parts, each its own module:

  - :class:`ParameterRegistry` (:mod:`~escnn_soft.laplace.parameters`): which tensors are Laplace parameters
    (:class:`LaplaceParameter`), hyperparameters or point estimates, and their prior groups;
  - an observation likelihood (:mod:`~escnn_soft.laplace.likelihoods`): :class:`Categorical`
    (``"classification"``) or :class:`Gaussian` (``"regression"``);
  - a curvature structure (:mod:`~escnn_soft.laplace.structures`): :class:`KronCurvature` (``"kron"``,
    Kronecker-factored GGN collected on the expanded filters and pulled back to the trained tensors; escnn basis
    coefficients get a Kronecker structure over out fields x in fields x basis), :class:`KFACCurvature`
    (``"kfac"``) or :class:`FullCurvature` (``"full"``, the exact dense GGN for tiny models).

* :func:`marglik_training` — Immer et al. (2021) schedule: train the weights on
  :meth:`LaplaceEvidence.map_loss`, and every few epochs fit the curvature and take Adam steps on the
  hyperparameters.
"""
from escnn_soft.laplace.evidence import LaplaceEvidence, model_output
from escnn_soft.laplace.likelihoods import Categorical, Gaussian, ObservationLikelihood
from escnn_soft.laplace.parameters import (
    DEFAULT_EXCLUDED,
    LaplaceParameter,
    ParameterRegistry,
    likelihood_hyperparameters,
    register_module_type,
    soft_hyperparameters,
    supported_module_types,
)
from escnn_soft.laplace.structures import CurvatureStructure, FullCurvature, KFACCurvature, KronCurvature
from escnn_soft.laplace.training import marglik_training, refresh_batchnorm

__all__ = ["DEFAULT_EXCLUDED", "Categorical", "CurvatureStructure", "FullCurvature", "Gaussian", "KFACCurvature",
           "KronCurvature", "LaplaceEvidence", "LaplaceParameter", "ObservationLikelihood", "ParameterRegistry",
           "likelihood_hyperparameters", "marglik_training", "model_output", "refresh_batchnorm",
           "register_module_type", "soft_hyperparameters", "supported_module_types"]
