"""Soak: many short epochs of DecAlign through the trainer's ``_train_epoch`` leave memory flat.

A leak that grows with every step or epoch (a graph kept alive by a running buffer, losses
appended with their graph, caches keyed by step) is invisible in a short run and fatal in a long
one. Here the official DecAlign, with small widths, trains ``EPOCHS`` epochs of a few steps
each on small synthetic MOSI-shaped data; after each epoch the process's resident set size
(``/proc/self/statm``) is read, after ``gc.collect()`` and glibc's ``malloc_trim(0)`` so that
free memory the allocator still holds does not count. Oracle: the reading at the end is within
``MAX_GROWTH`` (5 %) of the reading after ``WARMUP_EPOCHS`` (by then Adam's state, the
allocator's pools and torch's lazily built kernels exist).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from alignkit_models.data.base import MultimodalSplit, SplitDataset, collate
from alignkit_models.registry import create_model
from alignkit_models.training.config import ProtocolConfig
from alignkit_models.training.trainer import _train_epoch

INPUT_DIMS = {"text": 32, "audio": 5, "vision": 20}  # MOSI's audio and vision widths; text kept small
N_STEPS = 8
TRAIN_SIZE, BATCH_SIZE = 48, 16  # three steps per epoch
EPOCHS, WARMUP_EPOCHS = 30, 5
MAX_GROWTH = 0.05

pytestmark = [
    pytest.mark.slow,
    # Linux only (CI and this machine have /proc); elsewhere there is no portable RSS reading to check.
    pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident set size from /proc/self/statm"),
]


def _malloc_trim() -> None:
    """Hand the C allocator's free pages back to the system (glibc); a no-op elsewhere."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def resident_bytes() -> int:
    """This process's resident set size after a full garbage collection and ``malloc_trim``."""
    gc.collect()
    _malloc_trim()
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def mosi_shaped_split(n: int, seed: int) -> MultimodalSplit:
    """Aligned-length text, audio and vision of random real lengths; label ``3 tanh`` of a feature mean."""
    rng = np.random.default_rng(seed)
    features, lengths = {}, {}
    for m, d in INPUT_DIMS.items():
        lengths[m] = np.full(n, N_STEPS) if m == "text" else rng.integers(1, N_STEPS + 1, n)
        steps = np.arange(N_STEPS)[None, :, None] < lengths[m][:, None, None]
        features[m] = (rng.normal(size=(n, N_STEPS, d)) * steps).astype(np.float32)
    labels = 3 * np.tanh(features["text"][:, :, 0].mean(1) * 2).astype(np.float32)
    return MultimodalSplit(features, {m: v.astype(np.int64) for m, v in lengths.items()}, labels)


def test_decalign_resident_memory_stays_flat_over_many_epochs() -> None:
    model = create_model("decalign", input_dims=INPUT_DIMS, task="regression", dim=16, n_heads=2, n_layers=1, n_components=3)
    protocol = ProtocolConfig()
    optimizer = torch.optim.Adam(model.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay, foreach=True)
    loader = DataLoader(
        SplitDataset(mosi_shaped_split(TRAIN_SIZE, seed=0), model.modalities),
        batch_size=BATCH_SIZE,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=collate,
    )
    readings = []
    for epoch in range(1, EPOCHS + 1):
        record = _train_epoch(model, loader, optimizer, protocol.grad_clip, torch.device("cpu"), epoch, progress=False)
        assert np.isfinite(record["loss"])
        readings.append(resident_bytes())
    warm, end = readings[WARMUP_EPOCHS - 1], readings[-1]
    mib = [round(r / 2**20, 1) for r in readings]
    assert end <= (1 + MAX_GROWTH) * warm, (
        f"resident memory grew {100 * (end / warm - 1):.1f}% from epoch {WARMUP_EPOCHS} to {EPOCHS} "
        f"(limit {100 * MAX_GROWTH:.0f}%); MiB per epoch: {mib}"
    )
