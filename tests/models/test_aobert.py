"""AOBERT (Kim and Park, Information Fusion 2023), adapted: the joint sequence, the MMLM and AP
objectives, the pre-training schedule, the BERT path (tiny random BertConfig), option checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from alignkit_models.models.aobert import AOBERT, choose_masked_steps, mask_token_id_from_vocab

THREE = {"text": 12, "audio": 5, "vision": 7}
SMALL = {"dim": 16, "n_heads": 2, "n_layers": 1}
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers (alignkit[text])")


def _batch(dims: dict[str, int], steps: dict[str, int] | int = 6, batch: int = 4, seed: int = 0):
    """Random features with random real lengths (at least 1) per modality; padded steps are 0."""
    g = torch.Generator().manual_seed(seed)
    lengths = steps if isinstance(steps, dict) else dict.fromkeys(dims, steps)
    features, masks = {}, {}
    for m, d in dims.items():
        valid = torch.randint(1, lengths[m] + 1, (batch,), generator=g)
        masks[m] = torch.arange(lengths[m])[None, :] < valid[:, None]
        features[m] = torch.randn(batch, lengths[m], d, generator=g) * masks[m][..., None]
    return features, masks


class Passthrough(nn.Module):
    """Stands in for the transformer: returns its input embeddings, so positions can be read."""

    def forward(self, embeds: Tensor, mask: Tensor, positions: Tensor, types: Tensor) -> Tensor:
        return embeds


# --- shapes and the joint sequence -----------------------------------------------------------


@pytest.mark.parametrize("m", [2, 3, 6])
def test_prediction_and_representation_shapes_for_any_number_of_modalities(m: int) -> None:
    dims = THREE if m == 3 else {f"view{i}": 3 + i for i in range(m)}
    features, masks = _batch(dims)
    model = AOBERT(dims, **SMALL).eval()
    output = model(features, masks)
    assert output.prediction.shape == (4,) and output.representation.shape == (4, 16)
    assert output.aux_losses == {} and output.components == {}  # no objectives in evaluation
    assert model.verbal == ("text" if m == 3 else "view0")
    classifier = AOBERT(dims, task="classification", n_classes=5, **SMALL).eval()
    assert classifier(features, masks).prediction.shape == (4, 5)


def test_padding_does_not_change_the_prediction() -> None:
    features, masks = _batch(THREE, {"text": 5, "audio": 9, "vision": 4})
    model = AOBERT(THREE, **SMALL).eval()
    before = model(features, masks).prediction
    noisy = {m: torch.where(masks[m][..., None], x, torch.randn_like(x) * 100) for m, x in features.items()}
    assert torch.allclose(model(noisy, masks).prediction, before, atol=1e-5)


def test_extra_padding_steps_do_not_change_the_prediction() -> None:
    features, masks = _batch(THREE, {"text": 5, "audio": 9, "vision": 4})
    model = AOBERT(THREE, **SMALL).eval()
    longer = {m: torch.cat([x, torch.zeros(4, 3, x.shape[-1])], 1) for m, x in features.items()}
    longer_masks = {m: torch.cat([x, torch.zeros(4, 3, dtype=torch.bool)], 1) for m, x in masks.items()}
    assert torch.allclose(model(longer, longer_masks).prediction, model(features, masks).prediction, atol=1e-5)


def test_joint_sequence_holds_cls_then_real_steps_in_modality_order() -> None:
    features, masks = _batch(THREE, {"text": 5, "audio": 9, "vision": 4})
    model = AOBERT(THREE, **SMALL).eval()
    model.encoder = Passthrough()
    hidden = model.encode(features, masks)
    assert hidden.shape == (4, 1 + 5 + 9 + 4, 16)
    assert torch.equal(hidden[:, 0], model.cls.expand(4, -1))
    for b in range(4):
        real = [model.projections[m](features[m][b, masks[m][b]]) + (model.modality_embeddings[m] if m != "text" else 0) for m in THREE]
        expected = torch.cat(real)
        assert torch.allclose(hidden[b, 1 : 1 + len(expected)], expected, atol=1e-6)


def test_long_streams_are_resampled_to_max_frames() -> None:
    features, masks = _batch(THREE, {"text": 5, "audio": 40, "vision": 4})
    model = AOBERT(THREE, max_frames=8, **SMALL).eval()
    model.encoder = Passthrough()
    assert model.encode(features, masks).shape[1] == 1 + 5 + 8 + 4
    assert model(features, masks).prediction.shape == (4,)


# --- the objectives --------------------------------------------------------------------------


def test_choose_masked_steps_masks_only_real_unprotected_steps_and_at_least_one() -> None:
    torch.manual_seed(0)
    mask = torch.arange(10)[None, :] < torch.tensor([10, 3, 1, 0])[:, None]
    protected = torch.zeros_like(mask)
    protected[:, 0] = True
    for probability in (0.0, 0.15, 1.0):
        chosen = choose_masked_steps(mask, probability, protected)
        assert not (chosen & ~mask).any() and not (chosen & protected).any()
        assert chosen.any(1).tolist() == [True, True, False, False]  # row 2: only [CLS]; row 3: empty
    assert choose_masked_steps(mask, 1.0, protected).sum().item() == 9 + 2
    rates = choose_masked_steps(torch.ones(2000, 50, dtype=torch.bool), 0.15).float().mean().item()
    assert abs(rates - 0.15) < 0.005


def test_masked_states_read_the_masked_verbal_steps() -> None:
    """With the transformer replaced by a pass-through, the states MMLM reads at the masked steps
    are exactly the mask vector: the index map from verbal steps to the joint sequence is right."""
    features, masks = _batch(THREE, {"text": 6, "audio": 5, "vision": 4}, seed=3)
    model = AOBERT(THREE, **SMALL).eval()
    model.encoder = Passthrough()
    with torch.no_grad():
        model.mask_vector.fill_(7.0)
    verbal_mask, targets, _ = model.verbal_steps(features, masks)
    masked = choose_masked_steps(verbal_mask, 0.5)
    states = model.masked_states(model.encode(features, masks, masked=masked), verbal_mask, masked)
    assert states.shape == (int(masked.sum()), 16) and bool((states == 7.0).all())
    unmasked = model.masked_states(model.encode(features, masks), verbal_mask, masked)
    assert torch.allclose(unmasked, model.projections["text"](targets[masked]), atol=1e-6)


def test_misaligned_samples_receive_the_next_samples_nonverbal_streams() -> None:
    features, masks = _batch(THREE, 4, seed=5)
    masks = {m: torch.ones_like(x) for m, x in masks.items()}
    model = AOBERT(THREE, **SMALL).eval()
    model.encoder = Passthrough()
    partner = torch.tensor([1, 2, 3, 0])
    aligned, swapped = model.encode(features, masks), model.encode(features, masks, partner=partner)
    assert torch.equal(swapped[:, : 1 + 4], aligned[:, : 1 + 4])  # [CLS] and text stay
    assert torch.equal(swapped[:, 5:], aligned[partner, 5:])


def test_training_forward_reports_mmlm_and_ap_and_every_parameter_learns() -> None:
    torch.manual_seed(0)
    features, masks = _batch(THREE)
    model = AOBERT(THREE, **SMALL).train()
    output = model(features, masks, torch.randn(4))
    loss = model.loss(output, torch.randn(4))
    assert set(loss.components) == {"task", "mmlm", "ap"}
    assert torch.allclose(loss.total, loss.components["task"] + loss.components["mmlm"] + loss.components["ap"])
    loss.total.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()] == []
    assert int(model.steps_done) == 1


@pytest.mark.parametrize(("probability", "expected"), [(0.0, 0.0), (1.0, 10.0)])
def test_alignment_prediction_targets_aligned_as_one(probability: float, expected: float) -> None:
    """A head that always says "aligned" (logit 10) costs ~0 on aligned batches, ~10 on misaligned ones."""
    features, masks = _batch(THREE)
    model = AOBERT(THREE, misalign_probability=probability, **SMALL).train()
    with torch.no_grad():
        model.alignment_head.weight.zero_()
        model.alignment_head.bias.fill_(10.0)
    _, ap = model.pretraining_losses(features, masks)
    assert float(ap.detach()) == pytest.approx(expected, abs=1e-3)


def test_batch_of_one_skips_alignment_prediction_and_stays_finite() -> None:
    features, masks = _batch(THREE, batch=1)
    model = AOBERT(THREE, **SMALL).train()
    output = model(features, masks)
    assert float(output.components["ap"]) == 0.0 and torch.isfinite(output.aux_losses["pretraining"])


def test_pretrain_steps_leave_the_task_loss_out_then_bring_it_in() -> None:
    torch.manual_seed(0)
    features, masks = _batch(THREE)
    labels = torch.randn(4)
    model = AOBERT(THREE, pretrain_steps=2, **SMALL).train()
    for step in (1, 2, 3):
        model.zero_grad()
        output = model(features, masks, labels)
        loss = model.loss(output, labels)
        loss.total.backward()
        head_grad = model.head[1].weight.grad
        if step <= 2:
            assert torch.equal(loss.total, output.aux_losses["pretraining"]) and head_grad is None
        else:
            assert head_grad is not None and head_grad.abs().sum() > 0
    assert int(model.state_dict()["steps_done"]) == 3  # saved in checkpoints: a resume continues the schedule


def test_pretrain_weight_zero_turns_the_objectives_off() -> None:
    features, masks = _batch(THREE)
    model = AOBERT(THREE, pretrain_weight=0.0, **SMALL).train()
    output = model(features, masks)
    assert output.aux_losses == {} and output.components == {}


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"max_frames": 0}, "max_frames"),
        ({"mask_probability": 1.5}, "mask_probability"),
        ({"misalign_probability": -0.1}, "misalign_probability"),
        ({"pretrain_weight": float("nan")}, "pretrain_weight"),
        ({"pretrain_steps": -1}, "pretrain_steps"),
        ({"n_heads": 3}, "n_heads"),
        ({"out_dropout": 1.0}, "out_dropout"),
    ],
)
def test_bad_options_name_the_argument(options: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}:"):
        AOBERT(THREE, **{**SMALL, **options})


# --- with a BERT -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BERT (vocabulary of 100, [MASK] = 4 in its vocab.txt), saved like a download."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertModel(config).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]) + "\n")
    return path


def _tokens(batch: int = 4, steps: int = 10) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.arange(steps)[None, :] < torch.tensor([10, 4, 7, 3])[:batch, None]
    ids = torch.randint(5, 100, (batch, steps), generator=g) * mask
    return torch.stack([ids, mask.long(), torch.zeros_like(ids)], -1), mask


@needs_transformers
def test_bert_path_reads_mask_id_from_vocab_and_trains_bert(tiny_bert: Path) -> None:
    torch.manual_seed(0)
    tokens, text_mask = _tokens()
    features, masks = _batch({"audio": 5, "vision": 7}, 60)
    model = AOBERT({"text": 3, "audio": 5, "vision": 7}, text_encoder=str(tiny_bert), max_frames=8).train()
    assert model.mask_token_id == 4 == mask_token_id_from_vocab(tiny_bert) and model.hidden_size == 32
    output = model({"text": tokens, **features}, {"text": text_mask, **masks})
    loss = model.loss(output, torch.randn(4))
    assert output.prediction.shape == (4,) and torch.isfinite(loss.total)
    assert loss.components["mmlm"] > 3.0  # a random BERT: cross-entropy near log(100) = 4.6
    loss.total.backward()
    assert model.text_encoder.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model.text_encoder.bert.embeddings.token_type_embeddings.weight.grad[1].abs().sum() > 0  # the frames' type


@needs_transformers
def test_bert_path_never_masks_cls_or_sep(tiny_bert: Path) -> None:
    tokens, text_mask = _tokens()
    model = AOBERT({"text": 3, "audio": 5}, text_encoder=str(tiny_bert))
    mask, targets, protected = model.verbal_steps({"text": tokens}, {})
    assert torch.equal(mask, text_mask) and torch.equal(targets, tokens[..., 0])
    assert protected[:, 0].all() and protected[torch.arange(4), text_mask.sum(1) - 1].all() and int(protected.sum()) == 8


@needs_transformers
def test_bert_path_errors_name_the_argument(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^text_encoder: needs a 'text' modality"):
        AOBERT({"audio": 5, "vision": 7}, text_encoder=str(tiny_bert))
    with pytest.raises(ValueError, match=r"^mask_token_id: expected an id in \[0, 100\)"):
        AOBERT({"text": 3, "audio": 5}, text_encoder=str(tiny_bert), mask_token_id=103)
    without_vocab = tmp_path / "bert"
    without_vocab.mkdir()
    for name in ("config.json", "model.safetensors"):
        (without_vocab / name).write_bytes((tiny_bert / name).read_bytes())
    with pytest.raises(ValueError, match="^mask_token_id: not given, and .*vocab.txt is missing"):
        AOBERT({"text": 3, "audio": 5}, text_encoder=str(without_vocab))
