"""Testing helpers shared by every layer test (in the spirit of ``e3nn.util.test.assert_equivariant``)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from escnn.group import GroupElement
from escnn.nn import EquivariantModule, GeometricTensor

from escnn_soft.metrics.equivariance import _as_elements, transform

__all__ = ["assert_equivariant", "random_input"]


def random_input(module: EquivariantModule, batch: int = 2, size: int | None = None,
                 dtype: torch.dtype = torch.float64, generator: torch.Generator | None = None,
                 device: torch.device | None = None) -> GeometricTensor:
    """A random batch of ``module.in_type`` fields on an odd-sized grid (17 in 2D, 9 in 3D).

    An odd grid has a centre pixel, so rotations by 90 degrees and flips about the centre are
    exact pixel permutations.
    """
    in_type = module.in_type
    d = in_type.gspace.dimensionality
    if size is None:
        size = {0: 1, 1: 17, 2: 17, 3: 9}.get(d, 9)
    if size % 2 == 0:
        raise ValueError(f"size: {size} is even; use an odd size so that the grid has a centre pixel")
    shape = (batch, in_type.size) + (size,) * d
    t = torch.randn(*shape, dtype=dtype, generator=generator)
    if device is not None:
        t = t.to(device)
    return GeometricTensor(t, in_type)


def assert_equivariant(module: EquivariantModule, x: GeometricTensor | None = None,
                       elements: Sequence[GroupElement] | None = None, atol: float = 1e-7,
                       rtol: float = 1e-5, dtype: torch.dtype = torch.float64,
                       train_mode: bool = False) -> dict[GroupElement, float]:
    """Assert :math:`f(h\\cdot x) = h\\cdot f(x)` elementwise for each element ``h``.

    The module is cast to ``dtype`` (float64 by default) for the check and cast back, with its
    training mode restored, afterwards. escnn samples its bases from float32 coefficients, so a strict escnn layer in float64
    is exact on grid-exact elements to about 1e-7 of the output's scale; the default tolerance
    ``atol + rtol * max|h f(x)|`` with ``rtol=1e-5`` sits well below any real equivariance breaking. ``elements`` defaults to the grid-exact testing elements of the module's gspace
    (for which the check is exact up to rounding); pass others together with a looser tolerance.

    Returns:
        the maximum absolute error per element (useful for reporting).

    Raises:
        AssertionError: listing every element whose error exceeds ``atol + rtol * max|h f(x)|``.
        TypeError, ValueError: for bad arguments, naming the argument.
    """
    if not isinstance(module, EquivariantModule):
        raise TypeError(f"module: expected an escnn EquivariantModule, got {type(module).__name__}; wrap a plain "
                        "torch module with escnn_soft.metrics.WrappedModule(module, in_type, out_type)")
    if x is not None and not isinstance(x, GeometricTensor):
        raise TypeError(f"x: expected a GeometricTensor or None, got {type(x).__name__}; use module.in_type(tensor)")
    if x is not None and x.type != module.in_type:
        raise ValueError(f"x: its field type {x.type} differs from module.in_type {module.in_type}; build x with "
                         "module.in_type(tensor)")
    for name, tol in (("atol", atol), ("rtol", rtol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise ValueError(f"{name}: expected a number >= 0, got {tol!r}; the defaults are atol=1e-7, rtol=1e-5")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}; use torch.float64 (the "
                        "default) or torch.float32")
    floats = [t for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()]
    original_dtype = floats[0].dtype if floats else dtype
    original_mode = module.training
    elements = _as_elements(module, elements)
    failures = []
    errors: dict[GroupElement, float] = {}
    try:
        m = module.to(dtype)
        m.train(train_mode)
        if x is None:
            x = random_input(m, dtype=dtype, device=floats[0].device if floats else None)
        else:
            x = GeometricTensor(x.tensor.to(dtype), x.type)
        with torch.no_grad():
            fx = m(x)
            for g in elements:
                expected = transform(fx, g).tensor
                got = m(transform(x, g)).tensor
                err = (got - expected).abs()
                errors[g] = float(err.max())
                if float(err.max()) > atol + rtol * float(expected.abs().max()):
                    failures.append(f"  {g}: max abs error {float(err.max()):.3e} "
                                    f"(max |h f(x)| = {float(expected.abs().max()):.3e})")
    finally:
        module.to(original_dtype)
        module.train(original_mode)
    if failures:
        raise AssertionError(f"{type(module).__name__} is not equivariant within atol={atol}, rtol={rtol}:\n"
                             + "\n".join(failures))
    return errors
