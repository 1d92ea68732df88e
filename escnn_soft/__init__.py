"""escnn_soft: softly equivariant steerable layers for escnn.

Each soft layer learns how much, and to which subgroup, it is equivariant; ``degree()`` says
what it learned and :mod:`escnn_soft.metrics` measures it::

    import escnn_soft as es
    layer = es.nn.ProbabilisticR2Conv(in_type, out_type, kernel_size=5)
    loss = task_loss + es.regularization_loss(model)
"""
from escnn_soft.ordering import canonical_order_, check_same_order, install_deterministic_hash

install_deterministic_hash()  # before any escnn model is built through this package: see escnn_soft.ordering

from escnn_soft import data, laplace, metrics, nn, testing
from escnn_soft.convert import harden, soften
from escnn_soft.likelihood import GroupLikelihood
from escnn_soft.regularization import regularization_loss

__version__ = "0.1.0"

__all__ = ["GroupLikelihood", "__version__", "canonical_order_", "check_same_order", "data", "distributed", "harden", "laplace", "metrics", "nn", "ordering", "regularization_loss", "soften", "testing"]
