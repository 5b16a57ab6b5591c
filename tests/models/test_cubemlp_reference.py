"""CubeMLP against the authors' released code (kiva12138/CubeMLP, ACM MM 2022): same weights, same numbers.

The oracle is the authors' own code, imported from a checkout named by the environment variable
``ALIGNKIT_CUBEMLP_REFERENCE``; without it the tests that need it are skipped. To run them::

    git clone https://github.com/kiva12138/CubeMLP /tmp/cubemlp-ref     # written against commit 49f75bd
    ALIGNKIT_CUBEMLP_REFERENCE=/tmp/cubemlp-ref OMP_NUM_THREADS=1 python -m pytest -q tests/models/test_cubemlp_reference.py

Their code loads ``bert-base-uncased`` from the Hugging Face hub: ``Model.py`` its config and
weights, ``Train.py`` a tokenizer when it is imported. Both sides get one tiny, randomly
initialised BERT saved to a temporary folder (dropout 0 inside, so that a training step is
deterministic) with a tiny word-piece vocabulary: in their imported ``Model`` module the names
``BertConfig`` and ``BertModel`` are replaced by stand-ins whose ``from_pretrained`` reads that
folder, and while ``Train.py`` is imported ``transformers.BertTokenizer`` is such a stand-in. The
tokenizer it returns offers ``batch_encode_plus``, which transformers 5 removed; it calls the
tokenizer on the batch, as version 4's did. ``Train.py`` imports ``torch.utils.tensorboard`` for
its logging; without tensorboard installed a stand-in whose ``SummaryWriter`` raises is used.
Their modules also need scipy and scikit-learn. Their files are not modified and nothing of their
code is copied here: the tests build their ``Model`` and call ``Train.py``'s functions.

Sizes: a 32-wide BERT, audio 5 and vision 20 wide, ``d_common`` 8, ``time_len`` 8, batches whose
token axis is longer and shorter than ``time_len``, audio/vision longer and shorter than the token
axis (cropped and padded when centred on it), random weights everywhere (biases, LayerNorms).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from alignkit_models.models.cubemlp import CubeMLP
from alignkit_models.models.cubemlp_reference import (
    REFERENCE_OPTIONS,
    convert_reference_state_dict,
    from_reference_state_dict,
    infer_options,
)

ENV = "ALIGNKIT_CUBEMLP_REFERENCE"
BERT_SIZE = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
WIDTHS = {"text": 32, "audio": 5, "vision": 20}
TIME_LEN, CHANNELS = 8, 8
# Their Train.py imports pearsonr from a namespace scipy deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Please import `pearsonr`:DeprecationWarning")
_THEIR_MODULES = ("Config", "DataLoaderCMUSDK", "DataLoaderLocal", "DataLoaderUniversal", "MLPProcess", "Model", "Parameters", "Train", "Utils")
_WORDS = ("the", "a", "movie", "film", "was", "is", "not", "very", "good", "bad", "funny", "boring", "i", "it", "really")
_STEMS = ("play", "like", "love", "hate", "act", "watch")
_SUFFIXES = ("##ed", "##ing", "##s", "##er")
VOCABULARY = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS, *_STEMS, *_SUFFIXES)
"""Whole words and stems with suffixes, so that some words become two tokens."""

# Their model configurations (``opt`` of ``Model.py``), all on the tiny BERT and MOSI-like widths.
CONFIGS: dict[str, dict[str, Any]] = {
    # The README MOSI run, smaller: --ln_first --bias --res_project 1-1, mean over time, concat over modalities.
    "readme": {
        "d_hiddens": [[6, 3, 8], [3, 3, 4]], "d_outs": [[6, 3, 8], [3, 3, 4]], "res_project": [True, True],
        "bias": True, "ln_first": True, "features_compose_t": "mean", "features_compose_k": "cat", "num_class": 1,
    },
    # Their defaults otherwise (LayerNorm last, no bias, 'cat' pooling), the modality axis shrunk,
    # hidden sizes unlike the outputs, a block without residual projection, a 128-wide head, 4 outputs.
    "variant": {
        "d_hiddens": [[5, 4, 6], [4, 3, 7], [3, 2, 9]], "d_outs": [[6, 2, 8], [6, 2, 8], [6, 2, 12]],
        "res_project": [True, False, True], "bias": False, "ln_first": False,
        "features_compose_t": "cat", "features_compose_k": "cat", "num_class": 4,
    },
    # One block keeping every size, no residual projection, concat over time and mean over modalities ('sum').
    "composed": {
        "d_hiddens": [[9, 2, 5]], "d_outs": [[8, 3, 8]], "res_project": [False], "bias": True, "ln_first": True,
        "features_compose_t": "cat", "features_compose_k": "sum", "num_class": 1,
    },
}
MOSI_DROPOUTS = {"dropout": [0.1] * 4, "dropout_mlp": [0.1] * 3}
NO_DROPOUT = {"dropout": [0.0] * 4, "dropout_mlp": [0.0] * 3}


# --- their code ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny BERT and its vocabulary, saved like a downloaded checkpoint."""
    transformers = pytest.importorskip("transformers", reason="the text path of CubeMLP's code needs transformers")
    config = transformers.BertConfig(
        **BERT_SIZE, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCABULARY) + "\n", encoding="utf-8")
    return folder


class _FromFolder:
    """Stands for a transformers class in their modules: ``from_pretrained(any name)`` reads ``folder``."""

    def __init__(self, cls: Any, folder: Path, wrap: Any = None) -> None:
        self.cls, self.folder, self.wrap = cls, folder, wrap

    def from_pretrained(self, name: str, *args: Any, **kwargs: Any) -> Any:
        loaded = self.cls.from_pretrained(str(self.folder), *args, local_files_only=True, **kwargs)
        return loaded if self.wrap is None else self.wrap(loaded)


class _BatchEncoding:
    """A tokenizer with transformers 4's ``batch_encode_plus`` (removed in 5): the tokenizer called on the batch."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def batch_encode_plus(self, texts: list[str], **kwargs: Any) -> Any:
        return self.tokenizer(list(texts), **kwargs)


def _tensorboard_stand_in() -> types.ModuleType:
    module = types.ModuleType("torch.utils.tensorboard")

    class SummaryWriter:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("tensorboard stand-in: only Train.main logs; install tensorboard to use it")

    module.SummaryWriter = SummaryWriter  # type: ignore[attr-defined]
    return module


@pytest.fixture(scope="module")
def reference(request: pytest.FixtureRequest) -> types.SimpleNamespace:
    """Their ``Model`` and ``Train`` modules, imported from the checkout, reading the tiny BERT.

    Their module names (``Model``, ``Utils``, ``Config``...) are generic top-level names, so they
    are imported with the checkout first on ``sys.path`` and removed from ``sys.modules`` after.
    """
    root = os.environ.get(ENV)
    if not root or not (Path(root) / "Model.py").is_file() or not (Path(root) / "MLPProcess.py").is_file():
        # Deliberate: the reference is a third-party checkout we do not ship; the skip says how to get it.
        pytest.skip(
            f"CubeMLP's released code not found: git clone https://github.com/kiva12138/CubeMLP and set {ENV} "
            f"to the checkout, e.g. {ENV}=/tmp/cubemlp-ref python -m pytest -q tests/models/test_cubemlp_reference.py"
        )
    for package in ("sklearn", "scipy"):
        pytest.importorskip(package, reason=f"CubeMLP's released code needs {package}")
    tiny_bert: Path = request.getfixturevalue("tiny_bert")  # only built when the checkout is there
    import transformers

    saved = {name: sys.modules.pop(name) for name in _THEIR_MODULES if name in sys.modules}
    board = "torch.utils.tensorboard"
    stand_in = importlib.util.find_spec("tensorboard") is None and board not in sys.modules
    if stand_in:
        sys.modules[board] = _tensorboard_stand_in()
    tokenizer = transformers.BertTokenizer
    sys.path.insert(0, root)
    try:
        model_module = importlib.import_module("Model")
        transformers.BertTokenizer = _FromFolder(tokenizer, tiny_bert, _BatchEncoding)  # read once, by Train.py's import
        train_module = importlib.import_module("Train")
    finally:
        transformers.BertTokenizer = tokenizer
        sys.path.remove(root)
        for name in _THEIR_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
        if stand_in:
            del sys.modules[board]
    assert Path(model_module.__file__).resolve().is_relative_to(Path(root).resolve())
    # Only their private module objects change: their Model reads the tiny BERT instead of the hub.
    model_module.BertConfig = _FromFolder(transformers.BertConfig, tiny_bert)
    model_module.BertModel = _FromFolder(transformers.BertModel, tiny_bert)
    return types.SimpleNamespace(model=model_module, train=train_module, bert=tiny_bert)


def _options(config: str, dropouts: dict[str, list[float]], **changes: Any) -> types.SimpleNamespace:
    """The ``opt`` of their ``Model`` and ``Train`` functions, as ``Parameters.parse_args`` builds it."""
    return types.SimpleNamespace(
        d_t=WIDTHS["text"], d_a=WIDTHS["audio"], d_v=WIDTHS["vision"], d_common=CHANNELS, encoders="gru",
        activate="gelu", time_len=TIME_LEN, loss="MAE", bert_freeze="no", print_param=False,
        **{**CONFIGS[config], **dropouts, **changes},
    )


def _randomize(module: nn.Module, seed: int) -> None:
    """Every parameter drawn anew (PyTorch's init leaves LayerNorms 1 and 0, hiding a swapped norm)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


def _their_model(reference: types.SimpleNamespace, opt: types.SimpleNamespace, seed: int = 0) -> nn.Module:
    model = reference.model.Model(opt)
    _randomize(model, seed)
    return model


def _cloned(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in state.items()}


def _token_batch(seed: int, lengths: list[int], av_steps: int) -> dict[str, Tensor]:
    """Token ids padded at the end (as their tokenizer pads) and audio/vision padded at the end."""
    g = torch.Generator().manual_seed(seed)
    steps = max(lengths)
    mask = (torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(5, BERT_SIZE["vocab_size"], (len(lengths), steps), generator=g) * mask
    segments = (torch.rand(len(lengths), steps, generator=g) < 0.3).long() * mask
    batch = {"ids": ids, "mask": mask, "segments": segments}
    real = torch.randint(1, av_steps + 1, (len(lengths),), generator=g)
    real[0] = av_steps
    for m in ("audio", "vision"):
        present = (torch.arange(av_steps)[None, :] < real[:, None]).unsqueeze(-1)
        batch[m] = torch.randn(len(lengths), av_steps, WIDTHS[m], generator=g) * present
    return batch


# (seed, token lengths, audio/vision steps): the token axis longer than time_len with audio/vision
# cropped by an even count when centred on it; shorter with them padded by an odd count; shorter
# with them cropped by an odd count (the code rounds the half towards zero).
BATCHES = [(0, [10, 7, 4, 2], 12), (1, [6, 5, 3], 3), (2, [7, 5], 10)]


def _theirs_on(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch["ids"], batch["segments"], batch["mask"], batch["audio"], batch["vision"])[0]


def _tokens(batch: dict[str, Tensor]) -> Tensor:
    return torch.stack([batch["ids"], batch["mask"], batch["segments"]], dim=-1)


# --- predictions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS))
def test_predictions_equal_their_model_from_token_ids(reference: types.SimpleNamespace, config: str) -> None:
    theirs = _their_model(reference, _options(config, MOSI_DROPOUTS)).eval()
    ours = from_reference_state_dict(theirs.state_dict(), text_encoder=str(reference.bert)).eval()
    for seed, lengths, av_steps in BATCHES:
        batch = _token_batch(seed, lengths, av_steps)
        with torch.no_grad():
            expected = _theirs_on(theirs, batch)
            received = ours({"text": _tokens(batch), "audio": batch["audio"], "vision": batch["vision"]}).prediction
        expected = expected.squeeze(-1) if ours.task == "regression" else expected
        torch.testing.assert_close(received, expected, rtol=1e-5, atol=1e-5)


def test_predictions_equal_their_model_in_float64(reference: types.SimpleNamespace) -> None:
    """In float64 the comparison is far tighter than 1e-5, tight enough to see the ``1e-6`` the code
    writes into all-zero audio/vision steps inside the text's span."""
    theirs = _their_model(reference, _options("readme", MOSI_DROPOUTS)).double().eval()
    ours = from_reference_state_dict(theirs.state_dict(), text_encoder=str(reference.bert)).double().eval()
    for seed, lengths, av_steps in BATCHES:
        batch = {key: value.double() if value.is_floating_point() else value for key, value in _token_batch(seed, lengths, av_steps).items()}
        with torch.no_grad():
            expected = _theirs_on(theirs, batch).squeeze(-1)
            received = ours({"text": _tokens(batch), "audio": batch["audio"], "vision": batch["vision"]}).prediction
        torch.testing.assert_close(received, expected, rtol=0, atol=1e-12)


def test_predictions_equal_their_model_from_bert_states(reference: types.SimpleNamespace) -> None:
    """Without ``text_encoder`` the text is BERT's last hidden state (their ``bertmodel``'s output)."""
    theirs = _their_model(reference, _options("readme", MOSI_DROPOUTS)).eval()
    ours = from_reference_state_dict(theirs.state_dict()).eval()
    assert ours.text_encoder is None and ours.input_dims["text"] == WIDTHS["text"]
    for seed, lengths, av_steps in BATCHES:
        batch = _token_batch(seed, lengths, av_steps)
        with torch.no_grad():
            expected = _theirs_on(theirs, batch).squeeze(-1)
            states = theirs.bertmodel(input_ids=batch["ids"], attention_mask=batch["mask"], token_type_ids=batch["segments"])[0]
            features = {"text": states, "audio": batch["audio"], "vision": batch["vision"]}
            received = ours(features, {"text": batch["mask"].bool()}).prediction
        torch.testing.assert_close(received, expected, rtol=1e-5, atol=1e-5)


# --- training ------------------------------------------------------------------------------------


class _Recorder:
    """Their model, keeping the tensors ``Train.get_outputs_from_datas`` hands it."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.inputs = model, None

    def __call__(self, *args: Tensor, **kwargs: Any) -> Any:
        self.inputs = args
        return self.model(*args, **kwargs)


def _word_batch(seed: int, n_words: list[int]) -> tuple[list[list[str]], Tensor, Tensor, Tensor]:
    """Their data loader's form: word lists, audio and vision padded at the end (longest first), and
    labels mostly above the predictions (so that the head's bias gets an L1 gradient)."""
    g = torch.Generator().manual_seed(seed)
    vocabulary = list(_WORDS) + [stem + suffix.removeprefix("##") for stem in _STEMS for suffix in ("", *_SUFFIXES)]
    words = [[vocabulary[int(i)] for i in torch.randint(len(vocabulary), (n,), generator=g)] for n in n_words]
    steps = max(n_words)
    present = (torch.arange(steps)[None, :] < torch.tensor(n_words)[:, None]).unsqueeze(-1)
    audio = torch.randn(len(n_words), steps, WIDTHS["audio"], generator=g) * present
    vision = torch.randn(len(n_words), steps, WIDTHS["vision"], generator=g) * present
    return words, audio, vision, torch.tensor([2.5, -1.0, 1.5, 3.0, -2.0, 0.5][: len(n_words)])


@pytest.mark.parametrize(
    ("config", "dropouts"),
    [("readme", NO_DROPOUT), ("readme", MOSI_DROPOUTS), ("variant", MOSI_DROPOUTS)],
    ids=["readme-no-dropout", "readme-dropout", "variant-dropout"],
)
def test_a_training_step_gives_the_loss_and_gradients_of_their_script(
    reference: types.SimpleNamespace, config: str, dropouts: dict[str, list[float]]
) -> None:
    """Their ``Train.py`` pieces as ``train`` calls them (``get_outputs_from_datas``, the MAE loss
    of ``get_loss`` / ``get_loss_from_loss_func``, after ``other_model_operations``) against
    ``model.loss(output, labels).total.backward()`` on the tensors their script feeds the model.
    The batch has more words than ``time_len``, so their script truncates it, and word pieces make
    the token axis longer than ``time_len``, so the model crops it.

    With dropout on (0.1, the README's rates), both sides draw their dropout masks in the same
    order (text, audio, vision encodings; each unit's output; the head) from the same seed, so
    even then the numbers agree: this pins where dropout sits, not only the eval-mode function."""
    opt = _options(config, dropouts, num_class=1)  # their script's losses take one output
    theirs = _their_model(reference, opt)
    reference.train.other_model_operations(theirs, opt)  # their GRU init; every parameter trains ('no' freezing)
    ours = from_reference_state_dict(
        _cloned(theirs.state_dict()), text_encoder=str(reference.bert), dropout=dropouts["dropout"][0]
    )
    words, audio, vision, labels = _word_batch(0, [11, 9, 6, 3])

    theirs.train()
    recorder = _Recorder(theirs)
    torch.manual_seed(7)
    outputs = reference.train.get_outputs_from_datas(recorder, words, audio, vision, opt)
    loss = reference.train.get_loss_from_loss_func(outputs, labels, reference.train.get_loss(opt), opt)
    loss.backward()
    ids, segments, mask, their_audio, their_vision = recorder.inputs
    assert ids.shape[1] > TIME_LEN and their_audio.shape[1] == TIME_LEN  # both quirks are exercised

    ours.train()
    features = {"text": torch.stack([ids, mask, segments], dim=-1), "audio": their_audio, "vision": their_vision}
    torch.manual_seed(7)
    total = ours.loss(ours(features, None, labels), labels).total
    total.backward()

    torch.testing.assert_close(total, loss, rtol=1e-6, atol=1e-6)
    expected = convert_reference_state_dict({name: p.grad for name, p in theirs.named_parameters() if p.grad is not None})
    received = {name: p.grad for name, p in ours.named_parameters() if p.grad is not None}
    assert set(received) == set(expected) == {name for name, _ in ours.named_parameters()}
    assert all(float(gradient.abs().sum()) > 0 for gradient in expected.values())  # every comparison means something
    for name, gradient in expected.items():
        torch.testing.assert_close(received[name], gradient, rtol=1e-5, atol=1e-6, msg=name)


# --- converter -----------------------------------------------------------------------------------


def test_sizes_are_read_from_the_state_dict(reference: types.SimpleNamespace) -> None:
    readme = _their_model(reference, _options("readme", MOSI_DROPOUTS)).state_dict()
    assert infer_options(readme) == {
        "input_dims": WIDTHS, "channels": CHANNELS, "time_len": TIME_LEN, "blocks": ((6, 8), (3, 4)),
        "residual_projection": "always", "unit_bias": True, "norm_position": "first",
    }
    variant = _their_model(reference, _options("variant", MOSI_DROPOUTS)).state_dict()
    assert infer_options(variant) == {
        "input_dims": WIDTHS, "channels": CHANNELS, "time_len": TIME_LEN, "blocks": ((6, 2, 8), (6, 2, 8), (6, 2, 12)),
        "block_hiddens": ((5, 4, 6), (4, 3, 7), (3, 2, 9)), "residual_projection": ("always", "resized", "always"),
        "unit_bias": False, "norm_position": "last", "task": "classification", "n_classes": 4,
        "sequence_pooling": "concat", "modality_pooling": "concat",
    }
    composed = infer_options(_their_model(reference, _options("composed", MOSI_DROPOUTS)).state_dict())
    assert "norm_position" not in composed  # no axis changes size: the LayerNorms cannot tell
    assert (composed["sequence_pooling"], composed["modality_pooling"]) == ("concat", "mean")
    prefixed = {f"module.{key}": value for key, value in readme.items()}  # DataParallel
    model = from_reference_state_dict(prefixed)
    assert isinstance(model, CubeMLP) and model.shared_time_axis == "text" and model.padded_steps == "encoded"


def test_bad_keys_and_options_are_one_value_error(reference: types.SimpleNamespace) -> None:
    state = _their_model(reference, _options("readme", MOSI_DROPOUTS)).state_dict()
    cases = [
        ({**state, "mlp_encoder.layers_stack.0.mlp_l.fc3.weight": torch.zeros(1)}, {}, r"unexpected parameter 'mlp_encoder\.layers_stack\.0\.mlp_l\.fc3\.weight'"),
        ({**state, "conv_a.weight": torch.zeros(1)}, {}, r"unexpected parameter 'conv_a\.weight'.*'gru'"),
        ({k: v for k, v in state.items() if k != "W_t.weight"}, {}, r"missing 'W_t\.weight'"),
        ({k: v for k, v in state.items() if k != "mlp_encoder.layers_stack.1.ln_k.bias"}, {}, r"missing 'blocks\.1\.units\.1\.norm\.bias'"),
        ({**state, "ln_a.weight": torch.zeros(3)}, {}, r"size mismatch for encoders\.audio\.norm\.weight"),
        ({**state, "classifier.0.bias": [0.0]}, {}, r"state_dict\['classifier\.0\.bias'\]: expected a tensor"),
        (state, {"channels": 16}, r"^channels: the state_dict has 8, received 16$"),
        (state, {"sequence_pooling": "concat"}, r"size mismatch for head\.weight"),
    ]
    for bad, options, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            from_reference_state_dict(bad, **options)
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=r"unexpected parameter 'bertmodel'"):
        convert_reference_state_dict({"bertmodel": torch.zeros(1)})


# --- the options that restore the code (no reference needed) ------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("norm_position", "middle"), ("norm_eps", 0.0), ("unit_bias", 1), ("hidden_dropout", "no"),
        ("residual_projection", "never"), ("residual_projection", ("always", "always")), ("sequence_pooling", "max"),
        ("modality_pooling", "sum"), ("shared_time_axis", "audio2"), ("long_sequences", "crop"),
        ("padded_steps", "kept"), ("blocks", ((8, 3, 8, 1),)), ("block_hiddens", ((8, 8),)),
        ("block_hiddens", ((8, 3, 8), (1, 1, 1))),
    ],
)
def test_bad_option_values_name_the_option(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^{option}(\[\d+\])?: expected"):
        CubeMLP(WIDTHS, **{"time_len": TIME_LEN, "channels": CHANNELS, "blocks": ((8, 8),), option: value})


def test_the_shared_time_axis_centres_the_other_modalities_and_runs_their_grus_over_the_text() -> None:
    """Audio 2 steps on a 6-step text axis: 2 zero steps before, 2 after; vision 9 steps: 1 cropped
    before, 2 after (the half rounded towards zero). In float64, where ``1e-6`` is visible."""
    model = CubeMLP(WIDTHS, time_len=6, channels=4, blocks=((6, 4),), shared_time_axis="text", padded_steps="encoded",
                    long_sequences="truncate", dropout=0.0).double().eval()
    text_mask = torch.tensor([[True] * 5 + [False], [True] * 2 + [False] * 4])
    features = {m: torch.randn(2, steps, WIDTHS[m], dtype=torch.float64) for m, steps in (("text", 6), ("audio", 2), ("vision", 9))}
    cube = model.build_cube(features, {"text": text_mask})
    placed_audio = torch.cat([torch.zeros(2, 2, 5), features["audio"], torch.zeros(2, 2, 5)], dim=1)
    placed_audio[0, [0, 1, 4]] = placed_audio[1, [0, 1]] = 1e-6  # all-zero steps inside the text's real span
    exact = {"rtol": 0.0, "atol": 1e-12}
    torch.testing.assert_close(cube[:, :, 1], model.encoders["audio"](placed_audio, text_mask), **exact)
    torch.testing.assert_close(cube[:, :, 2], model.encoders["vision"](features["vision"][:, 1:7], text_mask), **exact)
    assert REFERENCE_OPTIONS["shared_time_axis"] == "text"
