"""Partition distance between two parameter-sharing schemes (Yeh et al., AISTATS 2022).

A sharing scheme on :math:`d` parameters is a partition of :math:`\\{1,\\dots,d\\}` into groups of parameters
that share one value. Given two schemes with groups :math:`\\{A_i\\}` and :math:`\\{B_j\\}`, the partition
distance is the number of parameters that must be moved to turn one into the other,

.. math::
    D(A, B) = d - \\max_{\\pi} \\sum_i \\lvert A_i \\cap B_{\\pi(i)} \\rvert,

the maximum over one-to-one matchings :math:`\\pi` of groups (unmatched groups contribute nothing). The
matching is a linear assignment on the overlap matrix :math:`O_{ij} = \\lvert A_i\\cap B_j\\rvert`, solved by
the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``). The distance is 0 exactly when the
two schemes are the same partition, whatever the group labels.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["as_labels", "partition_distance"]

ArrayLike = np.ndarray | torch.Tensor | list | tuple


def as_labels(scheme: ArrayLike, name: str = "scheme") -> np.ndarray:
    """A sharing scheme as a label vector of length ``d`` (one group id per parameter).

    Accepts a label vector (integers; equal labels share a value) or an assignment matrix of shape
    ``(d, n_groups)`` (row ``i`` says which group parameter ``i`` belongs to; soft rows are hardened by
    argmax, as :class:`escnn_soft.nn.SharedLinear` does).
    """
    if isinstance(scheme, torch.Tensor):
        arr = scheme.detach().cpu().numpy()
    else:
        arr = np.asarray(scheme)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected integer labels or a numeric assignment matrix, got {scheme!r} "
                        f"(dtype {arr.dtype}); pass e.g. [0, 0, 1] or an array of shape (d, n_groups)")
    if arr.ndim == 1:
        if arr.size and not (np.issubdtype(arr.dtype, np.integer) or np.all(np.mod(arr, 1) == 0)):
            raise ValueError(f"{name}: a 1-D scheme must hold integer group labels, got dtype {arr.dtype}; "
                             f"pass an assignment matrix of shape (d, n_groups) for soft assignments")
        return arr.astype(np.int64)
    if arr.ndim == 2:
        if arr.shape[1] == 0:
            raise ValueError(f"{name}: an assignment matrix needs at least one group column, got shape {arr.shape}")
        return np.argmax(arr, axis=1).astype(np.int64)
    raise ValueError(f"{name}: expected a label vector (d,) or an assignment matrix (d, n_groups), "
                     f"got an array of shape {arr.shape} ({type(scheme).__name__})")


def partition_distance(a: ArrayLike, b: ArrayLike) -> int:
    """Partition distance :math:`d - \\max_\\pi \\sum_i |A_i \\cap B_{\\pi(i)}|` between two sharing schemes.

    Args:
        a: label vector of length ``d`` or assignment matrix ``(d, n_groups)`` (argmax per row).
        b: the other scheme over the same ``d`` parameters, in either form.

    Returns:
        the number of parameters (an ``int`` in ``[0, d - 1]``) whose group must change to turn ``a`` into ``b``.

    Raises:
        ValueError: if the two schemes cover different numbers of parameters.
    """
    la, lb = as_labels(a, "a"), as_labels(b, "b")
    if la.shape[0] != lb.shape[0]:
        raise ValueError(f"a, b: the schemes cover different numbers of parameters ({la.shape[0]} vs "
                         f"{lb.shape[0]}); both must label the same d parameters")
    d = la.shape[0]
    if d == 0:
        return 0
    _, ia = np.unique(la, return_inverse=True)
    _, ib = np.unique(lb, return_inverse=True)
    overlap = np.zeros((ia.max() + 1, ib.max() + 1), dtype=np.int64)
    np.add.at(overlap, (ia, ib), 1)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    return int(d - overlap[rows, cols].sum())
