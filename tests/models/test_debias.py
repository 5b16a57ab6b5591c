"""MCIS counterfactual debiasing at inference (``alignkit_models.debias``, ``evaluate --debias``).

Hand-made linear models whose outputs we can compute on paper pin every term of the formula
(stratum averages, their lengths, the backdoor prior, the sign and the weight of each term);
weights 0 give the vanilla predictions bit for bit; every zoo model runs under it; the command
line reports vanilla and debiased metrics and rejects bad options in one line.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit_models.cli import main
from alignkit_models.data.base import MultimodalSplit
from alignkit_models.debias import (
    label_strata,
    mcis_combine,
    mcis_outputs,
    mcis_predict,
    mcis_statistics,
)
from alignkit_models.metrics import compute_metrics
from alignkit_models.models.base import ModelOutput, MultimodalModel
from alignkit_models.registry import create_model, list_models
from alignkit_models.training.config import build_config
from alignkit_models.training.trainer import load_trained, predict, run_experiment

CPU = torch.device("cpu")


class LinearProbe(MultimodalModel):
    """``out_c = bias_c + sum_m weight_{m,c} * mean_{t < len} x_m[t, 0]``: a model whose outputs
    we can compute by hand. A token modality contributes ``sum of its real token ids / 100``."""

    def __init__(self, input_dims: dict[str, int], weights: dict[str, list[float]], bias: list[float], *, task: str = "regression", n_classes: int | None = None) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes)  # type: ignore[arg-type]
        self.register_buffer("bias", torch.tensor(bias))
        self.weights = {m: torch.tensor(w) for m, w in weights.items()}

    def forward(self, features, masks=None, labels=None):  # type: ignore[no-untyped-def]
        masks = self.check_inputs(features, masks)
        total = self.bias.expand(next(iter(features.values())).shape[0], -1)
        for m in self.modalities:
            x = features[m]
            if x.is_floating_point():
                keep = masks[m].float()
                value = (x[..., 0] * keep).sum(1) / keep.sum(1).clamp_min(1.0)
            else:  # token ids (B, L, 3): id, attention mask, segment
                value = (x[..., 0] * x[..., 1] * masks[m]).sum(1).float() / 100.0
            total = total + value[:, None] * self.weights[m][None, :]
        return ModelOutput(self.head_output(total))


def _split(features: dict[str, list], lengths: dict[str, list], labels: list) -> MultimodalSplit:
    arrays = {}
    for m, rows in features.items():
        array = np.asarray(rows)
        arrays[m] = array[..., None].astype(np.float32) if array.dtype.kind == "f" or array.ndim == 2 else array
    return MultimodalSplit(arrays, {m: np.asarray(v, dtype=np.int64) for m, v in lengths.items()}, np.asarray(labels))


# --- (a) every term against a hand computation ---------------------------------------------------

# Regression, MOSI strata (rounded score): s1 (1.2) and s2 (0.6) are class "+1", s3 (-2.4) class "-2".
TRAIN = _split(
    {"text": [[1.0, 3.0, 0.0], [5.0, 7.0, 9.0], [-1.0, 0.0, 0.0]], "audio": [[4.0, 0.0], [2.0, 6.0], [3.0, 5.0]]},
    {"text": [2, 3, 1], "audio": [1, 2, 2]},
    np.asarray([1.2, 0.6, -2.4], dtype=np.float32),
)
# One test utterance; the 100 is padding the model must never see.
TEST = _split({"text": [[2.0, 4.0, 100.0]], "audio": [[1.0, 3.0]]}, {"text": [2], "audio": [2]}, np.asarray([0.5], dtype=np.float32))


def _regression_probe() -> LinearProbe:
    return LinearProbe({"text": 1, "audio": 1}, {"text": [2.0], "audio": [-1.0]}, [0.5])


def test_stratum_averages_are_per_step_means_over_the_samples_reaching_the_step() -> None:
    stats = mcis_statistics(TRAIN, ("text", "audio"), task="regression", kind="mosi")
    assert stats.strata == ("mosi class 1", "mosi class 4")  # -2 -> id 1, +1 -> id 4
    torch.testing.assert_close(stats.prior, torch.tensor([1 / 3, 2 / 3]))
    # Class +1, text: lengths 2 and 3 -> mean 2.5 -> 3 steps (half up); step 2 only s2 reaches.
    torch.testing.assert_close(stats.means["text"][1, :, 0], torch.tensor([3.0, 5.0, 9.0]))
    torch.testing.assert_close(stats.means["audio"][1, :, 0], torch.tensor([3.0, 6.0]))
    torch.testing.assert_close(stats.means["text"][0, :, 0], torch.tensor([-1.0, 0.0, 0.0]))
    assert stats.lengths["text"].tolist() == [1, 3] and stats.lengths["audio"].tolist() == [2, 2]


def test_regression_terms_and_weights_match_the_hand_computation() -> None:
    model = _regression_probe()
    stats = mcis_statistics(TRAIN, model.modalities, task="regression", kind="mosi")
    out = mcis_outputs(model, TEST, stats, batch_size=4)
    # F(x) = 0.5 + 2 * mean(2, 4) - mean(1, 3) = 4.5
    torch.testing.assert_close(out.factual, torch.tensor([4.5]))
    # F(xbar_-2) = 0.5 + 2 * (-1) - 4 = -5.5; F(xbar_+1) = 0.5 + 2 * 17/3 - 4.5 = 22/3
    # B_label = 1/3 * (-5.5) + 2/3 * 22/3 = 55/18
    torch.testing.assert_close(out.label, torch.tensor([55 / 18]))
    # B_ctx = 1/3 * (0.5 + 6 - 4) + 2/3 * (0.5 + 6 - 4.5) = 13/6 (the factual text, averaged audio)
    torch.testing.assert_close(out.context, torch.tensor([13 / 6]))
    # Yhat = 4.5 - 0.5 * 55/18 - 0.25 * 13/6 = 175/72
    torch.testing.assert_close(mcis_combine(out, 0.5, 0.25), torch.tensor([175 / 72]))
    predicted = mcis_predict(model, TEST, TRAIN, label_weight=0.5, context_weight=0.25, kind="mosi")
    torch.testing.assert_close(predicted, torch.tensor([175 / 72]))


def test_uniform_prior_and_a_single_stratum() -> None:
    model = _regression_probe()
    uniform = mcis_outputs(model, TEST, mcis_statistics(TRAIN, model.modalities, task="regression", kind="mosi", prior="uniform"))
    torch.testing.assert_close(uniform.label, torch.tensor([0.5 * -5.5 + 0.5 * 22 / 3]))
    # One stratum: xbar is the plain average utterance: text [(1+5-1)/3, (3+7)/2] (mean length
    # 2; s3 does not reach step 1), audio [(4+2+3)/3, (6+5)/2] (mean length 5/3 -> 2):
    # F = 0.5 + 2 * 10/3 - 4.25 = 35/12.
    single = mcis_outputs(model, TEST, mcis_statistics(TRAIN, model.modalities, task="regression", strata="none"))
    torch.testing.assert_close(single.label, torch.tensor([35 / 12]))


def test_classification_averages_logits_per_class_with_the_class_prior() -> None:
    train = _split({"a": [[1.0], [3.0], [5.0]], "b": [[0.0], [2.0], [4.0]]}, {"a": [1, 1, 1], "b": [1, 1, 1]}, np.asarray([0, 0, 1]))
    test = _split({"a": [[0.0]], "b": [[1.0]]}, {"a": [1], "b": [1]}, np.asarray([1]))
    model = LinearProbe({"a": 1, "b": 1}, {"a": [1.0, -1.0], "b": [0.0, 2.0]}, [0.0, 1.0], task="classification", n_classes=2)
    stats = mcis_statistics(train, model.modalities, task="classification")
    # class 0: a = 2, b = 1 -> logits (2, 1); class 1: a = 5, b = 4 -> (5, 4); P = (2/3, 1/3)
    auto = mcis_outputs(model, test, stats)
    torch.testing.assert_close(auto.label, torch.tensor([[3.0, 2.0]]))
    assert auto.context is None and "no language modality" in auto.notes[0]
    # With "a" as the language modality: B_ctx = 2/3 F(0, 1) + 1/3 F(0, 4) = (0, 5)
    named = mcis_outputs(model, test, stats, text_modality="a")
    torch.testing.assert_close(named.context, torch.tensor([[0.0, 5.0]]))
    # Yhat = F(x) - 1 * B_label - 0.5 * B_ctx = (0, 3) - (3, 2) - (0, 2.5)
    torch.testing.assert_close(mcis_combine(named, 1.0, 0.5), torch.tensor([[-3.0, -1.5]]))


def test_token_text_becomes_the_cls_sep_utterance_in_the_label_counterfactual() -> None:
    # Token ids (id, attention, segment): [CLS]=90, words, [SEP]=91, padding.
    def tokens(rows: list[list[int]]) -> list[list[list[int]]]:
        return [[[t, int(t > 0), 0] for t in row] for row in rows]

    train = _split({"text": tokens([[90, 5, 91, 0], [90, 7, 8, 91]]), "audio": [[2.0], [4.0]]}, {"text": [3, 4], "audio": [1, 1]}, np.asarray([0, 1]))
    test = _split({"text": tokens([[90, 30, 40, 91]]), "audio": [[1.0]]}, {"text": [4], "audio": [1]}, np.asarray([0]))
    model = LinearProbe({"text": 3, "audio": 1}, {"text": [1.0], "audio": [1.0]}, [0.0])
    stats = mcis_statistics(train, model.modalities, task="regression", strata="sign")
    assert stats.token_modalities == ("text",) and "text" not in stats.means
    out = mcis_outputs(model, test, stats)
    torch.testing.assert_close(out.factual, torch.tensor([2.51 + 1.0]))  # (90+30+40+91)/100 + 1
    # strata by sign: "zero" (label 0: audio 2) and "positive" (label 1: audio 4), P = 1/2 each;
    # the text is [CLS] [SEP] = (90 + 91)/100 in both.
    torch.testing.assert_close(out.label, torch.tensor([1.81 + 3.0]))
    # The context keeps the factual tokens: 2.51 + (2 + 4)/2.
    torch.testing.assert_close(out.context, torch.tensor([2.51 + 3.0]))


def test_label_strata_names_and_refusals() -> None:
    ids, names = label_strata(np.asarray([-0.2, 0.0, 2.0, 0.3]), "regression", strata="sign")
    assert ids.tolist() == [0, 1, 2, 2] and names == ("negative", "zero", "positive")
    ids, names = label_strata(np.asarray([-3.0, 0.4, 2.6]), "regression", kind="mosi")
    assert ids.tolist() == [0, 1, 2] and names == ("mosi class 0", "mosi class 3", "mosi class 6")
    with pytest.raises(ValueError, match="strata: 'sign' needs a regression"):
        label_strata(np.asarray([0, 1]), "classification", strata="sign")
    with pytest.raises(ValueError, match="label_weight: expected a finite number >= 0"):
        mcis_predict(_regression_probe(), TEST, TRAIN, label_weight=-1.0)
    with pytest.raises(ValueError, match="text_modality: expected 'auto', 'none' or one of"):
        mcis_predict(_regression_probe(), TEST, TRAIN, text_modality="words")


# --- (b) weights 0: the vanilla predictions, bit for bit ------------------------------------------


def _random_split(n: int, dims: dict[str, int], task: str, seed: int, steps: int = 5) -> MultimodalSplit:
    rng = np.random.default_rng(seed)
    features = {m: rng.normal(size=(n, steps, d)).astype(np.float32) for m, d in dims.items()}
    lengths = {m: rng.integers(1, steps + 1, n).astype(np.int64) for m in dims}
    labels = rng.uniform(-3, 3, n).astype(np.float32) if task == "regression" else rng.integers(0, 3, n)
    return MultimodalSplit(features, lengths, labels)


DIMS = {"text": 6, "audio": 3, "vision": 4}


def test_zero_weights_give_the_vanilla_predictions_exactly() -> None:
    torch.manual_seed(0)
    model = create_model("early_fusion", input_dims=DIMS, task="regression")
    train, test = _random_split(10, DIMS, "regression", 1), _random_split(7, DIMS, "regression", 2)
    model.train()  # MCIS must put the model in eval mode itself
    debiased = mcis_predict(model, test, train, label_weight=0.0, context_weight=0.0, kind="mosi", batch_size=3)
    vanilla = predict(model, test, 3, CPU).predictions
    assert torch.equal(debiased, vanilla)
    out = mcis_outputs(model, test, mcis_statistics(train, model.modalities, task="regression", kind="mosi"), batch_size=3)
    assert torch.equal(out.factual, vanilla) and torch.equal(mcis_combine(out, 0.0, 0.0), vanilla)
    assert not torch.equal(mcis_combine(out, 1.0, 0.0), vanilla)


# --- (c) every zoo model ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [info.name for info in list_models()])
def test_every_zoo_model_gets_finite_debiased_predictions(name: str) -> None:
    torch.manual_seed(0)
    train, test = _random_split(9, DIMS, "regression", 3), _random_split(4, DIMS, "regression", 4)
    model = create_model(name, input_dims=DIMS, task="regression").eval()
    debiased = mcis_predict(model, test, train, kind="mosi", batch_size=3)
    vanilla = predict(model, test, 3, CPU).predictions
    assert debiased.shape == (4,) and torch.isfinite(debiased).all() and not torch.equal(debiased, vanilla)
    views = {"v0": 5, "v1": 2}  # classification, no language modality: label term only
    train, test = _random_split(9, views, "classification", 5, steps=1), _random_split(4, views, "classification", 6, steps=1)
    model = create_model(name, input_dims=views, task="classification", n_classes=3).eval()
    debiased = mcis_predict(model, test, train, batch_size=3)
    assert debiased.shape == (4, 3) and torch.isfinite(debiased).all()


# Runs in CI (the "dev" extra installs transformers); skipped only where the optional "text" extra is absent.
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers (alignkit[text])")
@pytest.mark.parametrize("name", ["misa", "self_mm"])
def test_models_with_a_bert_text_encoder_run_on_token_ids(name: str, tmp_path: Path) -> None:
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)
    transformers.BertModel(config).save_pretrained(tmp_path)
    rng = np.random.default_rng(0)

    def split(n: int) -> MultimodalSplit:
        lengths = rng.integers(3, 7, n)
        ids = rng.integers(1, 100, (n, 6)) * (np.arange(6)[None, :] < lengths[:, None])
        tokens = np.stack([ids, (ids > 0).astype(np.int64), np.zeros_like(ids)], axis=-1).astype(np.int64)
        features = {"text": tokens, "audio": rng.normal(size=(n, 4, 3)).astype(np.float32)}
        return MultimodalSplit(features, {"text": lengths.astype(np.int64), "audio": np.full(n, 4, dtype=np.int64)}, rng.uniform(-3, 3, n).astype(np.float32))

    model = create_model(name, input_dims={"text": 3, "audio": 3}, task="regression", text_encoder=str(tmp_path)).eval()
    debiased = mcis_predict(model, split(4), split(8), kind="mosi", batch_size=2)
    assert debiased.shape == (4,) and torch.isfinite(debiased).all()


def test_report_on_a_regression_data_set_tunes_on_valid_and_keeps_the_vanilla_metrics() -> None:
    from alignkit_models.data.base import MultimodalDataset
    from alignkit_models.debias import mcis_report
    from alignkit_models.training.trainer import evaluate

    torch.manual_seed(0)
    splits = [_random_split(n, DIMS, "regression", seed) for n, seed in ((12, 7), (6, 8), (5, 9))]
    dataset = MultimodalDataset("tiny", tuple(DIMS), "regression", *splits)
    model = create_model("late_fusion", input_dims=DIMS, task="regression").eval()
    vanilla, report = mcis_report(model, dataset, "test", kind="mosi", batch_size=4, tune=True)
    assert vanilla == evaluate(model, dataset.test, "mosi", 4, CPU)
    lw, cw = report["options"]["label_weight"], report["options"]["context_weight"]
    assert report["options"]["text_modality"] == "text" and report["options"]["tuned"]["metric"] == "mae"
    expected = mcis_predict(model, dataset.test, dataset.train, label_weight=lw, context_weight=cw, kind="mosi", batch_size=4)
    metrics = compute_metrics("mosi", expected, dataset.test.labels)
    assert {k: report["metrics"][k] for k in metrics} == pytest.approx(metrics)


# --- (d), (e) the command line ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """late_fusion on UCI Multiple Features after one epoch."""
    folder = tmp_path_factory.mktemp("mcis-run")
    config = build_config("late_fusion", "uci-mfeat", seeds=[1], max_epochs=1, output_dir=str(folder), progress=False)
    result = run_experiment(config)
    return Path(result["run_dir"]) / "seed-1" / "best.pt"


def _evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    assert main(["evaluate", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_reports_vanilla_and_mcis_metrics(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vanilla = _evaluate(capsys, "--checkpoint", str(checkpoint))
    report = _evaluate(capsys, "--checkpoint", str(checkpoint), "--debias", "mcis", "--mcis-label-weight", "0.7")
    assert report["metrics"] == vanilla["metrics"]
    debias = report["debias"]
    assert debias["method"] == "mcis" and debias["fidelity"] == "adapted" and "2403.05023" in debias["paper"]
    assert debias["options"]["label_weight"] == 0.7 and debias["options"]["text_modality"] is None
    assert len(debias["strata"]) == 10 and sum(debias["strata"].values()) == pytest.approx(1.0)
    assert "no language modality" in debias["skipped"][0]
    # The same numbers as the library call.
    config, dataset, model = load_trained(checkpoint)
    expected = mcis_predict(model, dataset.test, dataset.train, label_weight=0.7, batch_size=config.protocol.batch_size)
    metrics = compute_metrics("classification", expected, dataset.test.labels)
    assert {k: debias["metrics"][k] for k in metrics} == pytest.approx(metrics)
    zero = _evaluate(capsys, "--checkpoint", str(checkpoint), "--debias", "mcis", "--mcis-label-weight", "0", "--mcis-context-weight", "0")
    assert zero["debias"]["metrics"] == vanilla["metrics"]
    tuned = _evaluate(capsys, "--checkpoint", str(checkpoint), "--debias", "mcis", "--mcis-tune", "--split", "valid")
    assert tuned["debias"]["options"]["tuned"]["metric"] == "accuracy"
    assert tuned["debias"]["metrics"]["accuracy"] >= tuned["metrics"]["accuracy"]  # the grid holds weight 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--debias", "mcis", "--mcis-label-weight", "-1"], "--mcis-label-weight: expected a finite number >= 0"),
        (["--debias", "mcis", "--mcis-context-weight", "nan"], "--mcis-context-weight: expected a finite number >= 0"),
        (["--mcis-label-weight", "0.5"], "--mcis-label-weight: MCIS options need --debias mcis"),
        (["--debias", "mcis", "--mcis-tune", "--mcis-label-weight", "0.5"], "--mcis-tune picks the weights"),
        (["--debias", "mcis", "--mcis-text-modality", "words"], "text_modality: expected 'auto', 'none' or one of"),
    ],
)
def test_cli_rejects_a_bad_option_in_one_line(checkpoint: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str) -> None:
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(checkpoint), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err
