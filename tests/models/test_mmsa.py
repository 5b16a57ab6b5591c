"""Specification of :func:`load_mmsa`, the reader of MMSA feature pickles (MOSI, MOSEI, SIMS)."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from alignkit_models.data.base import SplitDataset, collate
from alignkit_models.data.mmsa import DATASET_DIMS, load_mmsa

WIDTHS = {"text": 768, "audio": 5, "vision": 20}


def make_split(n: int = 4, steps: int = 6, seed: int = 0, **extra: Any) -> dict[str, Any]:
    """A tiny word-aligned MMSA split; ``extra`` adds or replaces keys (None deletes one)."""
    rng = np.random.default_rng(seed)
    split: dict[str, Any] = {
        m: rng.standard_normal((n, steps, d)).astype(np.float32) for m, d in WIDTHS.items()
    }
    split["regression_labels"] = rng.uniform(-3, 3, n).astype(np.float32)
    split.update(extra)
    return {k: v for k, v in split.items() if v is not None}


def make_file(**splits: dict[str, Any]) -> dict[str, Any]:
    data = {"train": make_split(seed=0), "valid": make_split(seed=1), "test": make_split(seed=2)}
    data.update(splits)
    return data


def write(tmp_path: Path, data: Any, name: str = "data.pkl") -> Path:
    path = tmp_path / name
    with path.open("wb") as handle:
        pickle.dump(data, handle)
    return path


def load_quietly(path: Path, **kwargs: Any):
    # Turns any warning into a failure: the files here are clean, so none is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_mmsa(path, **kwargs)


def test_dataset_dims_record_the_real_mmsa_releases() -> None:
    assert {k: DATASET_DIMS["mosi"][k] for k in WIDTHS} == {"text": 768, "audio": 5, "vision": 20}
    assert DATASET_DIMS["mosi"]["sizes"] == (1284, 229, 686)
    assert {k: DATASET_DIMS["mosei"][k] for k in WIDTHS} == {"text": 768, "audio": 74, "vision": 35}
    assert DATASET_DIMS["mosei"]["sizes"] == (16326, 1871, 4659)
    assert {k: DATASET_DIMS["sims"][k] for k in WIDTHS} == {"text": 768, "audio": 33, "vision": 709}
    assert DATASET_DIMS["sims"]["lengths"] == {"text": 39, "audio": 400, "vision": 55}
    assert DATASET_DIMS["sims"]["sizes"] == (1368, 456, 457)
    assert DATASET_DIMS["sims"]["label_range"] == (-1, 1) and DATASET_DIMS["mosi"]["label_range"] == (-3, 3)
    assert [DATASET_DIMS[k]["aligned"] for k in ("mosi", "mosei", "sims")] == [True, True, False]


def test_loads_a_regression_dataset_with_float32_features(tmp_path: Path) -> None:
    data = make_file()
    dataset = load_quietly(write(tmp_path, data), name="mosi")

    assert dataset.name == "mosi"
    assert dataset.task == "regression"
    assert dataset.modalities == ("text", "audio", "vision")
    assert dataset.input_dims == WIDTHS
    for split in ("train", "valid", "test"):
        loaded = dataset.split(split)
        for m in WIDTHS:
            assert loaded.features[m].dtype == np.float32
            np.testing.assert_array_equal(loaded.features[m], data[split][m])
        assert loaded.labels.dtype == np.float32
        np.testing.assert_array_equal(loaded.labels, data[split]["regression_labels"])


def test_float64_features_are_converted_to_float32(tmp_path: Path) -> None:
    train = make_split()
    train["audio"] = train["audio"].astype(np.float64)
    dataset = load_quietly(write(tmp_path, make_file(train=train)))
    assert dataset.train.features["audio"].dtype == np.float32


def test_labels_of_shape_n_by_1_are_flattened(tmp_path: Path) -> None:
    labels = np.array([[0.4], [-1.2], [0.0], [2.8]])
    dataset = load_quietly(write(tmp_path, make_file(train=make_split(regression_labels=labels))))
    assert dataset.train.labels.shape == (4,)
    np.testing.assert_allclose(dataset.train.labels, [0.4, -1.2, 0.0, 2.8], rtol=1e-6)


def test_aligned_file_without_lengths_keys_has_full_lengths(tmp_path: Path) -> None:
    dataset = load_quietly(write(tmp_path, make_file()))
    for m in WIDTHS:
        assert dataset.train.lengths[m].dtype == np.int64
        np.testing.assert_array_equal(dataset.train.lengths[m], [6, 6, 6, 6])


def test_lengths_keys_are_used_and_clipped_to_the_padded_length(tmp_path: Path) -> None:
    train = make_split(audio_lengths=np.array([-1, 3, 6, 99]), vision_lengths=np.array([1.0, 2.0, 3.0, 4.0]))
    dataset = load_quietly(write(tmp_path, make_file(train=train)))
    np.testing.assert_array_equal(dataset.train.lengths["audio"], [0, 3, 6, 6])
    np.testing.assert_array_equal(dataset.train.lengths["vision"], [1, 2, 3, 4])
    assert dataset.train.lengths["vision"].dtype == np.int64


def test_collate_masks_mark_the_steps_before_each_length(tmp_path: Path) -> None:
    train = make_split(audio_lengths=np.array([1, 3, 6, 2]))
    dataset = load_quietly(write(tmp_path, make_file(train=train)))
    batch = collate([item for item in SplitDataset(dataset.train, dataset.modalities)])

    expected = np.arange(6)[None, :] < np.array([1, 3, 6, 2])[:, None]
    np.testing.assert_array_equal(batch["masks"]["audio"].numpy(), expected)
    assert batch["masks"]["text"].all()
    assert tuple(batch["features"]["vision"].shape) == (4, 6, 20)


def test_non_finite_features_become_zero_with_exactly_one_warning(tmp_path: Path) -> None:
    train, valid = make_split(seed=0), make_split(seed=1)
    train["audio"][0, 0, :3] = -np.inf  # COVAREP audio in MOSI holds -inf like this
    train["audio"][1, 2, 0] = np.inf
    valid["vision"][2, 5, 7] = np.nan
    path = write(tmp_path, make_file(train=train, valid=valid))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_mmsa(path)

    assert len(caught) == 1
    assert issubclass(caught[0].category, UserWarning)
    message = str(caught[0].message)
    assert "replaced 5" in message
    assert "train['audio'] 4" in message and "valid['vision'] 1" in message
    assert dataset.train.features["audio"][0, 0, :3].tolist() == [0.0, 0.0, 0.0]
    assert dataset.train.features["audio"][1, 2, 0] == 0.0
    assert dataset.valid.features["vision"][2, 5, 7] == 0.0
    for split in ("train", "valid", "test"):
        for m in WIDTHS:
            assert np.isfinite(dataset.split(split).features[m]).all()


def test_text_bert_only_file_is_rejected_with_an_explanation(tmp_path: Path) -> None:
    tokens = np.ones((4, 3, 6), dtype=np.int64)
    path = write(tmp_path, make_file(train=make_split(text=None, text_bert=tokens)))
    with pytest.raises(ValueError, match="text_bert") as error:
        load_mmsa(path)
    assert "768" in str(error.value) and "aligned_50.pkl" in str(error.value)


def test_integer_text_next_to_text_bert_is_rejected(tmp_path: Path) -> None:
    tokens = np.ones((4, 3, 6), dtype=np.int64)
    path = write(tmp_path, make_file(train=make_split(text=np.ones((4, 6, 768), dtype=np.int64), text_bert=tokens)))
    with pytest.raises(ValueError, match="text_bert"):
        load_mmsa(path)


def test_float_text_next_to_text_bert_takes_its_lengths_from_the_attention_mask(tmp_path: Path) -> None:
    lengths = np.array([6, 2, 4, 1])
    tokens = np.zeros((4, 3, 6), dtype=np.int64)
    tokens[:, 0] = 101  # token ids: irrelevant to alignkit
    tokens[:, 1] = np.arange(6)[None, :] < lengths[:, None]
    train = make_split(text_bert=tokens)
    dataset = load_quietly(write(tmp_path, make_file(train=train)))

    np.testing.assert_array_equal(dataset.train.lengths["text"], lengths)
    np.testing.assert_array_equal(dataset.train.features["text"], train["text"])


def test_text_bert_is_irrelevant_when_text_is_not_requested(tmp_path: Path) -> None:
    tokens = np.ones((4, 3, 6), dtype=np.int64)
    path = write(tmp_path, make_file(train=make_split(text=None, text_bert=tokens)))
    dataset = load_quietly(path, modalities=("audio", "vision"))
    assert dataset.modalities == ("audio", "vision")
    assert set(dataset.train.features) == {"audio", "vision"}


def test_ids_come_from_the_id_key_or_default_to_split_and_index(tmp_path: Path) -> None:
    train = make_split(id=np.array(["a$_$1", "a$_$2", "b$_$1", "c$_$9"], dtype=object))
    dataset = load_quietly(write(tmp_path, make_file(train=train)))
    assert dataset.train.ids == ["a$_$1", "a$_$2", "b$_$1", "c$_$9"]
    assert dataset.valid.ids == ["valid_0", "valid_1", "valid_2", "valid_3"]


def test_missing_file_raises_file_not_found_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "mosi.pkl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_mmsa(path)


def test_a_pickle_that_is_not_a_dict_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a pickled dict"):
        load_mmsa(write(tmp_path, [1, 2, 3]))


def test_missing_split_is_named(tmp_path: Path) -> None:
    data = make_file()
    del data["valid"]
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match=re.escape(f"'valid': missing split in {path}")):
        load_mmsa(path)


def test_missing_modality_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, make_file(test=make_split(audio=None)))
    with pytest.raises(ValueError, match=re.escape("test['audio']: missing key")):
        load_mmsa(path)


def test_missing_regression_labels_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, make_file(train=make_split(regression_labels=None)))
    with pytest.raises(ValueError, match=re.escape("train['regression_labels']: missing key")):
        load_mmsa(path)


def test_feature_array_of_wrong_rank_is_named_with_its_shape(tmp_path: Path) -> None:
    path = write(tmp_path, make_file(train=make_split(audio=np.zeros((4, 5), dtype=np.float32))))
    with pytest.raises(ValueError, match=re.escape("train['audio']: expected a 3-D array (N, T, d), received shape (4, 5)")):
        load_mmsa(path)


def test_sample_count_mismatch_within_a_split_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, make_file(valid=make_split(vision=np.zeros((3, 6, 20), dtype=np.float32))))
    with pytest.raises(ValueError, match=re.escape("valid['vision']: 3 samples")):
        load_mmsa(path)


def test_lengths_of_the_wrong_size_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, make_file(train=make_split(audio_lengths=np.array([1, 2, 3]))))
    with pytest.raises(ValueError, match=re.escape("train['audio_lengths']")):
        load_mmsa(path)


def test_feature_width_must_match_across_splits(tmp_path: Path) -> None:
    path = write(tmp_path, make_file(test=make_split(audio=np.zeros((4, 6, 7), dtype=np.float32))))
    with pytest.raises(ValueError, match=re.escape("test['audio']: feature width 7 differs from train['audio'] width 5")):
        load_mmsa(path)


def test_unknown_modality_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modalities"):
        load_mmsa(write(tmp_path, make_file()), modalities=("text", "speech"))


# --- text="tokens": BERT token ids from text_bert ---------------------------------------------


def token_rows(lengths: list[int], steps: int = 6, seed: int = 0, pairs: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, attention mask and segment ids ``(N, L)``; ``pairs`` marks a second sentence."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(steps)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids = rng.integers(1, 100, (len(lengths), steps)) * mask
    segments = np.zeros_like(mask)
    if pairs:  # segment 1 on the real tokens of a second sentence, as BERT sentence pairs have
        segments = ((np.arange(steps)[None, :] >= np.array(lengths)[:, None] // 2) & (mask == 1)).astype(np.int64)
    return ids, mask, segments


def good_tokens(seed: int = 0) -> np.ndarray:
    """MMSA-FET ``text_bert`` ``(4, 3, 6)`` with text lengths 6, 2, 4, 1."""
    return np.stack(token_rows([6, 2, 4, 1], seed=seed), axis=1)


def token_file(**train: Any) -> dict[str, Any]:
    """A file whose splits all hold ``text_bert``; ``train`` adds or replaces train keys."""
    splits = {s: make_split(seed=i, text_bert=good_tokens(i)) for i, s in enumerate(("train", "valid", "test"))}
    splits["train"] = make_split(seed=0, **{"text_bert": good_tokens(0), **train})
    return make_file(**splits)


@pytest.mark.parametrize("pairs", [False, True])
def test_both_text_bert_row_orders_give_the_same_tokens(tmp_path: Path, pairs: bool) -> None:
    ids, mask, segments = token_rows([6, 2, 4, 1], pairs=pairs)
    fet = np.stack([ids, mask, segments], axis=1)  # MMSA-FET: ids, attention mask, segment ids
    old = np.stack([ids, segments, mask], axis=1)  # older files: ids, segment ids, attention mask
    loaded = [
        load_quietly(write(tmp_path, token_file(text=None, text_bert=tokens), f"{i}.pkl"), text="tokens")
        for i, tokens in enumerate((fet, old))
    ]

    expected = np.stack([ids, mask, segments], axis=-1)
    for dataset in loaded:
        tokens = dataset.train.features["text"]
        assert tokens.dtype == np.int64 and tokens.shape == (4, 6, 3)
        np.testing.assert_array_equal(tokens, expected)
        np.testing.assert_array_equal(dataset.train.lengths["text"], [6, 2, 4, 1])
    assert loaded[0].input_dims == {"text": 3, "audio": 5, "vision": 20}
    assert loaded[0].token_modalities == ("text",)


def test_token_lengths_come_from_the_attention_mask_not_from_text_lengths(tmp_path: Path) -> None:
    ids, mask, segments = token_rows([3, 5, 1, 6])
    path = write(tmp_path, token_file(text_bert=np.stack([ids, mask, segments], axis=1), text_lengths=np.array([6, 6, 6, 6])))
    dataset = load_quietly(path, text="tokens")
    np.testing.assert_array_equal(dataset.train.lengths["text"], [3, 5, 1, 6])
    assert dataset.train.lengths["text"].dtype == np.int64


def test_tokens_ignore_the_float_text_and_keep_the_other_modalities(tmp_path: Path) -> None:
    data = token_file(text_bert=good_tokens().astype(np.int32))
    audio = data["train"]["audio"].copy()
    dataset = load_quietly(write(tmp_path, data), text="tokens")
    assert dataset.train.features["text"].dtype == np.int64  # int32 ids are widened
    np.testing.assert_array_equal(dataset.train.features["text"], good_tokens().transpose(0, 2, 1))
    np.testing.assert_array_equal(dataset.train.features["audio"], audio)
    assert dataset.train.features["audio"].dtype == np.float32
    assert dataset.token_modalities == ("text",)


def test_a_text_bert_only_file_loads_with_tokens(tmp_path: Path) -> None:
    data = token_file(text=None)
    for split in ("valid", "test"):
        del data[split]["text"]
    dataset = load_quietly(write(tmp_path, data), text="tokens")
    assert dataset.sequence_lengths["text"] == 6


def test_collate_keeps_token_ids_int64_and_masks_from_the_attention_mask(tmp_path: Path) -> None:
    dataset = load_quietly(write(tmp_path, token_file()), text="tokens")
    batch = collate([item for item in SplitDataset(dataset.train, dataset.modalities)])

    ids, mask, segments = token_rows([6, 2, 4, 1])
    tokens = batch["features"]["text"]
    assert tokens.dtype == torch.int64 and tuple(tokens.shape) == (4, 6, 3)
    np.testing.assert_array_equal(tokens.numpy(), np.stack([ids, mask, segments], axis=-1))
    np.testing.assert_array_equal(batch["masks"]["text"].numpy(), mask.astype(bool))
    assert batch["features"]["audio"].dtype == torch.float32


def test_old_layout_next_to_float_text_gives_lengths_from_the_real_mask(tmp_path: Path) -> None:
    # text="features": rows (ids, segment ids, mask) must not turn the all-zero segment ids
    # into text lengths of 0.
    ids, mask, segments = token_rows([6, 2, 4, 1])
    dataset = load_quietly(write(tmp_path, make_file(train=make_split(text_bert=np.stack([ids, segments, mask], axis=1)))))
    np.testing.assert_array_equal(dataset.train.lengths["text"], [6, 2, 4, 1])
    assert dataset.train.features["text"].dtype == np.float32


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"text_bert": None}, "train['text_bert']: missing key (needed for text='tokens')"),
        ({"text_bert": good_tokens().transpose(0, 2, 1)}, "train['text_bert']: expected shape (N, 3, L) (token ids, attention mask, segment ids), received (4, 6, 3)"),
        ({"text_bert": good_tokens()[:, :, 0]}, "train['text_bert']: expected shape (N, 3, L)"),
        ({"text_bert": good_tokens().astype(np.float32)}, "train['text_bert']: expected integer token ids for text='tokens', received dtype float32"),
        ({"text_bert": good_tokens()[:3]}, "train['text_bert']: 3 samples, but train['regression_labels'] has 4"),
        ({"text_bert": good_tokens() * np.array([1, 2, 1])[None, :, None]}, "train['text_bert']: expected an attention mask of 0s and 1s in row 1"),
        ({"text_bert": good_tokens() * np.array([-1, 1, 1])[None, :, None]}, "train['text_bert']: expected token ids >= 0"),
    ],
    ids=["missing", "transposed", "rank-2", "float", "count", "mask-values", "negative-ids"],
)
def test_bad_text_bert_with_tokens_is_one_error_naming_split_and_key(tmp_path: Path, train: dict[str, Any], message: str) -> None:
    path = write(tmp_path, token_file(**train))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_mmsa(path, text="tokens")


def test_unknown_text_input_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("text: expected one of ('features', 'tokens'), received 'ids'")):
        load_mmsa(write(tmp_path, make_file()), text="ids")  # type: ignore[arg-type]


def test_tokens_need_no_text_bert_when_text_is_not_requested(tmp_path: Path) -> None:
    dataset = load_quietly(write(tmp_path, make_file()), modalities=("audio", "vision"), text="tokens")
    assert set(dataset.train.features) == {"audio", "vision"}
