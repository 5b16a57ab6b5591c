"""Specification of the synthetic MMSA generator: format, determinism and planted structure."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alignkit_models.data.base import SplitDataset, collate
from alignkit_models.data.mmsa import DATASET_DIMS, load_mmsa
from alignkit_models.data.synthetic import make_synthetic_mmsa, write_synthetic_mmsa

MODALITIES = ("text", "audio", "vision")
TINY = (6, 3, 3)


@pytest.fixture(scope="module")
def mosi() -> dict[str, Any]:
    """A MOSI-shaped set big enough for a linear probe: 600 train / 100 valid / 100 test."""
    return make_synthetic_mmsa("mosi", sizes=(600, 100, 100), seed=0)


def pooled(split: dict[str, Any], modality: str) -> np.ndarray:
    """Mean over the real (unpadded) steps."""
    x = split[modality]
    lengths = split.get(f"{modality}_lengths", np.full(len(x), x.shape[1]))
    mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
    return (x * mask[..., None]).sum(axis=1) / lengths[:, None]


def ridge_corr(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Pearson correlation of closed-form ridge predictions (standardised inputs) with ``y_test``."""
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    a, b = (x_train - mean) / std, (x_test - mean) / std
    weights = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ (y_train - y_train.mean()))
    return float(np.corrcoef(b @ weights, y_test)[0, 1])


def probe(data: dict[str, Any], modalities: tuple[str, ...], target: str = "labels") -> float:
    """Held-out correlation of a ridge probe on time-pooled features of ``modalities``."""
    x = {s: np.concatenate([pooled(data[s], m) for m in modalities], axis=1) for s in ("train", "test")}
    if target == "labels":
        y = {s: data[s]["regression_labels"] for s in ("train", "test")}
    elif target == "sentiment":
        y = {s: data["synthetic"]["latents"][s]["sentiment"] for s in ("train", "test")}
    else:  # "unique:<modality>": that modality's first unique factor
        m = target.split(":")[1]
        y = {s: data["synthetic"]["latents"][s]["unique"][m][:, 0] for s in ("train", "test")}
    return ridge_corr(x["train"], y["train"], x["test"], y["test"])


# --- format -----------------------------------------------------------------------------------


def test_mosi_preset_is_aligned_with_the_real_widths() -> None:
    data = make_synthetic_mmsa("mosi", sizes=TINY)
    for split, n in zip(("train", "valid", "test"), TINY):
        for m in MODALITIES:
            assert data[split][m].shape == (n, 50, DATASET_DIMS["mosi"][m])
            assert data[split][m].dtype == np.float32
        assert "audio_lengths" not in data[split] and "vision_lengths" not in data[split]


def test_sims_preset_is_unaligned_with_the_real_lengths() -> None:
    data = make_synthetic_mmsa("sims", sizes=TINY)
    train = data["train"]
    assert train["text"].shape == (6, 39, 768)
    assert train["audio"].shape == (6, 400, 33)
    assert train["vision"].shape == (6, 55, 709)
    assert "text_lengths" not in train  # MMSA gives text no lengths key
    for m, steps in (("audio", 400), ("vision", 55)):
        assert train[f"{m}_lengths"].dtype == np.int64
        assert ((train[f"{m}_lengths"] >= 1) & (train[f"{m}_lengths"] <= steps)).all()


def test_unaligned_features_are_zero_after_each_length_only() -> None:
    train = make_synthetic_mmsa("sims", sizes=TINY)["train"]
    for m in ("audio", "vision"):
        for row, length in zip(train[m], train[f"{m}_lengths"]):
            assert not row[length:].any()
            assert np.abs(row[:length]).sum(axis=-1).min() > 0


def test_unaligned_mosi_uses_the_lengths_of_mmsa_unaligned_files() -> None:
    train = make_synthetic_mmsa("mosi", sizes=TINY, aligned=False)["train"]
    assert [train[m].shape[1] for m in MODALITIES] == [50, 375, 500]
    assert "audio_lengths" in train and "vision_lengths" in train


def test_aligned_sims_gives_every_modality_the_text_length() -> None:
    train = make_synthetic_mmsa("sims", sizes=TINY, aligned=True)["train"]
    assert [train[m].shape[1] for m in MODALITIES] == [39, 39, 39]
    assert "audio_lengths" not in train


def test_default_sizes_are_the_preset_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real sizes are too big for a unit test, so shrink the table the default reads.
    monkeypatch.setitem(DATASET_DIMS["mosi"], "sizes", (5, 3, 2))
    data = make_synthetic_mmsa("mosi")
    assert [len(data[s]["regression_labels"]) for s in ("train", "valid", "test")] == [5, 3, 2]


def test_labels_are_float32_in_range_and_rounded_like_annotations(mosi: dict[str, Any]) -> None:
    labels = np.concatenate([mosi[s]["regression_labels"] for s in ("train", "valid", "test")])
    assert labels.dtype == np.float32
    assert labels.min() >= -3 and labels.max() <= 3
    np.testing.assert_allclose(labels / 0.2, np.round(labels / 0.2), atol=1e-4)
    # Real MOSI has neutral (0) labels; a few percent of these should be exactly 0.
    assert 0.005 < (labels == 0).mean() < 0.1


def test_sims_labels_lie_in_minus_one_to_one() -> None:
    labels = make_synthetic_mmsa("sims", sizes=(40, 3, 3))["train"]["regression_labels"]
    assert labels.min() >= -1 and labels.max() <= 1 and labels.std() > 0.2


def test_classification_labels_follow_the_sign_of_the_regression_label(mosi: dict[str, Any]) -> None:
    train = mosi["train"]
    expected = np.where(train["regression_labels"] < 0, 0, np.where(train["regression_labels"] == 0, 1, 2))
    np.testing.assert_array_equal(train["classification_labels"], expected)


def test_ids_and_raw_text_are_strings_per_sample() -> None:
    train = make_synthetic_mmsa("mosi", sizes=TINY)["train"]
    assert len(train["id"]) == len(train["raw_text"]) == 6
    assert len(set(train["id"].tolist())) == 6
    assert all(isinstance(t, str) and t.startswith("synthetic sample") for t in train["raw_text"].tolist())


def test_unknown_preset_is_rejected() -> None:
    with pytest.raises(ValueError, match="preset"):
        make_synthetic_mmsa("iemocap")


@pytest.mark.parametrize("sizes", [(4, 0, 2), (4, 2), (4.0, 2, 2)])
def test_sizes_must_be_three_positive_integers(sizes: Any) -> None:
    with pytest.raises(ValueError, match="sizes"):
        make_synthetic_mmsa("mosi", sizes=sizes)


def test_negative_noise_is_rejected() -> None:
    with pytest.raises(ValueError, match="noise"):
        make_synthetic_mmsa("mosi", sizes=TINY, noise=-0.1)


# --- BERT token ids (text_bert=True) ---------------------------------------------------------


def test_text_bert_has_the_mmsa_fet_layout() -> None:
    data = make_synthetic_mmsa("sims", sizes=TINY, seed=1, text_bert=True, vocab_size=7)
    for split, n in zip(("train", "valid", "test"), TINY):
        tokens = data[split]["text_bert"]
        assert tokens.dtype == np.int64 and tokens.shape == (n, 3, 39)
        ids, mask, segments = tokens[:, 0], tokens[:, 1], tokens[:, 2]
        lengths = mask.sum(axis=1)
        assert (lengths >= 1).all() and (lengths <= 39).all()
        np.testing.assert_array_equal(mask, np.arange(39)[None, :] < lengths[:, None])  # 1s, then 0s
        assert ((ids >= 1) & (ids < 7))[mask == 1].all() and (ids[mask == 0] == 0).all()
        assert not segments.any()
    all_lengths = np.concatenate([data[s]["text_bert"][:, 1].sum(axis=1) for s in ("train", "valid", "test")])
    assert len(set(all_lengths.tolist())) > 1  # lengths vary per sample


def test_text_bert_is_deterministic_and_leaves_the_other_arrays_unchanged() -> None:
    plain = make_synthetic_mmsa("mosi", sizes=TINY, seed=3)
    first = make_synthetic_mmsa("mosi", sizes=TINY, seed=3, text_bert=True)
    second = make_synthetic_mmsa("mosi", sizes=TINY, seed=3, text_bert=True)
    other = make_synthetic_mmsa("mosi", sizes=TINY, seed=4, text_bert=True)
    assert "text_bert" not in plain["train"]
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(first[split]["text_bert"], second[split]["text_bert"])
        for key in (*MODALITIES, "regression_labels"):
            np.testing.assert_array_equal(first[split][key], plain[split][key])
    assert not np.array_equal(first["train"]["text_bert"], other["train"]["text_bert"])


def test_text_bert_round_trips_through_load_mmsa_as_tokens(tmp_path: Path) -> None:
    path = write_synthetic_mmsa(tmp_path / "sims.pkl", "sims", sizes=TINY, seed=2, text_bert=True)
    data = make_synthetic_mmsa("sims", sizes=TINY, seed=2, text_bert=True)
    dataset = load_mmsa(path, text="tokens")
    np.testing.assert_array_equal(dataset.test.features["text"], data["test"]["text_bert"].transpose(0, 2, 1))
    np.testing.assert_array_equal(dataset.test.lengths["text"], data["test"]["text_bert"][:, 1].sum(axis=1))
    np.testing.assert_array_equal(dataset.test.lengths["audio"], data["test"]["audio_lengths"])


@pytest.mark.parametrize("vocab_size", [1, 0, 2.5])
def test_vocab_size_must_be_an_integer_of_at_least_two(vocab_size: Any) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        make_synthetic_mmsa("mosi", sizes=TINY, text_bert=True, vocab_size=vocab_size)


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays() -> None:
    first = make_synthetic_mmsa("sims", sizes=TINY, seed=3)
    second = make_synthetic_mmsa("sims", sizes=TINY, seed=3)
    for split in ("train", "valid", "test"):
        for key in (*MODALITIES, "audio_lengths", "vision_lengths", "regression_labels"):
            np.testing.assert_array_equal(first[split][key], second[split][key])


def test_different_seeds_give_different_arrays() -> None:
    first = make_synthetic_mmsa("mosi", sizes=TINY, seed=0)
    second = make_synthetic_mmsa("mosi", sizes=TINY, seed=1)
    for m in MODALITIES:
        assert not np.array_equal(first["train"][m], second["train"][m])


# --- round trip through load_mmsa ----------------------------------------------------------


def test_write_creates_parent_folders_and_pickles_the_dict(tmp_path: Path) -> None:
    path = write_synthetic_mmsa(tmp_path / "a" / "b" / "mosi.pkl", "mosi", sizes=TINY, seed=5)
    assert path == tmp_path / "a" / "b" / "mosi.pkl"
    with path.open("rb") as handle:
        stored = pickle.load(handle)
    np.testing.assert_array_equal(stored["test"]["vision"], make_synthetic_mmsa("mosi", sizes=TINY, seed=5)["test"]["vision"])


def test_mosi_round_trip_gives_full_lengths_and_real_widths(tmp_path: Path) -> None:
    dataset = load_mmsa(write_synthetic_mmsa(tmp_path / "mosi.pkl", "mosi", sizes=TINY), name="mosi")
    assert dataset.input_dims == {"text": 768, "audio": 5, "vision": 20}
    assert dataset.sequence_lengths == {"text": 50, "audio": 50, "vision": 50}
    assert [len(dataset.split(s)) for s in ("train", "valid", "test")] == list(TINY)
    for m in MODALITIES:
        assert (dataset.test.lengths[m] == 50).all()
    assert dataset.train.ids[0] == "synthetic_mosi_train_0"


def test_sims_round_trip_keeps_lengths_and_collate_masks_them(tmp_path: Path) -> None:
    data = make_synthetic_mmsa("sims", sizes=TINY, seed=2)
    dataset = load_mmsa(write_synthetic_mmsa(tmp_path / "sims.pkl", "sims", sizes=TINY, seed=2))
    assert dataset.input_dims == {"text": 768, "audio": 33, "vision": 709}
    assert dataset.sequence_lengths == {"text": 39, "audio": 400, "vision": 55}
    np.testing.assert_array_equal(dataset.train.lengths["audio"], data["train"]["audio_lengths"])
    assert (dataset.train.lengths["text"] == 39).all()

    batch = collate([item for item in SplitDataset(dataset.train, dataset.modalities)])
    lengths = data["train"]["vision_lengths"]
    np.testing.assert_array_equal(batch["masks"]["vision"].numpy(), np.arange(55)[None, :] < lengths[:, None])
    assert not batch["features"]["vision"][~batch["masks"]["vision"]].any()


# --- planted structure ------------------------------------------------------------------------


def test_planted_signal_is_learnable_by_a_linear_probe(mosi: dict[str, Any]) -> None:
    # Real MOSI text-only linear baselines reach a correlation of ~0.5-0.6; the synthetic set
    # must be at least that learnable, or a model failing on it says nothing. The ridge probe
    # reaches ~0.9 here (the tanh squashing and label rounding cap it below 1), so 0.5 leaves a
    # wide margin against generator changes while still catching a lost signal.
    assert probe(mosi, MODALITIES) > 0.5


def test_shuffled_labels_are_not_learnable(mosi: dict[str, Any]) -> None:
    # Control: the same probe trained on permuted labels. With 100 test samples a chance
    # correlation has a standard deviation of ~0.1, so |corr| < 0.3 is three of them.
    shuffled = dict(mosi)
    shuffled["train"] = dict(mosi["train"])
    shuffled["train"]["regression_labels"] = np.random.default_rng(1).permutation(mosi["train"]["regression_labels"])
    control = probe(shuffled, MODALITIES)
    assert abs(control) < 0.3
    assert probe(mosi, MODALITIES) - control > 0.4


def test_every_modality_carries_the_shared_sentiment(mosi: dict[str, Any]) -> None:
    # Each modality alone recovers the latent score (audio, with only 5 features mixing 8
    # latents, least well: ~0.7); the shared factor is what alignment methods should find.
    for m in MODALITIES:
        assert probe(mosi, (m,), target="sentiment") > 0.5, m


def test_unique_factors_stay_in_their_own_modality(mosi: dict[str, Any]) -> None:
    # The text-unique factor is recoverable from text (~0.95) and invisible to the others (~0).
    assert probe(mosi, ("text",), target="unique:text") > 0.8
    assert abs(probe(mosi, ("audio",), target="unique:text")) < 0.3
    assert abs(probe(mosi, ("vision",), target="unique:text")) < 0.3


def test_modalities_are_complementary(mosi: dict[str, Any]) -> None:
    # The label also depends on an audio-unique factor, so text alone cannot reach the fused probe.
    assert probe(mosi, MODALITIES) > probe(mosi, ("text",)) + 0.03


def test_pooling_over_time_beats_a_single_step(mosi: dict[str, Any]) -> None:
    # The signal recurs at every step under random gain while the noise is independent per
    # step, so the time average of audio is a better probe input than any one step.
    single = {s: dict(mosi[s], audio=mosi[s]["audio"][:, :1]) for s in ("train", "test")}
    assert probe(mosi, ("audio",)) > probe(single, ("audio",)) + 0.1


def test_more_noise_makes_the_task_harder() -> None:
    sizes = (300, 10, 100)
    clean = make_synthetic_mmsa("mosi", sizes=sizes, seed=4, noise=0.5)
    noisy = make_synthetic_mmsa("mosi", sizes=sizes, seed=4, noise=4.0)
    assert probe(clean, ("audio",)) > probe(noisy, ("audio",)) + 0.1
