"""``escnn_soft.doublemnist.training.train_epoch``: the regulariser it adds is the one it is given."""
from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from escnn_soft.doublemnist.training import train_epoch
from escnn_soft.regularization import regularization_loss


def _one_step(regularize: bool, regularizer=regularization_loss) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_epoch(model, DataLoader(TensorDataset(x, y), batch_size=4), optimizer, torch.device("cpu"),
                        regularize=regularize, progress=False, regularizer=regularizer)
    return model.weight.detach().clone(), stats


@pytest.mark.parametrize("regularize", [True, False])
def test_train_epoch_adds_the_given_regularizer_once_and_only_when_asked(regularize: bool) -> None:
    def l2(model: torch.nn.Module) -> torch.Tensor:
        return 2.5 * model.weight.pow(2).sum()

    with_l2, stats = _one_step(regularize, l2)
    without, plain = _one_step(False)
    torch.manual_seed(0)
    w0 = torch.nn.Linear(3, 2).weight.detach()
    # SGD step: w1 = w0 - lr (∇task + ∇reg), ∇reg = 5 w0
    expected = without - 0.1 * 5.0 * w0 if regularize else without
    torch.testing.assert_close(with_l2, expected)
    assert stats["regularization"] == pytest.approx(2.5 * float(w0.pow(2).sum()) if regularize else 0.0)
    assert stats["loss"] == pytest.approx(plain["loss"])


def test_the_alignment_only_regularizer_has_no_kl_term() -> None:
    """``functools.partial(regularization_loss, kl_weight=0)`` (``marglik_lambda.py``'s ``reg_align`` mode) is
    ``regularization_loss`` minus its KL part, on a network with non-uniform likelihoods."""
    from escnn_soft.models import build_model

    torch.manual_seed(0)
    model = build_model("probabilistic", group="SO2", width=1, L=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "likelihood" in name:
                p.normal_()
    def same_draws() -> torch.Generator:  # the alignment term's extra elements are random
        return torch.Generator().manual_seed(1)

    with torch.no_grad():
        full = regularization_loss(model, generator=same_draws())
        align = functools.partial(regularization_loss, kl_weight=0.0)(model, generator=same_draws())
        kl = regularization_loss(model, align_weight=0.0)
    assert float(kl) > 1e-3 and float(align) > 1e-3
    torch.testing.assert_close(full, align + kl)
