"""`alignkit train` under torchrun (2 CPU processes, gloo) trains what one process trains on the
same global batches, and rank zero writes the one run folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Dropout off: with it, two processes draw other masks than one, so the runs could not agree.
# Global batches of 700 (two steps per epoch, four in all): float round-off (other reduction
# orders) grows about twofold per step under clipped Adam, so a few steps are compared tightly.
COMMON = [
    "train", "--model", "decalign", "--dataset", "uci-mfeat", "--seeds", "1111", "--epochs", "2", "--no-progress", "--threads", "1",
    "--set", "protocol.batch_size=700",
    *[f"--set=model_options.{name}=0.0" for name in ("attn_dropout", "relu_dropout", "res_dropout", "embed_dropout", "output_dropout")],
]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("torchrun")
    _run([sys.executable, "-m", "alignkit_models.cli", *COMMON, "--output-dir", str(folder), "--run-name", "one"], folder)
    launched = _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "alignkit_models.cli",
         *COMMON, "--output-dir", str(folder), "--run-name", "two"],
        folder,
    )
    return {"one": folder / "one", "two": folder / "two", "folder": folder, "stdout": launched.stdout}


def test_rank_zero_writes_one_run_folder_with_the_world_size(runs: dict) -> None:
    assert sorted(p.name for p in runs["folder"].iterdir()) == ["one", "two"]
    assert json.loads((runs["two"] / "config.json").read_text())["world_size"] == 2
    assert json.loads((runs["one"] / "config.json").read_text())["world_size"] == 1
    assert runs["stdout"].count("test metrics (mean +- std)") == 1


def test_two_processes_train_what_one_process_trains(runs: dict) -> None:
    one = json.loads((runs["one"] / "seed-1111" / "history.json").read_text())
    two = json.loads((runs["two"] / "seed-1111" / "history.json").read_text())
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        # Same global batches, same objective: only float round-off differs.
        assert b["valid"]["loss"] == pytest.approx(a["valid"]["loss"], rel=1e-4)
        assert b["valid"]["accuracy"] == a["valid"]["accuracy"]
        assert set(a["train"]) == set(b["train"])
        for key in a["train"]:
            assert b["train"][key] == pytest.approx(a["train"][key], rel=1e-4, abs=1e-7), key
