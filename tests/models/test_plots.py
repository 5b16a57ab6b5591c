"""``alignkit plot ...`` and ``alignkit sweep``: each picture is written at its size from a tiny
run, the numbers drawn are the right ones, and bad inputs end in one line."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit.kernels.mmd import gaussian_mmd
from alignkit_models.cli import main
from alignkit_models.metrics import classification_metrics, mosi_metrics, sims_metrics
from alignkit_models.plots import gap_measures, plot_confusion, plot_curves, plot_gap, plot_sensitivity
from alignkit_models.plots.confusion import confusion_counts
from alignkit_models.plots.gap import decoupled_features
from alignkit_models.registry import create_model
from alignkit_models.training.config import ConfigError, build_config
from alignkit_models.training.sweep import run_sweep, split_values, sweep_axes
from alignkit_models.training.trainer import predict, prepare_dataset, run_experiment

pytest.importorskip("matplotlib", reason="the plots need the plot extra (CI installs it with dev)")

TINY = ["model_options.dim=8", "model_options.n_heads=2", "model_options.n_components=2"]


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DecAlign on UCI at toy width, 2 epochs, 2 seeds."""
    folder = tmp_path_factory.mktemp("run")
    config = build_config("decalign", "uci-mfeat", overrides=TINY, seeds=[1, 2], max_epochs=2, output_dir=str(folder), progress=False)
    return Path(run_experiment(config, run_dir=folder / "decalign")["run_dir"])


# ---------------------------------------------------------------- gap
def test_gap_measures_of_known_distributions() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    shift = np.array([3.0, 4.0, 0.0, 0.0])  # |shift| = 5
    same = gap_measures({"a": x, "b": x.copy()})
    assert same["centroid_distance"] == pytest.approx(0.0, abs=1e-12)
    assert same["mmd"] == pytest.approx(0.0, abs=1e-9)
    moved = gap_measures({"a": x, "b": x + shift})
    assert moved["centroid_distance"] == pytest.approx(5.0, rel=1e-12)
    spread = np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean())
    assert moved["relative_centroid_distance"] == pytest.approx(5.0 / spread, rel=1e-12)
    expected_mmd = float(gaussian_mmd(torch.from_numpy(x), torch.from_numpy(x + shift), sigma="median"))
    assert moved["mmd"] == pytest.approx(expected_mmd, rel=1e-9) and moved["mmd"] > 0.1
    # Three modalities: the mean over the three pairs (distances 5, 5 and 0).
    three = gap_measures({"a": x, "b": x + shift, "c": x + shift})
    assert three["centroid_distance"] == pytest.approx(10.0 / 3, rel=1e-12)


def test_gap_measures_refuse_bad_features() -> None:
    with pytest.raises(ValueError, match="at least two modalities"):
        gap_measures({"a": np.zeros((5, 2))})
    with pytest.raises(ValueError, match=r"features\['b'\]"):
        gap_measures({"a": np.zeros((5, 2)), "b": np.full((5, 2), np.nan)})


def test_decoupled_features_are_what_decalign_pools(run_dir: Path) -> None:
    from alignkit_models.training.trainer import load_trained

    _, dataset, model = load_trained(run_dir / "seed-1" / "best.pt")
    features = decoupled_features(model, dataset.test, batch_size=64)
    assert set(features) == {"unique", "common"} and set(features["unique"]) == set(dataset.modalities)
    assert features["common"]["fou"].shape == (len(dataset.test), 8)
    # The same numbers as the model's own streams for the first test samples.
    batch = {m: torch.from_numpy(dataset.test.features[m][:5]) for m in dataset.modalities}
    unique, common, _ = model.encode(batch, {m: torch.ones(5, 1, dtype=torch.bool) for m in dataset.modalities})
    torch.testing.assert_close(torch.from_numpy(features["unique"]["fac"][:5]), unique["fac"].mean(1).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(features["common"]["pix"][:5]), common["pix"].mean(1).detach(), rtol=1e-5, atol=1e-6)


def test_gap_needs_decoupled_features() -> None:
    model = create_model("early_fusion", input_dims={"a": 3, "b": 4}, task="classification", n_classes=2)
    dataset = prepare_dataset(build_config("decalign", "uci-mfeat", seeds=[1]))
    with pytest.raises(ValueError, match="needs a decalign checkpoint"):
        decoupled_features(model, dataset.test)


def test_plot_gap_draws_one_row_per_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    checkpoints = [run_dir / "seed-1" / "best.pt", run_dir / "seed-2" / "best.pt"]
    path, measures = plot_gap(checkpoints, tmp_path / "gap.png", labels=["seed 1", "seed 2"], max_points=100)
    assert png_size(path) == (1100, 920)
    assert len(measures) == 2 and all(np.isfinite(v) for row in measures for kind in row.values() for v in kind.values())
    single, _ = plot_gap(checkpoints[:1], tmp_path / "gap1.png", method="tsne", max_points=60)
    assert png_size(single) == (1100, 460)
    with pytest.raises(ValueError, match="labels"):
        plot_gap(checkpoints, tmp_path / "x.png", labels=["only one"])


# ---------------------------------------------------------------- confusion
def test_confusion_diagonal_is_the_accuracy_of_each_family() -> None:
    rng = np.random.default_rng(1)
    truth, guess = torch.from_numpy(rng.uniform(-3.4, 3.4, 300)), torch.from_numpy(rng.uniform(-3.4, 3.4, 300))
    counts, names = confusion_counts("mosi", guess, truth)
    assert counts.shape == (7, 7) and names[0] == "-3" and counts.sum() == 300
    assert np.trace(counts) / 300 == pytest.approx(mosi_metrics(guess, truth)["acc7"])
    truth, guess = truth / 3, guess / 3
    counts, names = confusion_counts("sims", guess, truth)
    assert counts.shape == (5, 5) and np.trace(counts) / 300 == pytest.approx(sims_metrics(guess, truth)["acc5"])
    logits, labels = torch.from_numpy(rng.normal(size=(300, 4))), torch.from_numpy(rng.integers(0, 4, 300))
    counts, names = confusion_counts("classification", logits, labels, ("a", "b", "c", "d"))
    assert names == ("a", "b", "c", "d")
    assert np.trace(counts) / 300 == pytest.approx(classification_metrics(logits, labels)["accuracy"])
    assert (counts.sum(1) == np.bincount(labels.numpy(), minlength=4)).all()  # rows are the true classes


def test_plot_confusion_of_a_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    path, counts = plot_confusion(run_dir / "seed-1" / "best.pt", tmp_path / "confusion.png")
    assert png_size(path) == (920, 800)
    from alignkit_models.training.trainer import load_trained

    _, dataset, model = load_trained(run_dir / "seed-1" / "best.pt")
    result = predict(model, dataset.test, 64, torch.device("cpu"))
    assert np.trace(counts) / counts.sum() == pytest.approx(classification_metrics(result.predictions, result.labels)["accuracy"])
    plot_confusion(run_dir / "seed-1" / "best.pt", tmp_path / "confusion.pdf", split="valid")
    assert (tmp_path / "confusion.pdf").read_bytes()[:4] == b"%PDF"


# ---------------------------------------------------------------- curves
def test_history_records_validation_components(run_dir: Path) -> None:
    history = json.loads((run_dir / "seed-1" / "history.json").read_text())
    components = history[0]["valid_components"]
    assert {"dec", "hete", "homo", "mmd"} <= set(components) and all(np.isfinite(v) for v in components.values())


def test_validation_components_leave_the_random_streams_alone() -> None:
    """k-means++ starts draw random numbers in evaluation mode too; logging the validation terms
    must not move the training run's generators (it would change the run)."""
    config = build_config("decalign", "uci-mfeat", overrides=[*TINY, "model_options.variant=alignkit"], seeds=[1])
    dataset = prepare_dataset(config)
    from alignkit_models.training.trainer import build_model

    model = build_model(config, dataset)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    result = predict(model, dataset.valid, 64, torch.device("cpu"), components=True)
    assert result.components and torch.equal(torch.get_rng_state(), before)


def test_plot_curves(run_dir: Path, tmp_path: Path) -> None:
    path = plot_curves(run_dir, tmp_path / "curves.png")
    assert png_size(path) == (1260, 1280)  # 9 components + the validation metric: 4 rows of 3
    assert png_size(plot_curves(run_dir / "seed-2", tmp_path / "one-seed.png")) == (1260, 1280)
    assert plot_curves(run_dir).parent == run_dir


def test_plot_curves_names_a_damaged_history(run_dir: Path, tmp_path: Path) -> None:
    seed_dir = tmp_path / "broken" / "seed-1"
    seed_dir.mkdir(parents=True)
    (seed_dir / "history.json").write_text('[{"epoch": 1, "tr')
    with pytest.raises(ValueError, match=r"history .*history.json: damaged"):
        plot_curves(tmp_path / "broken", tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="no history.json"):
        plot_curves(tmp_path, tmp_path / "x.png")


# ---------------------------------------------------------------- sweep and sensitivity
def test_sweep_values_split_outside_brackets() -> None:
    assert split_values("0.01,0.05, 0.1") == ["0.01", "0.05", "0.1"]
    assert split_values("[1, 2],[3]") == ["[1, 2]", "[3]"]
    assert split_values("{a: 1, b: 2}") == ["{a: 1, b: 2}"]
    assert split_values("'x,y',z") == ["'x,y'", "z"]
    fixed, axes = sweep_axes(["model_options.alpha=0.1,0.2", "protocol.lr=1e-3", "model_options.beta=[1,2]"])
    assert fixed == ["protocol.lr=1e-3", "model_options.beta=[1,2]"] and axes == {"model_options.alpha": ["0.1", "0.2"]}
    with pytest.raises(ConfigError, match="no axis"):
        sweep_axes(["protocol.lr=1e-3"])
    with pytest.raises(ConfigError, match="distinct"):
        sweep_axes(["model_options.alpha=0.1,0.1"])


def test_sweep_trains_the_grid_resumes_and_refuses_other_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = {"seeds": [1], "max_epochs": 1, "output_dir": str(tmp_path), "progress": False}
    grid = [*TINY, "model_options.alpha=0.0,0.5", "model_options.beta=0.0,0.5"]
    report = run_sweep("decalign", "uci-mfeat", grid, **options)
    assert report.axes == {"model_options.alpha": [0.0, 0.5], "model_options.beta": [0.0, 0.5]}
    assert [c["folder"] for c in report.cells] == ["alpha=0.0,beta=0.0", "alpha=0.0,beta=0.5", "alpha=0.5,beta=0.0", "alpha=0.5,beta=0.5"]
    saved = json.loads((report.folder / "alpha=0.5,beta=0.0" / "config.json").read_text())
    assert saved["model_options"]["alpha"] == 0.5 and saved["model_options"]["beta"] == 0.0 and saved["model_options"]["dim"] == 8
    assert len({c["test"]["loss"]["mean"] for c in report.cells}) == 4  # four different trainings
    assert (report.folder / "results.csv").read_text().count("\n") == 5

    # Rerun with one more alpha: the four finished cells are read back, only the new one trains.
    from alignkit_models.training import trainer

    trained = []
    real = trainer.train_seed
    monkeypatch.setattr(trainer, "train_seed", lambda config, *a, **k: trained.append(config.model_options["alpha"]) or real(config, *a, **k))
    again = run_sweep("decalign", "uci-mfeat", [*TINY, "model_options.alpha=0.0,0.5,1.0", "model_options.beta=0.0,0.5"], **options)
    assert trained == [1.0, 1.0] and len(again.cells) == 6
    assert again.cells[0]["test"] == report.cells[0]["test"]

    with pytest.raises(ConfigError, match=r"protocol.max_epochs \(saved 1, asked 2\)"):
        run_sweep("decalign", "uci-mfeat", grid, **{**options, "max_epochs": 2})

    path = plot_sensitivity(report.folder, tmp_path / "heat.png", metric="accuracy")
    assert png_size(path) == (650, 400)
    with pytest.raises(ValueError, match="metric"):
        plot_sensitivity(report.folder, tmp_path / "heat.png", metric="mae")
    with pytest.raises(ValueError, match="axes"):
        plot_sensitivity(report.folder, tmp_path / "heat.png", x="gamma")


def test_sensitivity_grid_places_each_cell() -> None:
    from alignkit_models.plots.sensitivity import sensitivity_grid

    cells = [{"values": {"a.x": x, "a.y": y}, "test": {"acc": {"mean": 10 * x + y, "std": 0.0}}} for x in (1, 2, 3) for y in (5, 6)]
    mean, _, xs, ys, x_key, y_key = sensitivity_grid({"axes": {"a.x": [1, 2, 3], "a.y": [5, 6]}, "cells": cells}, "acc")
    assert (x_key, y_key, xs, ys) == ("a.x", "a.y", [1, 2, 3], [5, 6])
    assert mean.tolist() == [[15, 25, 35], [16, 26, 36]]
    swapped, *_ = sensitivity_grid({"axes": {"a.x": [1, 2, 3], "a.y": [5, 6]}, "cells": cells}, "acc", x="y", y="x")
    assert swapped.tolist() == [[15, 16], [25, 26], [35, 36]]


# ---------------------------------------------------------------- command line and the optional extra
def test_plot_commands_from_the_command_line(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", "curves", str(run_dir), "-o", str(tmp_path / "c.svg")]) == 0
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    assert main(["plot", "gap", "--checkpoint", str(run_dir / "seed-1" / "best.pt"), "--max-points", "50"]) == 0
    out = capsys.readouterr().out
    assert "common: centroid_distance" in out and (run_dir / "seed-1" / "gap-test.png").is_file()
    assert main(["plot", "confusion", "--checkpoint", str(run_dir / "seed-1" / "best.pt"), "-o", str(tmp_path / "c.jpg")]) == 2
    assert "output: expected a file name ending in .png, .svg, .pdf" in capsys.readouterr().err


def test_missing_matplotlib_is_one_line(run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["plot", "curves", str(run_dir)]) == 2
    assert capsys.readouterr().err.strip() == "alignkit: error: plotting needs matplotlib: pip install 'alignkit[plot]'"
