"""The training protocol options of the authors' DecAlign configurations: selection metric,
validation loss, last batch, BERT learning rate, feature standardisation, token-id text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit_models.data.mmsa import mmsa_dataset
from alignkit_models.data.synthetic import make_synthetic_mmsa
from alignkit_models.training import trainer
from alignkit_models.training.config import ConfigError, build_config
from alignkit_models.training.trainer import evaluate, parameter_groups, prepare_dataset, selection_rule, train_seed

SMALL = ["model_options.dim=8", "model_options.n_heads=2", "model_options.n_layers=1", "model_options.n_components=3"]


def _mosi(sizes: tuple[int, int, int] = (40, 12, 12), **options) -> object:
    return mmsa_dataset(make_synthetic_mmsa("mosi", sizes=sizes, seed=0, **options), name="synthetic-mosi", **({"text": "tokens"} if options.get("text_bert") else {}))


def _config(tmp_path: Path, *overrides: str, **explicit):
    return build_config(
        "decalign", "synthetic-mosi", overrides=[*SMALL, "protocol.batch_size=16", *overrides],
        seeds=[3], output_dir=str(tmp_path), progress=False, **explicit,
    )


def test_presets_carry_the_official_selection_rules() -> None:
    expected = {"mosi": ("loss", "min"), "mosei": ("acc2_nonzero", "max"), "sims": ("f1", "max"), "iemocap": ("waf1", "max"), "uci-mfeat": ("accuracy", "max")}
    for dataset, rule in expected.items():
        assert selection_rule(build_config("decalign", dataset)) == rule


def test_an_unknown_selection_metric_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="protocol.selection_metric: expected 'loss' or a metric of 'mosi'"):
        build_config("decalign", "mosi", overrides=["protocol.selection_metric=acc9"])


def test_validation_loss_is_the_mean_over_batches_of_the_task_loss(tmp_path: Path) -> None:
    data = _mosi()
    model = trainer.build_model(_config(tmp_path), data).eval()
    metrics = evaluate(model, data.valid, "mosi", 5, torch.device("cpu"))  # batches of 5, 5, 2
    with torch.no_grad():
        losses = []
        for start in range(0, 12, 5):
            features = {m: torch.from_numpy(data.valid.features[m][start : start + 5]) for m in model.modalities}
            labels = torch.from_numpy(data.valid.labels[start : start + 5])
            losses.append(float(torch.nn.functional.mse_loss(model(features).prediction, labels)))
    assert metrics["loss"] == pytest.approx(np.mean(losses), rel=1e-6)


def test_the_best_checkpoint_minimises_the_validation_loss(tmp_path: Path) -> None:
    result = train_seed(_config(tmp_path, "protocol.max_epochs=4", "protocol.early_stopping_patience=10"), _mosi(), 3, tmp_path / "s")
    history = torch.load(tmp_path / "s" / "last.pt", weights_only=True)["trainer_state"]["history"]
    losses = [record["valid"]["loss"] for record in history]
    assert result.best_epoch == 1 + int(np.argmin(losses))
    assert all(record["train_seconds"] > 0 for record in history)


@pytest.mark.parametrize(("drop_last", "batch_sizes"), [(True, [16, 16]), (False, [16, 16, 8])])
def test_the_last_incomplete_batch_follows_drop_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drop_last: bool, batch_sizes: list[int]) -> None:
    seen: list[int] = []
    original = trainer.build_model

    def counting(config, dataset):
        model = original(config, dataset)
        model.register_forward_pre_hook(lambda module, args: seen.append(args[0]["text"].shape[0]) if module.training else None)
        return model

    monkeypatch.setattr(trainer, "build_model", counting)
    train_seed(_config(tmp_path, "protocol.max_epochs=1", f"protocol.drop_last={str(drop_last).lower()}"), _mosi(), 3, tmp_path / "s")
    assert seen == batch_sizes


def test_a_text_encoder_gets_its_own_learning_rate() -> None:
    class WithEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text_encoder = torch.nn.Linear(2, 2)
            self.head = torch.nn.Linear(2, 1)

    model = WithEncoder()
    groups = parameter_groups(model, 1e-5)  # type: ignore[arg-type]
    assert groups[0]["lr"] == 1e-5 and [id(p) for p in groups[0]["params"]] == [id(p) for p in model.text_encoder.parameters()]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in model.head.parameters()] and "lr" not in groups[1]
    assert len(parameter_groups(model, None)) == 1  # type: ignore[arg-type]


def test_preset_standardisation_is_applied_to_the_data() -> None:
    config = build_config("decalign", "synthetic-sims")
    assert config.preprocessing.standardize == ["audio", "vision"]
    dataset = prepare_dataset(config)
    audio = dataset.train.features["audio"].astype(np.float64)  # float32 sums over 550k values drift by 1e-3
    np.testing.assert_allclose(audio.mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(audio.std(axis=(0, 1)), 1.0, atol=1e-5)


def test_a_text_encoder_makes_the_text_token_ids(tmp_path: Path) -> None:
    config = build_config("decalign", "synthetic-mosi", overrides=[f"model_options.text_encoder={tmp_path}"])
    text = prepare_dataset(config).train.features["text"]
    assert text.dtype == np.int64 and text.shape[-1] == 3


def test_decalign_trains_with_a_fine_tuned_bert(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="BERT tests need transformers (the [text] extra)")
    bert = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(bert).save_pretrained(tmp_path / "bert")
    config = _config(tmp_path, f"model_options.text_encoder={tmp_path / 'bert'}", "protocol.text_encoder_lr=1e-5", "protocol.max_epochs=1")
    data = _mosi(text_bert=True)
    before = {k: v.clone() for k, v in trainer.build_model(config, data).text_encoder.state_dict().items()}
    result = train_seed(config, data, 3, tmp_path / "s")
    after = torch.load(tmp_path / "s" / "last.pt", weights_only=True)
    optimizer_lrs = sorted(group["lr"] for group in after["optimizer_state"]["param_groups"])
    assert optimizer_lrs == [1e-5, config.protocol.lr]
    changed = [k for k, v in before.items() if not torch.equal(v, after["model_state"][f"text_encoder.{k}"])]
    assert changed and np.isfinite(result.test["mae"])  # BERT was fine-tuned


def test_a_wrong_text_encoder_path_is_one_line_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alignkit_models.cli import main

    missing = tmp_path / "no-bert-here"
    args = ["train", "--model", "decalign", "--dataset", "synthetic-mosi", "--epochs", "1", "--seeds", "1", "--output-dir", str(tmp_path), "--no-progress"]
    assert main([*args, "--set", f"model_options.text_encoder={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"alignkit: error: text_encoder: no such directory: {missing}"


def test_threads_option_sets_the_cpu_threads(tmp_path: Path) -> None:
    from alignkit_models.cli import main

    before = torch.get_num_threads()
    try:
        args = ["train", "--model", "late_fusion", "--dataset", "uci-mfeat", "--epochs", "1", "--seeds", "1", "--threads", "1", "--output-dir", str(tmp_path), "--no-progress"]
        assert main(args) == 0
        assert torch.get_num_threads() == 1
        assert json.loads((tmp_path / "late_fusion-uci-mfeat" / "config.json").read_text())["threads"] == 1
    finally:
        torch.set_num_threads(before)


def _uci_decalign_accuracy(output_dir: Path, precision: str) -> float:
    """Test accuracy of two epochs of DecAlign on UCI at ``precision``; every training loss finite."""
    from alignkit_models.training.trainer import run_experiment

    config = build_config("decalign", "uci-mfeat", seeds=[1111], max_epochs=2, output_dir=str(output_dir / precision), progress=False, precision=precision)
    summary = run_experiment(config)
    history = json.loads((Path(summary["run_dir"]) / "seed-1111" / "history.json").read_text())
    assert all(np.isfinite(record["train"]["loss"]) for record in history)
    return summary["test"]["accuracy"]["mean"]


@pytest.fixture(scope="module")
def fp32_accuracy(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The fp32 run both mixed-precision cases compare with, trained once."""
    return _uci_decalign_accuracy(tmp_path_factory.mktemp("fp32"), "fp32")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_is_finite_and_close_to_fp32(tmp_path: Path, precision: str, fp32_accuracy: float) -> None:
    assert abs(_uci_decalign_accuracy(tmp_path, precision) - fp32_accuracy) <= 0.01  # within one point


def test_compiled_training_equals_eager(tmp_path: Path) -> None:
    """``--compile``: the same two steps (dropout off, global batches of 700) as the eager run.
    Late fusion: the smallest graph to build on a cold inductor cache (an LSTM's takes ~40 % longer)."""
    from alignkit_models.training.trainer import run_experiment

    def history(compiled: bool) -> list[dict]:
        config = build_config(
            "late_fusion", "uci-mfeat", seeds=[1111], max_epochs=1, output_dir=str(tmp_path / str(compiled)), progress=False, compile=compiled,
            overrides=["model_options.dropout=0.0", "protocol.batch_size=700"],
        )
        summary = run_experiment(config)
        return json.loads((Path(summary["run_dir"]) / "seed-1111" / "history.json").read_text())

    eager = history(False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = history(True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    assert compiled[0]["train"]["loss"] == pytest.approx(eager[0]["train"]["loss"], rel=1e-5)
    assert compiled[0]["valid"]["loss"] == pytest.approx(eager[0]["valid"]["loss"], rel=1e-5)


def test_each_baseline_trains_with_its_own_reference_protocol_unless_shared_is_asked() -> None:
    shared = build_config("decalign", "synthetic-mosi").protocol
    own = build_config("mult", "synthetic-mosi").protocol
    # MMSA's MulT on MOSI: lr 2e-3, batch 16, L1; everything the preset does not list stays shared.
    assert (own.lr, own.batch_size, own.regression_loss) == (2e-3, 16, "l1")
    assert own.selection_metric == shared.selection_metric and own.max_epochs == shared.max_epochs
    assert build_config("mult", "synthetic-mosi", protocol_source="shared").protocol == shared
    # What the user sets wins over the model's protocol.
    assert build_config("mult", "synthetic-mosi", overrides=["protocol.lr=5e-4"]).protocol.lr == 5e-4
    # A data set without reference settings (UCI) gives every model its one protocol.
    assert build_config("mult", "uci-mfeat").protocol == build_config("decalign", "uci-mfeat").protocol


# MMSA's name of each baseline, and what its trainer does with the configured values.
MMSA_NAMES = {"tfn": "tfn", "lmf": "lmf", "early_fusion": "ef_lstm", "late_fusion": "lf_dnn", "mfm": "mfm", "mult": "mult", "misa": "misa", "self_mm": "self_mm"}
WEIGHT_DECAY_NOT_PASSED = {"tfn", "mult", "misa"}  # their trainers build Adam without weight_decay
LR_NOT_PASSED = {"mfm"}  # its trainer builds Adam without lr: torch's default 1e-3


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims"])
def test_baseline_protocols_are_mmsa_configuration_values(dataset: str) -> None:
    """Every MMSA baseline's preset protocol against MMSA 2.2.1's config_regression.json."""
    mmsa = pytest.importorskip("MMSA", reason="needs the mmsa package (the dev extra installs it)")
    config = json.loads((Path(mmsa.__file__).parent / "config" / "config_regression.json").read_text())
    for ours, theirs in MMSA_NAMES.items():
        reference = {**config[theirs]["commonParams"], **config[theirs]["datasetParams"][dataset]}
        protocol = build_config(ours, dataset).protocol
        lr = reference.get("learning_rate_other", reference.get("learning_rate"))
        expected_lr = 1e-3 if ours in LR_NOT_PASSED else lr
        decay = reference.get("weight_decay_other", reference.get("weight_decay", 0.0))
        expected_decay = 0.0 if ours in WEIGHT_DECAY_NOT_PASSED else decay
        got = (protocol.lr, protocol.batch_size, protocol.weight_decay, protocol.early_stopping_patience, protocol.selection_metric)
        assert got == (expected_lr, reference["batch_size"], expected_decay, reference["early_stop"], "loss"), (ours, dataset)
        assert protocol.grad_clip == (reference.get("grad_clip") if ours in ("mult", "misa") else None), (ours, dataset)
        assert protocol.regression_loss == ("mse" if ours == "misa" else "l1"), (ours, dataset)
        if ours == "mult":
            assert protocol.lr_patience == reference["patience"], dataset
        if ours == "self_mm":
            assert protocol.text_encoder_lr == reference["learning_rate_bert"], dataset
        if dataset in ("mosi", "sims"):  # the synthetic data sets train as the real ones
            assert build_config(ours, f"synthetic-{dataset}").protocol == protocol, (ours, dataset)


def test_comparison_tables_state_each_models_protocol(tmp_path: Path) -> None:
    from alignkit_models.training.compare import write_tables

    configs = [build_config(m, "synthetic-mosi") for m in ("decalign", "tfn")] + [build_config("lmf", "synthetic-mosi", protocol_source="shared")]
    summaries = {c.model: {"test": {"mae": {"mean": 1.0, "std": 0.0}}, "per_seed": [{"seconds": 1.0}]} for c in configs}
    table = write_tables(tmp_path, summaries, configs)
    assert "model: lr 6e-05, batch 32, mse" in table.splitlines()[2]
    assert "model: lr 0.001, batch 32, l1" in table.splitlines()[3]
    assert "shared: lr 6e-05, batch 32, mse" in table.splitlines()[4]
    assert '- tfn: {"batch_size": 32, "lr": 0.001' in (tmp_path / "results.md").read_text()
