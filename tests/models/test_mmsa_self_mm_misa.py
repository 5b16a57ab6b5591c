"""Self-MM and MISA against MMSA 2.2.1: its weights, converted, give its outputs.

Both sides read text with the same tiny random BERT, saved once to a local folder with a vocabulary
file so that MMSA's ``BertTextEncoder`` (which loads a tokenizer and a model by name) finds
everything on disk: nothing is downloaded. MMSA's models are built through its ``AMIO`` wrapper,
as its trainers save them (keys prefixed ``"Model."``), every weight is then moved off its
initial value (BERT's too, so that only the converter carries them to our side), and the same
batch runs through both in evaluation mode. MMSA's MISA projects text with a hard-coded
768-wide layer, so its BERT is 768 wide (one layer, small vocabulary); Self-MM's is 32 wide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("MMSA", reason="the MMSA reference toolkit (pip install mmsa==2.2.1) is not installed")
# MMSA's MISA builds a sequence-first transformer; PyTorch says so on every construction.
pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning")

from easydict import EasyDict  # noqa: E402  (an MMSA dependency)
from MMSA.models.AMIO import AMIO  # noqa: E402
from MMSA.trains.singleTask.MISA import MISA as MISATrainer  # noqa: E402

from alignkit_models.layers.text import BertTextEncoder  # noqa: E402
from alignkit_models.mmsa.bert_models import (  # noqa: E402
    convert_mmsa_misa_state_dict,
    convert_mmsa_self_mm_state_dict,
    misa_from_mmsa_state_dict,
    self_mm_from_mmsa_state_dict,
)
from alignkit_models.models.self_mm import FUSION  # noqa: E402

VOCAB = 100
TOKENS = 9
TEXT_LENGTHS = torch.tensor([9, 5, 3, 7, 1])
AUDIO_STEPS, AUDIO_LENGTHS = 11, torch.tensor([11, 4, 2, 8, 6])
VISION_STEPS, VISION_LENGTHS = 7, torch.tensor([3, 7, 1, 5, 6])
WIDTHS = {"audio": 5, "vision": 20}
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def save_tiny_bert(folder: Path, hidden: int, layers: int) -> Path:
    """A random BERT (no dropout, so training-mode outputs are deterministic) and a vocabulary file."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(special + [f"word{i}" for i in range(VOCAB - len(special))]) + "\n")
    return folder


@pytest.fixture(scope="module")
def small_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert-32"), hidden=32, layers=2)


@pytest.fixture(scope="module")
def wide_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert-768"), hidden=768, layers=1)


def mmsa_tokens(lengths: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """MMSA's text layout ``(B, 3, L)``: token ids, attention mask, segment ids (second half 1)."""
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.arange(TOKENS)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, VOCAB, (len(lengths), TOKENS), generator=generator) * mask
    segments = (torch.arange(TOKENS)[None, :] >= (lengths[:, None] + 1) // 2).long() * mask
    return torch.stack([ids, mask, segments], dim=1)


def sequence(steps: int, width: int, lengths: torch.Tensor, seed: int) -> torch.Tensor:
    """Random ``(B, steps, width)`` with large values after each length: padding must not count."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), steps, width, generator=generator)
    padding = torch.arange(steps)[None, :, None] >= lengths[:, None, None]
    return torch.where(padding, 50.0 * torch.ones(()), x)


def mask(steps: int, lengths: torch.Tensor) -> torch.Tensor:
    return torch.arange(steps)[None, :] < lengths[:, None]


def perturb_every_weight(model: torch.nn.Module, seed: int = 2) -> None:
    """Move every parameter (BERT's, LayerNorm's ones and zeros) off its initial value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


# --- Self-MM -------------------------------------------------------------------------------------


def mmsa_self_mm(bert: Path) -> torch.nn.Module:
    """MMSA's Self-MM at its MOSI widths (text width: the tiny BERT's 32), weights perturbed."""
    args = EasyDict(
        model_name="self_mm", need_model_aligned=False, need_data_aligned=False, use_finetune=True,
        transformers="bert", pretrained=str(bert), feature_dims=[32, WIDTHS["audio"], WIDTHS["vision"]],
        a_lstm_hidden_size=16, v_lstm_hidden_size=32, a_lstm_layers=1, v_lstm_layers=1, a_lstm_dropout=0.0,
        v_lstm_dropout=0.0, text_out=32, audio_out=16, video_out=32, post_fusion_dim=128, post_text_dim=32,
        post_audio_dim=16, post_video_dim=32, post_fusion_dropout=0.0, post_text_dropout=0.1,
        post_audio_dropout=0.1, post_video_dropout=0.0, H=3.0,
    )
    torch.manual_seed(3)
    model = AMIO(args)
    perturb_every_weight(model)
    return model.eval()


def self_mm_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        mmsa_tokens(TEXT_LENGTHS),
        sequence(AUDIO_STEPS, WIDTHS["audio"], AUDIO_LENGTHS, seed=4),
        sequence(VISION_STEPS, WIDTHS["vision"], VISION_LENGTHS, seed=5),
    )


def ours_inputs(
    tokens: torch.Tensor, audio: torch.Tensor, audio_lengths: torch.Tensor, vision: torch.Tensor, vision_lengths: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Our layout of an MMSA batch: text ``(B, L, 3)``, a mask per modality from its lengths."""
    features = {"text": tokens.transpose(1, 2), "audio": audio, "vision": vision}
    masks = {
        "text": tokens[:, 1].bool(),
        "audio": mask(audio.shape[1], audio_lengths),
        "vision": mask(vision.shape[1], vision_lengths),
    }
    return features, masks


ORDERS = [("text", "audio", "vision"), ("vision", "text", "audio")]


@pytest.mark.parametrize("order", ORDERS, ids="-".join)
def test_self_mm_converted_weights_give_mmsa_predictions(small_bert: Path, order: tuple[str, ...]) -> None:
    reference = mmsa_self_mm(small_bert)
    tokens, audio, vision = self_mm_batch()
    input_dims = {m: {"text": 3, **WIDTHS}[m] for m in order}
    model = self_mm_from_mmsa_state_dict(reference.state_dict(), text_encoder=str(small_bert), input_dims=input_dims).eval()
    features, masks = ours_inputs(tokens, audio, AUDIO_LENGTHS, vision, VISION_LENGTHS)
    with torch.no_grad():
        expected = reference(tokens, (audio, AUDIO_LENGTHS), (vision, VISION_LENGTHS))
        output = model(features, masks)
    assert model.modalities == order
    torch.testing.assert_close(output.prediction, expected["M"].view(-1), **TOLERANCE)


def test_self_mm_unimodal_heads_and_label_features_match_mmsa(small_bert: Path) -> None:
    reference = mmsa_self_mm(small_bert)
    tokens, audio, vision = self_mm_batch()
    model = self_mm_from_mmsa_state_dict(reference.state_dict(), text_encoder=str(small_bert)).eval()
    features, masks = ours_inputs(tokens, audio, AUDIO_LENGTHS, vision, VISION_LENGTHS)
    with torch.no_grad():
        expected = reference(tokens, (audio, AUDIO_LENGTHS), (vision, VISION_LENGTHS))
        vectors = model.encode(features, masks)
        fusion_feature, _ = model.fusion_head(torch.cat([vectors[m] for m in model.modalities], -1))
        heads = {m: model.unimodal_heads[m](vectors[m]) for m in model.modalities}
    torch.testing.assert_close(fusion_feature, expected["Feature_f"], **TOLERANCE)
    for ours, theirs in (("text", "t"), ("audio", "a"), ("vision", "v")):
        torch.testing.assert_close(heads[ours][0], expected[f"Feature_{theirs}"], **TOLERANCE, msg=ours)
        torch.testing.assert_close(heads[ours][1], expected[theirs.upper()], **TOLERANCE, msg=ours)


def test_self_mm_options_read_from_the_weights_and_mmsa_defaults(small_bert: Path) -> None:
    model = self_mm_from_mmsa_state_dict(mmsa_self_mm(small_bert).state_dict(), text_encoder=str(small_bert))
    assert model.input_dims == {"text": 3, "audio": 5, "vision": 20}
    assert {m: e.lstm.hidden_size for m, e in model.encoders.items()} == {"audio": 16, "vision": 32}
    assert {m: h.first[1].out_features for m, h in model.unimodal_heads.items()} == {"text": 32, "audio": 16, "vision": 32}
    assert model.fusion_head.first[1].out_features == 128
    dropouts = {m: h.first[0].p for m, h in model.unimodal_heads.items()} | {FUSION: model.fusion_head.first[0].p}
    assert dropouts == {"text": 0.1, "audio": 0.1, "vision": 0.0, FUSION: 0.0}
    assert model.regression_loss == "l1"


def test_self_mm_convert_fills_every_entry_and_keeps_the_models_empty_class_centres(small_bert: Path) -> None:
    reference = mmsa_self_mm(small_bert)
    model = self_mm_from_mmsa_state_dict(reference.state_dict(), text_encoder=str(small_bert))
    converted = convert_mmsa_self_mm_state_dict(reference.state_dict(), model)
    assert set(converted) == set(model.state_dict())
    assert int(model.label_generator.updates) == 0 and not model.label_generator.centres[FUSION].ready


# --- MISA ----------------------------------------------------------------------------------------

MISA_HIDDEN = 16


def mmsa_misa(bert: Path, dropout: float = 0.2) -> torch.nn.Module:
    """MMSA's MISA (use_cmd_sim, LSTM cells) with hidden 16, weights perturbed."""
    args = EasyDict(
        model_name="misa", need_model_aligned=False, need_data_aligned=False, use_finetune=True, use_bert=True,
        transformers="bert", pretrained=str(bert), feature_dims=[768, WIDTHS["audio"], WIDTHS["vision"]],
        train_mode="regression", num_classes=3, dropout=dropout, rnncell="lstm", use_cmd_sim=True,
        hidden_size=MISA_HIDDEN, reverse_grad_weight=0.8,
    )
    torch.manual_seed(6)
    model = AMIO(args)
    perturb_every_weight(model)
    return model.eval()


def misa_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MMSA packs MISA's audio and vision with the text lengths: word-aligned inputs of ``TOKENS`` steps."""
    return (
        mmsa_tokens(TEXT_LENGTHS),
        sequence(TOKENS, WIDTHS["audio"], TEXT_LENGTHS, seed=7),
        sequence(TOKENS, WIDTHS["vision"], TEXT_LENGTHS, seed=8),
    )


@pytest.mark.parametrize("order", ORDERS, ids="-".join)
def test_misa_converted_weights_give_mmsa_predictions(wide_bert: Path, order: tuple[str, ...]) -> None:
    reference = mmsa_misa(wide_bert)
    tokens, audio, vision = misa_batch()
    input_dims = {m: {"text": 3, **WIDTHS}[m] for m in order}
    model = misa_from_mmsa_state_dict(reference.state_dict(), text_encoder=str(wide_bert), input_dims=input_dims).eval()
    features, masks = ours_inputs(tokens, audio, TEXT_LENGTHS, vision, TEXT_LENGTHS)
    with torch.no_grad():
        expected = reference(tokens, audio, vision)["M"]
        output = model(features, masks)
    assert model.modalities == order
    torch.testing.assert_close(output.prediction, expected.view(-1), **TOLERANCE)


def test_misa_auxiliary_terms_equal_mmsa_trainer_losses(wide_bert: Path) -> None:
    # Training mode without dropout before the fusion (BERT's is 0): MMSA's trainer reads the
    # subspace vectors its model stored during the forward pass.
    reference = mmsa_misa(wide_bert, dropout=0.0).train()
    tokens, audio, vision = misa_batch()
    model = misa_from_mmsa_state_dict(reference.state_dict(), text_encoder=str(wide_bert), dropout=0.0, fusion_dropout=0.0).train()
    features, masks = ours_inputs(tokens, audio, TEXT_LENGTHS, vision, TEXT_LENGTHS)
    trainer = MISATrainer(EasyDict(train_mode="regression", dataset_name="mosi", use_cmd_sim=True))
    trainer.model = reference
    with torch.no_grad():
        reference(tokens, audio, vision)
        output = model(features, masks, torch.zeros(len(TEXT_LENGTHS)))
        expected = {"sim": trainer.get_cmd_loss(), "diff": trainer.get_diff_loss(), "recon": trainer.get_recon_loss()}
    for name, value in expected.items():
        torch.testing.assert_close(output.components[name], value, **TOLERANCE, msg=name)


def test_misa_options_read_from_the_weights_and_mmsa_defaults(wide_bert: Path) -> None:
    model = misa_from_mmsa_state_dict(mmsa_misa(wide_bert).state_dict(), text_encoder=str(wide_bert))
    assert model.input_dims == {"text": 3, "audio": 5, "vision": 20}
    assert {m: e.rnn1.hidden_size for m, e in model.encoders.items()} == {"audio": 5, "vision": 20}
    assert model.fusion.linear1.out_features == 2048 and model.fusion.dropout.p == 0.1
    assert model.head[1].p == 0.2
    assert model.loss_weights == {"sim": 0.3, "diff": 0.1, "recon": 1.0}
    assert model.regression_loss == "mse"


def test_misa_convert_maps_every_parameter_of_a_model_built_with_mmsa_options(wide_bert: Path) -> None:
    reference = mmsa_misa(wide_bert)
    model = misa_from_mmsa_state_dict(reference.state_dict(), text_encoder=str(wide_bert))
    converted = convert_mmsa_misa_state_dict(reference.state_dict(), model)
    assert set(converted) == {name for name, _ in model.named_parameters()}


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("load", [self_mm_from_mmsa_state_dict, misa_from_mmsa_state_dict])
def test_a_checkpoint_needs_a_text_encoder_folder(load: Any) -> None:
    with pytest.raises(ValueError, match="text_encoder"):
        load({})


def test_an_unknown_or_missing_key_is_named(small_bert: Path) -> None:
    state = mmsa_self_mm(small_bert).state_dict()
    with pytest.raises(ValueError, match="unexpected parameter 'post_extra_layer.weight'"):
        self_mm_from_mmsa_state_dict({**state, "Model.post_extra_layer.weight": torch.zeros(1)}, text_encoder=str(small_bert))
    state.pop("Model.post_video_layer_2.bias")
    with pytest.raises(ValueError, match="missing 'post_video_layer_2.bias'"):
        self_mm_from_mmsa_state_dict(state, text_encoder=str(small_bert))


def test_a_gru_checkpoint_is_refused(wide_bert: Path) -> None:
    state = mmsa_misa(wide_bert).state_dict()
    state["Model.arnn1.weight_ih_l0"] = torch.zeros(3 * 5, 5)
    with pytest.raises(ValueError, match="GRU"):
        misa_from_mmsa_state_dict(state, text_encoder=str(wide_bert))


def test_options_that_disagree_with_the_weights_are_refused(small_bert: Path) -> None:
    with pytest.raises(ValueError, match="fusion_dim: the checkpoint has 128"):
        self_mm_from_mmsa_state_dict(mmsa_self_mm(small_bert).state_dict(), text_encoder=str(small_bert), fusion_dim=64)


# --- the pooled BERT encoder both models use ------------------------------------------------------


def test_pooled_text_encoder_returns_the_first_vector_or_the_masked_mean(small_bert: Path) -> None:
    tokens = mmsa_tokens(TEXT_LENGTHS).transpose(1, 2)
    every = BertTextEncoder(small_bert).eval()(tokens)
    weights = tokens[..., 1:2].float()
    torch.testing.assert_close(BertTextEncoder(small_bert, pooling="first").eval()(tokens), every[:, 0])
    torch.testing.assert_close(BertTextEncoder(small_bert, pooling="mean").eval()(tokens), (every * weights).sum(1) / weights.sum(1))
    with pytest.raises(ValueError, match="pooling"):
        BertTextEncoder(small_bert, pooling="max")  # type: ignore[arg-type]
