"""Files from users cannot run code, and a broken file is one line naming it."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit_models.cli import main
from alignkit_models.data.mmsa import load_mmsa
from alignkit_models.data.safe_pickle import load_data_pickle
from alignkit_models.data.synthetic import make_synthetic_mmsa, write_synthetic_mmsa
from alignkit_models.training.checkpoint import load_checkpoint, save_checkpoint


class _RunsACommand:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile(path: Path, marker: Path, wrap=lambda x: x) -> Path:
    with path.open("wb") as handle:
        pickle.dump(wrap(_RunsACommand(marker)), handle)
    return path


def test_a_data_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = make_synthetic_mmsa("mosi", sizes=(4, 2, 2))
    path = _hostile(tmp_path / "evil.pkl", marker, wrap=lambda payload: {**data, "extra": payload})
    with pytest.raises(ValueError, match=r"evil\.pkl: refused to load: it would call posix\.system"):
        load_mmsa(path)
    assert not marker.exists()


def test_the_command_line_refuses_a_hostile_data_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    path = _hostile(tmp_path / "evil.pkl", marker)
    assert main(["train", "--model", "late_fusion", "--dataset", "mosi", "--data", str(path), "--output-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused to load" in err and "Traceback" not in err
    assert not marker.exists()


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"model_state": {}, "config": _RunsACommand(marker)}, path)
    with pytest.raises(ValueError, match=r"checkpoint .*evil\.pt: not a readable alignkit checkpoint"):
        load_checkpoint(path)
    assert main(["evaluate", "--checkpoint", str(path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x80\x04\x95", b"plain text, not a pickle", b"PK\x03\x04garbage"])
def test_empty_truncated_or_foreign_files_are_one_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"broken\.bin: not a readable"):
        load_data_pickle(path)
    with pytest.raises(ValueError, match=r"checkpoint .*broken\.bin: not a readable alignkit checkpoint"):
        load_checkpoint(path)


def test_a_real_mmsa_style_pickle_loads(tmp_path: Path) -> None:
    path = write_synthetic_mmsa(tmp_path / "mosi.pkl", "mosi", sizes=(6, 3, 3), seed=0, text_bert=True)
    loaded = load_data_pickle(path)
    with path.open("rb") as handle:
        reference = pickle.load(handle)
    assert loaded["train"]["text"].shape == reference["train"]["text"].shape
    np.testing.assert_array_equal(loaded["valid"]["audio"], reference["valid"]["audio"])
    assert list(loaded["test"]["id"]) == list(reference["test"]["id"])
    assert load_mmsa(path, name="mosi").train.features["text"].shape == (6, 50, 768)


def test_training_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    from alignkit_models.training.trainer import _rng_state, _restore_rng

    generator = torch.Generator().manual_seed(3)
    np.random.seed(5)
    state = _rng_state(generator)
    save_checkpoint(tmp_path / "c.pt", {"model_state": {}, "rng": state, "config": {"seeds": (1, 2)}})
    expected = np.random.rand(3)
    np.random.seed(99)
    _restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"], generator)
    np.testing.assert_array_equal(np.random.rand(3), expected)
