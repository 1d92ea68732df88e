"""Bad input across the public API: one table, one row per case tried.

Every public constructor and function of escnn_soft (API.md) must reject bad input with a
``ValueError`` or ``TypeError`` whose message names the argument, shows the offending value and says
how to fix it, in the style ``"argname: expected ..., got <value>; <fix>"``. Each row of ``CASES`` is

    (call, expected exception type, regex for the argument name, regex for the offending value)

with ``call`` a zero-argument function that builds its inputs lazily and makes the bad call. The test
also rejects messages that are internal errors leaking through (a bare ``assert``, a torch shape
error, ``... object has no attribute ...``): those mean a check is missing in the code. Per-module
tests look at the behaviour around these errors; this table is the inventory of what is checked.
"""
from __future__ import annotations

import re

import pytest
import torch
from escnn import group as egroup
from escnn import gspaces
from escnn import nn as enn

import escnn_soft as es
from escnn_soft import models, subgroups, testing
from escnn_soft.nn import (
    DSGroupConv,
    DSLiftingConv,
    ProbabilisticLinear,
    ProbabilisticR2Conv,
    ProbabilisticR3Conv,
    RelaxedR2Conv,
    RelaxedR3Conv,
    RPPR2Conv,
    RPPR3Conv,
    RSteerR2Conv,
    RSteerR3Conv,
    SharedLinear,
)

# ------------------------------------------------------------------------------------- small inputs


def c4():
    return gspaces.rot2dOnR2(4)


def so2():
    return gspaces.rot2dOnR2(-1, maximum_frequency=3)


def triv(gs=None, n: int = 1) -> enn.FieldType:
    gs = gs or c4()
    return enn.FieldType(gs, [gs.trivial_repr] * n)


def reg(gs=None, n: int = 1) -> enn.FieldType:
    gs = gs or c4()
    return enn.FieldType(gs, [gs.regular_repr] * n)


def triv3(gs=None, n: int = 1) -> enn.FieldType:
    gs = gs or gspaces.rot3dOnR3(maximum_frequency=1)
    return enn.FieldType(gs, [gs.trivial_repr] * n)


def no_base(n: int = 1) -> enn.FieldType:
    gs = gspaces.no_base_space(egroup.cyclic_group(4))
    return enn.FieldType(gs, [gs.trivial_repr] * n)


def conv() -> enn.R2Conv:
    return enn.R2Conv(triv(), reg(), 3)


def x4() -> enn.GeometricTensor:
    return triv()(torch.randn(1, 1, 9, 9))


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(2, 3))


def loader(n: int = 4) -> torch.utils.data.DataLoader:
    data = torch.utils.data.TensorDataset(torch.randn(n, 2), torch.zeros(n, dtype=torch.long))
    return torch.utils.data.DataLoader(data, batch_size=2)


def c4_lik() -> es.GroupLikelihood:
    return es.GroupLikelihood(egroup.cyclic_group(4))


V, T = ValueError, TypeError

# (call, exception, argument regex, value regex)
CASES = [
    # --- GroupLikelihood
    pytest.param(lambda: es.GroupLikelihood("SO2"), T, "group", "'SO2'", id="likelihood-group-is-a-string"),
    pytest.param(lambda: es.GroupLikelihood(egroup.so2_group(), L=-3), V, r"\bL\b", "-3",
                 id="likelihood-L-negative"),
    pytest.param(lambda: es.GroupLikelihood(egroup.so2_group(), L="2"), T, r"\bL\b", "'2'",
                 id="likelihood-L-string"),
    pytest.param(lambda: es.GroupLikelihood(egroup.so2_group(), L=3, L_out=2), V, "L_out", "2",
                 id="likelihood-L_out-below-L"),
    pytest.param(lambda: es.GroupLikelihood(egroup.so2_group(), L=3, grid_size=3), V, "grid_size", "3",
                 id="likelihood-grid_size-too-small"),
    pytest.param(lambda: es.GroupLikelihood(egroup.so2_group(), n_identity_samples=-2), V, "n_identity_samples",
                 "-2", id="likelihood-n_identity_samples-negative"),
    pytest.param(lambda: c4_lik().density([egroup.dihedral_group(4).identity]), V, "elements", r"\(\+, 0\[2pi/4\]\)",
                 id="likelihood-density-foreign-element"),
    pytest.param(lambda: c4_lik().kl("uniform"), T, "other", "'uniform'", id="likelihood-kl-other-is-a-string"),
    pytest.param(lambda: c4_lik().invariant_fraction(3), V, "subgroup_id", "3", id="likelihood-invariant-fraction-bad-subgroup"),
    pytest.param(lambda: c4_lik().degree({"C3": 3}), V, "subgroups", "'C3'", id="likelihood-degree-bad-subgroup"),
    pytest.param(lambda: c4_lik().fit_density_(torch.ones(5)), V, "values", r"\(5,\)",
                 id="likelihood-fit_density-wrong-shape"),
    pytest.param(lambda: c4_lik().fit_density_(torch.tensor([1.0, -1.0, 0.0, 0.0])), V, "values", "-1.0",
                 id="likelihood-fit_density-negative"),
    # --- ProbabilisticR2Conv / R3Conv / Linear
    pytest.param(lambda: ProbabilisticR2Conv("trivial", triv(), 3), T, "in_type", "'trivial'",
                 id="probabilistic-in_type-is-a-string"),
    pytest.param(lambda: ProbabilisticR2Conv(triv(), triv(), 3, stride=0), V, "stride", "0",
                 id="probabilistic-stride-zero"),
    pytest.param(lambda: ProbabilisticR2Conv(triv(), triv(), 3, padding=-2), V, "padding", "-2",
                 id="probabilistic-padding-negative"),
    pytest.param(lambda: ProbabilisticR2Conv(triv(), triv(), 3, dilation=1.5), V, "dilation", "1.5",
                 id="probabilistic-dilation-float"),
    pytest.param(lambda: ProbabilisticR2Conv(triv(), triv(), 3, likelihood=es.GroupLikelihood(egroup.so2_group())),
                 V, "likelihood", r"SO\(2\)", id="probabilistic-likelihood-of-another-group"),
    pytest.param(lambda: ProbabilisticR2Conv(triv(), triv(), 3, likelihood="uniform"), T, "likelihood", "str",
                 id="probabilistic-likelihood-is-a-string"),
    pytest.param(lambda: ProbabilisticR2Conv(triv(), enn.FieldType(c4(), [c4().irrep(1)]), 1), V,
                 "in_type/out_type", "kernel_size=1", id="probabilistic-empty-basis"),
    pytest.param(lambda: ProbabilisticR2Conv(triv(), triv(), 3).evaluate_output_shape((1, 2, 5, 5)), V,
                 "input_shape", r"\(1, 2, 5, 5\)", id="probabilistic-evaluate_output_shape-channels"),
    pytest.param(lambda: ProbabilisticR2Conv(triv(), triv(), 3)(torch.zeros(1, 1, 5, 5)), T, "input", "Tensor",
                 id="probabilistic-forward-plain-tensor"),
    pytest.param(lambda: ProbabilisticR3Conv(triv(), triv(), 3), V, "in_type", "C4_on_R2",
                 id="probabilistic-r3-planar-types"),
    pytest.param(lambda: ProbabilisticR3Conv(triv(), triv(), "3"), T, "kernel_size", "'3'",
                 id="probabilistic-r3-kernel_size-string"),
    pytest.param(lambda: ProbabilisticLinear(triv(), triv()), V, "in_type", "C4_on_R2",
                 id="probabilistic-linear-planar-types"),
    pytest.param(lambda: ProbabilisticLinear(no_base(), None), T, "out_type", "None",
                 id="probabilistic-linear-out_type-none"),
    pytest.param(lambda: ProbabilisticLinear(no_base(), enn.FieldType(no_base().gspace, [no_base().gspace.irrep(1)])),
                 V, "in_type/out_type", "irrep_1", id="probabilistic-linear-empty-basis"),
    pytest.param(lambda: ProbabilisticLinear(no_base(), no_base()).evaluate_output_shape((2, 3)), V, "input_shape",
                 r"\(2, 3\)", id="probabilistic-linear-evaluate_output_shape"),
    # --- RelaxedR2Conv / RPPR2Conv / RSteerR2Conv
    pytest.param(lambda: RelaxedR2Conv(triv(), triv(), 3, amplitude=-2.0), V, "amplitude", "-2.0",
                 id="relaxed-amplitude-negative"),
    pytest.param(lambda: RelaxedR2Conv(triv(), triv(), 3, num_banks=-1), V, "num_banks", "-1",
                 id="relaxed-num_banks-negative"),
    pytest.param(lambda: RelaxedR2Conv(triv(), triv(), 3, num_features=0), V, "num_features", "0",
                 id="relaxed-num_features-zero"),
    pytest.param(lambda: RelaxedR2Conv(triv(), triv(), 3, penalty_weight="big"), V, "penalty_weight", "'big'",
                 id="relaxed-penalty_weight-string"),
    pytest.param(lambda: RelaxedR2Conv(triv(), triv(), 3, relaxed_subgroup=5), V, "relaxed_subgroup", "5",
                 id="relaxed-relaxed_subgroup-not-a-subgroup"),
    pytest.param(lambda: RelaxedR2Conv(triv(), triv(), 3, padding=(1, 1, 1)), V, "padding", r"\(1, 1, 1\)",
                 id="relaxed-padding-three-values"),
    pytest.param(lambda: RelaxedR2Conv(triv(), triv(), 3, padding=-1), V, "padding", "-1",
                 id="relaxed-padding-negative"),
    pytest.param(lambda: RelaxedR2Conv(triv(), triv(), 3, padding_mode="mirror"), V, "padding_mode", "'mirror'",
                 id="relaxed-padding_mode-unknown"),
    pytest.param(lambda: RelaxedR2Conv(reg(n=3), reg(n=2), 3, groups=2), V, "groups", "2",
                 id="relaxed-groups-not-dividing"),
    pytest.param(lambda: RelaxedR2Conv.from_r2conv(torch.nn.Conv2d(1, 1, 3)), T, "conv", "Conv2d",
                 id="relaxed-from_r2conv-plain-conv"),
    pytest.param(lambda: RelaxedR2Conv(triv(), triv(), 3).evaluate_output_shape((1, 1, 5)), V, "input_shape",
                 r"\(1, 1, 5\)", id="relaxed-evaluate_output_shape-3d"),
    pytest.param(lambda: RPPR2Conv(triv(), triv(), 3, variance_free="big"), V, "variance_free", "'big'",
                 id="rpp-variance_free-string"),
    pytest.param(lambda: RPPR2Conv(triv(), triv(), 3, variance_equivariant=float("inf")), V,
                 "variance_equivariant", "inf", id="rpp-variance_equivariant-infinite"),
    pytest.param(lambda: RPPR2Conv(triv(), triv(), 3.0), V, "kernel_size", r"3\.0", id="rpp-kernel_size-float"),
    pytest.param(lambda: RPPR2Conv(triv(), triv(), 3, pathways=[None, 2]), V, "pathways", r"\[None, 2\]",
                 id="rpp-pathways-trivial-first"),
    pytest.param(lambda: RPPR2Conv(triv(), triv(), 3, pathways="C2"), V, "pathways", "'C2'",
                 id="rpp-pathways-not-a-list"),
    pytest.param(lambda: RSteerR2Conv(triv(), triv(), 3, smoothness=-1e-3), V, "smoothness", "-0.001",
                 id="rsteer-smoothness-negative"),
    pytest.param(lambda: RSteerR2Conv(triv(), triv(), 3, dilation=0), V, "dilation", "0",
                 id="rsteer-dilation-zero"),
    pytest.param(lambda: RSteerR2Conv(None, triv(), 3), T, "in_type", "NoneType", id="rsteer-in_type-none"),
    # --- RelaxedR3Conv / RPPR3Conv / RSteerR3Conv
    pytest.param(lambda: RelaxedR3Conv(triv(), triv(), 3), V, "in_type", "R2", id="relaxed3d-planar-gspace"),
    pytest.param(lambda: RelaxedR2Conv(triv3(), triv3(), 3), V, "in_type", "R3", id="relaxed2d-3d-gspace"),
    pytest.param(lambda: RPPR3Conv(triv3(), triv3(), 3, padding=(1, 1)), V, "padding", r"\(1, 1\)",
                 id="rpp3d-padding-two-values"),
    pytest.param(lambda: RSteerR3Conv(triv3(), triv3(), 3, maximum_offset=1), V, "maximum_offset", "1",
                 id="rsteer3d-maximum_offset"),
    pytest.param(lambda: RelaxedR3Conv(triv3(), triv3(), 3, relaxed_subgroup=(True, 7, 7)), V, "relaxed_subgroup",
                 r"\(True, 7, 7\)", id="relaxed3d-relaxed_subgroup-not-a-subgroup"),
    pytest.param(lambda: RPPR3Conv(triv3(gspaces.octaOnR3()), triv3(gspaces.octaOnR3()), 3,
                                   relaxed_subgroup=(False, 4)), V, "relaxed_subgroup", r"\(False, 4\)",
                 id="rpp3d-octa-gspace-cannot-restrict"),
    pytest.param(lambda: RelaxedR3Conv.from_r3conv(enn.R2Conv(triv(), triv(), 3)), T, "conv", "R2Conv",
                 id="relaxed3d-from_r3conv-planar-conv"),
    pytest.param(lambda: RelaxedR3Conv(triv3(), triv3(), 3).evaluate_output_shape((1, 1, 5, 5)), V, "input_shape",
                 r"\(1, 1, 5, 5\)", id="relaxed3d-evaluate_output_shape-2d"),
    pytest.param(lambda: RelaxedR3Conv(triv3(), triv3(), 3).gains(5, 5), V, "shape", r"\(5, 5\)",
                 id="relaxed3d-gains-two-sizes"),
    # --- DSLiftingConv / DSGroupConv
    pytest.param(lambda: DSLiftingConv(triv(), 2, 4), V, "kernel_size", "4", id="ds-lifting-kernel_size-even"),
    pytest.param(lambda: DSLiftingConv(triv(), 0, 3), V, "out_type", "0", id="ds-lifting-zero-fields"),
    pytest.param(lambda: DSLiftingConv(triv(), "2", 3), T, "out_type", "str", id="ds-lifting-out_type-string"),
    pytest.param(lambda: DSLiftingConv(triv(), 2, 3, init="eye"), V, "init", "'eye'", id="ds-lifting-init-unknown"),
    pytest.param(lambda: DSLiftingConv(triv(so2()), 2, 3, subgroup_id=(0, 4)), V, "subgroup_id", r"\(0, 4\)",
                 id="ds-lifting-subgroup_id-not-in-SO2"),
    pytest.param(lambda: DSLiftingConv(triv(so2()), 2, 3), V, "subgroup_id", r"SO\(2\)",
                 id="ds-lifting-continuous-group-without-subgroup"),
    pytest.param(lambda: DSLiftingConv(triv(), 2, 3, stride=0), V, "stride", "0", id="ds-lifting-stride-zero"),
    pytest.param(lambda: DSLiftingConv(triv(), 2, 3, padding=-1), V, "padding", "-1",
                 id="ds-lifting-padding-negative"),
    pytest.param(lambda: DSLiftingConv(triv(), 2, 3, interpolation_order=7), V, "interpolation_order", "7",
                 id="ds-lifting-interpolation_order-too-high"),
    pytest.param(lambda: DSLiftingConv(triv(), 2, 3, init_scale="x"), V, "init_scale", "'x'",
                 id="ds-lifting-init_scale-string"),
    pytest.param(lambda: DSLiftingConv(triv(), 2, 3, norm_weight=-1), V, "norm_weight", "-1",
                 id="ds-lifting-norm_weight-negative"),
    pytest.param(lambda: DSLiftingConv(reg(), 2, 3), V, "in_type", "regular", id="ds-lifting-regular-input"),
    pytest.param(lambda: DSGroupConv(triv(), 2, 3), V, "in_type", "irrep_0", id="ds-group-trivial-input"),
    pytest.param(lambda: DSGroupConv(reg(), 2, 3, n_iter=2.5), V, "n_iter", "2.5", id="ds-group-n_iter-float"),
    pytest.param(lambda: DSGroupConv(reg(), 2, 3).evaluate_output_shape((1, 3, 5, 5)), V, "input_shape",
                 r"\(1, 3, 5, 5\)", id="ds-group-evaluate_output_shape-channels"),
    # --- SharedLinear
    pytest.param(lambda: SharedLinear(2, 0, 1), V, "out_features", "0", id="shared-linear-out_features-zero"),
    pytest.param(lambda: SharedLinear(2, 2, 0), V, "n_shared", "0", id="shared-linear-n_shared-zero"),
    pytest.param(lambda: SharedLinear(2, 2, 2, usage_weight=-0.1), V, "usage_weight", "-0.1",
                 id="shared-linear-usage_weight-negative"),
    pytest.param(lambda: SharedLinear(2, 2, 2)(torch.zeros(3, 5)), V, r"\bx\b", r"\(3, 5\)",
                 id="shared-linear-forward-wrong-width"),
    # --- regularization_loss, soften, harden
    pytest.param(lambda: es.regularization_loss([mlp()]), T, "model", "list", id="regularization_loss-model-list"),
    pytest.param(lambda: es.regularization_loss(mlp(), kl_weight=-3), V, "kl_weight", "-3",
                 id="regularization_loss-kl_weight-negative"),
    pytest.param(lambda: es.regularization_loss(mlp(), kl_reduction="max"), V, "kl_reduction", "'max'",
                 id="regularization_loss-kl_reduction-unknown"),
    pytest.param(lambda: es.regularization_loss(mlp(), align_weight="5"), V, "align_weight", "'5'",
                 id="regularization_loss-align_weight-string"),
    pytest.param(lambda: es.soften(mlp(), method="magic"), V, "method", "'magic'", id="soften-method-unknown"),
    pytest.param(lambda: es.soften(mlp(), types=[torch.nn.Conv2d]), V, "types", "Conv2d",
                 id="soften-types-not-escnn"),
    pytest.param(lambda: es.soften(enn.SequentialModule(conv()), names="0"), T, "names", "'0'",
                 id="soften-names-a-string"),
    pytest.param(lambda: es.soften("model"), T, "model", "str", id="soften-model-not-a-module"),
    pytest.param(lambda: es.harden(mlp(), threshold=1.5), V, "threshold", "1.5", id="harden-threshold-above-1"),
    pytest.param(lambda: es.harden(mlp(), threshold="0.9"), V, "threshold", "'0.9'", id="harden-threshold-string"),
    pytest.param(lambda: es.harden(None), T, "model", "NoneType", id="harden-model-none"),
    pytest.param(lambda: es.harden(RPPR2Conv(triv(), reg(), 3), subgroups={"C3": 3}), V, "subgroups", "'C3'",
                 id="harden-subgroups-not-a-subgroup"),
    # --- LaplaceEvidence, marglik_training
    pytest.param(lambda: es.laplace.LaplaceEvidence("model"), T, "model", "str", id="laplace-model-string"),
    pytest.param(lambda: es.laplace.LaplaceEvidence(mlp(), hessian="exact"), V, "hessian", "'exact'",
                 id="laplace-hessian-unknown"),
    pytest.param(lambda: es.laplace.LaplaceEvidence(mlp(), prior_precision=-1.0), V, "prior_precision", "-1.0",
                 id="laplace-prior_precision-negative"),
    pytest.param(lambda: es.laplace.LaplaceEvidence(mlp(), "regression", sigma_noise=0), V, "sigma_noise", "0",
                 id="laplace-sigma_noise-zero"),
    pytest.param(lambda: es.laplace.LaplaceEvidence(mlp(), mc_samples=1.5), V, "mc_samples", "1.5",
                 id="laplace-mc_samples-float"),
    pytest.param(lambda: es.laplace.LaplaceEvidence(torch.nn.Sequential(torch.nn.Embedding(3, 2))), T, "model",
                 "Embedding", id="laplace-unsupported-layer"),
    pytest.param(lambda: es.laplace.LaplaceEvidence(torch.nn.Sequential(torch.nn.ReLU())), V, "model",
                 "Sequential", id="laplace-no-parameters"),
    pytest.param(lambda: es.laplace.LaplaceEvidence(mlp()).fit(loader(0)), V, "loader", "no batches",
                 id="laplace-fit-empty-loader"),
    pytest.param(lambda: es.laplace.LaplaceEvidence(mlp()).fit(7), T, "loader", "7", id="laplace-fit-not-iterable"),
    pytest.param(lambda: es.laplace.LaplaceEvidence(mlp()).fit(loader()).log_marginal_likelihood(torch.ones(3)),
                 V, "prior_precision", r"\(3,\)", id="laplace-log_marginal_likelihood-prior-shape"),
    pytest.param(lambda: es.laplace.marglik_training(mlp(), [(torch.zeros(1, 2), torch.zeros(1))]), T,
                 "train_loader", "list", id="marglik-train_loader-list"),
    pytest.param(lambda: es.laplace.marglik_training(mlp(), loader(), lr=-0.1), V, r"\blr\b", "-0.1",
                 id="marglik-lr-negative"),
    pytest.param(lambda: es.laplace.marglik_training(mlp(), loader(), marglik_batch_size=0), V,
                 "marglik_batch_size", "0", id="marglik-marglik_batch_size-zero"),
    pytest.param(lambda: es.laplace.marglik_training(mlp(), loader(), n_epochs=2.5), V, "n_epochs", "2.5",
                 id="marglik-n_epochs-float"),
    pytest.param(lambda: es.laplace.marglik_training(mlp(), loader(0)), V, "train_loader", "empty",
                 id="marglik-empty-dataset"),
    # --- metrics
    pytest.param(lambda: es.metrics.equivariance_error(conv(), x4(), [egroup.so2_group().identity]), V,
                 "elements", r"SO\(2\)", id="equivariance_error-element-of-another-group"),
    pytest.param(lambda: es.metrics.equivariance_error(conv(), torch.zeros(1, 1, 9, 9)), T, r"\bx\b", "Tensor",
                 id="equivariance_error-x-plain-tensor"),
    pytest.param(lambda: es.metrics.equivariance_error(conv(), reg()(torch.zeros(1, 4, 9, 9))), V, r"\bx\b",
                 "regular", id="equivariance_error-x-wrong-field-type"),
    pytest.param(lambda: es.metrics.subgroup_report(conv(), x4(), subgroups=["C3"]), V, "subgroups", "'C3'",
                 id="subgroup_report-unknown-subgroup"),
    pytest.param(lambda: es.metrics.subgroup_report(conv(), x4(), subgroups=2.5), V, "subgroups", "2.5",
                 id="subgroup_report-subgroups-float"),
    pytest.param(lambda: es.metrics.subgroup_report(conv(), x4(), reference="strict"), T, "reference", "'strict'",
                 id="subgroup_report-reference-string"),
    pytest.param(lambda: es.metrics.lie_derivative(conv(), x4(), reduction="max"), V, "reduction", "'max'",
                 id="lie_derivative-reduction-unknown"),
    pytest.param(lambda: es.metrics.lie_derivative("model", x4()), T, "model", "'model'",
                 id="lie_derivative-model-not-callable"),
    pytest.param(lambda: es.metrics.lie_derivative(conv(), reg()(torch.zeros(1, 4, 9, 9))), V, r"\bx\b", "regular",
                 id="lie_derivative-x-non-trivial-fields-of-C4"),
    pytest.param(lambda: es.metrics.partition_distance([0, 1], [0, 1, 1]), V, "a, b", "2 vs 3",
                 id="partition_distance-lengths-differ"),
    pytest.param(lambda: es.metrics.partition_distance(["a", "b"], [0, 1]), T, r"\ba\b", "'a'",
                 id="partition_distance-string-labels"),
    pytest.param(lambda: es.metrics.partition_distance([0, 1], torch.zeros(2, 1, 1)), V, r"\bb\b",
                 r"\(2, 1, 1\)", id="partition_distance-3d-array"),
    pytest.param(lambda: es.metrics.partition_distance([0.5, 1.0], [0, 1]), V, r"\ba\b", "float64",
                 id="partition_distance-fractional-labels"),
    # --- DoubleMNIST
    pytest.param(lambda: es.data.DoubleMNIST(symmetry="C3"), V, "symmetry", "'C3'", id="doublemnist-symmetry"),
    pytest.param(lambda: es.data.DoubleMNIST(split="dev"), V, "split", "'dev'", id="doublemnist-split"),
    pytest.param(lambda: es.data.DoubleMNIST(source="web"), V, "source", "'web'", id="doublemnist-source"),
    pytest.param(lambda: es.data.DoubleMNIST(seed=1.5), V, "seed", "1.5", id="doublemnist-seed-float"),
    pytest.param(lambda: es.data.DoubleMNIST(n_images=-5), V, "n_images", "-5", id="doublemnist-n_images-negative"),
    pytest.param(lambda: es.data.DoubleMNIST(fractions=(0.9, 0.1)), V, "fractions", r"\(0\.9, 0\.1\)",
                 id="doublemnist-fractions-two-shares"),
    pytest.param(lambda: es.data.DoubleMNIST(fractions="abc"), V, "fractions", "'abc'",
                 id="doublemnist-fractions-string"),
    # --- testing.assert_equivariant / random_input
    pytest.param(lambda: testing.assert_equivariant(mlp()), T, "module", "Sequential",
                 id="assert_equivariant-plain-module"),
    pytest.param(lambda: testing.assert_equivariant(conv(), x=torch.zeros(1, 1, 9, 9)), T, r"\bx\b", "Tensor",
                 id="assert_equivariant-x-plain-tensor"),
    pytest.param(lambda: testing.assert_equivariant(conv(), x=reg()(torch.zeros(1, 4, 9, 9))), V, r"\bx\b",
                 "regular", id="assert_equivariant-x-wrong-field-type"),
    pytest.param(lambda: testing.assert_equivariant(conv(), elements=[90]), T, "elements", "90",
                 id="assert_equivariant-elements-not-group-elements"),
    pytest.param(lambda: testing.assert_equivariant(conv(), atol=-1e-7), V, "atol", "-1e-07",
                 id="assert_equivariant-atol-negative"),
    pytest.param(lambda: testing.assert_equivariant(conv(), dtype="float64"), T, "dtype", "'float64'",
                 id="assert_equivariant-dtype-string"),
    pytest.param(lambda: testing.random_input(conv(), size=10), V, "size", "10", id="random_input-even-size"),
    # --- subgroups
    pytest.param(lambda: subgroups.subgroup(egroup.cyclic_group(4), 3), V, "sid", "3",
                 id="subgroup-order-not-dividing"),
    pytest.param(lambda: subgroups.subgroup(egroup.o2_group(), (1, 2, 3)), V, "sid", r"\(1, 2, 3\)",
                 id="subgroup-malformed-id"),
    pytest.param(lambda: subgroups.subgroup("C4", 2), T, "group", "'C4'", id="subgroup-group-string"),
    pytest.param(lambda: subgroups.default_subgroups(4), T, "group", "4", id="default_subgroups-group-int"),
    # --- models.build_model
    pytest.param(lambda: models.build_model("mlp"), V, "method", "'mlp'", id="build_model-method-unknown"),
    pytest.param(lambda: models.build_model("strict", group="C3"), V, "group", "'C3'", id="build_model-group"),
    pytest.param(lambda: models.build_model("strict", width=0), V, "width", "0", id="build_model-width-zero"),
    pytest.param(lambda: models.build_model("cnn", width="2"), V, "width", "'2'", id="build_model-width-string"),
    pytest.param(lambda: models.build_model("strict", max_frequency=-1), V, "max_frequency", "-1",
                 id="build_model-max_frequency-negative"),
    pytest.param(lambda: models.build_model("strict", n_classes=0), V, "n_classes", "0",
                 id="build_model-n_classes-zero"),
    pytest.param(lambda: models.build_model("cnn", readout="global"), V, "readout", "'global'",
                 id="build_model-readout-unknown"),
]

#: fragments of errors that leak from inside Python, torch or escnn instead of a check of ours
INTERNAL = re.compile(r"object has no attribute|not supported between instances|could not convert|"
                      r"shapes cannot be multiplied|size mismatch|is not iterable|math domain error|"
                      r"Invalid device string|unexpected keyword|object is not callable|^\s*$")


def test_the_table_covers_the_api():
    assert len(CASES) >= 45
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("call, exc, arg, value", CASES)
def test_bad_input_is_rejected_clearly(call, exc, arg, value):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    err = info.value
    message = str(err)
    assert isinstance(err, exc), f"expected {exc.__name__}, got {type(err).__name__}: {message}"
    assert not INTERNAL.search(message), f"internal error leaked: {message}"
    assert re.search(arg, message), f"the message does not name the argument ({arg}): {message}"
    assert re.search(value, message), f"the message does not show the value ({value}): {message}"
