"""Load the authors' DecAlign checkpoints: their ``state_dict`` names and shapes onto ours.

The authors' model (taco-group/DecAlign, ``models/model.py``) has three modalities, written
with the suffixes ``l`` (text), ``a`` (audio) and ``v`` (vision), and works on ``(B, d, T)``
sequences with 1x1 ``Conv1d`` encoders. Their parameters map onto
``DecAlign(variant="official")`` as::

    proj_{l,a,v}.weight (d, d_in, k)           projections.<m>.conv.weight  (absent when d_in = d:
                                               the authors skip that projection)
    encoder_uni_{l,a,v}.weight (d, d, 1)       unique_encoders.<m>.weight (d, d)
    encoder_com.weight (d, d, 1)               common_encoder.weight (d, d)
    trans_{l,a,v}.layers.<i>.self_attn.in_proj_{weight,bias}
                                               cross_modal.<m><-rest.layers.<i>.attention.in_proj_{weight,bias}
        ....self_attn.out_proj.*               ....attention.out.*
        ....attn_layer_norm.*, final_layer_norm.*   ....norm_attention.*, norm_feedforward.*
        ....fc1.*, fc2.*                       ....feedforward.0.*, feedforward.3.*
    pde_{l,a,v}.net.{0,3}.*                    distribution_encoders.<m>.{0,3}.*
    out_layer.*                                head.*
    text_model.model.*  (BERT, when present)   text_encoder.bert.*  (needs text_encoder=PATH; the
                                               pooler, which the authors never use, is dropped)

Widths, kernel sizes, layer counts, the distribution encoders' width and the output size are
read from the shapes; everything else (heads, dropouts, loss options) is the official MOSI
configuration unless given as keyword options.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from alignkit_models.models.base import load_converted_state_dict
from alignkit_models.models.decalign.model import DecAlign

SUFFIXES = {"l": "text", "a": "audio", "v": "vision"}
_LAYER_PARTS = {
    "self_attn.in_proj_weight": "attention.in_proj_weight",
    "self_attn.in_proj_bias": "attention.in_proj_bias",
    "self_attn.out_proj.weight": "attention.out.weight",
    "self_attn.out_proj.bias": "attention.out.bias",
    "attn_layer_norm.weight": "norm_attention.weight",
    "attn_layer_norm.bias": "norm_attention.bias",
    "final_layer_norm.weight": "norm_feedforward.weight",
    "final_layer_norm.bias": "norm_feedforward.bias",
    "fc1.weight": "feedforward.0.weight",
    "fc1.bias": "feedforward.0.bias",
    "fc2.weight": "feedforward.3.weight",
    "fc2.bias": "feedforward.3.bias",
}
_TRANSFORMER_KEY = re.compile(r"trans_([lav])\.layers\.(\d+)\.(.+)")
_PDE_KEY = re.compile(r"pde_([lav])\.net\.([03])\.(weight|bias)")


def _tensor(state: Mapping[str, Any], key: str) -> Tensor:
    if key not in state:
        raise ValueError(f"state_dict: missing {key!r}; is this a DecAlign checkpoint of the authors' code?")
    value = state[key]
    if not isinstance(value, Tensor):
        raise ValueError(f"state_dict[{key!r}]: expected a tensor, received {type(value).__name__}")
    return value


def infer_options(state: Mapping[str, Any]) -> dict[str, Any]:
    """Model arguments read from the shapes of an official ``state_dict``."""
    common = _tensor(state, "encoder_com.weight")
    if common.ndim != 3 or common.shape[0] != common.shape[1]:
        raise ValueError(f"state_dict['encoder_com.weight']: expected shape (d, d, 1), received {tuple(common.shape)}")
    dim = int(common.shape[0])
    input_dims, kernels = {}, {}
    for suffix, modality in SUFFIXES.items():
        weight = _tensor(state, f"proj_{suffix}.weight")
        if weight.ndim != 3 or weight.shape[0] != dim:
            raise ValueError(f"state_dict['proj_{suffix}.weight']: expected shape ({dim}, d_in, k), received {tuple(weight.shape)}")
        input_dims[modality] = int(weight.shape[1])
        kernels[modality] = int(weight.shape[2])
    layers = {int(m.group(2)) for key in state if (m := _TRANSFORMER_KEY.fullmatch(key))}
    if not layers:
        raise ValueError("state_dict: no transformer layers ('trans_l.layers.0...') found")
    head = _tensor(state, "out_layer.weight")
    if head.shape[1] != 6 * dim:
        raise ValueError(f"state_dict['out_layer.weight']: expected {6 * dim} inputs (6 d), received shape {tuple(head.shape)}")
    n_outputs = int(head.shape[0])
    options: dict[str, Any] = {
        "input_dims": input_dims,
        "dim": dim,
        "n_layers": max(layers) + 1,
        "kernel_size": kernels,
        "distribution_dim": int(_tensor(state, "pde_l.net.3.weight").shape[0]),
    }
    if n_outputs > 1:
        options.update(task="classification", n_classes=n_outputs)
    return options


def convert_state_dict(state: Mapping[str, Any], model: DecAlign) -> dict[str, Tensor]:
    """The official ``state_dict`` renamed and reshaped to ``model``'s parameter names."""
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("text_model.model.pooler."):
            continue  # the authors read BERT's last hidden state only; the pooler is never used
        if key.startswith("text_model.model."):
            converted["text_encoder.bert." + key.removeprefix("text_model.model.")] = value
        elif m := re.fullmatch(r"proj_([lav])\.weight", key):
            modality = SUFFIXES[m.group(1)]
            if modality in model.projections:  # the authors skip (and never train) a same-width projection
                converted[f"projections.{modality}.conv.weight"] = value
        elif m := re.fullmatch(r"encoder_uni_([lav])\.weight", key):
            converted[f"unique_encoders.{SUFFIXES[m.group(1)]}.weight"] = value.squeeze(-1)
        elif key == "encoder_com.weight":
            converted["common_encoder.weight"] = value.squeeze(-1)
        elif m := _TRANSFORMER_KEY.fullmatch(key):
            suffix, layer, part = m.groups()
            if part not in _LAYER_PARTS:
                raise ValueError(f"state_dict: unexpected transformer parameter {key!r}")
            converted[f"cross_modal.{SUFFIXES[suffix]}<-rest.layers.{layer}.{_LAYER_PARTS[part]}"] = value
        elif m := _PDE_KEY.fullmatch(key):
            converted[f"distribution_encoders.{SUFFIXES[m.group(1)]}.{m.group(2)}.{m.group(3)}"] = value
        elif key in ("out_layer.weight", "out_layer.bias"):
            converted["head." + key.split(".")[1]] = value
        else:
            raise ValueError(f"state_dict: unexpected parameter {key!r}; is this a DecAlign checkpoint of the authors' code?")
    return converted


def from_official_state_dict(state_dict: Mapping[str, Any], **options: Any) -> DecAlign:
    """A :class:`DecAlign` holding the weights of a checkpoint of the authors' code.

    Args:
        state_dict: the authors' ``model.state_dict()`` (a ``"module."`` prefix from
            ``DataParallel`` is removed).
        **options: model options; widths, kernel sizes, layer counts, the distribution
            encoders' width and the output size are inferred from the shapes, everything else
            defaults to the official MOSI configuration (``n_heads=8`` included: head counts
            cannot be read from the weights). A BERT text model in the checkpoint needs
            ``text_encoder=PATH`` to a folder holding its configuration.

    Returns:
        The model, in training mode like a new ``nn.Module``; ``model.eval()(features, None,
        labels)`` gives the authors' ``output_logit`` as ``prediction`` and their ``dec_loss``,
        ``hete_loss`` and ``homo_loss`` as ``components["dec"]``, ``["hete"]``, ``["homo"]``.

    Raises:
        ValueError: a key or shape the authors' model does not have, or options that disagree
            with the checkpoint's shapes.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict: expected a mapping of parameter names to tensors, received {type(state_dict).__name__}")
    state = {key.removeprefix("module."): value for key, value in state_dict.items()}
    has_bert = any(key.startswith("text_model.") for key in state)
    if has_bert and options.get("text_encoder") is None:
        raise ValueError("text_encoder: this checkpoint holds a BERT text model; pass text_encoder=PATH to a folder with its config.json")
    inferred = infer_options(state)
    if has_bert:
        inferred["input_dims"]["text"] = 3  # token ids (ids, attention mask, segment ids)
    clashes = sorted(k for k in set(inferred) & set(options) if k != "input_dims" and options[k] != inferred[k])
    if clashes:
        raise ValueError(f"{clashes[0]}: the checkpoint has {inferred[clashes[0]]!r}, received {options[clashes[0]]!r}")
    model = DecAlign(**{**inferred, **options, "variant": options.get("variant", "official")})
    converted = convert_state_dict(state, model)
    load_converted_state_dict(model, converted)
    return model
