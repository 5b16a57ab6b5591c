"""Specification of the token-id text path and the official DecAlign preprocessing.

:class:`BertTextEncoder` (BERT over ``(B, L, 3)`` token ids) on a tiny randomly initialised
BERT saved to disk, ``load_dataset(..., text="tokens")``, and :func:`standardize_features`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit_models.data import preprocess
from alignkit_models.data.base import MultimodalDataset, MultimodalSplit, SplitDataset, collate
from alignkit_models.data.catalog import DATASETS, load_dataset
from alignkit_models.data.mmsa import DATASET_DIMS
from alignkit_models.data.preprocess import standardize_features
from alignkit_models.data.synthetic import write_synthetic_mmsa
from alignkit_models.layers import BertTextEncoder

# Only the tests that run BERT need transformers (in the "dev" and "text" extras).
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers (alignkit[text])")

TINY = (5, 3, 2)


def tiny_config():  # type: ignore[no-untyped-def]
    import transformers

    return transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A randomly initialised BERT, saved like a downloaded checkpoint, and the model itself."""
    import transformers

    torch.manual_seed(0)
    model = transformers.BertModel(tiny_config()).eval()
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    return path, model


def random_tokens(batch: int = 3, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """int64 ``(B, L, 3)`` with padding and a second segment, so mask and segments matter."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([steps, 4, 7])[:batch]
    mask = (torch.arange(steps)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, 100, (batch, steps), generator=generator) * mask
    segments = ((torch.arange(steps)[None, :] >= lengths[:, None] // 2).long()) * mask
    return torch.stack([ids, mask, segments], dim=-1)


# --- BertTextEncoder --------------------------------------------------------------------------


@needs_transformers
def test_encoder_returns_the_last_hidden_state_of_the_saved_bert(tiny_bert: tuple[Path, torch.nn.Module]) -> None:
    path, model = tiny_bert
    encoder = BertTextEncoder(path).eval()
    tokens = random_tokens()

    output = encoder(tokens)
    with torch.no_grad():
        expected = model(input_ids=tokens[..., 0], attention_mask=tokens[..., 1], token_type_ids=tokens[..., 2]).last_hidden_state

    assert encoder.hidden_size == 32
    assert output.dtype == torch.float32 and tuple(output.shape) == (3, 10, 32)
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=0)


@needs_transformers
def test_encoder_passes_mask_and_segments_not_just_ids(tiny_bert: tuple[Path, torch.nn.Module]) -> None:
    path, _ = tiny_bert
    encoder = BertTextEncoder(path).eval()
    tokens = random_tokens()
    output = encoder(tokens)
    # Sample 1 has 4 real tokens, the last two in segment 1: attending to its padding, or
    # putting all of it in segment 0, must change the output on its real tokens.
    for column, value in ((1, 1), (2, 0)):
        changed = tokens.clone()
        changed[..., column] = value
        assert not torch.allclose(encoder(changed)[1, :4], output[1, :4], atol=1e-4), column


@needs_transformers
def test_finetuned_encoder_trains_every_bert_parameter(tiny_bert: tuple[Path, torch.nn.Module]) -> None:
    encoder = BertTextEncoder(tiny_bert[0])
    encoder(random_tokens()).square().mean().backward()
    missing = [name for name, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing  # also: no unused pooler left for DistributedDataParallel to trip on


@needs_transformers
def test_frozen_encoder_leaves_no_gradients_on_bert(tiny_bert: tuple[Path, torch.nn.Module]) -> None:
    encoder = BertTextEncoder(tiny_bert[0], finetune=False)
    head = torch.nn.Linear(32, 1)
    output = encoder(random_tokens())
    assert not output.requires_grad  # ran under no_grad: no graph through BERT is kept
    head(output).mean().backward()

    assert all(not p.requires_grad for p in encoder.parameters())
    assert all(p.grad is None for p in encoder.parameters())
    assert head.weight.grad is not None


@needs_transformers
@pytest.mark.parametrize(
    "tokens",
    [random_tokens().float(), random_tokens()[..., 0], random_tokens()[..., :2], random_tokens().bool(), random_tokens().numpy()],
    ids=["float", "rank-2", "two-columns", "bool", "numpy"],
)
def test_bad_tokens_are_rejected_naming_tokens(tiny_bert: tuple[Path, torch.nn.Module], tokens: object) -> None:
    encoder = BertTextEncoder(tiny_bert[0])
    with pytest.raises(ValueError, match=r"^tokens: expected"):
        encoder(tokens)  # type: ignore[arg-type]


def assert_one_line(error: BaseException) -> None:
    """No chained transformers traceback (nothing chained, or raised ``from None``), one line."""
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert "\n" not in str(error)


@needs_transformers
def test_missing_transformers_is_one_import_error(monkeypatch: pytest.MonkeyPatch, tiny_bert: tuple[Path, torch.nn.Module]) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes "import transformers" fail
    with pytest.raises(ImportError) as caught:
        BertTextEncoder(tiny_bert[0])
    assert str(caught.value) == "text_encoder: needs Hugging Face transformers; install alignkit[text]"
    assert_one_line(caught.value)


def test_missing_folder_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bert-base-uncased"
    with pytest.raises(ValueError) as caught:
        BertTextEncoder(path)
    assert str(caught.value) == f"text_encoder: no such directory: {path}"


def write_weights_only(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tiny_config().save_pretrained(folder)
    save_file(tensors, str(folder / "model.safetensors"))


@needs_transformers
@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda folder: None, "no config.json"),
        (lambda folder: (folder / "config.json").write_text("{not json"), "config.json is unreadable"),
        (lambda folder: (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32})), "config.json has model_type 'gpt2', expected 'bert'"),
        (lambda folder: tiny_config().save_pretrained(folder), "cannot load the weights: "),
        (lambda folder: (tiny_config().save_pretrained(folder), (folder / "model.safetensors").write_bytes(b"garbage" * 10)), "cannot load the weights: "),
        (lambda folder: write_weights_only(folder, {"unrelated.weight": torch.zeros(2)}), "the weights lack"),
    ],
    ids=["no-config", "bad-json", "gpt2", "no-weights", "corrupt-weights", "foreign-weights"],
)
def test_a_folder_that_is_not_bert_is_one_value_error(tmp_path: Path, setup, reason: str) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "model"
    folder.mkdir()
    setup(folder)
    with pytest.raises(ValueError) as caught:
        BertTextEncoder(folder)
    message = str(caught.value)
    assert message.startswith(f"text_encoder: {folder} is not a BERT model folder ("), message
    assert reason in message and message.endswith(")")
    assert_one_line(caught.value)


def test_a_file_is_not_a_bert_folder(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(f"text_encoder: {path} is not a BERT model folder (a file, not a folder)")):
        BertTextEncoder(path)


def test_importing_the_layers_does_not_import_transformers() -> None:
    code = "import sys, alignkit_models.layers, alignkit_models.data; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- token ids through the catalog, collate and the encoder ---------------------------------


def test_synthetic_catalog_entries_give_token_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DATASET_DIMS["sims"], "sizes", TINY)  # the generator's default sizes
    dataset = load_dataset("synthetic-sims", text="tokens")
    tokens = dataset.train.features["text"]
    assert tokens.dtype == np.int64 and tokens.shape == (5, 39, 3)
    np.testing.assert_array_equal(dataset.train.lengths["text"], tokens[:, :, 1].sum(axis=1))
    assert dataset.token_modalities == ("text",)
    assert load_dataset("synthetic-sims").train.features["text"].dtype == np.float32  # default unchanged


def test_mmsa_catalog_entries_pass_text_through(tmp_path: Path) -> None:
    path = write_synthetic_mmsa(tmp_path / "mosi.pkl", "mosi", sizes=TINY, text_bert=True)
    assert load_dataset("mosi", path, text="tokens").train.features["text"].shape == (5, 50, 3)
    assert load_dataset("mosi", path).train.features["text"].shape == (5, 50, 768)
    assert {name for name, info in DATASETS.items() if not info.tokens} == {"uci-mfeat"}


def test_tokens_are_refused_for_a_data_set_without_them() -> None:
    with pytest.raises(ValueError, match=re.escape("text: the 'uci-mfeat' data set has no token ids")):
        load_dataset("uci-mfeat", text="tokens")
    with pytest.raises(ValueError, match=re.escape("text: expected one of ('features', 'tokens'), received 'ids'")):
        load_dataset("synthetic-mosi", text="ids")  # type: ignore[arg-type]


@needs_transformers
def test_a_token_batch_runs_through_the_encoder(tmp_path: Path, tiny_bert: tuple[Path, torch.nn.Module]) -> None:
    path = write_synthetic_mmsa(tmp_path / "mosi.pkl", "mosi", sizes=TINY, text_bert=True)  # vocab 100, L 50
    dataset = load_dataset("mosi", path, text="tokens")
    batch = collate([item for item in SplitDataset(dataset.train, dataset.modalities)])
    hidden = BertTextEncoder(tiny_bert[0]).eval()(batch["features"]["text"])
    assert tuple(hidden.shape) == (5, 50, 32)
    torch.testing.assert_close(batch["masks"]["text"].long(), batch["features"]["text"][..., 1])


# --- standardize_features ---------------------------------------------------------------------


def make_dataset(seed: int = 0, steps: int = 8, width: int = 6) -> MultimodalDataset:
    """Audio with zero padding after each length, vision unpadded; valid/test drawn shifted."""
    rng = np.random.default_rng(seed)

    def split(n: int, shift: float) -> MultimodalSplit:
        lengths = rng.integers(1, steps + 1, n)
        audio = (rng.standard_normal((n, steps, width)) * 2 + 5 + shift).astype(np.float32)
        audio *= (np.arange(steps)[None, :] < lengths[:, None])[..., None]  # MMSA pads with zeros
        audio[0, 0, 0] = 1e4  # an outlier the percentiles should clip
        vision = (rng.standard_normal((n, steps, 3)) + shift).astype(np.float32)
        return MultimodalSplit(
            features={"audio": audio, "vision": vision},
            lengths={"audio": lengths, "vision": np.full(n, steps)},
            labels=rng.standard_normal(n).astype(np.float32),
        )

    return MultimodalDataset("toy", ("audio", "vision"), "regression", split(60, 0.0), split(20, 3.0), split(20, -3.0))


def official(train: np.ndarray, splits: dict[str, np.ndarray], percentiles: tuple[float, float]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The official DecAlign ``__standardize_features`` on whole arrays, padding included."""
    low, high = np.percentile(train, percentiles, axis=(0, 1), keepdims=True)
    clipped = np.clip(train, low, high)
    stats = {
        "low": low.astype(np.float32),
        "high": high.astype(np.float32),
        "mean": clipped.mean(axis=(0, 1), keepdims=True).astype(np.float32),
        "std": np.maximum(clipped.std(axis=(0, 1), keepdims=True), 1e-6).astype(np.float32),
    }
    out = {}
    for name, x in splits.items():
        y = (np.clip(x, stats["low"], stats["high"]) - stats["mean"]) / stats["std"]
        out[name] = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    return stats, out


def test_standardization_matches_the_official_computation() -> None:
    dataset = make_dataset()
    before = {s: dataset.split(s).features["audio"].copy() for s in ("train", "valid", "test")}
    stats = standardize_features(dataset, ["audio"], (5.0, 95.0))
    expected_stats, expected = official(before["train"], before, (5.0, 95.0))

    assert set(stats) == {"audio"} and set(stats["audio"]) == {"low", "high", "mean", "std"}
    for key, value in expected_stats.items():
        assert stats["audio"][key].dtype == np.float32 and stats["audio"][key].shape == (1, 1, 6)
        np.testing.assert_allclose(stats["audio"][key], value, rtol=1e-6, err_msg=key)
    for split in ("train", "valid", "test"):
        result = dataset.split(split).features["audio"]
        assert result.dtype == np.float32
        np.testing.assert_allclose(result, expected[split], rtol=1e-5, atol=1e-5, err_msg=split)
    assert dataset.train.features["audio"].max() < 10  # the 1e4 outlier was clipped


def test_valid_and_test_use_the_train_statistics() -> None:
    dataset = make_dataset()
    stats = standardize_features(dataset, ["vision"])["vision"]
    # valid was drawn 3 higher and test 3 lower than train: with train statistics they stay
    # shifted (and clipped to train's range), with their own statistics both would be centred.
    vision = {s: dataset.split(s).features["vision"] for s in ("train", "valid", "test")}
    assert vision["train"].mean() == pytest.approx(0.0, abs=1e-4)
    assert vision["valid"].mean() > 1.5 and vision["test"].mean() < -1.5
    top, bottom = (stats["high"] - stats["mean"]) / stats["std"], (stats["low"] - stats["mean"]) / stats["std"]
    assert (vision["valid"] <= top + 1e-6).all() and (vision["valid"] == top).any()
    assert (vision["test"] >= bottom - 1e-6).all() and (vision["test"] == bottom).any()


def test_padding_steps_count_in_the_percentiles_and_moments() -> None:
    dataset = make_dataset()
    train = dataset.train.features["audio"].copy()
    stats = standardize_features(dataset, ["audio"], (5.0, 95.0))
    real = train[np.arange(8)[None, :] < dataset.train.lengths["audio"][:, None]]  # (steps, d): no padding
    # About a third of the steps are zero padding, so the 5th percentile is 0 with padding and
    # far above 0 (values ~ N(5, 2)) without; the mean is pulled down likewise.
    np.testing.assert_allclose(stats["audio"]["low"].ravel(), np.percentile(train, 5.0, axis=(0, 1)), rtol=1e-6)
    assert (stats["audio"]["low"] == 0).all() and (np.percentile(real, 5.0, axis=0) > 0.5).all()
    assert (stats["audio"]["mean"].ravel() < real.mean(axis=0) - 0.5).all()


def test_non_finite_values_become_zero_and_constant_features_do_not_divide_by_zero() -> None:
    dataset = make_dataset()
    dataset.train.features["audio"][:, :, 1] = 7.0  # constant: std 0, floored at 1e-6
    dataset.valid.features["audio"][2, 3, 4] = np.nan
    stats = standardize_features(dataset, ["audio"])
    assert stats["audio"]["std"][0, 0, 1] == pytest.approx(1e-6)
    assert dataset.valid.features["audio"][2, 3, 4] == 0.0
    for split in ("train", "valid", "test"):
        assert np.isfinite(dataset.split(split).features["audio"]).all()
        assert (dataset.split(split).features["audio"][:, :, 1] == 0).all()


def test_only_the_listed_modalities_change_and_float32_arrays_are_changed_in_place() -> None:
    dataset = make_dataset()
    audio, vision = dataset.train.features["audio"], dataset.train.features["vision"].copy()
    lengths = dataset.train.lengths["audio"].copy()
    standardize_features(dataset, ["audio"])
    assert dataset.train.features["audio"] is audio  # no copy of a float32 modality is kept
    np.testing.assert_array_equal(dataset.train.features["vision"], vision)
    np.testing.assert_array_equal(dataset.train.lengths["audio"], lengths)


def test_float64_features_are_stored_as_float32() -> None:
    dataset = make_dataset()
    dataset.valid.features["vision"] = dataset.valid.features["vision"].astype(np.float64)
    standardize_features(dataset, ("vision",))
    assert dataset.valid.features["vision"].dtype == np.float32


def test_no_full_size_temporary_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    # The blocks are shrunk so that a full-size temporary (numpy.percentile over axis=(0, 1)
    # copies the array twice; numpy.std once) would stand out against them.
    monkeypatch.setattr(preprocess, "_BLOCK_ELEMENTS", 1 << 14)
    rng = np.random.default_rng(0)
    n, steps, width = 400, 50, 40
    split = lambda: MultimodalSplit({"audio": rng.standard_normal((n, steps, width), dtype=np.float32)}, {"audio": np.full(n, steps)}, np.zeros(n, np.float32))  # noqa: E731
    dataset = MultimodalDataset("big", ("audio",), "regression", split(), split(), split())
    size = dataset.train.features["audio"].nbytes  # 3.2 MB
    tracemalloc.start()
    try:
        standardize_features(dataset, ["audio"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * size


@pytest.mark.parametrize(
    ("modalities", "message"),
    [
        (["speech"], "modalities: expected names among ('audio', 'vision'), received ['speech']"),
        ("audio", "modalities: expected a sequence of names, received the string 'audio'"),
        ([], "modalities: expected at least one of ('audio', 'vision'), received none"),
        (["audio", "audio"], "modalities: expected distinct names, received ('audio', 'audio')"),
    ],
)
def test_bad_modalities_are_named(modalities: object, message: str) -> None:
    dataset = make_dataset()
    before = dataset.train.features["audio"].copy()
    with pytest.raises(ValueError, match=re.escape(message)):
        standardize_features(dataset, modalities)  # type: ignore[arg-type]
    np.testing.assert_array_equal(dataset.train.features["audio"], before)  # nothing half-done


def test_token_modalities_cannot_be_standardized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DATASET_DIMS["mosi"], "sizes", TINY)
    dataset = load_dataset("synthetic-mosi", text="tokens")
    with pytest.raises(ValueError, match=re.escape("modalities: expected float features, received token ids for ['text']")):
        standardize_features(dataset, ["audio", "text"])


def test_feature_widths_must_agree_across_splits() -> None:
    dataset = make_dataset()
    dataset.test.features["vision"] = dataset.test.features["vision"][:, :, :2]
    with pytest.raises(ValueError, match=re.escape("test['vision']: feature width 2 differs from train['vision'] width 3")):
        standardize_features(dataset, ["vision"])


@pytest.mark.parametrize(
    "percentiles",
    [(99.5, 0.5), (5.0, 5.0), (-1.0, 50.0), (1.0, 100.5), (1.0,), (1.0, 2.0, 3.0), (float("nan"), 50.0), ("1", "99"), 50.0],
)
def test_bad_clip_percentiles_are_named(percentiles: object) -> None:
    with pytest.raises(ValueError, match=r"^clip_percentiles: expected \(low, high\) with 0 <= low < high <= 100, received"):
        standardize_features(make_dataset(), ["audio"], percentiles)  # type: ignore[arg-type]


def test_percentile_bounds_0_and_100_are_allowed() -> None:
    dataset = make_dataset()
    train = dataset.train.features["audio"].copy()
    stats = standardize_features(dataset, ["audio"], (0, 100))
    np.testing.assert_array_equal(stats["audio"]["low"].ravel(), train.min(axis=(0, 1)))
    np.testing.assert_array_equal(stats["audio"]["high"].ravel(), train.max(axis=(0, 1)))


@needs_transformers
@pytest.mark.parametrize("name", ["decalign", "misa", "self_mm"])
def test_a_bert_model_given_float_text_features_names_the_text(tiny_bert: tuple[Path, torch.nn.Module], name: str) -> None:
    from alignkit_models.registry import create_model

    path, _ = tiny_bert
    model = create_model(name, input_dims={"text": 3, "audio": 5, "vision": 20}, text_encoder=str(path)).eval()
    features = {"text": torch.randn(2, 10, 3), "audio": torch.randn(2, 10, 5), "vision": torch.randn(2, 10, 20)}
    with pytest.raises(ValueError, match=re.escape("features['text']: expected token ids (B, L, 3) of an integer dtype")):
        model(features)
