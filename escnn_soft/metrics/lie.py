"""Lie derivative of a model with respect to continuous rotations of the plane (Gruver et al., ICLR 2023).

For a model :math:`f` and the rotation :math:`R_t` by angle :math:`t` acting on fields as
:math:`(R_t x)(u) = \\rho(R_t)\\, x(R_{-t} u)`,

.. math::
    L f(x) = \\frac{d}{dt}\\Big[R_t^{-1} f(R_t x)\\Big]_{t=0}
           = J_f(x)\\, \\mathcal{A}_{in} x - \\mathcal{A}_{out} f(x),
    \\qquad \\mathcal{A} y = d\\rho\\, y - (J u)\\cdot\\nabla y,\\quad J = \\begin{pmatrix}0&-1\\\\1&0\\end{pmatrix},

where :math:`\\mathcal{A} = \\frac{d}{dt} R_t |_{t=0}` is the generator of rotations on fields and
:math:`d\\rho = \\frac{d}{dt}\\rho(R_t)|_{t=0}` that of the fibre representation. :math:`L f = 0` for a
rotation-equivariant :math:`f`. The Jacobian-vector product :math:`J_f(x)\\,\\mathcal{A}_{in}x` is computed by
forward-mode autodiff (:func:`torch.func.jvp`).

The generator is applied analytically rather than by differentiating a resampling at :math:`t=0`:
bilinear ``grid_sample`` is not differentiable at pixel centres (its derivative there is a one-sided
difference) and PyTorch's bicubic kernel (:math:`a=-0.75`) does not reproduce linear ramps. The
spatial gradient :math:`\\nabla y` is the exact derivative at the pixel centres of the Catmull-Rom
(cubic convolution, :math:`a=-1/2`) interpolant of the pixels with zero padding, i.e. the central
difference :math:`(y_{i+1} - y_{i-1})/2`. Coordinates follow escnn: rows run along :math:`-y`, columns
along :math:`x`, about the grid centre; the sign convention is checked against
:meth:`escnn.nn.GeometricTensor.transform` in the tests.

:math:`d\\rho` is exact: :math:`\\rho = Q\\,(\\oplus_i \\psi_i)\\,Q^{-1}` with SO(2)/O(2) irreps
:math:`\\psi_i`; a rotation acts on a frequency-:math:`k` irrep by the 2×2 rotation by :math:`kt`, so
:math:`d\\psi_i = k \\cdot J` (and :math:`0` for 1-dimensional irreps).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from escnn.group import O2, SO2, Representation
from escnn.nn import FieldType, GeometricTensor
from scipy.linalg import block_diag

__all__ = ["fibre_generator", "lie_derivative", "rotation_generator"]


def fibre_generator(rep: Representation) -> np.ndarray:
    """:math:`d\\rho = \\frac{d}{dt}\\rho(R_t)|_{t=0}` for a representation of SO(2) or O(2), or a trivial one.

    Raises:
        ValueError: for a non-trivial representation of another group (C_N, D_N, SO(3), ...), whose
            elements are not a continuous family of rotations.
    """
    if rep.is_trivial():
        return np.zeros((rep.size, rep.size))
    group = rep.group
    if not isinstance(group, (SO2, O2)):
        raise ValueError(f"field representation {rep.name} of {group.name} is not trivial, and only "  # noqa: TRY004
                         "SO(2)/O(2) fibre groups have a continuous rotation action; use trivial fields or "
                         "a gspace built with N=-1 (rot2dOnR2(-1) / flipRot2dOnR2(-1))")
    blocks = []
    for irrep_id in rep.irreps:
        irrep = group.irrep(*irrep_id)
        k = irrep.attributes["frequency"]
        blocks.append(np.zeros((1, 1)) if irrep.size == 1 else k * np.array([[0.0, -1.0], [1.0, 0.0]]))
    return rep.change_of_basis @ block_diag(*blocks) @ rep.change_of_basis_inv


def _spatial_tangent(y: torch.Tensor) -> torch.Tensor:
    """:math:`-(Ju)\\cdot\\nabla y` for a ``(B, C, H, W)`` tensor, with Catmull-Rom (central) differences."""
    h, w = y.shape[-2:]
    p = F.pad(y, (1, 1, 1, 1))
    d_row = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
    d_col = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
    row = torch.arange(h, dtype=y.dtype, device=y.device)[:, None] - (h - 1) / 2
    col = torch.arange(w, dtype=y.dtype, device=y.device)[None, :] - (w - 1) / 2
    # u = (x, y) = (col, -row);  -(Ju).grad = y d_x - x d_y = -row d_col + col d_row
    return col * d_row - row * d_col


def rotation_generator(field_type: FieldType | None, spatial: bool,
                       arg: str = "field_type") -> Callable[[torch.Tensor], torch.Tensor]:
    """The generator :math:`\\mathcal{A} y = d\\rho\\, y - (Ju)\\cdot\\nabla y` on tensors of ``field_type``.

    ``field_type=None`` means trivial fields (a plain tensor); ``spatial`` says whether the last two
    dimensions are a 2D grid to rotate (``False`` for invariant outputs such as logits); ``arg`` names
    the argument in error messages.
    """
    d_rho = None
    if field_type is not None:
        try:
            d = fibre_generator(field_type.representation)
        except ValueError as e:
            raise ValueError(f"{arg}: {e}") from None
        if np.any(d != 0):
            d_rho = torch.as_tensor(d)

    def generator(y: torch.Tensor) -> torch.Tensor:
        out = _spatial_tangent(y) if spatial else torch.zeros_like(y)
        if d_rho is not None:
            out = out + torch.einsum("oi,bi...->bo...", d_rho.to(y), y)
        return out
    return generator


def _output_generator(field_type: FieldType | None, ndim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The generator on the model's output: fields of ``field_type``, or a plain tensor with ``ndim`` dims."""
    if field_type is not None:
        d = field_type.gspace.dimensionality
        if d not in (0, 2):
            raise ValueError(f"model: returns fields on a {d}-dimensional base space; lie_derivative "
                             "needs outputs on the plane (2D) or without base space")
        return rotation_generator(field_type, spatial=d == 2, arg="model (its output)")
    if ndim not in (2, 4):
        raise ValueError(f"model: returns a plain tensor with {ndim} dimensions; expected (B, C) "
                         "(invariant) or (B, C, H, W) (scalar fields on the plane) or a GeometricTensor")
    return rotation_generator(None, spatial=ndim == 4)


def lie_derivative(model: Callable[[GeometricTensor], GeometricTensor | torch.Tensor],
                   x: GeometricTensor, reduction: str = "mean") -> float | torch.Tensor:
    """Relative norm of the Lie derivative of ``model`` at ``x`` w.r.t. rotations of the plane.

    .. math::
        \\ell(x_b) = \\frac{\\lVert L f(x_b)\\rVert}{\\lVert f(x_b)\\rVert}
        \\quad\\text{per sample } b \\text{ (units: per radian)}

    with :math:`L f` as in the module docstring. It is 0 for an exactly rotation-equivariant model
    and small but not 0 for a strict escnn model, because the rotation of a pixel grid is only
    approximately a symmetry of discretised convolutions; compare models on the same inputs.
    Smooth inputs that vanish near the border measure the model rather than the discretisation.

    Args:
        model: takes a :class:`GeometricTensor` of ``x.type`` and returns a :class:`GeometricTensor` (on
            the plane or without base space) or a plain tensor, read as trivial fields: ``(B, C, H, W)``
            scalar fields on the plane or ``(B, C)`` invariants. Run in eval mode (restored after).
        x: input fields on a 2D gspace. Each field must be trivial or a representation of SO(2)/O(2)
            (gspaces ``rot2dOnR2(-1)``/``flipRot2dOnR2(-1)``); the same holds for the output fields. For
            C_N/D_N or trivial gspaces only trivial fields are supported — wrap the model in
            :class:`escnn_soft.metrics.WrappedModule` with trivial types to measure a plain CNN.
        reduction: ``"mean"`` (a float, the batch mean) or ``"none"`` (a tensor of shape ``(B,)``).

    Raises:
        ValueError: naming the argument, for inputs outside the cases above.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction: {reduction!r} is not one of 'mean', 'none'")
    if not isinstance(x, GeometricTensor):
        raise TypeError(f"x: expected a GeometricTensor, got {type(x).__name__}; use in_type(tensor)")
    if not callable(model):
        raise TypeError(f"model: {model!r} is not callable; pass a torch module taking GeometricTensors")
    if x.type.gspace.dimensionality != 2:
        raise ValueError(f"x: lives on a {x.type.gspace.dimensionality}-dimensional base space "
                         f"({x.type.gspace}); lie_derivative measures rotations of the plane, pass a 2D gspace")
    in_generator = rotation_generator(x.type, spatial=True, arg="x")
    in_type = x.type
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    for m, _ in modes:
        m.train(False)
    out_type: list[FieldType | None] = []

    def f(t: torch.Tensor) -> torch.Tensor:
        y = model(GeometricTensor(t, in_type))
        out_type.append(y.type if isinstance(y, GeometricTensor) else None)
        return y.tensor if isinstance(y, GeometricTensor) else y

    try:
        y, jvp = torch.func.jvp(f, (x.tensor,), (in_generator(x.tensor),))
    finally:
        for m, mode in modes:
            m.train(mode)
    lie = (jvp - _output_generator(out_type[0], y.dim())(y)).detach()
    y = y.detach()
    rel = lie.flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1).clamp_min(torch.finfo(y.dtype).tiny)
    return float(rel.mean()) if reduction == "mean" else rel
