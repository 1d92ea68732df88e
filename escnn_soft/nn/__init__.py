"""Soft layers: drop-in replacements for escnn's R2Conv, R3Conv and Linear."""
from escnn_soft.nn.base import SoftModule
from escnn_soft.nn.doubly_stochastic import DSGroupConv, DSLiftingConv
from escnn_soft.nn.probabilistic import ProbabilisticLinear, ProbabilisticR2Conv, ProbabilisticR3Conv
from escnn_soft.nn.relaxed import RelaxedR2Conv, RelaxedR3Conv
from escnn_soft.nn.rpp import RPPR2Conv, RPPR3Conv
from escnn_soft.nn.rsteer import RSteerR2Conv, RSteerR3Conv
from escnn_soft.nn.shared_linear import BilevelTrainer, SharedLinear, implicit_hypergradient
from escnn_soft.nn.sinkhorn import sinkhorn

__all__ = ["BilevelTrainer", "DSGroupConv", "DSLiftingConv", "ProbabilisticLinear", "ProbabilisticR2Conv", "ProbabilisticR3Conv", "RPPR2Conv", "RPPR3Conv", "RSteerR2Conv", "RSteerR3Conv", "RelaxedR2Conv", "RelaxedR3Conv", "SharedLinear", "SoftModule", "implicit_hypergradient", "sinkhorn"]
