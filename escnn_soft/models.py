"""The DoubleMNIST networks, at their historical import path: :mod:`escnn_soft.doublemnist.networks`.

``escnn_soft.models.build_model`` (and every other public name of that module) keeps working; new code can
import from :mod:`escnn_soft.doublemnist`.
"""
from escnn_soft.doublemnist import networks as _networks
from escnn_soft.doublemnist.networks import *

__all__ = list(_networks.__all__)
