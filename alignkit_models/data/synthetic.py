"""Synthetic MMSA-format data with planted, learnable structure.

:func:`make_synthetic_mmsa` builds the dict that an MMSA feature pickle holds (see
:mod:`alignkit_models.data.mmsa`), with the feature widths, padded lengths and split sizes of
CMU-MOSI, CMU-MOSEI or CH-SIMS, so that code written for the real files runs unchanged on it and
tests can check that a model learns. :func:`write_synthetic_mmsa` pickles it to disk for
:func:`~alignkit_models.data.mmsa.load_mmsa`.

Planted structure, per sample ``n``:

* a sentiment score ``s ~ N(0, 1)``;
* a shared latent ``z_shared = [s, c_1, c_2, c_3]`` (``SHARED_DIM`` = 4): the score plus three
  common nuisance factors ``c ~ N(0, 1)``; every modality sees all of ``z_shared``;
* per modality ``m`` a unique latent ``u_m ~ N(0, I_4)`` (``UNIQUE_DIM`` = 4) that only ``m``
  sees; ``u_text[0]`` and ``u_audio[0]`` also drive the label, so text and audio carry
  information the other modalities lack;
* the label ``y = hi * tanh(v)`` with ``v = (s + 0.5 u_text[0] + 0.35 u_audio[0]) / sqrt(1.3725)``
  (unit variance) and ``hi`` the top of the preset's label range (3 for MOSI/MOSEI, 1 for SIMS).
  Like the real annotations, labels are averages of a few discrete ratings: they are rounded to
  multiples of ``LABEL_STEP`` (0.2 for MOSI and SIMS, 1/3 for MOSEI), so a few percent are
  exactly 0 (about 3 % for MOSI, 4 % for MOSEI, 8 % for SIMS);
* the features of modality ``m`` at step ``t``:
  ``x[n, t] = g_m[n, t] * a_m * (z_shared[n] @ A_m + u_m[n] @ B_m) + mu_m + noise * eps[n, t]``
  where ``A_m``, ``B_m`` are fixed random projections (entries ``N(0, 1/8)``, so each feature
  carries about unit signal variance), ``a_m`` is 1 for text and 0.7 for audio and vision (text
  is the strongest modality in the real data too), ``mu_m`` a fixed per-feature offset, ``eps``
  white Gaussian noise, and ``g_m[n, t]`` a positive log-normal gain following an AR(1) process
  over time (mean 1, correlation 0.9 between neighbouring steps): the signal persists across
  steps with smooth random modulation, so pooling over time averages the noise away.

Aligned data (MOSI/MOSEI default) give every modality the text length and no ``*_lengths``
keys. Unaligned data (SIMS default) give each modality its own padded length (SIMS 39/400/55;
MOSI/MOSEI 50/375/500 as in MMSA's ``unaligned_50.pkl``), ``audio_lengths`` and
``vision_lengths`` drawn from one utterance duration per sample (20 % to 100 % of the padded
length, at least 1), and zeros after each length. Text always has full length and, as in MMSA,
no lengths key.

With ``text_bert=True`` each split also holds MMSA-FET style BERT inputs ``text_bert``, int64
``(N, 3, L)`` with ``L`` the text length: row 0 token ids drawn uniformly from ``[1, vocab_size)``
on real tokens and 0 (padding) after, row 1 the attention mask (1 on the first ``length`` tokens,
``length`` from the sample's utterance duration like the audio/vision lengths, at least 1), row
2 segment ids (all 0). The ids carry none of the planted structure: they exist so the token
path (``load_mmsa(..., text="tokens")``, BERT encoders) can run without real data. They are
drawn after everything else, so the other arrays do not depend on ``text_bert``.

Besides ``train``/``valid``/``test`` the dict has a top-level ``"synthetic"`` entry with the
generation settings and the latents (``sentiment``, ``shared``, ``unique[m]`` per split), so
tests can check what a model recovers; MMSA readers ignore it.

The projections and offsets are drawn before any sample, so one seed gives the same feature
space whatever ``sizes`` is.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from alignkit_models.data.mmsa import DATASET_DIMS, MODALITIES, SPLITS

__all__ = [
    "LABEL_STEP",
    "LABEL_WEIGHTS",
    "PRESETS",
    "SHARED_DIM",
    "UNALIGNED_LENGTHS",
    "UNIQUE_DIM",
    "make_synthetic_mmsa",
    "write_synthetic_mmsa",
]

PRESETS: tuple[str, ...] = ("mosi", "mosei", "sims")
SHARED_DIM = 4
UNIQUE_DIM = 4
#: Weight of the sentiment score and of the first unique factor of each modality in the label.
LABEL_WEIGHTS: dict[str, float] = {"shared": 1.0, "text": 0.5, "audio": 0.35, "vision": 0.0}
LABEL_STEP: dict[str, float] = {"mosi": 0.2, "mosei": 1.0 / 3.0, "sims": 0.2}
UNALIGNED_LENGTHS: dict[str, dict[str, int]] = {
    "mosi": {"text": 50, "audio": 375, "vision": 500},
    "mosei": {"text": 50, "audio": 375, "vision": 500},
    "sims": dict(DATASET_DIMS["sims"]["lengths"]),
}
_SIGNAL_SCALE: dict[str, float] = {"text": 1.0, "audio": 0.7, "vision": 0.7}
_OFFSET_SCALE = 0.5
_GAIN_SIGMA = 0.5
_GAIN_RHO = 0.9
_MIN_DURATION = 0.2
# Samples generated per block: keeps each block's temporaries (~10 MB) cache-friendly, which
# makes generation several times faster than whole-array passes.
_CHUNK = 64


def make_synthetic_mmsa(
    preset: str = "mosi",
    *,
    sizes: tuple[int, int, int] | None = None,
    seed: int = 0,
    aligned: bool | None = None,
    noise: float = 1.0,
    text_bert: bool = False,
    vocab_size: int = 100,
) -> dict[str, Any]:
    """Build an MMSA-format dict with planted structure (see the module docstring).

    Args:
        preset: ``"mosi"``, ``"mosei"`` or ``"sims"``: widths, lengths, sizes and label range.
        sizes: samples in train, valid, test; default the real data set's (MOSEI's full size
            takes about 4 GB of memory).
        seed: seed of :func:`numpy.random.default_rng`; the same arguments give the same arrays.
        aligned: one shared length and no ``*_lengths`` keys (True) or per-modality lengths
            (False); default the preset's own (aligned for MOSI/MOSEI, unaligned for SIMS).
        noise: standard deviation of the per-step Gaussian noise, against a per-feature signal
            of about unit variance.
        text_bert: also write int64 ``text_bert`` ``(N, 3, L)`` token ids, attention mask and
            segment ids (see the module docstring).
        vocab_size: token ids lie in ``[0, vocab_size)``, 0 being padding; at least 2.

    Returns:
        ``{"train": {...}, "valid": {...}, "test": {...}, "synthetic": {...}}``; each split holds
        float32 ``text``/``audio``/``vision`` ``(N, T, d)``, float32 ``regression_labels``
        ``(N,)``, int64 ``classification_labels`` (0 negative, 1 neutral, 2 positive), ``id`` and
        ``raw_text`` (str arrays), when unaligned int64 ``audio_lengths``/``vision_lengths`` and,
        with ``text_bert=True``, int64 ``text_bert`` ``(N, 3, L)``.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {PRESETS}, received {preset!r}")
    spec = DATASET_DIMS[preset]
    sizes = _check_sizes(spec["sizes"] if sizes is None else sizes)
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise: expected a finite number >= 0, received {noise!r}")
    if text_bert and not (isinstance(vocab_size, (int, np.integer)) and vocab_size >= 2):
        raise ValueError(f"vocab_size: expected an integer >= 2 (0 is padding), received {vocab_size!r}")
    aligned = bool(spec["aligned"]) if aligned is None else bool(aligned)
    if aligned:
        steps = {m: int(spec["lengths"]["text"]) for m in MODALITIES}
    else:
        steps = dict(UNALIGNED_LENGTHS[preset])
    widths = {m: int(spec[m]) for m in MODALITIES}

    rng = np.random.default_rng(seed)
    # The feature space first, so that it does not depend on how many samples follow.
    scale = 1.0 / np.sqrt(SHARED_DIM + UNIQUE_DIM)
    world = {
        m: (
            rng.normal(0.0, scale, (SHARED_DIM, widths[m])).astype(np.float32),
            rng.normal(0.0, scale, (UNIQUE_DIM, widths[m])).astype(np.float32),
            rng.normal(0.0, _OFFSET_SCALE, widths[m]).astype(np.float32),
        )
        for m in MODALITIES
    }

    total = sum(sizes)
    shared = rng.standard_normal((total, SHARED_DIM))
    unique = {m: rng.standard_normal((total, UNIQUE_DIM)) for m in MODALITIES}
    sentiment = shared[:, 0]
    mix = LABEL_WEIGHTS["shared"] * sentiment + sum(LABEL_WEIGHTS[m] * unique[m][:, 0] for m in MODALITIES)
    mix /= np.sqrt(LABEL_WEIGHTS["shared"] ** 2 + sum(LABEL_WEIGHTS[m] ** 2 for m in MODALITIES))
    labels = _labels(mix, preset)
    # One utterance duration per sample: a long clip is long in audio and in video alike.
    duration = rng.uniform(_MIN_DURATION, 1.0, total)

    bounds = np.cumsum((0, *sizes))
    result: dict[str, Any] = {}
    for index, split in enumerate(SPLITS):
        lo, hi = int(bounds[index]), int(bounds[index + 1])
        n = hi - lo
        entry: dict[str, Any] = {}
        for m in MODALITIES:
            a, b, offset = world[m]
            signal = (shared[lo:hi] @ a + unique[m][lo:hi] @ b).astype(np.float32) * np.float32(_SIGNAL_SCALE[m])
            gain = _ar1_gain(rng, n, steps[m])
            if aligned or m == "text":
                lengths = np.full(n, steps[m], dtype=np.int64)
            else:
                lengths = np.clip(np.ceil(duration[lo:hi] * steps[m]), 1, steps[m]).astype(np.int64)
                entry[f"{m}_lengths"] = lengths
            entry[m] = _features(rng, signal, gain, offset, lengths, noise)
        entry["regression_labels"] = labels[lo:hi].astype(np.float32)
        entry["classification_labels"] = (np.sign(labels[lo:hi]) + 1).astype(np.int64)
        entry["id"] = np.array([f"synthetic_{preset}_{split}_{i}" for i in range(n)])
        entry["raw_text"] = np.array([f"synthetic sample {i}" for i in range(lo, hi)])
        result[split] = entry

    if text_bert:
        # Drawn last, so that every other array is the same with or without token ids.
        tokens = _token_ids(rng, duration, steps["text"], int(vocab_size))
        for index, split in enumerate(SPLITS):
            result[split]["text_bert"] = tokens[bounds[index] : bounds[index + 1]]

    result["synthetic"] = {
        "preset": preset,
        "seed": seed,
        "aligned": aligned,
        "noise": float(noise),
        "text_bert": bool(text_bert),
        "label_weights": dict(LABEL_WEIGHTS),
        "latents": {
            split: {
                "sentiment": sentiment[bounds[i] : bounds[i + 1]].astype(np.float32),
                "shared": shared[bounds[i] : bounds[i + 1]].astype(np.float32),
                "unique": {m: unique[m][bounds[i] : bounds[i + 1]].astype(np.float32) for m in MODALITIES},
            }
            for i, split in enumerate(SPLITS)
        },
    }
    return result


def write_synthetic_mmsa(
    path: str | os.PathLike[str],
    preset: str = "mosi",
    *,
    sizes: tuple[int, int, int] | None = None,
    seed: int = 0,
    aligned: bool | None = None,
    noise: float = 1.0,
    text_bert: bool = False,
    vocab_size: int = 100,
) -> Path:
    """Pickle :func:`make_synthetic_mmsa` to ``path`` (parent folders created) and return it."""
    data = make_synthetic_mmsa(
        preset, sizes=sizes, seed=seed, aligned=aligned, noise=noise, text_bert=text_bert, vocab_size=vocab_size
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so an interrupted run never leaves a truncated pickle behind.
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(partial, path)
    return path


def _check_sizes(sizes: Any) -> tuple[int, int, int]:
    values = tuple(sizes)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in values):
        raise ValueError(f"sizes: expected three positive integers (train, valid, test), received {sizes!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def _labels(mix: np.ndarray, preset: str) -> np.ndarray:
    top = float(DATASET_DIMS[preset]["label_range"][1])
    step = LABEL_STEP[preset]
    labels = np.round(top * np.tanh(mix) / step) * step
    # "+ 0.0" turns the -0.0 that rounding yields for small negatives into 0.0.
    return np.clip(labels, -top, top) + 0.0


def _token_ids(rng: np.random.Generator, duration: np.ndarray, steps: int, vocab_size: int) -> np.ndarray:
    """int64 ``(n, 3, steps)``: token ids, attention mask and segment ids (MMSA-FET order)."""
    n = len(duration)
    lengths = np.clip(np.ceil(duration * steps), 1, steps).astype(np.int64)
    mask = (np.arange(steps)[None, :] < lengths[:, None]).astype(np.int64)
    tokens = np.zeros((n, 3, steps), dtype=np.int64)
    tokens[:, 0] = rng.integers(1, vocab_size, (n, steps)) * mask
    tokens[:, 1] = mask
    return tokens


def _ar1_gain(rng: np.random.Generator, n: int, steps: int) -> np.ndarray:
    """Positive ``(n, steps)`` gains, log-normal with mean 1, smooth over time."""
    shocks = rng.standard_normal((n, steps))
    state = np.empty_like(shocks)
    state[:, 0] = shocks[:, 0]
    innovation = np.sqrt(1.0 - _GAIN_RHO**2)
    # A loop over at most 500 steps of (n,) vectors: cheap, and AR(1) has no closed vector form.
    for t in range(1, steps):
        state[:, t] = _GAIN_RHO * state[:, t - 1] + innovation * shocks[:, t]
    return np.exp(_GAIN_SIGMA * state - _GAIN_SIGMA**2 / 2).astype(np.float32)


def _features(
    rng: np.random.Generator,
    signal: np.ndarray,
    gain: np.ndarray,
    offset: np.ndarray,
    lengths: np.ndarray,
    noise: float,
) -> np.ndarray:
    n, steps = gain.shape
    out = np.empty((n, steps, signal.shape[1]), dtype=np.float32)
    valid = np.arange(steps)[None, :] < lengths[:, None]
    valid_all = bool(valid.all())
    for start in range(0, n, _CHUNK):
        block = out[start : start + _CHUNK]
        # Drawing straight into the output avoids a second full-size float32 array.
        rng.standard_normal(dtype=np.float32, out=block)
        block *= np.float32(noise)
        block += gain[start : start + _CHUNK, :, None] * signal[start : start + _CHUNK, None, :]
        block += offset
        if not valid_all:
            # MMSA pads after each sequence's length with zeros.
            block *= valid[start : start + _CHUNK, :, None]
    return out
