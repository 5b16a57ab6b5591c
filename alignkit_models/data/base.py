"""The in-memory form every data set takes before it reaches a model.

A :class:`MultimodalDataset` holds three :class:`MultimodalSplit` (train / valid / test). Each
split stores, per modality, a float32 array ``(N, T_m, d_m)`` (utterance-level data such as
UCI Multiple Features has ``T_m = 1``) and the number of valid (non-padded) steps per sample,
``(N,)`` int64. Text may instead be BERT token ids: an int64 array ``(N, L, 3)`` whose last axis
holds token id, attention mask and segment id (see ``load_mmsa(..., text="tokens")``); a model
then has to embed it, e.g. with :class:`~alignkit_models.layers.text.BertTextEncoder`.
:func:`collate` turns a list of samples into padded tensors and boolean masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

Task = Literal["regression", "classification"]


@dataclass
class MultimodalSplit:
    """One split: ``features[name]`` is ``(N, T, d)`` float32, ``lengths[name]`` is ``(N,)`` int64,
    ``labels`` is ``(N,)`` (float32 for regression, int64 class indices for classification).

    A token modality (BERT text) holds int64 ``(N, L, 3)`` instead: per token its id, attention
    mask (1 on real tokens) and segment id; its lengths are the attention mask summed over ``L``.
    """

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
        """Feature width ``d_m`` per modality (3 for a token modality: id, mask, segment)."""
        return {m: int(self.train.features[m].shape[-1]) for m in self.modalities}

    @property
    def token_modalities(self) -> tuple[str, ...]:
        """Modalities held as int64 ``(N, L, 3)`` token ids rather than float features."""
        return tuple(m for m in self.modalities if is_token_array(self.train.features[m]))

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


def is_token_array(array: np.ndarray) -> bool:
    """Whether ``array`` holds token ids (an integer dtype) rather than float features."""
    return array.dtype.kind in "iu"


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch.

    Integer arrays (token ids, ``(L, 3)`` per sample) stay integers; everything else becomes
    float32.

    Returns:
        ``{"features": {m: (B, T_m, d_m) float32, or (B, L, 3) int64 for tokens},
        "masks": {m: (B, T_m) bool, True on real steps}, "labels": (B,)}``.
    """
    modalities = list(samples[0]["features"])
    features: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    for m in modalities:
        stacked = np.stack([s["features"][m] for s in samples])
        if is_token_array(stacked):
            features[m] = torch.from_numpy(stacked.astype(np.int64, copy=False))
        else:
            features[m] = torch.from_numpy(stacked).float()
        lengths = torch.tensor([s["lengths"][m] for s in samples])
        steps = torch.arange(features[m].shape[1])
        masks[m] = steps.unsqueeze(0) < lengths.unsqueeze(1)
    labels = torch.from_numpy(np.asarray([s["label"] for s in samples]))
    return {"features": features, "masks": masks, "labels": labels}


def ordered_batches(split: MultimodalSplit, modalities: tuple[str, ...], batch_size: int) -> DataLoader:
    """The split's samples in their order, ``batch_size`` at a time, collated (evaluation, plots, debiasing)."""
    # A DataLoader without a generator draws a seed from torch's global generator each time it
    # is iterated; its own generator keeps evaluating between epochs from shifting training's draws.
    return DataLoader(SplitDataset(split, tuple(modalities)), batch_size=batch_size, shuffle=False, collate_fn=collate, generator=torch.Generator())
