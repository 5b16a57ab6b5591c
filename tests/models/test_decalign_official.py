"""DecAlign against the authors' code: their weights, converted, give their outputs.

``tests/data/decalign_official.pt`` holds a small configuration of the authors' model
(taco-group/DecAlign 6fa8df9: widths 24 / 5 / 16, d 16, 4 heads, 2 layers, a kernel-3 text
projection, no projection for the width-16 vision stream, K 7, distribution width 12), its
weights, two random batches (5 samples, fewer than K, and 12) and what their code returned
for them: evaluation-mode outputs in float64 and float32, training-mode gradients of
``dec_loss + hete_loss + homo_loss`` with dropout 0 in float64, and the weights after three steps
of their trainer (task, alignment and contrastive losses, gradient clipping, Adam with weight
decay; dropout 0, float64) on labelled batches; the initial weights their constructor drew
after ``torch.manual_seed(3)`` with the vision stream widened to 20 (every modality projected); and
a training-mode forward with every dropout on after ``torch.manual_seed(4)``, with its gradients.
It was written by
``python benchmarks/official_decalign.py fixture --official <checkout>``; the same script's
``check`` command repeats the comparison at the MOSI configuration and with a BERT text encoder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignkit_models.models.decalign import DecAlign, from_official_state_dict
from alignkit_models.models.decalign.official import convert_state_dict, infer_options

FIXTURE = torch.load(Path(__file__).parents[1] / "data" / "decalign_official.pt", weights_only=True)
MODALITIES = ("text", "audio", "vision")
HEADS = {"n_heads": FIXTURE["official_config"]["dst_feature_dim_nheads"][1]}  # 4; not readable from weights
NO_DROPOUT = dict.fromkeys(("attn_dropout", "relu_dropout", "res_dropout", "embed_dropout", "output_dropout", "input_dropout"), 0.0)


def _features(batch: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {m: batch[m].to(dtype) for m in MODALITIES}


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize(("dtype", "key", "logit_tol", "loss_rtol"), [
    (torch.float64, "eval_float64", 1e-12, 1e-10),
    (torch.float32, "eval_float32", 1e-5, 1e-4),   # the tolerances users are promised
])
def test_converted_weights_give_the_official_outputs(index: int, dtype: torch.dtype, key: str, logit_tol: float, loss_rtol: float) -> None:
    reference = FIXTURE[key][index]
    batch = FIXTURE["batches"][index]
    model = from_official_state_dict(FIXTURE["state_dict"], **HEADS).to(dtype).eval()
    labels = torch.zeros(batch["text"].shape[0], dtype=dtype)
    with torch.no_grad():
        output = model(_features(batch, dtype), None, labels)
    torch.testing.assert_close(output.prediction, reference["output_logit"].reshape(-1), rtol=0, atol=logit_tol)
    torch.testing.assert_close(output.representation, reference["final_rep"], rtol=0, atol=logit_tol * 10)
    for ours, theirs in (("dec", "dec_loss"), ("hete", "hete_loss"), ("homo", "homo_loss")):
        torch.testing.assert_close(output.components[ours], reference[theirs], rtol=loss_rtol, atol=0, msg=ours)


@pytest.mark.parametrize("index", [0, 1])
def test_alignment_gradients_equal_the_official_gradients(index: int) -> None:
    batch = FIXTURE["batches"][index]
    options = {**HEADS, **NO_DROPOUT, "alpha": 1.0, "beta": 1.0, "contrastive_weight": 0.0}  # aux loss = dec + hete + homo
    model = from_official_state_dict(FIXTURE["state_dict"], **options).double().train()
    model(_features(batch, torch.float64), None, None).aux_losses["alignment"].backward()
    expected = convert_state_dict(FIXTURE["grads_float64"][index], model)
    parameters = dict(model.named_parameters())
    assert set(expected) == {name for name, p in parameters.items() if p.grad is not None}
    for name, grad in expected.items():
        torch.testing.assert_close(parameters[name].grad, grad.reshape(parameters[name].shape), rtol=1e-9, atol=1e-12, msg=name)


def test_three_training_steps_follow_the_official_trainer() -> None:
    """Our trainer's step with the MOSI preset's protocol (learning rate, weight decay, clipping)
    moves the converted weights as their trainer moved theirs."""
    from alignkit_models.training import trainer
    from alignkit_models.training.config import build_config

    protocol = build_config("decalign", "mosi").protocol
    model = from_official_state_dict(FIXTURE["state_dict"], **HEADS, **NO_DROPOUT, regression_loss=protocol.regression_loss).double()
    cpu = torch.device("cpu")
    optimizer = trainer.training_adam(trainer.parameter_groups(model, None), lr=protocol.lr, weight_decay=protocol.weight_decay, device=cpu)
    for index in FIXTURE["train_order"]:
        features = _features(FIXTURE["batches"][index], torch.float64)
        masks = {m: torch.ones(x.shape[:2], dtype=torch.bool) for m, x in features.items()}
        batch = {"features": features, "masks": masks, "labels": FIXTURE["train_labels"][index]}
        trainer._train_epoch(model, [batch], optimizer, protocol.grad_clip, cpu, 1, False)
    start = convert_state_dict(FIXTURE["state_dict"], model)
    expected = convert_state_dict(FIXTURE["trained_float64"], model)
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            # Three steps move a weight by up to ~3 learning rates (1.8e-4); a wrong learning rate,
            # weight decay or loss term changes that by far more than this tolerance.
            moved = float((expected[name] - start[name]).abs().max())
            torch.testing.assert_close(value, expected[name].reshape(value.shape), rtol=0, atol=1e-6 * max(moved, 1e-12), msg=name)


def test_dropout_draws_the_official_masks() -> None:
    """With ``fast_dropout=False`` every dropout draws, from the same generator state, the mask
    their ``nn.Dropout`` draws on their time-first tensors, in their order: training-mode outputs
    and gradients equal theirs with every dropout on."""
    reference = FIXTURE["train_dropout"]
    rates = reference["rates"]
    options = {
        "attn_dropout": {"text": rates["attn_dropout"], "audio": rates["attn_dropout_a"], "vision": rates["attn_dropout_v"]},
        "input_dropout": {"text": rates["text_dropout"]},
        **{name: rates[name] for name in ("relu_dropout", "res_dropout", "embed_dropout", "output_dropout")},
    }
    model = from_official_state_dict(
        FIXTURE["state_dict"], **HEADS, **options, fast_dropout=False, alpha=1.0, beta=1.0, contrastive_weight=0.0
    ).double().train()
    torch.manual_seed(reference["seed"])
    output = model(_features(FIXTURE["batches"][1], torch.float64), None, None)
    # Another mask moves a prediction by ~0.1 (a dropped weight of the 16-wide head input alone does).
    torch.testing.assert_close(output.prediction, reference["output_logit"].reshape(-1), rtol=0, atol=1e-12)
    for ours, theirs in (("dec", "dec_loss"), ("hete", "hete_loss"), ("homo", "homo_loss")):
        torch.testing.assert_close(output.components[ours], reference[theirs], rtol=1e-10, atol=0, msg=ours)
    (output.prediction.sum() + output.aux_losses["alignment"]).backward()  # alignment = dec + hete + homo here
    expected = convert_state_dict(reference["grads"], model)
    parameters = dict(model.named_parameters())
    assert set(expected) == {name for name, p in parameters.items() if p.grad is not None}
    for name, grad in expected.items():
        torch.testing.assert_close(parameters[name].grad, grad.reshape(parameters[name].shape), rtol=1e-9, atol=1e-12, msg=name)


def test_a_seed_draws_the_official_initial_weights() -> None:
    """With every modality projected, ``torch.manual_seed(s)`` then our constructor gives the
    weights their constructor drew after the same seed (layers created in their order)."""
    state = FIXTURE["seeded_init"]["state_dict"]
    torch.manual_seed(FIXTURE["seeded_init"]["seed"])
    model = DecAlign(**infer_options(state), **HEADS)
    expected = convert_state_dict(state, model)
    assert expected.keys() == {name for name, _ in model.named_parameters()}
    for name, value in model.named_parameters():
        assert torch.equal(value.detach(), expected[name].reshape(value.shape)), name


def test_shapes_are_read_from_the_checkpoint() -> None:
    inferred = infer_options(FIXTURE["state_dict"])
    assert inferred == {
        "input_dims": {"text": 24, "audio": 5, "vision": 16},
        "dim": 16,
        "n_layers": 2,
        "kernel_size": {"text": 3, "audio": 1, "vision": 1},
        "distribution_dim": 12,
    }
    model = from_official_state_dict(FIXTURE["state_dict"], **HEADS)
    assert set(model.projections) == {"text", "audio"}  # width 16 = d: the authors skip the projection
    assert model.variant == "official" and len(model.cross_modal) == 3


def test_a_dataparallel_prefix_is_removed() -> None:
    prefixed = {f"module.{k}": v for k, v in FIXTURE["state_dict"].items()}
    reference = from_official_state_dict(FIXTURE["state_dict"]).state_dict()
    for name, value in from_official_state_dict(prefixed).state_dict().items():
        torch.testing.assert_close(value, reference[name])


def test_an_unknown_parameter_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="unexpected parameter 'extra.weight'"):
        from_official_state_dict({**FIXTURE["state_dict"], "extra.weight": torch.zeros(1)})


def test_a_missing_parameter_is_one_clear_error() -> None:
    state = dict(FIXTURE["state_dict"])
    del state["trans_a.layers.1.fc2.bias"]
    with pytest.raises(ValueError, match="missing 'cross_modal.audio<-rest.layers.1.feedforward.3.bias'"):
        from_official_state_dict(state)


def test_options_that_contradict_the_checkpoint_are_refused() -> None:
    with pytest.raises(ValueError, match="dim: the checkpoint has 16, received 32"):
        from_official_state_dict(FIXTURE["state_dict"], dim=32)
    with pytest.raises(ValueError, match="n_heads"):
        from_official_state_dict(FIXTURE["state_dict"], n_heads=5)


def test_a_bert_checkpoint_needs_its_configuration() -> None:
    state = {**FIXTURE["state_dict"], "text_model.model.embeddings.word_embeddings.weight": torch.zeros(5, 24)}
    with pytest.raises(ValueError, match="text_encoder: this checkpoint holds a BERT text model"):
        from_official_state_dict(state)


def test_not_a_state_dict_is_refused() -> None:
    with pytest.raises(ValueError, match="state_dict: expected a mapping"):
        from_official_state_dict([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="missing 'encoder_com.weight'"):
        from_official_state_dict({"out_layer.weight": torch.zeros(1, 96)})
