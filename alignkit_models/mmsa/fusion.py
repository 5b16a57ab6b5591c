"""Load MMSA 2.2.1 checkpoints of TFN, LMF, EF-LSTM and LF-DNN into the zoo's fusion baselines.

MMSA (``models/singleTask/{TFN,LMF,EF_LSTM,LF_DNN}.py``) always has the three modalities text,
audio and video (our ``"vision"``), given as ``feature_dims = (text, audio, video)``. Its models
map onto ours as::

    MMSA                                        ours
    TFN                                         TFN(hidden_dim={...}, fusion_dim={...}, padding="included")
    LMF                                         LMF(hidden_dim={...}, padding="included")
    EF_LSTM                                     EarlyFusion(proj_dim=None, pooling="last", step_batchnorm=T, ...)
    LF_DNN                                      LateFusion(encoder="subnet", fusion_layers=2, ...)

TFN, LMF and LF-DNN share TFN's subnets, renamed as::

    {audio,video}_subnet.norm.*                 <subnets>.{audio,vision}.layers.0.*   (BatchNorm)
    {audio,video}_subnet.linear_{1,2,3}.*       <subnets>.{audio,vision}.layers.{2,4,6}.*
    text_subnet.rnn.*                           <subnets>.text.encoder.lstm.*
    text_subnet.linear_1.*                      <subnets>.text.out.1.*

(``<subnets>`` is ``subnets`` in TFN and LMF, ``encoders`` in LateFusion.) The rest::

    TFN      post_fusion_layer_{1,2,3}.*        post_fusion.{1,3,5}.*  (layer 1's columns reordered)
             output_range, output_shift         the ``output_range`` option (shift, shift + range)
    LMF      {audio,video,text}_factor          factors.<index of the modality>
             fusion_weights (1, r)              rank_weights (1, r)
             fusion_bias (1, d_out)             bias (d_out,)
    EF_LSTM  norm.*                             step_norm.*
             lstm.*                             encoder.lstm.*  (layer 0's input columns reordered)
             linear.*, out.*                    head.1.*, head.4.*
    LF_DNN   post_fusion_layer_{1,2}.*          fusion.{0,3}.*  (layer 1's columns reordered)
             post_fusion_layer_3.*              head.*

MMSA fuses in the order audio, video, text (TFN's product with audio's index varying slowest,
LF-DNN's concatenation) and concatenates EF-LSTM's input as text, audio, video; our models use
the order of ``input_dims`` (default text, audio, vision), so the first fusion layer's columns
are permuted accordingly.

Widths, ranks, layer counts and the output size are read from the shapes; EF-LSTM's LSTM sees
only the sum of the input widths, so its ``input_dims`` must be given. Options the weights do
not fix (dropouts) default to MMSA's MOSI configuration (``config/config_regression.json``),
and ``padding="included"``: MMSA's models never see a mask (its text LSTM runs over every step
and its loader averages audio and vision over the padded length), so the converted model
reproduces MMSA's loader and model together on padded batches. A ``"Model."`` prefix (MMSA's
``AMIO`` wrapper) or ``"module."`` prefix (``DataParallel``) is removed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from alignkit_models.mmsa._common import (
    MODALITIES,
    check_keys,
    clean_state_dict,
    linear_keys,
    lstm_keys,
    merge_options,
    reorder_blocks,
    task_options,
    weight_tensor,
)
from alignkit_models.models.base import load_converted_state_dict
from alignkit_models.models.early_fusion import EarlyFusion
from alignkit_models.models.late_fusion import LateFusion
from alignkit_models.models.lmf import LMF
from alignkit_models.models.tfn import TFN

"""MMSA's modality names -> ours, in MMSA's ``feature_dims`` order."""
FUSION_ORDER = ("audio", "vision", "text")
"""The order in which MMSA's TFN, LMF and LF-DNN fuse the subnet outputs."""
CONCAT_ORDER = ("text", "audio", "vision")
"""The order in which MMSA's EF-LSTM concatenates the raw features."""
_SUBNET_LAYERS = {"norm": 0, "linear_1": 2, "linear_2": 4, "linear_3": 6}
_SUBNET_KEY = re.compile(r"(audio|video)_subnet\.(norm|linear_1|linear_2|linear_3)\.(.+)")
_TEXT_KEY = re.compile(r"text_subnet\.(rnn|linear_1)\.(.+)")
_LSTM_LAYER = re.compile(r"lstm\.(?:weight|bias)_(?:ih|hh)_l(\d+)")


# --- shared helpers ------------------------------------------------------------------------------


def _batchnorm_keys(layer: str) -> set[str]:
    return {f"{layer}.{part}" for part in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def _subnet_keys() -> set[str]:
    """The keys of TFN's three subnets in MMSA (shared by TFN, LMF and LF-DNN)."""
    keys = lstm_keys("text_subnet.rnn", 1) | linear_keys("text_subnet.linear_1")
    for name in ("audio", "video"):
        keys |= _batchnorm_keys(f"{name}_subnet.norm") | linear_keys(*(f"{name}_subnet.linear_{i}" for i in (1, 2, 3)))
    return keys


def _subnet_options(state: Mapping[str, Tensor]) -> dict[str, dict[str, int]]:
    """Input widths, subnet widths and subnet output widths of TFN's subnets, read from their shapes."""
    rnn = weight_tensor(state, "text_subnet.rnn.weight_ih_l0", 2)  # (4 H, d_text)
    text_out = weight_tensor(state, "text_subnet.linear_1.weight", 2)  # (text_out, H)
    input_dims = {"text": int(rnn.shape[1])}
    hidden = {"text": int(rnn.shape[0]) // 4}
    out = {"text": int(text_out.shape[0])}
    for name in ("audio", "video"):
        modality = MODALITIES[name]
        input_dims[modality] = int(weight_tensor(state, f"{name}_subnet.norm.weight", 1).shape[0])
        hidden[modality] = out[modality] = int(weight_tensor(state, f"{name}_subnet.linear_1.weight", 2).shape[0])
    return {"input_dims": input_dims, "hidden_dim": hidden, "out": out}


def _subnet_key(key: str, prefix: str) -> str | None:
    """Our name for a parameter or buffer of MMSA's TFN subnets; None for any other key."""
    if m := _SUBNET_KEY.fullmatch(key):
        name, layer, part = m.groups()
        return f"{prefix}.{MODALITIES[name]}.layers.{_SUBNET_LAYERS[layer]}.{part}"
    if m := _TEXT_KEY.fullmatch(key):
        layer, part = m.groups()
        return f"{prefix}.text.encoder.lstm.{part}" if layer == "rnn" else f"{prefix}.text.out.1.{part}"
    return None


def _reorder_product(weight: Tensor, sizes: Mapping[str, int], source: Sequence[str], target: Sequence[str]) -> Tensor:
    """Columns of ``weight (out, prod sizes)`` indexing a flattened outer product in ``source``
    order (first modality slowest), rearranged to the product in ``target`` order."""
    tensor = weight.reshape(weight.shape[0], *(sizes[m] for m in source))
    return tensor.permute(0, *(1 + source.index(m) for m in target)).reshape(weight.shape[0], -1)


# --- TFN -----------------------------------------------------------------------------------------

TFN_DEFAULTS: dict[str, Any] = {"dropout": 0.3, "post_fusion_dropout": 0.5, "padding": "included"}
"""MMSA's MOSI configuration for what TFN's weights do not fix."""
_TFN_LAYERS = {
    "post_fusion_layer_1": "post_fusion.1",
    "post_fusion_layer_2": "post_fusion.3",
    "post_fusion_layer_3": "post_fusion.5",
}
TFN_KEYS = _subnet_keys() | linear_keys(*_TFN_LAYERS) | {"output_range", "output_shift"}
"""Every key of MMSA's ``TFN.state_dict()``."""


def convert_mmsa_tfn_state_dict(state_dict: Mapping[str, Any], model: TFN) -> dict[str, Tensor]:
    """MMSA's TFN ``state_dict`` renamed to ``model``'s parameter names.

    The first post-fusion layer's columns index MMSA's product ``audio (x) video (x) text``; they
    are permuted to the product in ``model.modalities`` order. ``output_range`` and
    ``output_shift`` are constants, not parameters of ours (see :func:`tfn_from_mmsa_state_dict`).
    """
    state = clean_state_dict(state_dict, "TFN")
    check_keys(state, TFN_KEYS, "TFN")
    sizes = {m: w + 1 for m, w in model.fusion_dims.items()}  # the axes of the product
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if (name := _subnet_key(key, "subnets")) is not None:
            converted[name] = value
        elif key not in ("output_range", "output_shift"):  # constants, read by tfn_from_mmsa_state_dict
            layer, part = key.split(".")
            if key == "post_fusion_layer_1.weight":
                value = _reorder_product(value, sizes, FUSION_ORDER, model.modalities)
            converted[f"{_TFN_LAYERS[layer]}.{part}"] = value
    return converted


def tfn_from_mmsa_state_dict(state_dict: Mapping[str, Any], **options: Any) -> TFN:
    """A :class:`TFN` holding the weights of MMSA's TFN.

    Args:
        state_dict: MMSA's ``TFN.state_dict()`` (or its ``AMIO`` wrapper's).
        **options: TFN options; widths, the output size and the regression range are read from
            the weights, ``input_dims`` may be given to choose the modality order, and the rest
            defaults to MMSA's MOSI configuration (:data:`TFN_DEFAULTS`).

    Returns:
        The model, in training mode like a new ``nn.Module``; in eval mode, ``model(features,
        masks).prediction`` (``(B,)`` or ``(B, C)``) equals MMSA's ``output["M"]`` for the text
        sequence and the time means of audio and vision.

    Raises:
        ValueError: a key or shape MMSA's TFN does not have, or options that disagree with the weights.
    """
    state = clean_state_dict(state_dict, "TFN")
    check_keys(state, TFN_KEYS, "TFN")
    shapes = _subnet_options(state)
    first = weight_tensor(state, "post_fusion_layer_1.weight", 2)
    n_outputs = int(weight_tensor(state, "post_fusion_layer_3.weight", 2).shape[0])
    fused_dim = math.prod(w + 1 for w in shapes["out"].values())
    if first.shape[1] != fused_dim:
        raise ValueError(
            f"state_dict['post_fusion_layer_1.weight']: expected {fused_dim} inputs (prod(w_m + 1)), "
            f"received shape {tuple(first.shape)}"
        )
    inferred: dict[str, Any] = {
        "input_dims": shapes["input_dims"],
        "hidden_dim": shapes["hidden_dim"],
        "fusion_dim": shapes["out"],
        "max_fused_dim": fused_dim,
        "post_fusion_dim": int(first.shape[0]),
        **task_options(n_outputs),
    }
    if n_outputs == 1:
        low = float(weight_tensor(state, "output_shift", 1)[0])
        inferred["output_range"] = (low, low + float(weight_tensor(state, "output_range", 1)[0]))
    model = TFN(**merge_options(inferred, options, TFN_DEFAULTS))
    load_converted_state_dict(model, convert_mmsa_tfn_state_dict(state, model))
    return model


# --- LMF -----------------------------------------------------------------------------------------

LMF_DEFAULTS: dict[str, Any] = {"dropout": 0.3, "padding": "included"}
"""MMSA's MOSI configuration for what LMF's weights do not fix."""
LMF_KEYS = _subnet_keys() | {"audio_factor", "video_factor", "text_factor", "fusion_weights", "fusion_bias"}
"""Every key of MMSA's ``LMF.state_dict()``."""


def convert_mmsa_lmf_state_dict(state_dict: Mapping[str, Any], model: LMF) -> dict[str, Tensor]:
    """MMSA's LMF ``state_dict`` renamed to ``model``'s parameter names (factors in ``model.modalities`` order)."""
    state = clean_state_dict(state_dict, "LMF")
    check_keys(state, LMF_KEYS, "LMF")
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if (name := _subnet_key(key, "subnets")) is not None:
            converted[name] = value
        elif key == "fusion_weights":
            converted["rank_weights"] = value
        elif key == "fusion_bias":
            converted["bias"] = value.reshape(-1)  # (1, d_out) -> (d_out,)
        else:  # "<name>_factor"
            converted[f"factors.{model.modalities.index(MODALITIES[key.removesuffix('_factor')])}"] = value
    return converted


def lmf_from_mmsa_state_dict(state_dict: Mapping[str, Any], **options: Any) -> LMF:
    """An :class:`LMF` holding the weights of MMSA's LMF.

    Args:
        state_dict: MMSA's ``LMF.state_dict()`` (or its ``AMIO`` wrapper's).
        **options: LMF options; widths, the rank and the output size are read from the weights,
            ``input_dims`` may be given to choose the modality order, and the rest defaults to
            MMSA's MOSI configuration (:data:`LMF_DEFAULTS`).

    Returns:
        The model, in training mode; in eval mode its ``prediction`` equals MMSA's
        ``output["M"]`` (squeezed to ``(B,)`` for regression).

    Raises:
        ValueError: a key or shape MMSA's LMF does not have, or options that disagree with the weights.
    """
    state = clean_state_dict(state_dict, "LMF")
    check_keys(state, LMF_KEYS, "LMF")
    shapes = _subnet_options(state)
    audio_factor = weight_tensor(state, "audio_factor", 3)  # (r, h_a + 1, d_out)
    if shapes["out"]["text"] != shapes["hidden_dim"]["text"] // 2:
        raise ValueError(
            f"state_dict['text_subnet.linear_1.weight']: LMF's text subnet outputs half its LSTM width "
            f"({shapes['hidden_dim']['text'] // 2}), received {shapes['out']['text']}"
        )
    inferred = {
        "input_dims": shapes["input_dims"],
        "hidden_dim": shapes["hidden_dim"],
        "rank": int(audio_factor.shape[0]),
        **task_options(int(audio_factor.shape[2])),
    }
    model = LMF(**merge_options(inferred, options, LMF_DEFAULTS))
    load_converted_state_dict(model, convert_mmsa_lmf_state_dict(state, model))
    return model


# --- EF-LSTM -------------------------------------------------------------------------------------

EF_LSTM_DEFAULTS: dict[str, Any] = {"dropout": 0.5, "head_dropout": 0.5, "padding": "included"}
"""MMSA's MOSI configuration for what EF-LSTM's weights do not fix (one dropout everywhere)."""
_EF_LSTM_LAYERS = {"norm": "step_norm", "lstm": "encoder.lstm", "linear": "head.1", "out": "head.4"}


def ef_lstm_keys(n_layers: int) -> set[str]:
    """Every key of MMSA's ``EF_LSTM.state_dict()`` with ``n_layers`` LSTM layers."""
    return _batchnorm_keys("norm") | lstm_keys("lstm", n_layers) | linear_keys("linear", "out")


def convert_mmsa_ef_lstm_state_dict(state_dict: Mapping[str, Any], model: EarlyFusion) -> dict[str, Tensor]:
    """MMSA's EF-LSTM ``state_dict`` renamed to ``model``'s parameter names.

    The first LSTM layer's input columns are blocks text, audio, video in MMSA; they are
    rearranged to ``model.modalities`` order.
    """
    state = clean_state_dict(state_dict, "EF_LSTM")
    check_keys(state, ef_lstm_keys(model.encoder.lstm.num_layers), "EF_LSTM")
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        layer, part = key.split(".")
        if key == "lstm.weight_ih_l0":
            value = reorder_blocks(value, model.input_dims, CONCAT_ORDER, model.modalities)
        converted[f"{_EF_LSTM_LAYERS[layer]}.{part}"] = value
    return converted


def early_fusion_from_mmsa_state_dict(state_dict: Mapping[str, Any], **options: Any) -> EarlyFusion:
    """An :class:`EarlyFusion` holding the weights of MMSA's EF-LSTM.

    Args:
        state_dict: MMSA's ``EF_LSTM.state_dict()`` (or its ``AMIO`` wrapper's).
        **options: EarlyFusion options. ``input_dims`` (keys ``"text"``, ``"audio"``,
            ``"vision"``, in the order the model should use) is required: the LSTM's weights
            give only the sum of the widths. The LSTM width and depth, the number of steps of
            the per-step BatchNorm and the output size are read from the weights; the rest
            defaults to MMSA's MOSI configuration (:data:`EF_LSTM_DEFAULTS`).

    Returns:
        The model, in training mode; in eval mode its ``prediction`` equals MMSA's
        ``output["M"]`` on word-aligned inputs of ``step_batchnorm`` steps.

    Raises:
        ValueError: a key or shape MMSA's EF-LSTM does not have, missing ``input_dims``, or
            options that disagree with the weights.
    """
    state = clean_state_dict(state_dict, "EF_LSTM")
    n_layers = 1 + max((int(m.group(1)) for key in state if (m := _LSTM_LAYER.fullmatch(key))), default=0)
    check_keys(state, ef_lstm_keys(n_layers), "EF_LSTM")
    given = dict(options)
    if "input_dims" not in given:
        raise ValueError("input_dims: required for EF-LSTM, whose weights hold only the sum of the text, audio and video widths")
    input_dims = dict(given.pop("input_dims"))
    if set(input_dims) != set(CONCAT_ORDER):
        raise ValueError(f"input_dims: expected the keys {list(CONCAT_ORDER)}, received {list(input_dims)}")
    first = weight_tensor(state, "lstm.weight_ih_l0", 2)  # (4 H, d_text + d_audio + d_video)
    if first.shape[1] != sum(input_dims.values()):
        raise ValueError(
            f"input_dims: the checkpoint's LSTM takes {first.shape[1]} features, "
            f"received {input_dims} (sum {sum(input_dims.values())})"
        )
    inferred = {
        "input_dims": input_dims,
        "proj_dim": None,
        "pooling": "last",
        "hidden_dim": int(first.shape[0]) // 4,
        "num_layers": n_layers,
        "step_batchnorm": int(weight_tensor(state, "norm.weight", 1).shape[0]),
        **task_options(int(weight_tensor(state, "out.weight", 2).shape[0])),
    }
    model = EarlyFusion(**merge_options(inferred, given, EF_LSTM_DEFAULTS))
    load_converted_state_dict(model, convert_mmsa_ef_lstm_state_dict(state, model))
    return model


# --- LF-DNN --------------------------------------------------------------------------------------

LF_DNN_DEFAULTS: dict[str, Any] = {"encoder_dropout": 0.2, "input_dropout": 0.2, "dropout": 0.0, "padding": "included"}
"""MMSA's MOSI configuration for what LF-DNN's weights do not fix (no dropout between its fusion layers)."""
_LF_DNN_LAYERS = {"post_fusion_layer_1": "fusion.0", "post_fusion_layer_2": "fusion.3", "post_fusion_layer_3": "head"}
LF_DNN_KEYS = _subnet_keys() | linear_keys(*_LF_DNN_LAYERS)
"""Every key of MMSA's ``LF_DNN.state_dict()``."""


def convert_mmsa_lf_dnn_state_dict(state_dict: Mapping[str, Any], model: LateFusion) -> dict[str, Tensor]:
    """MMSA's LF-DNN ``state_dict`` renamed to ``model``'s parameter names.

    The first fusion layer's columns are blocks audio, video, text in MMSA; they are rearranged
    to ``model.modalities`` order.
    """
    state = clean_state_dict(state_dict, "LF_DNN")
    check_keys(state, LF_DNN_KEYS, "LF_DNN")
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if (name := _subnet_key(key, "encoders")) is not None:
            converted[name] = value
        else:
            layer, part = key.split(".")
            if key == "post_fusion_layer_1.weight":
                value = reorder_blocks(value, model.encoder_dims, FUSION_ORDER, model.modalities)
            converted[f"{_LF_DNN_LAYERS[layer]}.{part}"] = value
    return converted


def late_fusion_from_mmsa_state_dict(state_dict: Mapping[str, Any], **options: Any) -> LateFusion:
    """A :class:`LateFusion` (``encoder="subnet"``, two fusion layers) holding the weights of MMSA's LF-DNN.

    Args:
        state_dict: MMSA's ``LF_DNN.state_dict()`` (or its ``AMIO`` wrapper's).
        **options: LateFusion options; widths and the output size are read from the weights,
            ``input_dims`` may be given to choose the modality order, and the rest defaults to
            MMSA's MOSI configuration (:data:`LF_DNN_DEFAULTS`).

    Returns:
        The model, in training mode; in eval mode its ``prediction`` equals MMSA's
        ``output["M"]`` (squeezed to ``(B,)`` for regression) for the text sequence and the
        time means of audio and vision.

    Raises:
        ValueError: a key or shape MMSA's LF-DNN does not have, or options that disagree with the weights.
    """
    state = clean_state_dict(state_dict, "LF_DNN")
    check_keys(state, LF_DNN_KEYS, "LF_DNN")
    shapes = _subnet_options(state)
    first = weight_tensor(state, "post_fusion_layer_1.weight", 2)
    if first.shape[1] != sum(shapes["out"].values()):
        raise ValueError(
            f"state_dict['post_fusion_layer_1.weight']: expected {sum(shapes['out'].values())} inputs, "
            f"received shape {tuple(first.shape)}"
        )
    inferred = {
        "input_dims": shapes["input_dims"],
        "encoder": "subnet",
        "hidden_dim": shapes["hidden_dim"],
        "encoder_dim": shapes["out"],
        "fusion_dim": int(first.shape[0]),
        "fusion_layers": 2,
        **task_options(int(weight_tensor(state, "post_fusion_layer_3.weight", 2).shape[0])),
    }
    model = LateFusion(**merge_options(inferred, options, LF_DNN_DEFAULTS))
    load_converted_state_dict(model, convert_mmsa_lf_dnn_state_dict(state, model))
    return model
