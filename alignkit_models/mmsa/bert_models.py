"""Load MMSA 2.2.1 checkpoints of Self-MM and MISA, the BERT-text models, into the zoo.

Both MMSA models (``models/multiTask/SELF_MM.py``, ``models/singleTask/MISA.py``) read text with a
fine-tuned BERT (``text_model.model.*`` in Self-MM, ``bertmodel.model.*`` in MISA) and have the
three modalities text, audio and video (our ``"vision"``). Our models reproduce them with
``text_encoder=PATH``, a local BERT folder holding the same configuration; its weights are then
overwritten with the checkpoint's (BERT's pooler, which neither model reads, is dropped). The
other parameters map as::

    Self-MM                                     SelfMM
    {audio,video}_model.rnn.*                   encoders.{audio,vision}.lstm.*
    {audio,video}_model.linear_1.*              to_features.{audio,vision}.1.*
    post_fusion_layer_{1,2,3}.*                 fusion_head.{first.1,rest.0,rest.2}.*  (layer 1's columns reordered)
    post_{text,audio,video}_layer_{1,2,3}.*     unimodal_heads.<m>.{first.1,rest.0,rest.2}.*

    MISA                                        MISA
    {v,a}rnn{1,2}.*                             encoders.{vision,audio}.rnn{1,2}.*
    {v,a}layer_norm.*                           encoders.{vision,audio}.norm.*
    project_<x>.project_<x>{,_layer_norm}.*     projections.<m>.{0,2}.*
    private_<x>.private_<x>_{1,1,3}.*           private.<m>.0.*   (t, v: "_1"; a: "_3")
    shared.shared_1.*                           shared.0.*
    recon_<x>.recon_<x>_1.*                     reconstruct.<m>.*
    transformer_encoder.layers.0.*              fusion.*
    fusion.fusion_layer_1.*                     head.0.*  (columns reordered)
    fusion.fusion_layer_3.*                     head.3.*

MISA's ``tlayer_norm`` (built for a text LSTM that the BERT model never runs), its
``sp_discriminator`` (built, but read by no loss of MMSA's trainer) and its ``discriminator``
(present only with ``use_cmd_sim=False``; our similarity term is CMD, MMSA's default) do not enter
the prediction and are dropped.

MMSA concatenates Self-MM's modality vectors as text, audio, video and MISA's fusion tokens as
private text, video, audio, then shared text, video, audio; our models use the order of
``input_dims`` (default text, audio, vision), so the first fusion layer's column blocks are
permuted accordingly. Widths, the output size and MISA's fusion feed-forward width are read from
the shapes; options the weights do not fix default to MMSA's MOSI configuration
(``config/config_regression.json``). A ``"Model."`` prefix (MMSA's ``AMIO`` wrapper) or
``"module."`` prefix (``DataParallel``) is removed.
"""

from __future__ import annotations

from collections.abc import Mapping
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
from alignkit_models.models.misa import MISA
from alignkit_models.models.self_mm import FUSION, SelfMM

SELF_MM_CONCAT_ORDER = ("text", "audio", "vision")
"""The order in which MMSA's Self-MM concatenates the modality vectors for its fusion head."""
MISA_TOKEN_ORDER = ("text", "vision", "audio")
"""The order of the modalities within MISA's private and within its shared fusion tokens."""
MISA_SUFFIXES = {"t": "text", "v": "vision", "a": "audio"}
"""MISA's one-letter modality suffixes -> ours."""


# --- shared helpers ------------------------------------------------------------------------------


def _bert_part(state: Mapping[str, Tensor], prefix: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``state`` split into BERT's weights, renamed to ``text_encoder.bert.*`` (pooler dropped: neither
    model reads it and our encoder has none), and everything else."""
    bert, rest = {}, {}
    for key, value in state.items():
        if key.startswith(prefix):
            name = key.removeprefix(prefix)
            if not name.startswith("pooler."):
                bert[f"text_encoder.bert.{name}"] = value
        else:
            rest[key] = value
    return bert, rest


def _bilstm_keys(layer: str) -> set[str]:
    """The keys of a one-layer bidirectional ``nn.LSTM`` named ``layer``."""
    forward = lstm_keys(layer, 1)
    return forward | {f"{key}_reverse" for key in forward}


def _lstm_widths(state: Mapping[str, Tensor], layer: str) -> tuple[int, int]:
    """``(input width, hidden width)`` of the LSTM ``layer``; a GRU (``rnncell="gru"``) is refused."""
    weight_ih = weight_tensor(state, f"{layer}.weight_ih_l0", 2)  # (4 H, d_in)
    weight_hh = weight_tensor(state, f"{layer}.weight_hh_l0", 2)  # (4 H, H)
    hidden = int(weight_hh.shape[1])
    if weight_ih.shape[0] != 4 * hidden or weight_hh.shape[0] != 4 * hidden:
        raise ValueError(
            f"state_dict[{layer + '.weight_ih_l0'!r}]: expected LSTM gates (4 x {hidden} rows), received shape "
            f"{tuple(weight_ih.shape)}; GRU checkpoints (rnncell='gru') are not supported"
        )
    return int(weight_ih.shape[1]), hidden


def _require_text_encoder(options: Mapping[str, Any], model_name: str) -> None:
    if options.get("text_encoder") is None:
        raise ValueError(
            f"text_encoder: MMSA's {model_name} reads text with BERT; pass text_encoder=PATH to a local folder "
            "with that BERT's config.json (its weights come from the checkpoint)"
        )


# --- Self-MM -------------------------------------------------------------------------------------

SELF_MM_DEFAULTS: dict[str, Any] = {
    "regression_loss": "l1",
    "encoder_dropout": {"audio": 0.0, "vision": 0.0},
    "head_dropout": {FUSION: 0.0, "text": 0.1, "audio": 0.1, "vision": 0.0},
    "label_bound": 3.0,
}
"""MMSA's MOSI configuration for what Self-MM's weights do not fix."""
_SELF_MM_HEAD_LAYERS = {"1": "first.1", "2": "rest.0", "3": "rest.2"}
_SELF_MM_HEADS = {"fusion": "fusion_head", "text": "unimodal_heads.text", "audio": "unimodal_heads.audio", "video": "unimodal_heads.vision"}
SELF_MM_KEYS = (
    lstm_keys("audio_model.rnn", 1)
    | lstm_keys("video_model.rnn", 1)
    | linear_keys("audio_model.linear_1", "video_model.linear_1")
    | linear_keys(*(f"post_{head}_layer_{i}" for head in _SELF_MM_HEADS for i in (1, 2, 3)))
)
"""Every key of MMSA's ``SELF_MM.state_dict()`` outside its BERT (``text_model.model.*``)."""


def convert_mmsa_self_mm_state_dict(state_dict: Mapping[str, Any], model: SelfMM) -> dict[str, Tensor]:
    """MMSA's Self-MM ``state_dict`` renamed to ``model``'s parameter names.

    ``model`` must have a BERT text encoder (``text_encoder=PATH``). The fusion head's first
    layer takes ``[f_text; f_audio; f_video]`` in MMSA; its column blocks are rearranged to
    ``model.modalities`` order. The label generator's buffers are ``model``'s own.
    """
    state = clean_state_dict(state_dict, "SELF_MM")
    converted, rest = _bert_part(state, "text_model.model.")
    check_keys(rest, SELF_MM_KEYS, "SELF_MM")
    if model.text_encoder is None:
        raise ValueError("model: MMSA's Self-MM reads text with BERT; build the model with text_encoder=PATH")
    widths = {m: head.first[1].in_features for m, head in model.unimodal_heads.items()}
    for key, value in rest.items():
        name, part = key.rsplit(".", 1)
        if name.startswith(("audio_model.", "video_model.")):
            source, layer = name.split(".", 1)
            modality = MODALITIES[source.removesuffix("_model")]
            converted[f"encoders.{modality}.lstm.{part}" if layer == "rnn" else f"to_features.{modality}.1.{part}"] = value
        else:  # post_<head>_layer_<i>
            head, index = name.removeprefix("post_").rsplit("_layer_", 1)
            if key == "post_fusion_layer_1.weight":
                value = reorder_blocks(value, widths, SELF_MM_CONCAT_ORDER, model.modalities)
            converted[f"{_SELF_MM_HEADS[head]}.{_SELF_MM_HEAD_LAYERS[index]}.{part}"] = value
    # MMSA's trainer, not its model, holds the class centres (and drops them after training):
    # the model keeps its own, empty until its first training batch.
    converted.update({f"label_generator.{k}": v for k, v in model.label_generator.state_dict().items()})
    return converted


def self_mm_from_mmsa_state_dict(state_dict: Mapping[str, Any], **options: Any) -> SelfMM:
    """A :class:`SelfMM` holding the weights of MMSA's Self-MM (BERT included).

    Args:
        state_dict: MMSA's ``SELF_MM.state_dict()`` (or its ``AMIO`` wrapper's).
        **options: SelfMM options. ``text_encoder`` (a local folder with the checkpoint's BERT
            configuration) is required. Input widths, LSTM, feature and head widths are read
            from the weights, ``input_dims`` may be given to choose the modality order (text
            width 3: token ids), and the rest defaults to MMSA's MOSI configuration
            (:data:`SELF_MM_DEFAULTS`).

    Returns:
        The model, in training mode like a new ``nn.Module``. In eval mode, with text as token
        ids ``(B, L, 3)`` (MMSA's ``(B, 3, L)`` transposed) and each modality's mask,
        ``model(features, masks).prediction`` ``(B,)`` equals MMSA's ``output["M"]``;
        ``model.encode`` gives the vectors whose unimodal heads give ``"T"``, ``"A"``, ``"V"``.

    Raises:
        ValueError: no ``text_encoder``, a key or shape MMSA's Self-MM does not have, or
            options that disagree with the weights.
    """
    _require_text_encoder(options, "Self-MM")
    state = clean_state_dict(state_dict, "SELF_MM")
    _, rest = _bert_part(state, "text_model.model.")
    check_keys(rest, SELF_MM_KEYS, "SELF_MM")
    input_dims: dict[str, int] = {"text": 3}  # token ids, attention mask, segment ids
    rnn_dims, feature_dims = {}, {}
    for source in ("audio", "video"):
        modality = MODALITIES[source]
        input_dims[modality], rnn_dims[modality] = _lstm_widths(rest, f"{source}_model.rnn")
        feature_dims[modality] = int(weight_tensor(rest, f"{source}_model.linear_1.weight", 2).shape[0])
    last = weight_tensor(rest, "post_fusion_layer_3.weight", 2)
    if last.shape[0] != 1:
        raise ValueError(f"state_dict['post_fusion_layer_3.weight']: expected one output (MMSA's Self-MM regresses), received shape {tuple(last.shape)}")
    inferred = {
        "input_dims": input_dims,
        "rnn_dim": rnn_dims,
        "feature_dim": feature_dims,
        "fusion_dim": int(weight_tensor(rest, "post_fusion_layer_1.weight", 2).shape[0]),
        "head_dim": {MODALITIES[h]: int(weight_tensor(rest, f"post_{h}_layer_1.weight", 2).shape[0]) for h in ("text", "audio", "video")},
        **task_options(1),
    }
    model = SelfMM(**merge_options(inferred, options, SELF_MM_DEFAULTS))
    load_converted_state_dict(model, convert_mmsa_self_mm_state_dict(state, model))
    return model


# --- MISA ----------------------------------------------------------------------------------------

MISA_DEFAULTS: dict[str, Any] = {
    "regression_loss": "mse",
    "n_heads": 2,
    "dropout": 0.2,
    "fusion_dropout": 0.1,
    "sim_weight": 0.3,
    "diff_weight": 0.1,
    "recon_weight": 1.0,
}
"""MMSA's MOSI configuration for what MISA's weights do not fix (``n_heads``: MMSA's fixed 2)."""
_MISA_PRIVATE = {"t": "private_t.private_t_1", "v": "private_v.private_v_1", "a": "private_a.private_a_3"}
_MISA_TRANSFORMER_PARTS = (
    "self_attn.in_proj_weight",
    "self_attn.in_proj_bias",
    "self_attn.out_proj.weight",
    "self_attn.out_proj.bias",
    "linear1.weight",
    "linear1.bias",
    "linear2.weight",
    "linear2.bias",
    "norm1.weight",
    "norm1.bias",
    "norm2.weight",
    "norm2.bias",
)
_MISA_DROPPED_ALWAYS = linear_keys("tlayer_norm", "sp_discriminator.sp_discriminator_layer_1")
_MISA_DISCRIMINATOR = linear_keys("discriminator.discriminator_layer_1", "discriminator.discriminator_layer_2")
MISA_KEYS = (
    set().union(*(_bilstm_keys(f"{x}rnn{i}") for x in "va" for i in (1, 2)))
    | linear_keys("vlayer_norm", "alayer_norm")
    | linear_keys(*(f"project_{x}.project_{x}" for x in "tva"), *(f"project_{x}.project_{x}_layer_norm" for x in "tva"))
    | linear_keys(*_MISA_PRIVATE.values(), "shared.shared_1", *(f"recon_{x}.recon_{x}_1" for x in "tva"))
    | {f"transformer_encoder.layers.0.{part}" for part in _MISA_TRANSFORMER_PARTS}
    | linear_keys("fusion.fusion_layer_1", "fusion.fusion_layer_3")
    | _MISA_DROPPED_ALWAYS
)
"""Every key of MMSA's ``MISA.state_dict()`` outside its BERT (``bertmodel.model.*``), with ``use_cmd_sim=True``."""


def _misa_key(key: str) -> str | None:
    """Our name for one of MMSA's MISA parameters outside BERT; None for a dropped one."""
    if key in _MISA_DROPPED_ALWAYS or key in _MISA_DISCRIMINATOR:
        return None
    name, part = key.rsplit(".", 1)
    if name[1:4] == "rnn":  # {v,a}rnn{1,2}
        return f"encoders.{MISA_SUFFIXES[name[0]]}.rnn{name[4]}.{part}"
    if name in ("vlayer_norm", "alayer_norm"):
        return f"encoders.{MISA_SUFFIXES[name[0]]}.norm.{part}"
    if name.startswith("project_"):
        suffix = name[len("project_")]
        return f"projections.{MISA_SUFFIXES[suffix]}.{2 if name.endswith('_layer_norm') else 0}.{part}"
    if name.startswith("private_"):
        return f"private.{MISA_SUFFIXES[name[len('private_')]]}.0.{part}"
    if name == "shared.shared_1":
        return f"shared.0.{part}"
    if name.startswith("recon_"):
        return f"reconstruct.{MISA_SUFFIXES[name[len('recon_')]]}.{part}"
    if key.startswith("transformer_encoder.layers.0."):
        return "fusion." + key.removeprefix("transformer_encoder.layers.0.")
    return f"head.{0 if name == 'fusion.fusion_layer_1' else 3}.{part}"  # fusion.fusion_layer_{1,3}


def _misa_rest(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """MISA's parameters outside BERT, their key set checked (the discriminator optional, as a whole)."""
    _, rest = _bert_part(state, "bertmodel.model.")
    expected = MISA_KEYS | (_MISA_DISCRIMINATOR if _MISA_DISCRIMINATOR & set(rest) else set())
    check_keys(rest, expected, "MISA")
    return rest


def convert_mmsa_misa_state_dict(state_dict: Mapping[str, Any], model: MISA) -> dict[str, Tensor]:
    """MMSA's MISA ``state_dict`` renamed to ``model``'s parameter names.

    ``model`` must have a BERT text encoder (``text_encoder=PATH``). The first head layer reads
    the flattened tokens ``[p_t, p_v, p_a, s_t, s_v, s_a]`` in MMSA; its column blocks are
    rearranged to ``[p_m for m in model.modalities] + [s_m ...]``.
    """
    state = clean_state_dict(state_dict, "MISA")
    converted, _ = _bert_part(state, "bertmodel.model.")
    rest = _misa_rest(state)
    if model.text_encoder is None:
        raise ValueError("model: MMSA's MISA reads text with BERT; build the model with text_encoder=PATH")
    hidden = model.shared[0].out_features
    blocks = [f"{kind}_{m}" for kind in ("private", "shared") for m in MISA_TOKEN_ORDER]
    ours = [f"{kind}_{m}" for kind in ("private", "shared") for m in model.modalities]
    for key, value in rest.items():
        name = _misa_key(key)
        if name is None:
            continue
        if key == "fusion.fusion_layer_1.weight":
            value = reorder_blocks(value, dict.fromkeys(blocks, hidden), blocks, ours)
        converted[name] = value
    return converted


def misa_from_mmsa_state_dict(state_dict: Mapping[str, Any], **options: Any) -> MISA:
    """A :class:`MISA` holding the weights of MMSA's MISA (BERT included).

    Args:
        state_dict: MMSA's ``MISA.state_dict()`` (or its ``AMIO`` wrapper's).
        **options: MISA options. ``text_encoder`` (a local folder with the checkpoint's BERT
            configuration) is required. Input and LSTM widths, ``hidden_dim``,
            ``fusion_feedforward_dim`` and the output size are read from the weights,
            ``input_dims`` may be given to choose the modality order (text width 3: token
            ids), and the rest defaults to MMSA's MOSI configuration (:data:`MISA_DEFAULTS`;
            ``n_heads`` cannot be read from the weights).

    Returns:
        The model, in training mode like a new ``nn.Module``. In eval mode, with text as token
        ids ``(B, L, 3)`` (MMSA's ``(B, 3, L)`` transposed) and audio and vision masks of the
        text's length (MMSA packs them with the text lengths), ``model(features,
        masks).prediction`` equals MMSA's ``output["M"]`` (squeezed to ``(B,)`` for regression).

    Raises:
        ValueError: no ``text_encoder``, a key or shape MMSA's MISA does not have, or options
            that disagree with the weights.
    """
    _require_text_encoder(options, "MISA")
    state = clean_state_dict(state_dict, "MISA")
    rest = _misa_rest(state)
    input_dims: dict[str, int] = {"text": 3}  # token ids, attention mask, segment ids
    rnn_dims = {}
    for suffix in "av":
        modality = MISA_SUFFIXES[suffix]
        input_dims[modality], rnn_dims[modality] = _lstm_widths(rest, f"{suffix}rnn1")
    inferred = {
        "input_dims": {m: input_dims[m] for m in ("text", "audio", "vision")},
        "rnn_dim": rnn_dims,
        "hidden_dim": int(weight_tensor(rest, "shared.shared_1.weight", 2).shape[0]),
        "fusion_feedforward_dim": int(weight_tensor(rest, "transformer_encoder.layers.0.linear1.weight", 2).shape[0]),
        **task_options(int(weight_tensor(rest, "fusion.fusion_layer_3.weight", 2).shape[0])),
    }
    model = MISA(**merge_options(inferred, options, MISA_DEFAULTS))
    load_converted_state_dict(model, convert_mmsa_misa_state_dict(state, model))
    return model
