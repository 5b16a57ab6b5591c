"""UCI Multiple Features (handwritten digits, six views), shipped inside the package.

2,000 digits (classes 0-9, 200 each), each described by six feature sets of very different
scale and nature; alignkit treats each view as an utterance-level modality (``T = 1``), like
IEMOCAP in the DecAlign paper.

=====  =========================================  ====
view   content                                    dims
=====  =========================================  ====
fou    Fourier coefficients of character shapes    76
fac    profile correlations                        216
kar    Karhunen-Loeve coefficients                 64
pix    pixel averages in 2 x 3 windows             240
zer    Zernike moments                             47
mor    morphological features                      6
=====  =========================================  ====

Split (deterministic, stratified): within each class the 200 samples are permuted with
``numpy.random.default_rng(0)``; the first 140 go to train, the next 30 to valid, the last 30
to test (1,400 / 300 / 300 in all).

Source: UCI Machine Learning Repository, "Multiple Features" (Robert P.W. Duin), CC BY 4.0.
M. van Breukelen, R.P.W. Duin, D.M.J. Tax, J.E. den Hartog, "Handwritten digit recognition by
combined classifiers", Kybernetika 34(4):381-386, 1998. See ``UCI_MFEAT_LICENSE.md`` beside
this file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from alignkit_models.data.base import MultimodalDataset, MultimodalSplit

VIEWS: tuple[str, ...] = ("fou", "fac", "kar", "pix", "zer", "mor")
VIEW_DIMS: dict[str, int] = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
ARCHIVE = "uci_mfeat.npz"
SPLIT_SEED = 0
SPLIT_SIZES = (140, 30, 30)  # per class: train, valid, test


@dataclass(frozen=True)
class UCIMultipleFeatures:
    """The raw data set: ``views[v]`` is ``(2000, d_v)`` float32 in :data:`VIEWS` order,
    ``labels`` is ``(2000,)`` int64, ``splits[s]`` the sorted row indices of split ``s``."""

    views: dict[str, np.ndarray]
    labels: np.ndarray
    splits: dict[str, np.ndarray]


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Stratified train/valid/test row indices (see the module docstring)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    n_train, n_valid, _ = SPLIT_SIZES
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        parts["train"].append(rows[:n_train])
        parts["valid"].append(rows[n_train : n_train + n_valid])
        parts["test"].append(rows[n_train + n_valid :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def load_uci_mfeat() -> UCIMultipleFeatures:
    """Load the shipped data: six float32 views in :data:`VIEWS` order, labels and the split."""
    with resources.files("alignkit_models.data").joinpath(ARCHIVE).open("rb") as handle:
        archive = np.load(handle)
        views = {v: archive[v].astype(np.float32) for v in VIEWS}
        labels = archive["labels"].astype(np.int64)
    return UCIMultipleFeatures(views, labels, split_indices(labels))


def uci_mfeat_dataset(*, standardize: bool = True) -> MultimodalDataset:
    """The shipped data as a :class:`MultimodalDataset` of six utterance-level modalities.

    Args:
        standardize: z-score every feature with the mean and standard deviation of the train
            split (constant features are only centred), so that views of very different scales
            (pixel counts up to 6, morphological features up to ~17,000) meet on equal terms.
    """
    raw = load_uci_mfeat()
    train_rows = raw.splits["train"]
    features = {}
    for view, array in raw.views.items():
        if standardize:
            mean = array[train_rows].mean(0)
            std = array[train_rows].std(0)
            array = (array - mean) / np.where(std > 0, std, 1.0)
        features[view] = array.astype(np.float32)[:, None, :]  # (N, 1, d): T = 1

    def split(name: str) -> MultimodalSplit:
        rows = raw.splits[name]
        return MultimodalSplit(
            features={v: features[v][rows] for v in VIEWS},
            lengths={v: np.ones(len(rows), dtype=np.int64) for v in VIEWS},
            labels=raw.labels[rows],
            ids=[f"mfeat-{r}" for r in rows],
        )

    return MultimodalDataset(
        name="uci-mfeat",
        modalities=VIEWS,
        task="classification",
        train=split("train"),
        valid=split("valid"),
        test=split("test"),
        n_classes=10,
        class_names=tuple(str(c) for c in range(10)),
    )


def build_archive(csv_dir: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """Rebuild the shipped archive from the six ``mfeat-<view>.csv`` files (how it was made).

    Each CSV has a header row, 2,000 rows in the same sample order, and the label last.
    """
    arrays: dict[str, np.ndarray] = {}
    labels = None
    for view in VIEWS:
        table = np.loadtxt(Path(csv_dir) / f"mfeat-{view}.csv", delimiter=",", skiprows=1)
        if labels is not None and not np.array_equal(labels, table[:, -1]):
            raise ValueError(f"mfeat-{view}.csv: expected the same label column as mfeat-{VIEWS[0]}.csv")
        labels = table[:, -1]
        arrays[view] = table[:, :-1].astype(np.float32)
    assert labels is not None
    out = Path(out_path)
    np.savez_compressed(out, labels=labels.astype(np.int8), **arrays)
    return out
