"""Laplace evidence for escnn and soft layers (METHODS section 4).

* :class:`LaplaceEvidence` — differentiable log marginal likelihood with layer-wise prior precisions,
  Kronecker-factored GGN curvature collected on the expanded filters and pulled back to the trained
  tensors (escnn basis coefficients get a Kronecker structure over out fields x in fields x basis), or
  the exact dense GGN for tiny models.
* :func:`marglik_training` — Immer et al. (2021) schedule: train the weights, and every few epochs fit
  the curvature and take Adam steps on the hyperparameters.
"""
from escnn_soft.laplace.evidence import (
    LaplaceEvidence,
    likelihood_hyperparameters,
    register_module_type,
    supported_module_types,
)
from escnn_soft.laplace.training import marglik_training, refresh_batchnorm

__all__ = ["LaplaceEvidence", "likelihood_hyperparameters", "marglik_training", "refresh_batchnorm",
           "register_module_type", "supported_module_types"]
