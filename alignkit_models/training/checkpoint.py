"""Checkpoint files: written atomically, so an interrupted run never leaves a torn file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to ``<path>.tmp`` then rename: a crash mid-write keeps the previous checkpoint."""
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Checkpoints hold RNG states and configs besides tensors, so they are unpickled in full
    (``weights_only=False``): load only checkpoints you (or someone you trust) wrote.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: file not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=False)
