"""The command line: a tiny main-job run end to end, report of its checkpoint, bad input."""
import json
import warnings

import pytest
import torch

import escnn_soft as es
from escnn_soft.cli import load_checkpoint, main, save_checkpoint
from escnn_soft.models import build_model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--n-images", "300", "--epochs", "1", "--width", "1", "--group", "C4",
                 "--compare", "cnn", "--out", str(out), "--report-images", "1"])
    assert code == 0
    return out


def test_train_writes_report_plots_and_checkpoints(tiny_run, capsys):
    results = json.loads((tiny_run / "results.json").read_text())
    assert set(results) == {"probabilistic", "cnn"}
    for r in results.values():
        assert 0.0 <= r["test_accuracy"] <= 1.0
    hardened = results["probabilistic"]["hardened"]
    assert 0.0 <= hardened["test_accuracy"] <= 1.0 and hardened["threshold"] == 0.99
    assert set(hardened["layers"]) == set(results["probabilistic"]["degrees"])  # every soft layer was hardened
    assert "hardened" not in results["cnn"]
    report = results["probabilistic"]["subgroup_report"]
    rows = {r["name"]: r for r in report["rows"]}
    assert "blocks.0.0" in rows and [s["name"] for s in report["subgroups"]] == ["C2", "C4"]
    assert rows["mask"]["errors"]["C4"]["error"] < 1e-5  # the mask is exactly C4-equivariant
    for name in ("probabilistic.pt", "cnn.pt", "probabilistic_report.txt", "probabilistic_report.json",
                 "probabilistic_report.png"):
        assert (tiny_run / name).stat().st_size > 0, name
    assert list(tiny_run.glob("probabilistic_likelihood_*.png"))
    text = (tiny_run / "probabilistic_report.txt").read_text()
    assert "blocks.0.0" in text and "C4" in text


def test_checkpoint_loads_with_weights_only_and_reports(tiny_run, capsys):
    model, meta, history = load_checkpoint(tiny_run / "probabilistic.pt")
    assert meta["method"] == "probabilistic" and meta["epoch"] == 1 and len(history) == 1
    ckpt = torch.load(tiny_run / "probabilistic.pt", weights_only=True)
    reference = build_model("probabilistic", group="C4", width=1)
    reference.load_state_dict(ckpt["state_dict"])
    x = torch.rand(2, 1, 56, 56)
    model.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    assert main(["report", str(tiny_run / "probabilistic.pt"), "--out", str(tiny_run / "rep")]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "hardened (threshold 0.99): test accuracy" in printed


def test_train_doubly_stochastic_network(tmp_path, capsys):
    assert main(["train", "--method", "ds", "--compare", "", "--n-images", "100", "--epochs", "1", "--group", "C4",
                 "--width", "1", "--out", str(tmp_path), "--report-images", "1", "--readout", "grid"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    degrees = results["ds"]["degrees"]
    assert set(degrees) == {f"blocks.{i}.0" for i in range(5)}  # a lifting and four group convolutions
    assert all(d["group"] == "C4" and d["order"] == 4 for d in degrees.values())
    assert len(list(tmp_path.glob("ds_matrices_blocks_*_0.png"))) == 5  # the learned matrices of every layer
    model, meta, _ = load_checkpoint(tmp_path / "ds.pt")
    assert meta["method"] == "ds" and type(model).__name__ == "DSDoubleMNISTNet"
    assert meta["readout"] == "grid" and model.readout == "grid"  # the checkpoint rebuilds the 3x3 read-out


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not written by escnn-soft"):
        load_checkpoint(tmp_path / "foreign.pt")
    model = build_model("strict", group="C4", width=1)
    meta = {"method": "strict", "group": "D4", "width": 1, "max_frequency": 2, "L": 2}
    save_checkpoint(tmp_path / "mismatch.pt", model, meta, [])
    with pytest.raises(ValueError, match="does not match the model"):
        load_checkpoint(tmp_path / "mismatch.pt")


def test_bad_method_is_rejected():
    with pytest.raises(SystemExit):
        main(["train", "--method", "nonsense"])


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    common = ["train", "--n-images", "200", "--width", "1", "--group", "C4", "--compare", "",
              "--method", "strict", "--report-images", "0", "--batch-size", "64"]
    assert main(common + ["--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    assert main(common + ["--epochs", "1", "--out", str(tmp_path / "cut")]) == 0  # "interrupted" after epoch 1
    assert main(common + ["--epochs", "2", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    full = torch.load(tmp_path / "full" / "strict.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "strict.pt", weights_only=True)
    assert full["history"] == cut["history"]
    for k, v in full["state_dict"].items():
        torch.testing.assert_close(cut["state_dict"][k], v, rtol=0, atol=0)


def test_checkpoint_without_readout_metadata_loads_as_per_half(tmp_path):
    """Checkpoints written before ``--readout`` existed pooled per half; they still load, as 'halves'."""
    torch.manual_seed(0)
    model = build_model("strict", group="C4", width=1, readout="halves")
    path = tmp_path / "old.pt"
    meta = {"method": "strict", "group": "C4", "width": 1, "max_frequency": 2, "L": 2}
    save_checkpoint(path, model, meta, [])
    assert "readout" not in torch.load(path, weights_only=True)["meta"]
    loaded, _, _ = load_checkpoint(path)
    assert loaded.readout == "halves"
    x = torch.rand(2, 1, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


def test_square_parameterisation_is_recorded_and_rebuilt_from_the_checkpoint(tmp_path):
    assert main(["train", "--compare", "", "--n-images", "100", "--epochs", "1", "--width", "1", "--group", "C4",
                 "--out", str(tmp_path), "--report-images", "0", "--parameterisation", "square"]) == 0
    model, meta, _ = load_checkpoint(tmp_path / "probabilistic.pt")
    assert meta["parameterisation"] == "square"
    assert {m.likelihood.parameterisation for m in model.modules() if hasattr(m, "likelihood")} == {"square"}
    results = json.loads((tmp_path / "results.json").read_text())
    recorded = results["probabilistic"]["likelihood_history"]
    assert recorded["epochs"] == [0, 1]
    initial = [row[0] for layer in recorded["layers"].values() for row in layer["density"].values()]
    assert all(abs(v - 1.0) < 1e-6 for values in initial for v in values)  # uniform λ before training


def test_bank_fractions_are_recorded_and_rebuilt_from_the_checkpoint(tmp_path):
    assert main(["train", "--method", "relaxed", "--compare", "", "--n-images", "100", "--epochs", "1", "--width", "2",
                 "--group", "C4", "--out", str(tmp_path), "--report-images", "0", "--bank-fraction", "0.5",
                 "--bank-in-fraction", "0.5"]) == 0
    model, meta, _ = load_checkpoint(tmp_path / "relaxed.pt")
    assert meta["bank_fraction"] == 0.5 and meta["bank_in_fraction"] == 0.5
    layers = [m for m in model.modules() if isinstance(m, es.nn.RelaxedR2Conv)]
    assert {m.bank_fraction for m in layers} == {0.5} and {m.bank_in_fraction for m in layers} == {0.5}
    assert any(m.bank_weights is not None for m in layers)  # width 2: some layers modulate half their fields
    assert any(m.bank_in_channels is not None for m in layers)  # ... and read half of their input fields
    for flag in ("--bank-fraction", "--bank-in-fraction"):
        with pytest.raises(SystemExit, match=f"{flag} 1.5: must lie in"):
            main(["train", "--method", "relaxed", flag, "1.5"])


def test_thesis_network_is_trained_recorded_and_rebuilt_from_the_checkpoint(tmp_path):
    assert main(["train", "--compare", "", "--method", "strict", "--arch", "thesis", "--width-multiplier", "1",
                 "--n-images", "100", "--epochs", "1", "--group", "C4", "--out", str(tmp_path),
                 "--report-images", "0"]) == 0
    model, meta, _ = load_checkpoint(tmp_path / "strict.pt")
    assert (meta["arch"], meta["width_multiplier"], meta["readout"]) == ("thesis", 1, "flatten")
    assert "width" not in meta and meta["redraw"] is True
    reference = build_model("strict", group="C4", arch="thesis", width_multiplier=1)
    assert [(n, p.shape) for n, p in model.named_parameters()] == [(n, p.shape) for n, p in reference.named_parameters()]


@pytest.mark.parametrize("argv, flag", [(["--arch", "thesis", "--width", "2"], "--width"),
                                        (["--arch", "thesis", "--max-frequency", "3"], "--max-frequency"),
                                        (["--width-multiplier", "2"], "--width-multiplier"),
                                        (["--arch", "thesis", "--readout", "grid"], "--readout")])
def test_size_flags_of_the_other_architecture_are_rejected_by_name(argv, flag, tmp_path):
    with pytest.raises(SystemExit, match=flag):
        main(["train", "--compare", "", "--method", "strict", "--epochs", "1", "--n-images", "100",
              "--out", str(tmp_path), *argv])


def test_no_redraw_trains_on_fixed_images_and_resume_checks_the_choice(tmp_path):
    common = ["train", "--n-images", "100", "--width", "1", "--group", "C4", "--compare", "", "--method", "strict",
              "--report-images", "0", "--out", str(tmp_path)]
    assert main(common + ["--epochs", "1", "--no-redraw"]) == 0
    assert torch.load(tmp_path / "strict.pt", weights_only=True)["meta"]["redraw"] is False
    with pytest.raises(SystemExit, match=r"redraw: checkpoint False, this run True"):
        main(common + ["--epochs", "2", "--resume"])  # the default re-draws: a different run
    assert main(common + ["--epochs", "2", "--resume", "--no-redraw"]) == 0


def test_checkpoint_from_before_arch_and_redraw_resumes_as_default_arch_without_redraw(tmp_path):
    common = ["train", "--n-images", "100", "--width", "1", "--group", "C4", "--compare", "", "--method", "strict",
              "--report-images", "0", "--out", str(tmp_path)]
    assert main(common + ["--epochs", "1", "--no-redraw"]) == 0
    ckpt = torch.load(tmp_path / "strict.pt", weights_only=True)
    for key in ("arch", "redraw"):
        del ckpt["meta"][key]  # what a checkpoint of an older version holds
    torch.save(ckpt, tmp_path / "strict.pt")
    assert main(common + ["--epochs", "2", "--resume", "--no-redraw"]) == 0
    assert len(torch.load(tmp_path / "strict.pt", weights_only=True)["history"]) == 2


@pytest.mark.parametrize("low_memory", [False, True], ids=["one graph", "--marglik-low-memory"])
def test_marglik_tunes_lambda_without_regularisers_on_re_drawn_epochs(tmp_path, monkeypatch, low_memory):
    """``--marglik --method probabilistic``: λ is set by the evidence alone (the alignment/KL terms are off, so
    marglik_training has nothing to warn about), and every epoch trains on its own re-drawn group elements;
    ``--marglik-low-memory`` takes the gradients from the two-pass ``evidence_gradient``."""
    from escnn_soft.data import DoubleMNIST
    from escnn_soft.laplace import LaplaceEvidence

    seen: list[int] = []
    original = DoubleMNIST.set_epoch
    monkeypatch.setattr(DoubleMNIST, "set_epoch", lambda self, epoch: (seen.append(epoch), original(self, epoch))[1])
    two_pass: list[int] = []
    gradient = LaplaceEvidence.evidence_gradient
    monkeypatch.setattr(LaplaceEvidence, "evidence_gradient",
                        lambda self, *a, **k: (two_pass.append(1), gradient(self, *a, **k))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert main(["train", "--method", "probabilistic", "--compare", "", "--marglik", "--epochs", "2",
                     "--n-images", "100", "--width", "1", "--group", "C4", "--marglik-batch", "16",
                     "--marglik-steps", "1", "--report-images", "0", "--out", str(tmp_path)]
                    + (["--marglik-low-memory"] if low_memory else [])) == 0
    assert {0, 1} <= set(seen) and seen == sorted(seen)  # epoch 1 trained on its own draw
    assert len(two_pass) == (1 if low_memory else 0)  # one update of one step
    model, _, _ = load_checkpoint(tmp_path / "probabilistic.pt")
    initial = build_model("probabilistic", group="C4", width=1)  # λ uniform: the strict layer
    moved = [float((a - b).detach().abs().max()) for (name, a), b in zip(model.named_parameters(), initial.parameters())
             if name.endswith("likelihood.coefficients")]
    assert moved and max(moved) > 0  # the evidence's steps moved λ


def test_rpp_subgroup_chain_under_the_evidence_gets_one_precision_per_level_and_is_rebuilt(tmp_path, capsys):
    """``--method rpp --pathways C4,trivial --marglik --marglik-prior parameterwise``: every convolution gets the
    chain SO(2) ⊃ C4 ⊃ 1, the evidence learns a prior precision per level (the per-layer table names them), and
    the checkpoint rebuilds the chain."""
    assert main(["train", "--method", "rpp", "--compare", "", "--pathways", "C4,trivial", "--marglik",
                 "--marglik-prior", "parameterwise", "--epochs", "2", "--n-images", "100", "--width", "1",
                 "--group", "SO2", "--marglik-batch", "16", "--marglik-steps", "2", "--report-images", "0",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "blocks.1.0.chain.0.weights" in printed and "blocks.1.0.chain.1.weights" in printed
    assert "levels (norm ratio) 4:" in printed and ", trivial:" in printed  # what each level learned
    model, meta, _ = load_checkpoint(tmp_path / "rpp.pt")
    assert meta["pathways"] == ["C4", "trivial"]
    convs = [m for m in model.modules() if isinstance(m, es.nn.RPPR2Conv)]
    assert convs and all([p["subgroup"] for p in m.degree()["pathways"]] == ["4", None] for m in convs)
    reference = build_model("rpp", group="SO2", width=1, pathways=[4, None])
    reference.load_state_dict(torch.load(tmp_path / "rpp.pt", weights_only=True)["state_dict"])
    x = torch.rand(2, 1, 56, 56)
    model.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


@pytest.mark.parametrize("argv, message", [
    (["--method", "strict", "--pathways", "C4"], "--pathways C4: only the rpp method has pathways"),
    (["--method", "rpp", "--pathways", "C3"], "'C3' is not a proper subgroup of SO2"),
    (["--method", "rpp", "--pathways", "trivial,C4"], "'trivial' must come last"),
    (["--method", "rpp", "--pathways", "C2,C4"], "--pathways: C2 does not contain C4"),
    (["--method", "rpp", "--group", "O2", "--pathways", "C4,flips"], "--pathways: C4 does not contain flips"),
])
def test_bad_pathways_are_rejected_by_name(argv, message, tmp_path):
    with pytest.raises((SystemExit, ValueError), match=message):
        main(["train", "--compare", "", "--group", "SO2", "--epochs", "0", "--n-images", "100", "--width", "1",
              "--report-images", "0", "--out", str(tmp_path), *argv])


@pytest.mark.parametrize("group, chain, ids", [("O2", "SO2,C4,C2,trivial", [(None, -1), (None, 4), (None, 2), None]),
                                              ("O2", "D4,flips", [(0.0, 4), (0.0, 1)]),
                                              ("D4", "C4,C2", [(None, 4), (None, 2)])])
def test_nested_pathways_are_accepted_and_resolved_to_escnn_ids(group, chain, ids):
    from escnn_soft.doublemnist import RunConfig
    from escnn_soft.doublemnist.checkpoint import model_kwargs

    config = RunConfig(method="rpp", compare="", group=group, pathways=chain)
    assert model_kwargs(config.meta("rpp"))["pathways"] == ids


def test_run_config_is_typed_checked_by_flag_and_records_the_network():
    from escnn_soft.doublemnist import ConfigError, RunConfig

    config = RunConfig(method="probabilistic", compare="strict,cnn,probabilistic", arch="thesis", width_multiplier=2)
    assert config.methods == ("probabilistic", "strict", "cnn")
    meta = config.meta("strict")
    assert (meta["arch"], meta["width_multiplier"], meta["readout"], meta["redraw"]) == ("thesis", 2, "flatten", True)
    assert "width" not in meta
    assert RunConfig(epochs=0).epochs == 0  # evaluates an untrained (or resumed) model, as before
    for kwargs, flag in (({"method": "nope"}, "--method"), ({"compare": ("strict", "nope")}, "--compare"),
                         ({"lr": 0.0}, "--lr"), ({"arch": "thesis", "width": 2}, "--width"),
                         ({"resume": True}, "--resume needs --out"), ({"batch_size": 0}, "--batch-size")):
        with pytest.raises(ConfigError, match=flag):
            RunConfig(**kwargs)
