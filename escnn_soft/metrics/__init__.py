"""Measuring equivariance: per-element errors, Lie derivatives, per-layer × per-subgroup reports, λ over training."""
from escnn_soft.metrics.equivariance import (
    WrappedModule,
    equivariance_error,
    grid_exact_elements,
    is_grid_exact,
    relative_error,
    transform,
)
from escnn_soft.metrics.history import LikelihoodHistory
from escnn_soft.metrics.lie import fibre_generator, lie_derivative, rotation_generator
from escnn_soft.metrics.partition import as_labels, partition_distance
from escnn_soft.metrics.report import MODEL_ROW, SubgroupReport, subgroup_report
from escnn_soft.subgroups import subgroup_elements

__all__ = [
    "MODEL_ROW",
    "LikelihoodHistory",
    "SubgroupReport",
    "WrappedModule",
    "as_labels",
    "equivariance_error",
    "fibre_generator",
    "grid_exact_elements",
    "is_grid_exact",
    "lie_derivative",
    "partition_distance",
    "relative_error",
    "rotation_generator",
    "subgroup_elements",
    "subgroup_report",
    "transform",
]
