"""Run files and checkpoints: written atomically, read without running code.

A checkpoint holds tensors and plain data only (configs as dicts, RNG states as tensors), so it
is read with ``torch.load(weights_only=True)``: a file that would run code when unpickled is
refused. Any unreadable file (empty, truncated, foreign, or refused) is one ``ValueError`` line
naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into ``<path>.tmp``, flush it to disk, then rename: readers see the old file or
    the new one, never half of one, even if the process is killed mid-write."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_text(path: Path, text: str) -> None:
    """A run file (JSON, CSV, markdown), written atomically."""
    _write_atomically(path, lambda handle: handle.write(text.encode()))


def read_json(path: Path, what: str) -> Any:
    """A JSON run file, or one ``ValueError`` line naming it when it is torn or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{what} {path}: damaged ({str(error).splitlines()[0][:120]})") from None


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """A checkpoint, written atomically: a crash mid-write keeps the previous one."""
    _write_atomically(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable checkpoint, in one line naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds; the user gets one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in first or "Unsupported global" in str(error):
            first = "it holds objects other than tensors and plain data, which could run code"
        raise ValueError(f"checkpoint {path}: not a readable alignkit checkpoint ({first[:200]})") from None
    if not isinstance(payload, dict) or "model_state" not in payload:
        raise ValueError(f"checkpoint {path}: not an alignkit checkpoint (no model_state)")
    return payload
