"""CENet against MMSA's CENET: its weights, converted, give its predictions and its gradients.

The oracle is MMSA's own ``models/singleTask/CENET.py``. MMSA 2.2.1 (the PyPI release the other
``test_mmsa_*`` files use) predates it: the model was added to github.com/thuiar/MMSA in December
2023. The tests take it from the installed MMSA package when a later release ships it, else from
a checkout named by the environment variable ``ALIGNKIT_MMSA_REFERENCE``; without either, the
comparisons are skipped with that reason. To run them::

    git clone https://github.com/thuiar/MMSA /tmp/mmsa-ref      # written against commit a94e65d
    ALIGNKIT_MMSA_REFERENCE=/tmp/mmsa-ref python -m pytest -q tests/models/test_cenet_reference.py

Their file imports ``pytorch_transformers`` (1.2, long unmaintained) for three things only: the
``BertConfig`` class, the ``PreTrainedModel`` base class (which stores the configuration and
initialises weights) and ``prune_linear_layer`` (never called in a forward pass). When that package
is not installed, a stand-in provides them (transformers' ``BertConfig``, a base class that stores
the configuration and applies their ``_init_weights``) while their file is imported; every
weight is drawn anew afterwards, so the initialisation does not matter. Nothing of their code is
copied here: the tests build their ``CENET`` as MMSA's ``AMIO`` does (with SentiLARE's three extra
embedding tables) and run it.

Both sides read text with the same tiny random BERT (32 wide, 2 layers, so that the CE module
sits between them), saved to a local folder; every weight of their model is moved off its
initial value, and only the converter carries it to our side. Audio and vision are zero-padded
after random lengths (MMSA's CE has no masks: ``padding="included"``).

The authors' released code (github.com/Say2L/CENet, e208a83) cannot be run whole here: its
non-verbal inputs are k-means codes from their data pickle, and its backbone is SentiLARE (a
RoBERTa with extra embeddings, weights on Google Drive); see the module docstring of
``alignkit_models/models/cenet.py``. Its CE module alone can: with a checkout named by
``ALIGNKIT_CENET_REFERENCE``, one test feeds their code embeddings to our CE module (in place of
MMSA's feature transformation) and compares it with theirs.

The option checks at the end need only ``transformers``, not MMSA's code.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

transformers = pytest.importorskip("transformers", reason="the BERT text encoder needs Hugging Face transformers")

from alignkit_models.mmsa.cenet import (  # noqa: E402
    REFERENCE_OPTIONS,
    cenet_from_mmsa_state_dict,
    convert_mmsa_cenet_state_dict,
    infer_options,
)
from alignkit_models.models.cenet import CENet  # noqa: E402

VOCAB, HIDDEN, LAYERS, HEADS = 100, 32, 2, 4
TOKENS = 9
TEXT_LENGTHS = torch.tensor([9, 5, 3, 7, 1])
AUDIO_STEPS, AUDIO_LENGTHS = 11, torch.tensor([11, 4, 2, 8, 6])
VISION_STEPS, VISION_LENGTHS = 7, torch.tensor([3, 7, 1, 5, 6])
WIDTHS = {"audio": 5, "vision": 20}
TOLERANCE = {"rtol": 0.0, "atol": 1e-5}
_RELATIVE_PATH = Path("MMSA", "models", "singleTask", "CENET.py")
_STAND_IN = ("pytorch_transformers", "pytorch_transformers.modeling_utils")


# --- their code ----------------------------------------------------------------------------------


def _pytorch_transformers_stand_in() -> dict[str, types.ModuleType]:
    """The three names MMSA's CENET imports from ``pytorch_transformers`` 1.2."""
    package = types.ModuleType("pytorch_transformers")
    utils = types.ModuleType("pytorch_transformers.modeling_utils")

    class PreTrainedModel(nn.Module):
        """Holds ``config``; ``init_weights`` applies the subclass's ``_init_weights`` (as 1.2 does)."""

        def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__()
            self.config = config

        def init_weights(self) -> None:
            self.apply(self._init_weights)  # type: ignore[attr-defined]

    def prune_linear_layer(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("pytorch_transformers stand-in: head pruning is not available")

    utils.PreTrainedModel = PreTrainedModel  # type: ignore[attr-defined]
    utils.prune_linear_layer = prune_linear_layer  # type: ignore[attr-defined]
    package.modeling_utils = utils  # type: ignore[attr-defined]
    package.BertConfig = transformers.BertConfig  # type: ignore[attr-defined]
    package.BERT_PRETRAINED_MODEL_ARCHIVE_MAP = {}  # type: ignore[attr-defined]
    return {"pytorch_transformers": package, "pytorch_transformers.modeling_utils": utils}


def _their_file() -> Path | None:
    """MMSA's CENET.py: from the installed package if it ships one, else from the checkout."""
    spec = importlib.util.find_spec("MMSA")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder).parent / _RELATIVE_PATH
            if candidate.is_file():
                return candidate
    root = os.environ.get("ALIGNKIT_MMSA_REFERENCE")
    if root:
        for candidate in (Path(root) / "src" / _RELATIVE_PATH, Path(root) / _RELATIVE_PATH):
            if candidate.is_file():
                return candidate
    return None


@pytest.fixture(scope="module")
def reference() -> types.ModuleType:
    """Their ``CENET.py``, imported as a private module (with the stand-in when needed)."""
    path = _their_file()
    if path is None:
        # Deliberate: the reference is third-party code that MMSA 2.2.1 lacks; the skip says how to get it.
        pytest.skip(
            "MMSA's CENET not found: MMSA 2.2.1 (PyPI) predates it; git clone https://github.com/thuiar/MMSA "
            "and set ALIGNKIT_MMSA_REFERENCE to the checkout"
        )
    stand_in = importlib.util.find_spec("pytorch_transformers") is None
    saved = {name: sys.modules.pop(name) for name in _STAND_IN if name in sys.modules}
    if stand_in:
        sys.modules.update(_pytorch_transformers_stand_in())
    try:
        spec = importlib.util.spec_from_file_location("_mmsa_cenet_reference", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if stand_in:
            for name in _STAND_IN:
                sys.modules.pop(name, None)
        sys.modules.update(saved)
    return module


def save_tiny_bert(folder: Path, dropout: float) -> Path:
    """A random BERT and a vocabulary file; ``dropout`` for both of BERT's dropout rates."""
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(special + [f"word{i}" for i in range(VOCAB - len(special))]) + "\n")
    return folder


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BERT's usual dropout (0.1): eval mode must turn it off on both sides."""
    return save_tiny_bert(tmp_path_factory.mktemp("bert-dropout"), dropout=0.1)


@pytest.fixture(scope="module")
def bert_without_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert-no-dropout"), dropout=0.0)


def perturb_every_weight(model: nn.Module, seed: int = 2) -> None:
    """Move every parameter (LayerNorm's ones and zeros, the zero biases) off its initial value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))


def their_cenet(reference: types.ModuleType, folder: Path, n_labels: int = 1) -> nn.Module:
    """Their CENET as MMSA's ``AMIO`` builds it (SentiLARE embedding tables included), weights perturbed."""
    config = transformers.BertConfig.from_pretrained(str(folder), num_labels=n_labels)
    args = types.SimpleNamespace(feature_dims=[HIDDEN, WIDTHS["audio"], WIDTHS["vision"]])
    torch.manual_seed(3)
    model = reference.CENET(config, pos_tag_embedding=True, senti_embedding=True, polarity_embedding=True, args=args)
    perturb_every_weight(model)
    return model


def amio_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The keys as MMSA's trainer saves them (``AMIO`` holds the model as ``Model``)."""
    return {f"Model.{key}": value for key, value in model.state_dict().items()}


# --- the batch -----------------------------------------------------------------------------------


def mmsa_tokens(lengths: Tensor, seed: int = 1) -> Tensor:
    """MMSA's text layout ``(B, 3, L)``: token ids, attention mask, segment ids (second half 1)."""
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.arange(TOKENS)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, VOCAB, (len(lengths), TOKENS), generator=generator) * mask
    segments = (torch.arange(TOKENS)[None, :] >= (lengths[:, None] + 1) // 2).long() * mask
    return torch.stack([ids, mask, segments], dim=1)


def mask(steps: int, lengths: Tensor) -> Tensor:
    return torch.arange(steps)[None, :] < lengths[:, None]


def padded(steps: int, width: int, lengths: Tensor, seed: int) -> Tensor:
    """Random ``(B, steps, width)``, zero after each length (as MMSA's data pickles hold them)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(len(lengths), steps, width, generator=generator) * mask(steps, lengths)[..., None]


def batch() -> tuple[Tensor, Tensor, Tensor]:
    """MMSA's inputs: text ``(B, 3, L)``, audio ``(B, T_a, 5)``, vision ``(B, T_v, 20)``."""
    return (
        mmsa_tokens(TEXT_LENGTHS),
        padded(AUDIO_STEPS, WIDTHS["audio"], AUDIO_LENGTHS, seed=4),
        padded(VISION_STEPS, WIDTHS["vision"], VISION_LENGTHS, seed=5),
    )


def ours(tokens: Tensor, audio: Tensor, vision: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Our layout of the same batch: text ``(B, L, 3)``, a mask per modality from its lengths."""
    features = {"text": tokens.transpose(1, 2), "audio": audio, "vision": vision}
    masks = {"text": tokens[:, 1].bool(), "audio": mask(AUDIO_STEPS, AUDIO_LENGTHS), "vision": mask(VISION_STEPS, VISION_LENGTHS)}
    return features, masks


ORDERS = [("text", "audio", "vision"), ("vision", "text", "audio")]


# --- predictions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS, ids="-".join)
def test_converted_weights_give_mmsa_predictions(reference: types.ModuleType, bert: Path, order: tuple[str, ...]) -> None:
    theirs = their_cenet(reference, bert).eval()
    input_dims = {m: {"text": 3, **WIDTHS}[m] for m in order}
    model = cenet_from_mmsa_state_dict(amio_state_dict(theirs), text_encoder=str(bert), input_dims=input_dims).eval()
    tokens, audio, vision = batch()
    features, masks = ours(tokens, audio, vision)
    with torch.no_grad():
        expected = theirs(tokens, audio, vision)[0]
        output = model(features, masks)
    assert model.modalities == order
    assert expected.shape == (len(TEXT_LENGTHS), 1)
    torch.testing.assert_close(output.prediction, expected.view(-1), **TOLERANCE)
    assert expected.std() > 0.02  # the samples differ: not a constant both sides happen to share


def test_converted_weights_give_mmsa_logits_for_classification(reference: types.ModuleType, bert: Path) -> None:
    theirs = their_cenet(reference, bert, n_labels=3).eval()
    model = cenet_from_mmsa_state_dict(theirs.state_dict(), text_encoder=str(bert)).eval()
    assert model.task == "classification" and model.n_classes == 3
    tokens, audio, vision = batch()
    with torch.no_grad():
        expected = theirs(tokens, audio, vision)[0]
        output = model(*ours(tokens, audio, vision))
    torch.testing.assert_close(output.prediction, expected, **TOLERANCE)


def test_our_default_padding_departs_from_mmsa_on_padded_batches(reference: types.ModuleType, bert: Path) -> None:
    """The option matters: with padded steps masked (our default) the predictions differ."""
    theirs = their_cenet(reference, bert).eval()
    model = cenet_from_mmsa_state_dict(theirs.state_dict(), text_encoder=str(bert), padding="masked").eval()
    tokens, audio, vision = batch()
    with torch.no_grad():
        gap = (model(*ours(tokens, audio, vision)).prediction - theirs(tokens, audio, vision)[0].view(-1)).abs().max()
    assert gap > 1e-3


# --- training ------------------------------------------------------------------------------------


def _gradients(named: Iterator[tuple[str, nn.Parameter]]) -> tuple[dict[str, Tensor], set[str]]:
    """Every parameter's gradient (zeros where there is none) and the names without one."""
    gradients, without = {}, set()
    for name, parameter in named:
        if parameter.grad is None:
            without.add(name)
        gradients[name] = torch.zeros_like(parameter) if parameter.grad is None else parameter.grad
    return gradients, without


def test_training_step_gives_every_parameter_mmsa_gradient(reference: types.ModuleType, bert_without_dropout: Path) -> None:
    """What a step of MMSA's trainer computes before clipping (``L1Loss`` on the logits, train mode,
    no dropout): the same loss, and every parameter the same gradient; BERT's embedding layer gets
    none on either side."""
    theirs = their_cenet(reference, bert_without_dropout).train()
    model = cenet_from_mmsa_state_dict(theirs.state_dict(), text_encoder=str(bert_without_dropout)).train()
    tokens, audio, vision = batch()
    labels = torch.linspace(-3.0, 3.0, len(TEXT_LENGTHS))
    their_loss = nn.L1Loss()(theirs(tokens, audio, vision)[0], labels.view(-1, 1))
    their_loss.backward()
    features, masks = ours(tokens, audio, vision)
    our_loss = model.loss(model(features, masks, labels), labels).total
    our_loss.backward()
    torch.testing.assert_close(our_loss, their_loss, **TOLERANCE)

    their_gradients, their_none = _gradients(theirs.named_parameters())
    our_gradients, our_none = _gradients(model.named_parameters())
    expected = convert_mmsa_cenet_state_dict(their_gradients, model)
    assert set(expected) == set(our_gradients)
    errors = {name: (our_gradients[name] - expected[name]).abs().max().item() for name in expected}
    worst = max(errors, key=errors.__getitem__)
    assert errors[worst] <= TOLERANCE["atol"], f"{worst}: gradient differs by up to {errors[worst]:.3g}"
    frozen = {"word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias"}
    assert our_none == {f"text_encoder.bert.embeddings.{name}" for name in frozen}
    unread = {f"{table}_embeddings.weight" for table in ("senti", "pos_tag", "polarity")}
    assert their_none == {f"bert.embeddings.{name}" for name in frozen | unread} | {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    # The CE module and the layers after it learn: the check above compares non-zero gradients.
    assert our_gradients["enhancement.merge.weight"].abs().max() > 1e-4
    assert our_gradients["enhancement.transforms.audio.0.weight"].abs().max() > 1e-6
    assert model.head[0].p == 0.0  # read from the BERT configuration, as MMSA's head reads it


# --- the converter -------------------------------------------------------------------------------


def test_options_read_from_the_weights_and_mmsa_defaults(reference: types.ModuleType, bert: Path) -> None:
    theirs = their_cenet(reference, bert)
    assert infer_options(theirs.state_dict()) == {"input_dims": {"text": 3, "audio": 5, "vision": 20}, "task": "regression"}
    model = cenet_from_mmsa_state_dict(amio_state_dict(theirs), text_encoder=str(bert))
    assert model.regression_loss == "l1" and model.padding == "included" and model.freeze_text_embeddings
    assert model.ce_layer == 1 == theirs.bert.encoder.injection_index
    assert model.enhancement.attentions["audio"].score_scale == 8.0
    assert [module.p for module in model.head if isinstance(module, nn.Dropout)] == [0.1, 0.1]
    assert REFERENCE_OPTIONS == {
        "regression_loss": "l1", "padding": "included", "freeze_text_embeddings": True, "ce_layer": 1, "score_scale": 8.0,
    }


def test_converter_refuses_a_key_mmsa_cenet_does_not_have(reference: types.ModuleType, bert: Path) -> None:
    state = amio_state_dict(their_cenet(reference, bert))
    model = cenet_from_mmsa_state_dict(state, text_encoder=str(bert))
    state["Model.bert.encoder.CE.extra.weight"] = torch.zeros(2)
    unexpected = r"^state_dict: unexpected parameter 'bert\.encoder\.CE\.extra\.weight'; .*CENET\?$"
    with pytest.raises(ValueError, match=unexpected):
        cenet_from_mmsa_state_dict(state, text_encoder=str(bert))
    with pytest.raises(ValueError, match=unexpected):
        convert_mmsa_cenet_state_dict(state, model)
    with pytest.raises(ValueError, match=unexpected):
        infer_options(state)


def test_converter_refuses_a_missing_key_and_a_missing_text_encoder(reference: types.ModuleType, bert: Path) -> None:
    state = their_cenet(reference, bert).state_dict()
    with pytest.raises(ValueError, match=r"^text_encoder: MMSA's CENET runs inside BERT"):
        cenet_from_mmsa_state_dict(state)
    del state["bert.encoder.CE.ha.Wk.bias"]
    with pytest.raises(ValueError, match=r"^state_dict: missing 'bert\.encoder\.CE\.ha\.Wk\.bias'"):
        cenet_from_mmsa_state_dict(state, text_encoder=str(bert))
    state = their_cenet(reference, bert).state_dict()
    del state["bert.encoder.layer.1.output.dense.bias"]
    with pytest.raises(ValueError, match=r"missing 'text_encoder\.bert\.encoder\.layer\.1\.output\.dense\.bias'"):
        cenet_from_mmsa_state_dict(state, text_encoder=str(bert))


# --- the authors' CE module ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def authors_ce_module() -> types.ModuleType:
    """``networks/subnet/CEmodule.py`` of the authors' checkout, with their ``config.global_configs``
    (their constants: text width 768, 16 code clusters) loaded by path, not by package search."""
    root = os.environ.get("ALIGNKIT_CENET_REFERENCE")
    if not root or not (Path(root) / "networks" / "subnet" / "CEmodule.py").is_file():
        # Deliberate: the reference is a third-party checkout we do not ship; the skip says how to get it.
        pytest.skip(
            "CENet's released code not found: git clone https://github.com/Say2L/CENet and set "
            "ALIGNKIT_CENET_REFERENCE to the checkout"
        )
    names = ("config", "config.global_configs")
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    try:
        sys.modules["config"] = types.ModuleType("config")
        sys.modules["config.global_configs"] = _load(Path(root) / "config" / "global_configs.py", "config.global_configs")
        return _load(Path(root) / "networks" / "subnet" / "CEmodule.py", "_cenet_authors_ce_module")
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_authors_ce_module_equals_ours_on_their_code_embeddings(authors_ce_module: types.ModuleType) -> None:
    """Their CE module (codes -> embeddings -> text-queried attention x 8 -> [vision; audio] -> Linear,
    plus the text) against ours with the embedded codes as the non-verbal inputs."""
    width, codes = authors_ce_module.TEXT_DIM, authors_ce_module.label_size + 1
    torch.manual_seed(6)
    theirs = authors_ce_module.CE().eval()  # PyTorch's initialisation: random biases, N(0, 1) code tables
    generator = torch.Generator().manual_seed(8)
    text = torch.randn(3, 6, width, generator=generator)
    visual_ids = torch.randint(0, codes, (3, 4), generator=generator)  # index 16: their padding code
    acoustic_ids = torch.randint(0, codes, (3, 5), generator=generator)
    ce = CENet({"text": width, "audio": width, "vision": width}, dim=width, n_heads=4, padding="included").enhancement
    for m in ("audio", "vision"):
        ce.transforms[m] = nn.Identity()  # their codes are embedded by their tables, below
    renamed = {"hv": "attentions.vision", "ha": "attentions.audio", "Wq": "query", "Wk": "key", "Wv": "value"}
    state = {}
    for key, value in theirs.state_dict().items():
        if key.startswith(("hv.", "ha.")):
            head, projection, part = key.split(".")
            state[f"{renamed[head]}.{renamed[projection]}.{part}"] = value
    vision, audio = theirs.cat_connect.weight.split(width, dim=1)
    state["merge.weight"] = torch.cat([audio, vision], dim=1)  # ours: input_dims order, audio first
    state["merge.bias"] = theirs.cat_connect.bias
    ce.load_state_dict(state)
    others = {"vision": theirs.visual_embedding(visual_ids), "audio": theirs.acoustic_embedding(acoustic_ids)}
    masks = {"vision": torch.ones(3, 4, dtype=torch.bool), "audio": torch.ones(3, 5, dtype=torch.bool)}
    with torch.no_grad():
        expected = theirs(text, visual_ids=visual_ids, acoustic_ids=acoustic_ids)
        output = ce(text, others, masks)
    torch.testing.assert_close(output, expected, **TOLERANCE)
    assert (expected - text).abs().max() > 0.1  # the shift is not negligible


# --- options (no MMSA code needed) ---------------------------------------------------------------

BERT_DIMS = {"text": 3, **WIDTHS}


def test_bert_options_are_checked_with_the_argument_named(bert: Path) -> None:
    with pytest.raises(ValueError, match=r"^padding: expected 'masked' or 'included', received 'none'$"):
        CENet(BERT_DIMS, text_encoder=str(bert), padding="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^freeze_text_embeddings: .*needs text_encoder"):
        CENet({"text": 12, **WIDTHS}, freeze_text_embeddings=True)
    with pytest.raises(ValueError, match=r"^freeze_text_embeddings: expected a bool"):
        CENet(BERT_DIMS, text_encoder=str(bert), freeze_text_embeddings="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^text_encoder: needs the 'text' modality as the centre"):
        CENet(BERT_DIMS, text_encoder=str(bert), centre="audio")
    with pytest.raises(ValueError, match=r"^input_dims: with text_encoder, 'text' is token ids"):
        CENet({"text": 768, **WIDTHS}, text_encoder=str(bert))
    with pytest.raises(ValueError, match=rf"^ce_layer: expected an integer in \[0, {LAYERS}\], received 3$"):
        CENet(BERT_DIMS, text_encoder=str(bert), ce_layer=3)  # BERT's layer count, not n_layers, bounds it
    with pytest.raises(ValueError, match=r"^text_encoder: no such directory"):
        CENet(BERT_DIMS, text_encoder=str(bert / "absent"))


def test_bert_cenet_takes_bert_width_and_layers_and_freezes_only_the_embeddings(bert_without_dropout: Path) -> None:
    model = CENet(BERT_DIMS, text_encoder=str(bert_without_dropout), freeze_text_embeddings=True, ce_layer=LAYERS)
    assert model.enhancement.merge.out_features == HIDDEN and not hasattr(model, "layers")
    tokens, audio, vision = batch()
    output = model(*ours(tokens, audio, vision))
    assert output.prediction.shape == (len(TEXT_LENGTHS),) and output.representation.shape == (len(TEXT_LENGTHS), HIDDEN)
    output.prediction.sum().backward()
    without = {name for name, p in model.named_parameters() if p.grad is None}
    assert without and all(name.startswith("text_encoder.bert.embeddings.") for name in without)
    assert model.text_encoder is not None and model.text_encoder.bert.encoder.layer[0].output.dense.weight.grad is not None
