"""The README's set-up commands are the ones CI runs, and its examples stay runnable."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = text.index("```bash")
    assert text[:first_block].strip() == "# alignkit"
    commands = _readme_commands()[:2]
    assert commands[0].endswith("alignkit train --model decalign --dataset uci-mfeat")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci_lines[-1] == _readme_commands()[1]


def test_drop_in_example_runs_and_is_seeded(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["drop_in_losses.py", "--epochs", "2"])
    outputs = []
    for _ in range(2):
        runpy.run_path(str(ROOT / "examples" / "drop_in_losses.py"), run_name="__main__")
        outputs.append(capsys.readouterr().out)
    assert "epoch 1" in outputs[0]
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_every_example_answers_help_without_running(example: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / example), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
    assert "epoch 0:" not in result.stdout and "UCI Multiple Features:" not in result.stdout


def test_drop_in_example_is_under_forty_lines() -> None:
    lines = [l for l in (ROOT / "examples" / "drop_in_losses.py").read_text().splitlines() if l.strip()]
    assert len(lines) < 40


def test_readme_lists_every_decalign_option_with_both_variants() -> None:
    from alignkit_models.models.decalign import option_table

    assert option_table() in (ROOT / "README.md").read_text()


def test_readme_links_stay_inside_the_repository() -> None:
    text = (ROOT / "README.md").read_text()
    assert "../shared" not in text
