"""Fuzz the MMSA loader with broken dicts (a missing split or key, labels or features of the
wrong length, rank or dtype, non-finite values, a value of another type): a data set or one
``ValueError`` naming the split and key; never a ``KeyError``, ``IndexError`` or a crash in
training code later. Runs under the ``ci`` profile (derandomised); ``--hypothesis-profile=deep``
tries ten times as many."""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit_models.data.mmsa import mmsa_dataset
from alignkit_models.data.synthetic import make_synthetic_mmsa

BASE = make_synthetic_mmsa("mosi", sizes=(6, 4, 4), seed=0)
SPLITS = ("train", "valid", "test")
KEYS = ("text", "audio", "vision", "regression_labels", "audio_lengths", "vision_lengths", "text_bert")
# "'train': ...", "train['audio']: ...", "train['text_bert']: ...", "<memory>: ..."
NAMED = re.compile(r"^('\w+'|\w+\['\w+'\]|<memory>)(\[\d+\])?: ")


def _mutate(data: dict, kind: str, split: str, key: str) -> None:
    if kind == "drop split":
        del data[split]
        return
    raw = data[split]
    if key not in raw:
        raw[key] = np.zeros(3)
        return
    value = raw[key]
    if not isinstance(value, np.ndarray) or value.size == 0:  # already broken beyond breaking further
        return
    if kind == "drop key":
        del raw[key]
    elif kind == "fewer rows":
        raw[key] = value[:-1]
    elif kind == "more rows":
        raw[key] = np.concatenate([value, value[:1]])
    elif kind == "nan":
        raw[key] = np.where(np.ones_like(value, dtype=bool), np.nan, 0.0) if np.issubdtype(value.dtype, np.number) else value
    elif kind == "inf":
        changed = value.astype(np.float64)
        changed.flat[0] = np.inf
        raw[key] = changed
    elif kind == "flattened":
        raw[key] = value.reshape(len(value), -1)[:, 0]
    elif kind == "extra dimension":
        raw[key] = value[..., None]
    elif kind == "strings":
        raw[key] = value.astype(str)
    elif kind == "complex":
        raw[key] = value.astype(np.complex128)
    elif kind == "not an array":
        raw[key] = "oops"
    elif kind == "none":
        raw[key] = None
    elif kind == "empty":
        raw[key] = value[:0]


KINDS = ["drop split", "drop key", "fewer rows", "more rows", "nan", "inf", "flattened", "extra dimension", "strings", "complex", "not an array", "none", "empty"]


@settings(max_examples=8 * settings.default.max_examples)
@given(
    mutations=st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(SPLITS), st.sampled_from(KEYS)), min_size=1, max_size=2),
    text=st.sampled_from(["features", "tokens"]),
)
def test_a_broken_mmsa_dict_loads_or_is_one_named_error(mutations: list, text: str) -> None:
    data = copy.deepcopy(BASE)
    for kind, split, key in mutations:
        if split in data:
            _mutate(data, kind, split, key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the non-finite feature warning
        try:
            dataset = mmsa_dataset(data, text=text)
        except ValueError as error:
            assert NAMED.match(str(error)), f"{mutations}: the error names no split/key: {error}"
            assert "\n" not in str(error)
            return
    for split in (dataset.train, dataset.valid, dataset.test):
        assert np.isfinite(split.labels).all()
        for array in split.features.values():
            assert np.isfinite(array).all()
            assert len(array) == len(split.labels)
