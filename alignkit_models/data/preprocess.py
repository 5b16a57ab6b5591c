"""Feature preprocessing applied after loading, before training.

:func:`standardize_features` is the standardisation the official DecAlign code applies to the
MOSEI and CH-SIMS audio and vision features (``need_feature_standardized``): clip every feature
to percentiles of the train split, then subtract the train mean and divide by the train
standard deviation, all statistics taken on the train split only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np

from alignkit_models.data.base import MultimodalDataset, MultimodalSplit, is_token_array

__all__ = ["STD_FLOOR", "standardize_features"]

#: Smallest standard deviation divided by, so constant features give 0 instead of inf/NaN.
STD_FLOOR = 1e-6
# Elements per temporary block (16 MB in float32, 32 MB in float64): the passes below work block
# by block so that no temporary approaches the size of a modality (MOSEI's train text is 2.5 GB).
_BLOCK_ELEMENTS = 1 << 22


def standardize_features(
    dataset: MultimodalDataset,
    modalities: Sequence[str],
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
) -> dict[str, dict[str, np.ndarray]]:
    """Clip and standardise features in place with train-split statistics (official DecAlign).

    Per modality ``m`` in ``modalities``, with ``x`` the train features ``(N, T, d)``:

    1. ``low, high = numpy.percentile(x, clip_percentiles, axis=(0, 1))`` per feature, over every
       step of every sample, padding steps included (as the official code does);
    2. ``mean`` and ``std`` (population, floored at :data:`STD_FLOOR`) per feature of
       ``clip(x, low, high)``, again over all ``(N, T)`` steps;
    3. for train, valid and test alike: ``(clip(features, low, high) - mean) / std`` with the
       *train* statistics, non-finite results replaced by 0, stored as float32 in the split.

    Padding steps are transformed like the others (they stop being 0); the split's lengths, and
    thus the masks of :func:`~alignkit_models.data.base.collate`, are unchanged.

    Memory: the features are modified in place; percentiles, sums and the transform run over
    blocks of at most a few tens of MB, so no full-size temporary is made (an input that is not
    already C-contiguous float32 is first converted once). Statistics are accumulated in float64
    like the official code, whose float64 percentiles promote the clipped train features to
    float64, and then rounded to float32.

    Args:
        dataset: the data set; its splits' feature arrays are replaced or modified in place.
        modalities: names among ``dataset.modalities`` holding float features (not token ids),
            e.g. ``("audio", "vision")`` as in the official MOSEI and CH-SIMS configurations.
        clip_percentiles: ``(low, high)`` with ``0 <= low < high <= 100``; the official default is
            ``(0.5, 99.5)`` (CH-SIMS uses ``(0.1, 99.9)``).

    Returns:
        ``{m: {"low", "high", "mean", "std"}}``, each float32 ``(1, 1, d_m)``.

    Raises:
        ValueError: ``modalities`` is a string, empty, repeats a name, names a modality the data
            set lacks or one holding token ids, or a split's feature width differs from train's;
            ``clip_percentiles`` is not two numbers with
            ``0 <= low < high <= 100``.
    """
    names = _check_modalities(dataset, modalities)
    percentiles = _check_percentiles(clip_percentiles)
    splits = [dataset.split(name) for name in ("train", "valid", "test")]
    statistics: dict[str, dict[str, np.ndarray]] = {}
    for m in names:
        for split in splits:
            split.features[m] = _writable_float32(split.features[m])
        statistics[m] = _train_statistics(dataset.train.features[m], percentiles)
        for split in splits:
            _standardize_in_place(split.features[m], statistics[m])
    return statistics


def _check_modalities(dataset: MultimodalDataset, modalities: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modalities, str):
        raise ValueError(f"modalities: expected a sequence of names, received the string {modalities!r}")
    names = tuple(modalities)
    if not names:
        raise ValueError(f"modalities: expected at least one of {dataset.modalities}, received none")
    unknown = [m for m in names if m not in dataset.modalities]
    if unknown:
        raise ValueError(f"modalities: expected names among {dataset.modalities}, received {unknown}")
    if len(set(names)) != len(names):
        # A repeated name would standardise the same features twice.
        raise ValueError(f"modalities: expected distinct names, received {names}")
    tokens = [m for m in names if _holds_tokens(dataset, m)]
    if tokens:
        raise ValueError(f"modalities: expected float features, received token ids for {tokens}")
    for m in names:
        width = dataset.train.features[m].shape[-1]
        for split in ("valid", "test"):
            other = dataset.split(split).features[m].shape[-1]
            if other != width:
                raise ValueError(f"{split}[{m!r}]: feature width {other} differs from train[{m!r}] width {width}")
    return names


def _holds_tokens(dataset: MultimodalDataset, modality: str) -> bool:
    splits: list[MultimodalSplit] = [dataset.train, dataset.valid, dataset.test]
    return any(is_token_array(np.asarray(s.features[modality])) for s in splits)


def _check_percentiles(clip_percentiles: tuple[float, float]) -> tuple[float, float]:
    values = tuple(clip_percentiles) if isinstance(clip_percentiles, (tuple, list)) else ()
    numbers = len(values) == 2 and all(isinstance(v, Real) and not isinstance(v, bool) for v in values)
    if not numbers or not (all(math.isfinite(v) for v in values) and 0 <= values[0] < values[1] <= 100):
        raise ValueError(
            f"clip_percentiles: expected (low, high) with 0 <= low < high <= 100, received {clip_percentiles!r}"
        )
    return float(values[0]), float(values[1])


def _writable_float32(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return array if array.flags.writeable else array.copy()


def _train_statistics(train: np.ndarray, percentiles: tuple[float, float]) -> dict[str, np.ndarray]:
    """float32 ``(1, 1, d)`` low, high, mean and std of the clipped train features ``(N, T, d)``."""
    low, high = _percentiles(train, percentiles)
    mean, std = _clipped_moments(train, low, high)
    shape = (1, 1, train.shape[-1])
    return {
        "low": low.astype(np.float32).reshape(shape),
        "high": high.astype(np.float32).reshape(shape),
        "mean": mean.astype(np.float32).reshape(shape),
        "std": np.maximum(std, STD_FLOOR).astype(np.float32).reshape(shape),
    }


def _percentiles(x: np.ndarray, percentiles: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(d,)`` percentiles over axes (0, 1), a block of features at a time.

    A percentile depends only on the values of its feature, so per-block results equal
    ``numpy.percentile(x, percentiles, axis=(0, 1))``, which would copy the whole array twice.
    """
    steps, width = x.shape[0] * x.shape[1], x.shape[2]
    per_block = max(1, _BLOCK_ELEMENTS // max(steps, 1))
    result = np.empty((2, width), dtype=np.float64)
    flat = x.reshape(steps, width)
    for start in range(0, width, per_block):
        # (features, steps) contiguous: each feature's partition then runs on contiguous memory.
        block = np.ascontiguousarray(flat[:, start : start + per_block].T)
        result[:, start : start + per_block] = np.percentile(block, percentiles, axis=1, overwrite_input=True)
    return result[0], result[1]


def _clipped_moments(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(d,)`` mean and population std of ``clip(x, low, high)`` over axes (0, 1)."""
    count = x.shape[0] * x.shape[1]
    total = np.zeros(x.shape[-1], dtype=np.float64)
    for block in _sample_blocks(x):
        total += np.clip(block, low, high).sum(axis=(0, 1))
    mean = total / count
    # Two passes, as numpy.std does: summing squared deviations avoids the cancellation of
    # E[x^2] - E[x]^2.
    squares = np.zeros_like(total)
    for block in _sample_blocks(x):
        deviation = np.clip(block, low, high) - mean
        squares += np.square(deviation, out=deviation).sum(axis=(0, 1))
    return mean, np.sqrt(squares / count)


def _standardize_in_place(x: np.ndarray, statistics: dict[str, np.ndarray]) -> None:
    """``x = nan_to_num((clip(x, low, high) - mean) / std)`` on float32 ``(N, T, d)``, in place."""
    for block in _sample_blocks(x):
        np.clip(block, statistics["low"], statistics["high"], out=block)
        block -= statistics["mean"]
        block /= statistics["std"]
        np.nan_to_num(block, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def _sample_blocks(x: np.ndarray) -> list[np.ndarray]:
    """Views of ``x`` ``(N, T, d)`` along ``N``, each of about ``_BLOCK_ELEMENTS`` elements."""
    per_block = max(1, _BLOCK_ELEMENTS // max(x.shape[1] * x.shape[2], 1))
    return [x[start : start + per_block] for start in range(0, len(x), per_block)]
