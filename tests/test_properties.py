"""Property-based tests (Hypothesis) of every soft layer over random groups, field types and geometries.

Generated: a group (C_N, D_N, SO(2), O(2); the continuous ones with a band limit ``maximum_frequency``),
field types of that group (regular, irreps, quotient, or a mix with a trivial field), a subgroup id, a
kernel size (3 or 5), padding, stride, dilation and padding mode, and an input size up to 11. Checked:

* every soft layer builds, or rejects the combination with a clear ``ValueError`` (an empty steerable
  basis is the only legitimately unsupported case);
* the initial state is exactly equivariant where METHODS.md says so, with escnn's own group action
  (``GeometricTensor.transform``) on grid-exact elements in float64 (:func:`escnn_soft.testing.assert_equivariant`):
  a probabilistic layer with its uniform likelihood, the relaxed/RPP/R-steer layers at zero relaxation,
  the doubly-stochastic layers with ``init='regular'``; a relaxed layer with a random relaxation stays
  exactly equivariant to its ``relaxed_subgroup``; a probabilistic layer whose likelihood is uniform on a
  subgroup S of a finite group and 0 elsewhere is exactly S-equivariant;
* ``export()`` computes the same output as the layer, and ``evaluate_output_shape`` gives the shape of the
  real output (also for rectangular inputs and per-axis padding; ``SharedLinear``: export only);
* a likelihood is >= 0 with mean 1 on its grid whatever its coefficients.

The number of examples comes from the Hypothesis profile registered in ``tests/conftest.py``: small and
derandomised by default; ``HYPOTHESIS_PROFILE=thorough`` runs many more, freshly random.
"""
from __future__ import annotations

import functools
import re

import pytest
import torch
from escnn import gspaces
from escnn import nn as enn
from hypothesis import event, given
from hypothesis import strategies as st

import escnn_soft as es
from escnn_soft.metrics import WrappedModule
from escnn_soft.subgroups import default_subgroups, subgroup, subgroup_test_elements
from escnn_soft.testing import assert_equivariant

GROUPS = [("C", 2), ("C", 4), ("C", 8), ("D", 1), ("D", 2), ("D", 4), ("SO2", 2), ("SO2", 3), ("O2", 2), ("O2", 3)]
FINITE = [g for g in GROUPS if g[0] in "CD"]
PADDING_MODES = ["zeros", "circular", "reflect", "replicate"]


@functools.cache
def make_gspace(spec: tuple[str, int]):
    """The planar gspace of a group spec; for SO(2)/O(2) the number is the band limit."""
    kind, n = spec
    if kind == "C":
        return gspaces.rot2dOnR2(n)
    if kind == "D":
        return gspaces.flipRot2dOnR2(n)
    return (gspaces.rot2dOnR2 if kind == "SO2" else gspaces.flipRot2dOnR2)(-1, maximum_frequency=n)


@functools.cache
def proper_subgroups(spec: tuple[str, int]) -> tuple:
    """escnn ids of the subgroups of interest (default_subgroups without its entry for the whole group)."""
    return tuple(sid for sid in default_subgroups(make_gspace(spec).fibergroup).values() if sid is not None)


WITH_SUBGROUPS = [g for g in GROUPS if proper_subgroups(g)]


@functools.cache
def quotient_ids(spec: tuple[str, int]) -> tuple:
    """Subgroup ids whose quotient representation escnn can build (finite-dimensional ones)."""
    gs, out = make_gspace(spec), []
    for sid in proper_subgroups(spec):
        try:
            gs.quotient_repr(sid)
        except (AssertionError, ValueError):
            continue
        out.append(sid)
    return tuple(out)


def irreps(gs) -> list:
    """The irreps of the fibre group of frequency <= 2."""
    G = gs.fibergroup
    ids = G.bl_irreps(2) if G.continuous else [i.id for i in G.irreps()]
    return [gs.irrep(*i) for i in ids if G.irrep(*i).attributes.get("frequency", 0) <= 2]


@st.composite
def field_types(draw, gs, max_fields: int = 2) -> enn.FieldType:
    """Regular, irreps, quotient or mixed fields of ``gs`` (regular/quotient only where escnn has them)."""
    spec = next(s for s in GROUPS if make_gspace(s) is gs)
    finite = not gs.fibergroup.continuous
    kinds = ["irreps", "mixed"] + (["regular"] if finite else []) + (["quotient"] if quotient_ids(spec) else [])
    kind = draw(st.sampled_from(sorted(kinds)))
    n = draw(st.integers(1, max_fields))
    if kind == "regular":
        reps = [gs.regular_repr] * n
    elif kind == "quotient":
        reps = [gs.quotient_repr(draw(st.sampled_from(quotient_ids(spec))))] * n
    elif kind == "irreps":
        reps = draw(st.lists(st.sampled_from(irreps(gs)), min_size=1, max_size=max_fields))
    else:
        pool = irreps(gs) + ([gs.regular_repr] if finite else []) + [gs.quotient_repr(q) for q in quotient_ids(spec)]
        reps = [gs.trivial_repr] + draw(st.lists(st.sampled_from(pool), min_size=1, max_size=max_fields))
    event(f"field type: {kind}")
    return enn.FieldType(gs, reps)


@st.composite
def centred_geometry(draw) -> dict:
    """Kernel size, symmetric padding, stride, dilation and an odd input size whose output grid is centred
    on the input grid (so rotations by 90 degrees and flips about the centre act exactly)."""
    k = draw(st.sampled_from([3, 5]))
    dilation = draw(st.sampled_from([1, 2])) if k == 3 else 1
    extent = dilation * (k - 1) + 1
    padding = draw(st.integers(0, k // 2))
    stride = draw(st.sampled_from([1, 2]))  # odd size + 2 padding - odd extent is even: centred for stride 2
    size = draw(st.sampled_from([s for s in range(5, 12, 2) if s + 2 * padding >= extent]))
    return {"kernel_size": k, "padding": padding, "stride": stride, "dilation": dilation, "size": size}


def built(make):
    """``make()``, or ``None`` when the combination is legitimately unsupported, which must be a clear
    ``ValueError`` naming the field types (an empty steerable basis)."""
    try:
        return make()
    except ValueError as err:
        assert re.search(r"in_type/out_type: .*basis .*empty", str(err)), f"unclear error: {err}"
        event("unsupported: empty steerable basis")
        return None


def random_fields(field_type: enn.FieldType, size: int | tuple[int, int], seed: int) -> enn.GeometricTensor:
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    return field_type(torch.randn(2, field_type.size, h, w, generator=g, dtype=torch.float64))


def check_shape_and_export(layer, x: enn.GeometricTensor) -> None:
    """``evaluate_output_shape`` is the real output shape; ``export()`` computes the same output (eval mode)."""
    layer.eval()
    with torch.no_grad():
        y = layer(x).tensor
        assert tuple(layer.evaluate_output_shape(tuple(x.tensor.shape))) == tuple(y.shape)
        exported = layer.export()
        torch.testing.assert_close(exported(x.tensor), y, rtol=1e-9, atol=1e-9)


SEEDS = st.integers(0, 2**16)

# ---------------------------------------------------------------------------------- conv layers at init


def _make_conv(kind: str, in_type, out_type, geo: dict, data, **kwargs):
    kwargs |= {k: geo[k] for k in ("padding", "stride", "dilation")}
    if kind == "probabilistic":
        L = data.draw(st.integers(0, 3), label="L")
        return es.nn.ProbabilisticR2Conv(in_type, out_type, geo["kernel_size"], L=L, **kwargs)
    cls = {"relaxed": es.nn.RelaxedR2Conv, "rpp": es.nn.RPPR2Conv, "rsteer": es.nn.RSteerR2Conv}[kind]
    return cls(in_type, out_type, geo["kernel_size"], **kwargs)


@pytest.mark.parametrize("kind", ["probabilistic", "relaxed", "rpp", "rsteer"])
@given(data=st.data(), spec=st.sampled_from(GROUPS), geo=centred_geometry(),
       padding_mode=st.sampled_from(PADDING_MODES), seed=SEEDS)
def test_fresh_soft_conv_is_strictly_equivariant(kind, data, spec, geo, padding_mode, seed):
    """A fresh soft conv is the strict escnn layer: exactly G-equivariant; export and shapes agree."""
    gs = make_gspace(spec)
    in_type, out_type = data.draw(field_types(gs), label="in_type"), data.draw(field_types(gs), label="out_type")
    torch.manual_seed(seed)
    layer = built(lambda: _make_conv(kind, in_type, out_type, geo, data, padding_mode=padding_mode))
    if layer is None:
        return
    x = random_fields(in_type, geo["size"], seed)
    assert_equivariant(layer, x)
    check_shape_and_export(layer.double(), x)


# --------------------------------------------------------- relaxed layers keep their relaxed subgroup


@pytest.mark.parametrize("kind", ["relaxed", "rpp", "rsteer"])
@given(data=st.data(), spec=st.sampled_from(WITH_SUBGROUPS), geo=centred_geometry(), seed=SEEDS)
def test_random_relaxation_keeps_the_relaxed_subgroup(kind, data, spec, geo, seed):
    """With a random relaxation, the layer is still exactly equivariant to ``relaxed_subgroup``."""
    gs = make_gspace(spec)
    sid = data.draw(st.sampled_from(proper_subgroups(spec)), label="relaxed_subgroup")
    in_type, out_type = data.draw(field_types(gs), label="in_type"), data.draw(field_types(gs), label="out_type")
    torch.manual_seed(seed)
    layer = built(lambda: _make_conv(kind, in_type, out_type, geo, data, relaxed_subgroup=sid))
    if layer is None:
        return
    relaxation = layer.free_weights if kind == "rpp" else layer.relaxed_weights
    with torch.no_grad():
        relaxation.normal_()
    elements = subgroup_test_elements(gs, sid)
    x = random_fields(in_type, geo["size"], seed)
    assert_equivariant(layer, x, elements=elements)
    check_shape_and_export(layer.double(), x)


# ------------------------------------------------------------- probabilistic: λ uniform on a subgroup


@given(data=st.data(), spec=st.sampled_from([g for g in FINITE if g in WITH_SUBGROUPS]), geo=centred_geometry(),
       seed=SEEDS)
def test_likelihood_uniform_on_a_subgroup_gives_exact_subgroup_equivariance(data, spec, geo, seed):
    """METHODS 1(b): λ uniform on S and 0 elsewhere makes the probabilistic layer exactly S-equivariant."""
    gs = make_gspace(spec)
    G = gs.fibergroup
    sid = data.draw(st.sampled_from(proper_subgroups(spec)), label="subgroup")
    in_type, out_type = data.draw(field_types(gs), label="in_type"), data.draw(field_types(gs), label="out_type")
    torch.manual_seed(seed)
    likelihood = es.GroupLikelihood(G, L=G.order())  # every irrep: λ on the grid is represented exactly
    _, _, child = subgroup(G, sid)
    likelihood.fit_density_(torch.tensor([float(child(g) is not None) for g in likelihood.grid]))
    layer = built(lambda: es.nn.ProbabilisticR2Conv(in_type, out_type, geo["kernel_size"], likelihood=likelihood,
                                                     **{k: geo[k] for k in ("padding", "stride", "dilation")}))
    if layer is None:
        return
    x = random_fields(in_type, geo["size"], seed)
    assert_equivariant(layer, x, elements=subgroup_test_elements(gs, sid))
    check_shape_and_export(layer.double(), x)


# ---------------------------------------------------------------------------- doubly-stochastic layers


@given(data=st.data(), spec=st.sampled_from(GROUPS), geo=centred_geometry(), seed=SEEDS,
       fix_identity=st.booleans(), lifting=st.booleans())
def test_regular_init_doubly_stochastic_layers_are_equivariant(data, spec, geo, seed, fix_identity, lifting):
    """``init='regular'`` gives escnn's regular lifting/group convolution: exactly equivariant."""
    gs = make_gspace(spec)
    geometry = {k: geo[k] for k in ("padding", "stride", "dilation")}
    n_out = data.draw(st.integers(1, 2), label="out fields")
    common = {"fix_identity": fix_identity, "init": "regular", **geometry}
    torch.manual_seed(seed)
    if gs.fibergroup.continuous:  # a finite subgroup of SO(2)/O(2), lifted from scalar fields
        lifting = True
        sid = data.draw(st.sampled_from([s for s in proper_subgroups(spec) if not subgroup(gs.fibergroup, s)[0]
                                         .continuous]), label="subgroup_id")
        in_type = enn.FieldType(gs, [gs.trivial_repr] * data.draw(st.integers(1, 2), label="in fields"))
        layer = es.nn.DSLiftingConv(in_type, n_out, geo["kernel_size"], subgroup_id=sid, **common)
        module = WrappedModule(layer, in_type.restrict(sid), layer.out_type)
    else:
        fields = data.draw(st.integers(1, 2), label="in fields")
        rep = gs.trivial_repr if lifting else gs.regular_repr
        in_type = enn.FieldType(gs, [rep] * fields)
        cls = es.nn.DSLiftingConv if lifting else es.nn.DSGroupConv
        layer = module = cls(in_type, n_out, geo["kernel_size"], **common)
    x = random_fields(module.in_type, geo["size"], seed)
    assert_equivariant(module, x)
    check_shape_and_export(layer.double(), enn.GeometricTensor(x.tensor, layer.in_type))


# -------------------------------------------------- shapes and export on rectangular inputs, any padding


@given(data=st.data(), spec=st.sampled_from(GROUPS), seed=SEEDS, k=st.sampled_from([3, 5]),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), stride=st.integers(1, 3),
       h=st.integers(5, 11), w=st.integers(5, 11))
def test_shapes_and_export_on_rectangular_inputs(data, spec, seed, k, padding, stride, h, w):
    """Per-axis padding, any stride, rectangular inputs: ``evaluate_output_shape`` and ``export()`` agree
    with the forward pass for every soft conv (and the random-init doubly-stochastic layers)."""
    gs = make_gspace(spec)
    in_type, out_type = data.draw(field_types(gs), label="in_type"), data.draw(field_types(gs), label="out_type")
    torch.manual_seed(seed)
    x = random_fields(in_type, (h, w), seed)
    for cls in (es.nn.ProbabilisticR2Conv, es.nn.RelaxedR2Conv, es.nn.RPPR2Conv, es.nn.RSteerR2Conv):
        layer = built(lambda cls=cls: cls(in_type, out_type, k, padding=padding, stride=stride))
        if layer is not None:
            check_shape_and_export(layer.double(), x)
    if not gs.fibergroup.continuous:
        scalars = enn.FieldType(gs, [gs.trivial_repr] * 2)
        lifting = es.nn.DSLiftingConv(scalars, 2, k, padding=padding[0], stride=stride)
        check_shape_and_export(lifting.double(), random_fields(scalars, (h, w), seed))
        group_conv = es.nn.DSGroupConv(lifting.out_type, 1, k, padding=padding[1], stride=stride)
        check_shape_and_export(group_conv.double(), random_fields(lifting.out_type, (h, w), seed))


# ---------------------------------------------------------------------------- linear layers and λ itself


@given(data=st.data(), spec=st.sampled_from(GROUPS), seed=SEEDS)
def test_fresh_probabilistic_linear_is_strictly_equivariant(data, spec, seed):
    gs = make_gspace(spec)
    nb = gspaces.no_base_space(gs.fibergroup)
    in_type, out_type = data.draw(field_types(gs), label="in_type"), data.draw(field_types(gs), label="out_type")
    in_type, out_type = enn.FieldType(nb, in_type.representations), enn.FieldType(nb, out_type.representations)
    torch.manual_seed(seed)
    L = data.draw(st.integers(0, 3), label="L")
    layer = built(lambda: es.nn.ProbabilisticLinear(in_type, out_type, L=L))
    if layer is None:
        return
    g = torch.Generator().manual_seed(seed)
    x = in_type(torch.randn(3, in_type.size, generator=g, dtype=torch.float64))
    assert_equivariant(layer, x, elements=list(nb.testing_elements)[:8])
    check_shape_and_export(layer.double(), x)


@given(n_in=st.integers(1, 4), n_out=st.integers(1, 4), data=st.data(), hard=st.booleans(), seed=SEEDS)
def test_shared_linear_export_matches(n_in, n_out, data, hard, seed):
    """SharedLinear (not an escnn module): ``export()`` is a torch Linear computing the same output."""
    torch.manual_seed(seed)
    n_shared = data.draw(st.integers(1, n_in * n_out), label="n_shared")
    layer = es.nn.SharedLinear(n_in, n_out, n_shared, hard=hard, init_scale=1.0).double()
    x = torch.randn(3, n_in, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer.export()(x), layer(x), rtol=1e-12, atol=1e-12)
    assert len(set(layer.scheme())) <= n_shared


@given(spec=st.sampled_from(GROUPS), L=st.integers(0, 4), seed=SEEDS, scale=st.floats(0.0, 30.0))
def test_likelihood_is_a_density_with_mean_one(spec, L, seed, scale):
    """METHODS 1(d): λ >= 0 and mean 1 on the grid for any coefficients; uniform at initialisation."""
    G = make_gspace(spec).fibergroup
    lik = es.GroupLikelihood(G, L=L)
    trivial = next(i.id for i in lik.out_irreps if i.is_trivial())
    fresh = lik.fourier_coefficients()
    assert all(bool((c == 0).all()) for i, c in fresh.items() if i != trivial)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        lik.coefficients.copy_(scale * torch.randn(lik.coefficients.shape, generator=g, dtype=torch.float64))
        density = lik.grid_density()
        assert bool((density >= 0).all())
        assert float(density.mean()) == pytest.approx(1.0, abs=1e-12)
        assert float(lik.fourier_coefficients()[trivial].squeeze()) == pytest.approx(1.0, abs=1e-9)
