"""The in-memory form every data set takes before it reaches a model.

A :class:`MultimodalDataset` holds three :class:`MultimodalSplit` (train / valid / test). Each
split stores, per modality, a float32 array ``(N, T_m, d_m)`` (utterance-level data such as
UCI Multiple Features has ``T_m = 1``) and the number of valid (non-padded) steps per sample,
``(N,)`` int64. :func:`collate` turns a list of samples into padded tensors and boolean masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

Task = Literal["regression", "classification"]


@dataclass
class MultimodalSplit:
    """One split: ``features[name]`` is ``(N, T, d)`` float32, ``lengths[name]`` is ``(N,)`` int64,
    ``labels`` is ``(N,)`` (float32 for regression, int64 class indices for classification)."""

    features: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    labels: np.ndarray
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name, array in self.features.items():
            if array.ndim != 3 or array.shape[0] != n:
                raise ValueError(f"features[{name!r}]: expected shape ({n}, T, d), received {array.shape}")
            lengths = self.lengths.get(name)
            if lengths is None or lengths.shape != (n,):
                raise ValueError(f"lengths[{name!r}]: expected shape ({n},), received {None if lengths is None else lengths.shape}")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class MultimodalDataset:
    """A data set with its three splits and what a model needs to know about it."""

    name: str
    modalities: tuple[str, ...]
    task: Task
    train: MultimodalSplit
    valid: MultimodalSplit
    test: MultimodalSplit
    n_classes: int | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def input_dims(self) -> dict[str, int]:
        """Feature width ``d_m`` per modality."""
        return {m: int(self.train.features[m].shape[-1]) for m in self.modalities}

    @property
    def sequence_lengths(self) -> dict[str, int]:
        """Padded length ``T_m`` per modality."""
        return {m: int(self.train.features[m].shape[1]) for m in self.modalities}

    def split(self, name: str) -> MultimodalSplit:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split: expected 'train', 'valid' or 'test', received {name!r}")
        return getattr(self, name)


class SplitDataset(Dataset):
    """A :class:`MultimodalSplit` as a torch ``Dataset`` of per-sample dicts."""

    def __init__(self, split: MultimodalSplit, modalities: tuple[str, ...]) -> None:
        self.split = split
        self.modalities = modalities

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "features": {m: self.split.features[m][index] for m in self.modalities},
            "lengths": {m: int(self.split.lengths[m][index]) for m in self.modalities},
            "label": self.split.labels[index],
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch.

    Returns:
        ``{"features": {m: (B, T_m, d_m) float32}, "masks": {m: (B, T_m) bool, True on real steps},
        "labels": (B,)}``.
    """
    modalities = list(samples[0]["features"])
    features: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    for m in modalities:
        features[m] = torch.from_numpy(np.stack([s["features"][m] for s in samples])).float()
        lengths = torch.tensor([s["lengths"][m] for s in samples])
        steps = torch.arange(features[m].shape[1])
        masks[m] = steps.unsqueeze(0) < lengths.unsqueeze(1)
    labels = torch.from_numpy(np.asarray([s["label"] for s in samples]))
    return {"features": features, "masks": masks, "labels": labels}
