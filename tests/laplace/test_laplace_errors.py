"""Bad input: clear errors that name the layer or the argument."""
from __future__ import annotations

import pytest
import torch

import escnn_soft as es
from escnn_soft.laplace import LaplaceEvidence, marglik_training
from tests.laplace import c4_types, loader


def _mlp(n_out: int = 3, act: torch.nn.Module = None) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 4), act or torch.nn.Tanh(), torch.nn.Linear(4, n_out))


def _data(n: int = 6, n_out: int = 3):
    return loader(torch.randn(n, 2), torch.randint(0, n_out, (n,)), 3)


def test_unsupported_layer_names_path_and_supported_types():
    model = _mlp(act=torch.nn.PReLU())
    with pytest.raises(TypeError, match=r"'1' \(PReLU\).*Supported: .*torch\.nn\.modules\.conv\.Conv2d.*R2Conv"):
        LaplaceEvidence(model)


def test_excluding_the_unsupported_parameter_by_name():
    model = _mlp(act=torch.nn.PReLU())
    ev = LaplaceEvidence(model, exclude=["1.weight"]).fit(_data())
    assert [p.name for p in ev.params] == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_empty_loader():
    with pytest.raises(ValueError, match="no batches"):
        LaplaceEvidence(_mlp()).fit(loader(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 2))


def test_non_finite_loss_names_the_layer():
    model = _mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite loss: the output of layer '2'"):
        LaplaceEvidence(model).fit(_data())


def test_non_finite_curvature_names_the_layer():
    """Huge inputs saturate tanh (finite loss) but overflow the input covariance of layer '0'."""
    model = _mlp()
    data = loader(torch.full((4, 2), 1e30), torch.zeros(4, dtype=torch.long), 4)
    with pytest.raises(FloatingPointError, match="non-finite curvature.*layer '0'"):
        LaplaceEvidence(model).fit(data)


def test_regression_target_shape():
    data = loader(torch.randn(4, 2), torch.randn(4), 2)
    with pytest.raises(ValueError, match=r"regression targets of shape \(2,\) do not match .* \(2, 1\)"):
        LaplaceEvidence(_mlp(1), "regression").fit(data)


def test_classification_targets():
    with pytest.raises(ValueError, match="integer class indices"):
        LaplaceEvidence(_mlp()).fit(loader(torch.randn(4, 2), torch.randn(4), 2))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        LaplaceEvidence(_mlp()).fit(loader(torch.randn(4, 2), torch.full((4,), 3), 2))


@pytest.mark.parametrize("kwargs,match", [
    ({"likelihood": "poisson"}, "likelihood"), ({"hessian": "diag"}, "hessian"),
    ({"prior_structure": "diagonal"}, "prior_structure"), ({"mc_samples": 0}, "mc_samples"),
    ({"exclude": "batchnorm"}, "exclude")])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LaplaceEvidence(_mlp(), **kwargs)


def test_prior_precision_length_and_fit_order():
    ev = LaplaceEvidence(_mlp())
    with pytest.raises(RuntimeError, match="fit"):
        ev.log_marginal_likelihood()
    ev.fit(_data())
    with pytest.raises(ValueError, match="2 values"):
        ev.log_marginal_likelihood(torch.ones(3))
    with pytest.raises(ValueError, match="sigma_noise"):
        ev.log_marginal_likelihood(sigma_noise=0.5)


def test_unknown_hyperparameter_name():
    with pytest.raises(KeyError, match="no parameter named 'x.alpha'"):
        LaplaceEvidence(_mlp(), hyperparameters=["x.alpha"])


def test_grouped_convolution_names_the_layer():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, groups=2), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(NotImplementedError, match="layer '0'.*grouped"):
        LaplaceEvidence(model).fit(loader(torch.randn(2, 2, 3, 3), torch.zeros(2, dtype=torch.long), 2))


def test_parameters_acting_outside_the_ops_are_point_estimates_with_a_warning():
    types = c4_types("regular")
    torch.manual_seed(0)
    layer = es.nn.RelaxedR2Conv(types[0], types[1], 3, num_banks=1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.relaxed = layer
            self.out = torch.nn.Linear(types[1].size * 25, 3)

        def forward(self, x):
            return self.out(self.relaxed(types[0](x)).tensor.flatten(1))

    data = loader(torch.randn(4, 1, 7, 7), torch.zeros(4, dtype=torch.long), 2)
    with pytest.warns(UserWarning, match="relaxed.bias.*point estimates"):
        ev = LaplaceEvidence(Net()).fit(data)
    assert ev.point_estimates == ["relaxed.bias", "relaxed.bank_coefficients"]
    assert layer.bank_weights is not None  # the default ¼ of the fields: R_1 has its own tensor, in the Laplace
    assert ev.per_layer()[0]["n_params"] == (layer.weights.numel() + layer.relaxed_weights.numel()
                                             + layer.bank_weights.numel())


def test_marglik_training_arguments():
    with pytest.raises(ValueError, match="marglik_frequency"):
        marglik_training(_mlp(), _data(), marglik_frequency=0)
    with pytest.raises(ValueError, match="empty dataset"):
        marglik_training(_mlp(), loader(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 2))
