"""Trainer, checkpoints, resume and the command line, on small data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit_models.cli import main
from alignkit_models.data.base import MultimodalDataset, MultimodalSplit
from alignkit_models.training.checkpoint import load_checkpoint, save_checkpoint
from alignkit_models.training.config import ConfigError, build_config
from alignkit_models.training.trainer import run_experiment, train_seed


def _tiny_dataset(n: int = 48, seed: int = 0) -> MultimodalDataset:
    """Three utterance-level views of a 3-class problem with a planted signal."""
    rng = np.random.default_rng(seed)

    def split(size: int) -> MultimodalSplit:
        labels = rng.integers(0, 3, size)
        features = {f"v{i}": (rng.normal(size=(size, 1, 5)) + labels[:, None, None]).astype(np.float32) for i in range(3)}
        return MultimodalSplit(features, {k: np.ones(size, dtype=np.int64) for k in features}, labels)

    return MultimodalDataset("tiny", ("v0", "v1", "v2"), "classification", split(n), split(24), split(24), n_classes=3)


def _config(tmp_path: Path, **protocol):
    overrides = [f"protocol.{k}={v}" for k, v in {"batch_size": 16, "max_epochs": 4, "early_stopping_patience": 10, **protocol}.items()]
    overrides += ["model_options.dim=8", "model_options.n_heads=2", "model_options.n_components=2"]
    return build_config("decalign", "uci-mfeat", overrides=overrides, seeds=[7], output_dir=str(tmp_path), progress=False)


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    config, data = _config(tmp_path), _tiny_dataset()
    first = train_seed(config, data, 7, tmp_path / "a")
    second = train_seed(config, data, 7, tmp_path / "b")
    assert first.test == second.test
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])


def test_evaluating_between_epochs_leaves_the_training_run_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation must not draw from the generators training uses: a run that evaluates its
    validation split once more after every epoch, with and without the alignment terms, trains
    exactly as one that does not (a DataLoader without its own generator drew a seed from torch's
    global generator on every pass, which shifted the dropout draws of later epochs)."""
    from alignkit_models.training import trainer

    config, data = _config(tmp_path, max_epochs=3), _tiny_dataset()
    plain = train_seed(config, data, 7, tmp_path / "plain")
    predict = trainer.predict

    def predict_twice(model, split, *args, **kwargs):
        predict(model, split, *args, components=not kwargs.get("components", False))
        return predict(model, split, *args, **kwargs)

    monkeypatch.setattr(trainer, "predict", predict_twice)
    extra = train_seed(config, data, 7, tmp_path / "extra")
    history = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("plain", "extra")]
    assert [epoch["train"] for epoch in history[0]] == [epoch["train"] for epoch in history[1]]
    assert plain.test == extra.test


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    config, data = _config(tmp_path), _tiny_dataset()
    reference = train_seed(config, data, 7, tmp_path / "full")

    class Interrupted(Exception):
        pass

    def interrupt(epoch: int, record: dict) -> None:
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_seed(config, data, 7, tmp_path / "cut", on_epoch=interrupt)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["trainer_state"]["epoch"] == 2
    resumed = train_seed(config, data, 7, tmp_path / "cut", resume=True)
    assert resumed.test == reference.test
    history = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    full = load_checkpoint(tmp_path / "full" / "last.pt")["model_state"]
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")["model_state"]
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path: Path) -> None:
    config = _config(tmp_path, max_epochs=30, early_stopping_patience=2, lr=1e-9)
    result = train_seed(config, _tiny_dataset(), 7, tmp_path / "s")
    assert result.epochs_run == result.best_epoch + 2


def test_run_experiment_writes_mean_and_std_over_seeds(tmp_path: Path) -> None:
    config = _config(tmp_path, max_epochs=2).model_copy(update={"seeds": [1, 2]})
    summary = run_experiment(config, run_dir=tmp_path / "run", dataset=_tiny_dataset())
    accuracies = [s["test"]["accuracy"] for s in summary["per_seed"]]
    assert summary["test"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["test"]["accuracy"]["std"] == pytest.approx(np.std(accuracies))
    rows = (tmp_path / "run" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("seed,best_epoch,accuracy") and rows[-2].startswith("mean") and rows[-1].startswith("std")


def test_resumed_experiment_reuses_finished_seeds(tmp_path: Path) -> None:
    config = _config(tmp_path, max_epochs=1).model_copy(update={"seeds": [1]})
    run_experiment(config, run_dir=tmp_path / "run", dataset=_tiny_dataset())
    stamp = (tmp_path / "run" / "seed-1" / "metrics.json").stat().st_mtime_ns
    run_experiment(config.model_copy(update={"seeds": [1, 2]}), run_dir=tmp_path / "run", resume=True, dataset=_tiny_dataset())
    assert (tmp_path / "run" / "seed-1" / "metrics.json").stat().st_mtime_ns == stamp
    assert (tmp_path / "run" / "seed-2" / "metrics.json").exists()


def test_config_precedence_preset_file_set_flags(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("protocol: {lr: 0.5, batch_size: 8}\nmodel_options: {dim: 16}\n")
    config = build_config("decalign", "uci-mfeat", config_file=file, overrides=["protocol.lr=0.25"], max_epochs=3)
    assert (config.protocol.lr, config.protocol.batch_size, config.protocol.max_epochs) == (0.25, 8, 3)
    assert config.model_options["dim"] == 16 and config.model_options["n_components"] == 4  # rest from the preset


@pytest.mark.parametrize(
    ("overrides", "field"),
    [(["protocol.lr=-1"], "protocol.lr"), (["protocol.batch_size=zero"], "protocol.batch_size"), (["model_options.widht=3"], "model_options.widht"), (["nonsense=1"], "nonsense")],
)
def test_bad_config_values_name_the_field(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build_config("decalign", "uci-mfeat", overrides=overrides)


def test_cli_reports_a_bad_value_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "decalign", "--dataset", "uci-mfeat", "--set", "protocol.lr=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "protocol.lr" in err and "Traceback" not in err


def test_cli_train_then_evaluate_reproduces_the_test_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--model", "late_fusion", "--dataset", "uci-mfeat", "--seeds", "1", "--epochs", "1", "--output-dir", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    run = tmp_path / "late_fusion-uci-mfeat"
    trained = json.loads((run / "results.json").read_text())["per_seed"][0]["test"]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run / "seed-1" / "best.pt")]) == 0
    evaluated = json.loads(capsys.readouterr().out)["metrics"]
    assert evaluated == pytest.approx(trained)


def test_cli_lists_models_with_parameter_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("decalign"))
    assert any(ch.isdigit() for ch in line.split()[1])
    assert "MUTA-Net" not in out
    assert main(["models", "--all"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert {"MUTA-Net", "MCIS", "pmr", "fdmer", "aobert"} <= set(listed) and not {"PMR", "AOBERT"} & set(listed)
    assert "not identifiable" in listed["MUTA-Net"] and "--debias mcis" in listed["MCIS"]


def test_resume_keeps_this_versions_adam_kernel(tmp_path: Path) -> None:
    # Checkpoints of versions that ran foreach Adam resume with the fused kernel the trainer now builds.
    config, data = _config(tmp_path, max_epochs=2), _tiny_dataset()
    train_seed(config, data, 7, tmp_path / "s")
    path = tmp_path / "s" / "last.pt"
    checkpoint = load_checkpoint(path)
    for group in checkpoint["optimizer_state"]["param_groups"]:
        group.update(foreach=True, fused=None)
    save_checkpoint(path, checkpoint)
    seen = []
    original = torch.optim.Adam.step

    def record(self, *args, **kwargs):
        seen.append([(group["fused"], group["foreach"]) for group in self.param_groups])
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.Adam, "step", record)
        train_seed(_config(tmp_path, max_epochs=3), data, 7, tmp_path / "s", resume=True)
    assert seen and all(kernel == [(True, None)] for kernel in seen)
