"""Load the MMSA feature pickles of CMU-MOSI, CMU-MOSEI and CH-SIMS.

The MMSA toolkit ships each data set as one pickle holding a dict with keys ``"train"``,
``"valid"`` and ``"test"``. Each split is itself a dict:

``text``
    float ``(N, L, 768)``: BERT-like vectors, one per (padded) token.
``text_bert``
    int64 ``(N, 3, L)``: token ids, attention mask and segment ids (the MMSA-FET order; some
    older files swap the last two rows, see below). Some files hold only this raw token layout,
    some hold both it and ``text``. By default (``text="features"``) alignkit reads the float
    ``text``, and the attention mask of ``text_bert``, when present, supplies the text lengths.
    With ``text="tokens"`` it reads ``text_bert`` instead, for a model that runs BERT itself
    (:class:`~alignkit_models.layers.text.BertTextEncoder`).
``audio``, ``vision``
    float ``(N, T_a, d_a)`` and ``(N, T_v, d_v)``.
``audio_lengths``, ``vision_lengths`` (optional)
    ``(N,)`` number of real steps in the unaligned files. Word-aligned files have no such keys:
    every sequence then counts as full length.
``regression_labels``
    ``(N,)`` or ``(N, 1)`` sentiment scores, in [-3, 3] for MOSI / MOSEI and [-1, 1] for SIMS.
``classification_labels``, ``id``, ``raw_text`` (optional)
    alignkit reads ``id`` and ignores the others.

:func:`load_mmsa` turns such a file into a :class:`~alignkit_models.data.base.MultimodalDataset`
with ``task="regression"``. Padding is assumed to sit at the end of each sequence, which is how
:func:`~alignkit_models.data.base.collate` builds masks.

Which ``text_bert`` row is the attention mask is decided per split with the rule of the
official DecAlign code: row 1 if row 2 sums to 0 over the whole split or row 1 sums to at least
as much as row 2, otherwise row 2 (row 1 then holds the segment ids). A segment id is 1 only on
real tokens of a second sentence, so the mask never sums to less than the segment ids. With
``text="tokens"`` the split's text is stored as int64 ``(N, L, 3)`` with the columns always in
the order token id, attention mask, segment id.

A pickle can hold code that ``pickle.load`` runs; :func:`load_mmsa` reads files through a
restricted unpickler that admits numpy arrays and plain containers only (:mod:`.safe_pickle`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from alignkit_models.data.base import MultimodalDataset, MultimodalSplit, Task
from alignkit_models.data.safe_pickle import load_data_pickle

__all__ = ["DATASET_DIMS", "MODALITIES", "SPLITS", "TEXT_INPUTS", "TextInput", "load_mmsa", "mmsa_dataset"]

SPLITS: tuple[str, ...] = ("train", "valid", "test")
MODALITIES: tuple[str, ...] = ("text", "audio", "vision")

#: How the text modality is read: float ``text`` features or ``text_bert`` token ids.
TextInput = Literal["features", "tokens"]
TEXT_INPUTS: tuple[str, ...] = ("features", "tokens")

#: Feature widths, padded lengths, split sizes and label ranges of the MMSA releases
#: (MOSI and MOSEI ``aligned_50.pkl``, CH-SIMS ``unaligned_39.pkl``).
DATASET_DIMS: dict[str, dict[str, Any]] = {
    "mosi": {
        "text": 768,
        "audio": 5,
        "vision": 20,
        "lengths": {"text": 50, "audio": 50, "vision": 50},
        "sizes": (1284, 229, 686),
        "label_range": (-3.0, 3.0),
        "aligned": True,
    },
    "mosei": {
        "text": 768,
        "audio": 74,
        "vision": 35,
        "lengths": {"text": 50, "audio": 50, "vision": 50},
        "sizes": (16326, 1871, 4659),
        "label_range": (-3.0, 3.0),
        "aligned": True,
    },
    "sims": {
        "text": 768,
        "audio": 33,
        "vision": 709,
        "lengths": {"text": 39, "audio": 400, "vision": 55},
        "sizes": (1368, 456, 457),
        "label_range": (-1.0, 1.0),
        "aligned": False,
    },
}

_CLEAN_CHUNK = 1024

_TEXT_BERT_HINT = (
    "this file holds BERT token ids in 'text_bert' (N, 3, L: token ids, attention mask, segment "
    "ids) but no float 'text' features. Load it with text='tokens' for a model that runs BERT on "
    "the ids, or use a feature file with a float 'text' key (N, L, 768), e.g. MMSA's "
    "aligned_50.pkl / unaligned_50.pkl"
)


def load_mmsa(
    path: str | os.PathLike[str],
    *,
    name: str = "mmsa",
    modalities: Sequence[str] = MODALITIES,
    task: Task = "regression",
    text: TextInput = "features",
) -> MultimodalDataset:
    """Read an MMSA feature pickle into a :class:`MultimodalDataset`.

    Args:
        path: the ``.pkl`` file. It is read by
            :func:`~alignkit_models.data.safe_pickle.load_data_pickle`, which admits numpy arrays
            and plain containers only: a file that would run code is refused before anything runs.
        name: the data set's name, e.g. ``"mosi"``.
        modalities: which of ``"text"``, ``"audio"``, ``"vision"`` to keep.
        task: ``"regression"`` reads ``regression_labels`` (float32); ``"classification"``
            reads ``classification_labels`` as int64 class indices (e.g. IEMOCAP's six emotions).
        text: ``"features"`` reads the float ``text`` key; ``"tokens"`` reads the BERT token ids
            of ``text_bert`` (ignored when ``"text"`` is not among ``modalities``).

    Returns:
        The data set; features are float32 ``(N, T, d)``, lengths int64 ``(N,)``, labels ``(N,)``;
        with ``text="tokens"`` the text is int64 ``(N, L, 3)`` (token id, attention mask,
        segment id per token).

    Text handling with ``text="features"``: the float ``text`` key is used. If it is missing (or
    holds integers) while ``text_bert`` is present, a :class:`ValueError` explains that the file
    holds token ids only. When both are present, ``text_bert`` is ignored except that its
    attention mask gives the text lengths. With ``text="tokens"``, ``text_bert`` must be an
    integer ``(N, 3, L)`` array; the float ``text`` key is ignored and the text lengths are the
    attention mask summed over ``L``.

    Lengths come from ``<modality>_lengths`` when present (clipped to ``[0, T]``), else, for
    text, from the ``text_bert`` attention mask, else every sequence is full length.

    ``-inf``, ``+inf`` and NaN feature values (MOSI's COVAREP audio has ``-inf``) are replaced by
    0, with one :class:`UserWarning` per call that counts them per split and key.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file would run code, is empty, truncated or not a pickle; ``text`` is neither ``"features"`` nor ``"tokens"``; the file is not a dict
            of splits, or a split lacks a key, has a wrongly shaped array (or, for
            ``text="tokens"``, a non-integer ``text_bert``), disagrees on the number of samples,
            or changes a feature width; the message names the split and key.
    """
    _check_text_input(text)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MMSA file not found: {path}")
    data = load_data_pickle(path)
    return mmsa_dataset(data, name=name, modalities=modalities, task=task, text=text, source=str(path))


def mmsa_dataset(
    data: Any,
    *,
    name: str = "mmsa",
    modalities: Sequence[str] = MODALITIES,
    task: Task = "regression",
    text: TextInput = "features",
    source: str = "<memory>",
) -> MultimodalDataset:
    """:func:`load_mmsa` on an MMSA dict already in memory (e.g. from the synthetic generator).

    ``source`` names the data in messages. The dict's arrays may be modified in place.
    """
    _check_text_input(text)
    modalities = _check_modalities(modalities)
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: expected a pickled dict with keys 'train', 'valid', 'test', "
            f"received {type(data).__name__}"
        )

    # Count replacements over the whole file so the user gets one warning, not one per array.
    replaced: dict[str, int] = {}
    splits: dict[str, MultimodalSplit] = {}
    for split in SPLITS:
        if split not in data:
            raise ValueError(f"{split!r}: missing split in {source}")
        raw = data[split]
        if not isinstance(raw, dict):
            raise ValueError(f"{split!r}: expected a dict of arrays in {source}, received {type(raw).__name__}")
        splits[split] = _load_split(raw, split, modalities, replaced, task, text)

    _check_widths(splits, modalities)
    if replaced:
        detail = ", ".join(f"{where} {count}" for where, count in replaced.items())
        warnings.warn(
            f"load_mmsa: replaced {sum(replaced.values())} non-finite feature values "
            f"(-inf/+inf/NaN) with 0 in {source}: {detail}",
            UserWarning,
            stacklevel=2,
        )
    n_classes = None
    if task == "classification":
        n_classes = 1 + max(int(s.labels.max()) for s in splits.values())
    return MultimodalDataset(
        name=name,
        modalities=modalities,
        task=task,
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        n_classes=n_classes,
    )


def _check_text_input(text: str) -> None:
    if text not in TEXT_INPUTS:
        raise ValueError(f"text: expected one of {TEXT_INPUTS}, received {text!r}")


def _check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    # A bare string is a Sequence too; "text" would otherwise become ("t", "e", "x", "t").
    if isinstance(modalities, str):
        raise ValueError(f"modalities: expected a sequence of names, received the string {modalities!r}")
    result = tuple(modalities)
    if not result:
        raise ValueError("modalities: expected at least one of 'text', 'audio', 'vision', received none")
    unknown = [m for m in result if m not in MODALITIES]
    if unknown:
        raise ValueError(f"modalities: expected names among {MODALITIES}, received {unknown}")
    if len(set(result)) != len(result):
        raise ValueError(f"modalities: expected distinct names, received {result}")
    return result


def _load_split(
    raw: dict[str, Any],
    split: str,
    modalities: tuple[str, ...],
    replaced: dict[str, int],
    task: Task,
    text: TextInput,
) -> MultimodalSplit:
    labels = _labels(raw, split, task)
    n = len(labels)
    features: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    for m in modalities:
        if m == "text" and text == "tokens":
            features[m] = _tokens(raw, split, n)
            lengths[m] = features[m][:, :, 1].sum(axis=1)
            continue
        if m == "text":
            _check_text_layout(raw, split)
        array = _features(raw, split, m, n, replaced)
        features[m] = array
        lengths[m] = _lengths(raw, split, m, n, array.shape[1])
    return MultimodalSplit(features=features, lengths=lengths, labels=labels, ids=_ids(raw, split, n))


def _labels(raw: dict[str, Any], split: str, task: Task) -> np.ndarray:
    key = "regression_labels" if task == "regression" else "classification_labels"
    if key not in raw:
        raise ValueError(f"{split}[{key!r}]: missing key (needed for task={task!r})")
    labels = np.asarray(raw[key])
    # MMSA stores MOSI/MOSEI labels as (N, 1) in some releases and (N,) in others.
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"{split}[{key!r}]: expected shape (N,) or (N, 1), received {labels.shape}")
    if labels.dtype.kind not in "biuf":
        raise ValueError(f"{split}[{key!r}]: expected numbers, received dtype {labels.dtype}")
    if not np.isfinite(labels).all():
        # Labels are not silently zeroed like features: a wrong target corrupts every metric.
        raise ValueError(f"{split}[{key!r}]: contains {int((~np.isfinite(labels)).sum())} non-finite values")
    labels = labels.astype(np.float32 if task == "regression" else np.int64)
    return labels


def _check_text_layout(raw: dict[str, Any], split: str) -> None:
    text = raw.get("text")
    text_is_ids = text is not None and np.asarray(text).dtype.kind in "biu"
    if "text_bert" in raw and (text is None or text_is_ids):
        raise ValueError(f"{split}['text']: {_TEXT_BERT_HINT}")
    if text_is_ids:
        raise ValueError(
            f"{split}['text']: expected float features (N, L, 768), received an integer array of "
            f"shape {np.shape(text)}, which looks like token ids; BERT token ids belong in 'text_bert' "
            f"(N, 3, L), read with text='tokens'"
        )


def _tokens(raw: dict[str, Any], split: str, n: int) -> np.ndarray:
    """``text_bert`` ``(N, 3, L)`` as int64 ``(N, L, 3)``: token id, attention mask, segment id."""
    where = f"{split}['text_bert']"
    if "text_bert" not in raw:
        raise ValueError(f"{where}: missing key (needed for text='tokens')")
    tokens = np.asarray(raw["text_bert"])
    if tokens.ndim != 3 or tokens.shape[1] != 3:
        raise ValueError(
            f"{where}: expected shape (N, 3, L) (token ids, attention mask, segment ids), received {tokens.shape}"
        )
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"{where}: expected integer token ids for text='tokens', received dtype {tokens.dtype}")
    if tokens.shape[0] != n:
        raise ValueError(f"{where}: {tokens.shape[0]} samples, but {split}['regression_labels'] has {n}")
    if tokens.size and tokens[:, 0].min() < 0:
        raise ValueError(f"{where}: expected token ids >= 0, received {tokens[:, 0].min()}")
    mask_row = _attention_row(tokens)
    mask = tokens[:, mask_row]
    if not np.isin(mask, (0, 1)).all():
        raise ValueError(f"{where}: expected an attention mask of 0s and 1s in row {mask_row}, received other values")
    out = np.empty((tokens.shape[0], tokens.shape[2], 3), dtype=np.int64)
    out[:, :, 0] = tokens[:, 0]
    out[:, :, 1] = mask
    out[:, :, 2] = tokens[:, 3 - mask_row]
    return out


def _attention_row(tokens: np.ndarray) -> int:
    """Row (1 or 2) of a ``(N, 3, L)`` token array holding the attention mask.

    The official DecAlign rule: MMSA-FET writes ids, mask, segments; older files ids, segments,
    mask. Row 1 is the mask when row 2 is all zeros or row 1 sums to at least as much.
    """
    row_1, row_2 = tokens[:, 1].sum(), tokens[:, 2].sum()
    return 1 if row_2 == 0 or row_1 >= row_2 else 2


def _features(raw: dict[str, Any], split: str, key: str, n: int, replaced: dict[str, int]) -> np.ndarray:
    if key not in raw:
        raise ValueError(f"{split}[{key!r}]: missing key")
    array = np.asarray(raw[key])
    if array.ndim != 3:
        raise ValueError(f"{split}[{key!r}]: expected a 3-D array (N, T, d), received shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{split}[{key!r}]: expected numbers, received dtype {array.dtype}")
    if array.shape[0] != n:
        raise ValueError(
            f"{split}[{key!r}]: {array.shape[0]} samples, but {split}['regression_labels'] has {n}"
        )
    # The arrays come from our own pickle.load, so cleaning them in place is safe and spares a
    # second copy of MOSEI's ~3.5 GB of text features.
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not array.flags.writeable:
        array = array.copy()
    count = 0
    # Chunked so the boolean mask stays small even for MOSEI-sized arrays.
    for start in range(0, len(array), _CLEAN_CHUNK):
        chunk = array[start : start + _CLEAN_CHUNK]
        bad = ~np.isfinite(chunk)
        chunk_count = int(bad.sum())
        if chunk_count:
            chunk[bad] = 0.0
            count += chunk_count
    if count:
        replaced[f"{split}[{key!r}]"] = count
    return array


def _lengths(raw: dict[str, Any], split: str, modality: str, n: int, steps: int) -> np.ndarray:
    key = f"{modality}_lengths"
    if key in raw:
        return _as_lengths(raw[key], f"{split}[{key!r}]", n, steps)
    if modality == "text" and "text_bert" in raw:
        tokens = np.asarray(raw["text_bert"])
        where = f"{split}['text_bert']"
        if tokens.ndim != 3 or tokens.shape[1] != 3:
            raise ValueError(f"{where}: expected shape (N, 3, L) (ids, attention mask, segment ids), received {tokens.shape}")
        return _as_lengths(tokens[:, _attention_row(tokens), :].sum(axis=-1), where, n, steps)
    return np.full(n, steps, dtype=np.int64)


def _as_lengths(values: Any, where: str, n: int, steps: int) -> np.ndarray:
    lengths = np.asarray(values)
    if lengths.ndim == 2 and lengths.shape[1] == 1:
        lengths = lengths[:, 0]
    if lengths.shape != (n,):
        raise ValueError(f"{where}: expected shape ({n},), received {lengths.shape}")
    if lengths.dtype.kind == "f":
        if not (np.isfinite(lengths).all() and (lengths == np.round(lengths)).all()):
            raise ValueError(f"{where}: expected whole numbers of steps")
    elif lengths.dtype.kind not in "biu":
        raise ValueError(f"{where}: expected integers, received dtype {lengths.dtype}")
    return np.clip(lengths.astype(np.int64), 0, steps)


def _ids(raw: dict[str, Any], split: str, n: int) -> list[str]:
    if "id" not in raw:
        return [f"{split}_{i}" for i in range(n)]
    ids = [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(raw["id"]).reshape(-1)]
    if len(ids) != n:
        raise ValueError(f"{split}['id']: {len(ids)} ids, but {split}['regression_labels'] has {n}")
    return ids


def _check_widths(splits: dict[str, MultimodalSplit], modalities: tuple[str, ...]) -> None:
    for m in modalities:
        width = splits["train"].features[m].shape[-1]
        for split in SPLITS[1:]:
            other = splits[split].features[m].shape[-1]
            if other != width:
                raise ValueError(
                    f"{split}[{m!r}]: feature width {other} differs from train[{m!r}] width {width}"
                )
