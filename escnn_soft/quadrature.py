"""Quadrature rules on compact escnn groups that are exact for band-limited functions.

:func:`exact_quadrature` returns elements :math:`h_n` and weights :math:`w_n` with

.. math::
    \\sum_n w_n\\,\\psi_{ij}(h_n) = \\int_H \\psi_{ij}(h)\\,dh = [\\psi \\text{ trivial}]

(normalised Haar measure) for every matrix coefficient of every irrep :math:`\\psi` of frequency at most
``degree``. A product of matrix coefficients of irreps of frequencies :math:`l_1, \\dots, l_k` is a
matrix coefficient of :math:`\\psi_{l_1}\\otimes\\dots\\otimes\\psi_{l_k}`, which decomposes (Clebsch–Gordan)
into irreps of frequency at most :math:`l_1 + \\dots + l_k`, so the rule integrates such products exactly
as soon as ``degree`` is at least that sum. The rules:

* finite groups: every element, :math:`w_n = 1/|H|` (the Haar integral *is* this sum);
* SO(2): :math:`N = \\text{degree} + 1` equally spaced angles, :math:`w_n = 1/N`:
  :math:`\\tfrac1N\\sum_n e^{ik\\theta_n} = 0` for :math:`0 < |k| < N`;
* O(2): the same angles on each of the two cosets (rotations, reflections), :math:`w_n = 1/(2N)`;
  on each coset the matrix coefficients are trigonometric polynomials of the irrep's frequency;
* SO(3): a product rule in ZYZ Euler angles, :math:`dh = \\sin\\beta\\,d\\alpha\\,d\\beta\\,d\\gamma / 8\\pi^2`.
  In the complex basis :math:`D^l_{mn}(\\alpha,\\beta,\\gamma) = e^{-im\\alpha} d^l_{mn}(\\beta) e^{-in\\gamma}`
  (escnn's real irreps are constant changes of basis of these). :math:`N = \\text{degree} + 1` equally
  spaced :math:`\\alpha` and :math:`\\gamma` remove every term with :math:`m \\ne 0` or :math:`n \\ne 0`
  exactly (:math:`|m|, |n| \\le l < N`); what is left, :math:`d^l_{00}(\\beta) = P_l(\\cos\\beta)`, is a
  polynomial of degree :math:`l` in :math:`x = \\cos\\beta`, integrated exactly by Gauss–Legendre with
  :math:`\\lfloor \\text{degree}/2 \\rfloor + 1` nodes (exact up to degree :math:`2n - 1`);
* O(3) = SO(3) × {±I}: the SO(3) rule on each coset, weights halved.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from escnn.group import O2, O3, SO2, SO3, Group, GroupElement

__all__ = ["exact_quadrature"]


def exact_quadrature(group: Group, degree: int) -> tuple[list[GroupElement], np.ndarray]:
    """Elements and weights (summing to 1) integrating every irrep of frequency <= ``degree`` exactly.

    See the module docstring for the rule of each group and why it is exact.

    Raises:
        TypeError: ``group`` is not an escnn group, or ``degree`` is not an int.
        ValueError: ``degree`` is negative, or the group is not finite, SO(2), O(2), SO(3) or O(3).
    """
    if not isinstance(group, Group):
        raise TypeError(f"group: expected an escnn Group, got {type(group).__name__} ({group!r})")
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)):
        raise TypeError(f"degree: expected an int, got {type(degree).__name__} ({degree!r})")
    if degree < 0:
        raise ValueError(f"degree={degree} is invalid: use an int >= 0 (the largest irrep frequency to integrate)")
    if group.order() > 0:
        elements = list(group.elements)
        return elements, np.full(len(elements), 1.0 / len(elements))
    n = int(degree) + 1
    if isinstance(group, SO2):
        return list(group.grid(n)), np.full(n, 1.0 / n)
    if isinstance(group, O2):
        return list(group.grid(n)), np.full(2 * n, 1.0 / (2 * n))  # n rotations, then n reflections
    if isinstance(group, (SO3, O3)):
        angles, weights = _euler_rule(n, int(degree) // 2 + 1)
        if isinstance(group, SO3):
            return [group.element(a, "ZYZ") for a in angles], weights
        elements = [group.element((j, a), "ZYZ") for j in (0, 1) for a in angles]
        return elements, np.concatenate([weights, weights]) / 2.0
    raise ValueError(f"group: {group} is not supported; exact_quadrature supports finite groups, SO(2), O(2), "
                     f"SO(3) and O(3) (and subgroups that escnn returns as one of those)")


def _euler_rule(n_uniform: int, n_gauss: int) -> tuple[list[Any], np.ndarray]:
    """ZYZ angles (alpha, beta, gamma) and weights of the SO(3) product rule (normalised Haar measure)."""
    nodes, gauss_weights = np.polynomial.legendre.leggauss(n_gauss)  # nodes x = cos(beta), weights sum to 2
    uniform = 2.0 * np.pi * np.arange(n_uniform) / n_uniform
    angles, weights = [], []
    for x, w in zip(nodes, gauss_weights):
        beta = float(np.arccos(x))
        for alpha in uniform:
            for gamma in uniform:
                angles.append(np.array([alpha, beta, gamma]))
                weights.append(w / (2.0 * n_uniform * n_uniform))
    return angles, np.asarray(weights)
