"""Runs survive being killed, torn files and contradictory flags."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignkit_models.cli import main
from alignkit_models.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "model_options.dim=8", "--set", "model_options.n_heads=2", "--set", "model_options.n_components=2", "--set", "protocol.early_stopping_patience=10"]


def _train_args(output: Path, name: str, epochs: int = 3) -> list[str]:
    return ["train", "--model", "decalign", "--dataset", "uci-mfeat", "--seeds", "7", "--epochs", str(epochs),
            "--output-dir", str(output), "--run-name", name, "--no-progress", *SMALL]


def _test_metrics(run: Path) -> dict:
    return json.loads((run / "seed-7" / "metrics.json").read_text())["test"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("reference")
    assert main(_train_args(output, "run")) == 0
    return output / "run"


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_metrics(tmp_path: Path, uninterrupted: Path) -> None:
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "alignkit_models.cli", *_train_args(tmp_path, "run")], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "seed-7" / "last.pt"
    deadline = time.monotonic() + 300
    while not (last.exists() and load_checkpoint(last)["trainer_state"]["epoch"] >= 1):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "seed-7" / "metrics.json").exists(), "the run finished before it could be killed"
    assert main([*_train_args(tmp_path, "run"), "--resume", str(run)]) == 0
    assert _test_metrics(run) == _test_metrics(uninterrupted)


def test_resume_says_where_it_continues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_train_args(tmp_path, "run", epochs=2)) == 0
    (tmp_path / "run" / "seed-7" / "metrics.json").unlink()  # as if stopped after its last epoch
    capsys.readouterr()
    assert main([*_train_args(tmp_path, "run", epochs=2), "--resume", str(tmp_path / "run")]) == 0
    assert "resuming 7 at epoch 3" in capsys.readouterr().out


def test_a_torn_metrics_file_is_rebuilt_from_the_checkpoints(tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(uninterrupted, tmp_path / "run")  # a finished run, without training it again
    metrics = tmp_path / "run" / "seed-7" / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])  # half-written
    assert main([*_train_args(tmp_path, "run"), "--resume", str(tmp_path / "run")]) == 0
    assert "damaged" in capsys.readouterr().out
    assert _test_metrics(tmp_path / "run") == _test_metrics(uninterrupted)


def test_a_torn_run_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_train_args(tmp_path, "run", epochs=1)) == 0
    (tmp_path / "run" / "config.json").write_text('{"model": "deca')
    capsys.readouterr()
    assert main([*_train_args(tmp_path, "run", epochs=1), "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json: damaged" in err


def test_resume_refuses_another_model_or_data_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_train_args(tmp_path, "run", epochs=1)) == 0
    capsys.readouterr()
    other = ["train", "--model", "late_fusion", "--dataset", "uci-mfeat", "--resume", str(tmp_path / "run"), "--no-progress"]
    assert main(other) == 2
    assert capsys.readouterr().err.strip() == f"alignkit: error: resume: {tmp_path / 'run'} is a run of model 'decalign', received --model late_fusion"


def test_a_run_that_fails_before_training_leaves_no_folder(tmp_path: Path) -> None:
    args = ["train", "--model", "decalign", "--dataset", "mosi", "--data", str(tmp_path / "missing.pkl"), "--output-dir", str(tmp_path / "runs"), "--no-progress"]
    assert main(args) == 2
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert main(["train", "--model", "decalign", "--dataset", "uci-mfeat", "--output-dir", str(tmp_path / "runs"), "--set", "model_options.n_heads=5", "--no-progress"]) == 2
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_run_files_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every run file goes through a temporary file and a rename.
    replaced: list[str] = []
    original = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: replaced.append(Path(dst).name) or original(src, dst))
    assert main(_train_args(tmp_path, "run", epochs=1)) == 0
    assert {"config.json", "history.json", "metrics.json", "results.json", "results.csv", "last.pt", "best.pt"} <= set(replaced)
    assert not list(tmp_path.rglob("*.tmp"))
