"""Checkpoints: metadata with field types, train/eval round trips, clear errors for a different model, resume."""
from __future__ import annotations

import re

import pytest
import torch

from escnn_soft import __version__
from escnn_soft.cli import load_checkpoint, main, save_checkpoint
from escnn_soft.models import METHODS, build_model
from escnn_soft.nn.relaxed import DEFAULT_BANK_FRACTION

X = torch.rand(3, 1, 56, 56, generator=torch.Generator().manual_seed(0))


def _meta(method: str, group: str = "C4", width: int = 1) -> dict:
    return {"method": method, "group": group, "width": width, "max_frequency": 2, "readout": "grid", "L": 2,
            "bank_fraction": DEFAULT_BANK_FRACTION, "bank_in_fraction": DEFAULT_BANK_FRACTION,  # build_model's default
            "version": __version__}


def _trained(method: str, group: str = "C4", width: int = 1, seed: int = 0) -> torch.nn.Module:
    """A DoubleMNIST net after two SGD steps (weights, batch-norm statistics and likelihoods off their init)."""
    torch.manual_seed(seed)
    model = build_model(method, group=group, width=width).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), torch.tensor([1, 2, 3])).backward()
        opt.step()
    return model


def test_metadata_names_method_group_version_and_field_types(tmp_path):
    model = build_model("probabilistic", group="SO2", width=1)
    save_checkpoint(tmp_path / "p.pt", model, _meta("probabilistic", "SO2"), [{"loss": 1.0}])
    ckpt = torch.load(tmp_path / "p.pt", weights_only=True)
    meta = ckpt["meta"]
    assert {"method", "group", "width", "version", "field_types"} <= set(meta)
    types = meta["field_types"]
    assert types["blocks.0.0"] == "ProbabilisticR2Conv SO(2)_on_R2[(None, -1)]: irrep_0 -> irrep_0*4, irrep_1, irrep_2"
    assert types["invariant"].endswith("-> irrep_0*32")
    assert "blocks.0" not in types  # containers are described by their layers
    assert len(str(types)) < 4000  # compact: one line per layer
    cnn = build_model("cnn", group="C4", width=1)
    save_checkpoint(tmp_path / "c.pt", cnn, _meta("cnn"), [])
    assert torch.load(tmp_path / "c.pt", weights_only=True)["meta"]["field_types"] == {}


@pytest.mark.parametrize("method", METHODS)
def test_train_and_eval_mode_round_trips_give_equal_outputs(method, tmp_path):
    """Save in train or eval mode, load into a fresh model in train or eval mode (or rebuild it from the
    metadata): the eval outputs are equal. escnn's R2Conv adds expanded 'filter' buffers in eval mode, which
    used to make eval-mode checkpoints unloadable and left a model loaded in eval mode with stale filters."""
    model = _trained(method)
    keys = {}
    for save_mode in ("train", "eval"):
        model.train(save_mode == "train")
        save_checkpoint(tmp_path / "m.pt", model, _meta(method), [])
        keys[save_mode] = set(torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"])
        assert "blocks.0.0.filter" not in keys[save_mode]
        model.eval()
        with torch.no_grad():
            reference = model(X)
        for load_mode in ("train", "eval"):
            torch.manual_seed(1)
            fresh = build_model(method, group="C4", width=1).train(load_mode == "train")
            if load_mode == "eval":
                with torch.no_grad():
                    fresh(X)  # fill the eval caches with the fresh weights
            loaded, _, _ = load_checkpoint(tmp_path / "m.pt", model=fresh)
            assert loaded is fresh and fresh.training == (load_mode == "train")
            with torch.no_grad():
                torch.testing.assert_close(fresh.eval()(X), reference, rtol=0, atol=0,
                                           msg=f"saved in {save_mode}, loaded in {load_mode} mode")
        rebuilt, _, _ = load_checkpoint(tmp_path / "m.pt")
        assert rebuilt.training
        with torch.no_grad():
            torch.testing.assert_close(rebuilt.eval()(X), reference, rtol=0, atol=0)
    assert keys["train"] == keys["eval"]


@pytest.mark.parametrize("other, expected", [
    ({"method": "relaxed"}, [r"method: checkpoint 'probabilistic', model 'relaxed'",
                             (r"field types of layer 'blocks\.0\.0': checkpoint 'ProbabilisticR2Conv .*', "
                              r"model 'RelaxedR2Conv ")]),
    ({"group": "SO2"}, [r"group: checkpoint 'C4', model 'SO2'", r"SO\(2\)_on_R2"]),
    ({"width": 2}, [(r"field types of layer 'blocks\.0\.0': checkpoint '.*-> irrep_0\*4, irrep_1, irrep_2', "
                     r"model '.*-> irrep_0\*7, irrep_1, irrep_2, irrep_0, irrep_1, irrep_2'"), r"more layers"]),
    ({"method": "cnn"}, [r"method: checkpoint 'probabilistic', model 'cnn'", r"'blocks\.0\.0'.*'\(no such layer\)'"]),
])
def test_loading_into_a_different_model_names_what_differs(other, expected, tmp_path):
    save_checkpoint(tmp_path / "p.pt", build_model("probabilistic", group="C4", width=1), _meta("probabilistic"), [])
    kwargs = {"method": "probabilistic", "group": "C4", "width": 1, **other}
    target = build_model(**kwargs)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"p\.pt was saved from a different model \(method 'probabilistic', "
                                         r"group 'C4', arch 'default', width 1\)") as err:
        load_checkpoint(tmp_path / "p.pt", model=target)
    for pattern in expected:
        assert re.search(pattern, str(err.value)), (pattern, str(err.value))
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())  # nothing was loaded


def test_plain_cnn_of_another_width_names_the_shapes(tmp_path):
    save_checkpoint(tmp_path / "c.pt", build_model("cnn", group="C4", width=1), _meta("cnn"), [])
    with pytest.raises(ValueError, match=r"'body\.0\.weight': checkpoint shape \(7, 1, 7, 7\), model shape "
                                         r"\(14, 1, 7, 7\)"):
        load_checkpoint(tmp_path / "c.pt", model=build_model("cnn", group="C4", width=2))


def test_metadata_that_contradicts_the_weights_names_the_layer(tmp_path):
    save_checkpoint(tmp_path / "m.pt", build_model("strict", group="C4", width=1), _meta("strict", "D4"), [])
    with pytest.raises(ValueError, match=r"does not match the model it describes .*field types of layer 'mask': "
                                         r"checkpoint 'MaskModule C4_on_R2"):
        load_checkpoint(tmp_path / "m.pt")


RUN = ["train", "--n-images", "100", "--width", "1", "--group", "C4", "--compare", "", "--report-images", "0",
       "--batch-size", "40", "--threads", "1"]


def test_resume_with_other_arguments_names_them(tmp_path):
    """The field types of the rebuilt model are checked too (the metadata alone could not tell a wider model)."""
    save_checkpoint(tmp_path / "strict.pt", build_model("strict", group="C4", width=1),
                    {"method": "strict", "group": "C4", "width": 1, "max_frequency": 2, "readout": "grid", "L": 2,
                     "symmetry": "C4", "n_images": 100, "seed": 0, "version": __version__, "epoch": 1}, [{"loss": 1.0}])
    with pytest.raises(SystemExit, match=r"width: checkpoint 1, this run 2.*field types of layer 'blocks\.0\.0'"):
        main(RUN[:3] + ["--width", "2"] + RUN[5:] + ["--method", "strict", "--epochs", "2", "--out", str(tmp_path),
                                                     "--resume"])


@pytest.mark.parametrize("method", ["probabilistic", pytest.param("relaxed", marks=pytest.mark.slow)])
def test_resume_of_soft_methods_is_identical_to_an_uninterrupted_run(method, tmp_path):
    """tests/test_cli.py covers the strict method; the soft ones add RNG draws (the probabilistic layers'
    alignment samples) and eval caches. About 8 s per method on one core."""
    common = RUN + ["--method", method]
    assert main(common + ["--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    assert main(common + ["--epochs", "1", "--out", str(tmp_path / "cut")]) == 0
    assert main(common + ["--epochs", "2", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    full = torch.load(tmp_path / "full" / f"{method}.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / f"{method}.pt", weights_only=True)
    assert full["history"] == cut["history"]
    assert full["state_dict"].keys() == cut["state_dict"].keys()
    for k, v in full["state_dict"].items():
        torch.testing.assert_close(cut["state_dict"][k], v, rtol=0, atol=0, msg=k)
