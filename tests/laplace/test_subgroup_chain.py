"""The Laplace evidence chooses the level of a subgroup chain the data need (RPPR2Conv with ``pathways=``).

One D4 convolution with the chain D4 ⊃ C4 ⊃ 1 (levels: filters that break the flips and keep C4, filters that break
C4), trained by :func:`escnn_soft.laplace.marglik_training` with one prior precision per tensor, on regression data
made by a teacher of the same architecture whose relaxation sits in one known level (or none). The evidence must open
exactly that level (prior precision below 50) and close the others (above 1,000: their filters then vanish), and the
trained layer must keep the teacher's subgroup. Observed over seeds 0–2: open 2.8–8.2, closed 6e3–1.4e5.
"""
from __future__ import annotations

import pytest
import torch
from escnn import gspaces
from escnn import nn as enn
from torch.utils.data import DataLoader, TensorDataset

import escnn_soft as es
from escnn_soft.laplace import marglik_training

GS = gspaces.flipRot2dOnR2(4)
IN, OUT = enn.FieldType(GS, [GS.trivial_repr]), enn.FieldType(GS, [GS.regular_repr])
CHAIN = [(None, 4), None]


class ChainNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = es.nn.RPPR2Conv(IN, OUT, 5, pathways=CHAIN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(IN(x)).tensor.flatten(1)


@pytest.mark.parametrize("level,kept", [(None, "D4"), (0, "C4"), (1, None)], ids=["D4-data", "C4-data", "C1-data"])
def test_evidence_opens_the_level_the_data_need(level, kept):
    torch.manual_seed(0)
    teacher = ChainNet().double()
    with torch.no_grad():
        teacher.conv.weights.normal_()
        if level is not None:
            teacher.conv.chain[level].weights.normal_(0, 0.5)
    x = torch.randn(64, 1, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        y = teacher(x)
        y = y + 0.1 * torch.randn_like(y)
    model, hist = marglik_training(ChainNet().double(), DataLoader(TensorDataset(x, y), batch_size=32),
                                   likelihood="regression", n_epochs=60, lr=1e-2, n_epochs_burnin=5,
                                   marglik_frequency=5, n_hypersteps=20, prior_structure="parameterwise",
                                   progress=False, seed=0)
    delta = dict(zip(hist["groups"], hist["prior_precision"][-1]))
    degree = model.conv.degree()
    for k, path in enumerate(degree["pathways"]):
        d = delta[f"conv.chain.{k}.weights"]
        if k == level:
            assert d < 50 and path["norm_ratio"] > 0.2, (k, d, path)
        else:
            assert d > 1e3 and path["norm_ratio"] < 0.05, (k, d, path)
    errors = degree["equivariance_error"]
    if kept is not None:   # the teacher's subgroup kept (noise-level error), the larger group broken
        assert errors[kept] < 0.1
    if kept == "C4":
        assert errors["D4"] > 0.3
    if kept is None:
        assert min(errors.values()) > 0.3
