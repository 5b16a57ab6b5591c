"""Load MMSA's CENET checkpoints into the zoo's :class:`~alignkit_models.models.cenet.CENet`.

MMSA's CENET (``src/MMSA/models/singleTask/CENET.py`` of github.com/thuiar/MMSA, added in
December 2023, after the 2.2.1 release on PyPI; trained by ``trains/singleTask/CENET.py``) is a
BERT whose encoder holds the cross-modal enhancement module ``CE`` before layer 1, with
RoBERTa's classification head on the first token. Our model reproduces it with
``text_encoder=PATH`` (a local BERT folder holding the same configuration; its weights are then
overwritten with the checkpoint's) and :data:`REFERENCE_OPTIONS`. The parameters map as::

    MMSA's CENET                                      CENet
    bert.embeddings.{word,position,token_type}_       text_encoder.bert.embeddings.*
        embeddings.weight, LayerNorm.*
    bert.encoder.layer.<i>.*                          text_encoder.bert.encoder.layer.<i>.*
    bert.encoder.CE.visual_transform.{0,2}.*          enhancement.transforms.vision.{0,2}.*
    bert.encoder.CE.acoustic_transform.{0,2}.*        enhancement.transforms.audio.{0,2}.*
    bert.encoder.CE.hv.{Wq,Wk,Wv}.*                   enhancement.attentions.vision.{query,key,value}.*
    bert.encoder.CE.ha.{Wq,Wk,Wv}.*                   enhancement.attentions.audio.{query,key,value}.*
    bert.encoder.CE.cat_connect.weight (H, 2 H)       enhancement.merge.weight  (column blocks reordered)
    bert.encoder.CE.cat_connect.bias                  enhancement.merge.bias
    classifier.dense.*                                head.1.*
    classifier.out_proj.*                             head.4.*

Dropped, because no prediction reads them: ``bert.pooler.*`` (computed, never used) and
``bert.embeddings.{senti,pos_tag,polarity}_embeddings.weight`` (MMSA builds CENET with
SentiLARE's three extra embedding tables but its forward never receives their ids).

``cat_connect`` reads ``[context_vision; context_audio]``; ours reads the contexts in
``model.modalities`` order, so its column blocks are permuted. Widths and the output size are read
from the shapes. A ``"Model."`` prefix (MMSA's ``AMIO`` wrapper) or ``"module."`` prefix
(``DataParallel``) is removed. The renaming is linear (names and a column permutation), so
:func:`convert_mmsa_cenet_state_dict` converts a dict of gradients as well as one of weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from alignkit_models.mmsa._common import (
    check_keys,
    clean_state_dict,
    linear_keys,
    merge_options,
    reorder_blocks,
    task_options,
    weight_tensor,
)
from alignkit_models.models.base import load_converted_state_dict
from alignkit_models.models.cenet import CENet

REFERENCE_OPTIONS: dict[str, Any] = {
    "regression_loss": "l1",
    "padding": "included",
    "freeze_text_embeddings": True,
    "ce_layer": 1,
    "score_scale": 8.0,
}
"""What MMSA's CENET does that our defaults do not, and what its weights do not fix: its
trainer's ``L1Loss``; no masks in the CE attention (padded non-verbal steps are data); BERT's
embedding layer run under ``torch.no_grad``; the CE module before layer 1 (``injection_index``);
scores multiplied by 8. The head's ``dropout`` is the BERT configuration's
``hidden_dropout_prob`` (read from ``text_encoder``'s ``config.json``)."""
CONCAT_ORDER = ("vision", "audio")
"""The order in which MMSA's CE module concatenates its contexts for ``cat_connect``."""
_SOURCES = {"visual": "vision", "acoustic": "audio"}
_ATTENTIONS = {"hv": "vision", "ha": "audio"}
_PROJECTIONS = {"Wq": "query", "Wk": "key", "Wv": "value"}
_HEAD = {"dense": "head.1", "out_proj": "head.4"}
_BERT_PREFIXES = ("bert.embeddings.", "bert.encoder.layer.")
_DROPPED_PREFIXES = (
    "bert.pooler.",
    "bert.embeddings.senti_embeddings.",
    "bert.embeddings.pos_tag_embeddings.",
    "bert.embeddings.polarity_embeddings.",
)
_CE = "bert.encoder.CE."
MMSA_CENET_KEYS = (
    linear_keys(*(f"{_CE}{source}_transform.{i}" for source in _SOURCES for i in (0, 2)))
    | linear_keys(*(f"{_CE}{head}.{w}" for head in _ATTENTIONS for w in _PROJECTIONS))
    | linear_keys(f"{_CE}cat_connect", "classifier.dense", "classifier.out_proj")
)
"""Every key of MMSA's ``CENET.state_dict()`` outside BERT proper (embeddings, layers, pooler)."""
_BERT_DEFAULT_DROPOUT = 0.1


def _split(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``state`` split into BERT's embedding and layer weights, renamed to ``text_encoder.bert.*``,
    and the CE module's and head's weights (the dropped keys left out of both)."""
    bert, rest = {}, {}
    for key, value in state.items():
        if key.startswith(_DROPPED_PREFIXES):
            continue
        if key.startswith(_BERT_PREFIXES):
            bert["text_encoder." + key] = value
        else:
            rest[key] = value
    return bert, rest


def _our_name(key: str) -> str:
    """Our name for one of the CE module's or the head's parameters (``key`` already checked)."""
    name, part = key.rsplit(".", 1)
    if name.startswith("classifier."):
        return f"{_HEAD[name.removeprefix('classifier.')]}.{part}"
    name = name.removeprefix(_CE)
    if name == "cat_connect":
        return f"enhancement.merge.{part}"
    first, second = name.split(".", 1)
    if first.endswith("_transform"):
        return f"enhancement.transforms.{_SOURCES[first.removesuffix('_transform')]}.{second}.{part}"
    return f"enhancement.attentions.{_ATTENTIONS[first]}.{_PROJECTIONS[second]}.{part}"


def convert_mmsa_cenet_state_dict(state_dict: Mapping[str, Any], model: CENet) -> dict[str, Tensor]:
    """MMSA's CENET ``state_dict`` renamed to ``model``'s parameter names.

    Args:
        state_dict: MMSA's ``CENET.state_dict()`` (or its ``AMIO`` wrapper's), or the same keys
            holding gradients.
        model: a :class:`CENet` built with ``text_encoder=PATH`` and the checkpoint's widths.

    Returns:
        ``{our name: tensor}``; ``cat_connect``'s columns ``(H, 2 H)`` rearranged from
        ``[vision; audio]`` to ``model``'s modality order.

    Raises:
        ValueError: ``model`` has no BERT text encoder; a key MMSA's CENET does not have, or one
            of its keys missing (one line naming it).
    """
    state = clean_state_dict(state_dict, "CENET")
    converted, rest = _split(state)
    check_keys(rest, MMSA_CENET_KEYS, "CENET")
    if model.text_encoder is None:
        raise ValueError("model: MMSA's CENET runs the CE module inside BERT; build the model with text_encoder=PATH")
    hidden = model.enhancement.merge.out_features
    order = tuple(model.enhancement.transforms)
    for key, value in rest.items():
        if key == f"{_CE}cat_connect.weight":
            value = reorder_blocks(value, dict.fromkeys(CONCAT_ORDER, hidden), CONCAT_ORDER, order)
        converted[_our_name(key)] = value
    return converted


def infer_options(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Model arguments read from the shapes: ``input_dims`` (text 3: token ids; audio and vision
    from the CE transforms' input widths, in MMSA's order text, audio, video) and the task (one
    output: regression; ``n`` outputs: ``n`` classes).

    Raises:
        ValueError: a key MMSA's CENET does not have, or one missing; a weight of the wrong rank.
    """
    state = clean_state_dict(state_dict, "CENET")
    _, rest = _split(state)
    check_keys(rest, MMSA_CENET_KEYS, "CENET")
    widths = {
        modality: int(weight_tensor(rest, f"{_CE}{source}_transform.0.weight", 2).shape[1])
        for source, modality in _SOURCES.items()
    }
    return {
        "input_dims": {"text": 3, "audio": widths["audio"], "vision": widths["vision"]},
        **task_options(int(weight_tensor(rest, "classifier.out_proj.weight", 2).shape[0])),
    }


def _bert_dropout(folder: str | os.PathLike[str]) -> float:
    """``hidden_dropout_prob`` of the BERT configuration in ``folder`` (BERT's 0.1 when absent;
    an unreadable folder is reported by the model's text encoder instead)."""
    try:
        settings = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return _BERT_DEFAULT_DROPOUT
    value = settings.get("hidden_dropout_prob", _BERT_DEFAULT_DROPOUT) if isinstance(settings, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _BERT_DEFAULT_DROPOUT


def cenet_from_mmsa_state_dict(state_dict: Mapping[str, Any], **options: Any) -> CENet:
    """A :class:`CENet` holding the weights of MMSA's CENET (BERT included).

    Args:
        state_dict: MMSA's ``CENET.state_dict()`` (or its ``AMIO`` wrapper's).
        **options: CENet options. ``text_encoder`` (a local folder with the checkpoint's BERT
            configuration) is required. Input widths and the output size are read from the
            weights, ``input_dims`` may be given to choose the modality order (text width 3:
            token ids), ``dropout`` defaults to the BERT configuration's ``hidden_dropout_prob``
            and the rest to :data:`REFERENCE_OPTIONS`.

    Returns:
        The model, in training mode like a new ``nn.Module``. With text as token ids
        ``(B, L, 3)`` (MMSA's ``(B, 3, L)`` transposed) and audio and vision as MMSA feeds them,
        ``model(features).prediction`` (squeezed to ``(B,)`` for regression) equals MMSA's
        ``CENET(text, audio, vision)[0]`` in eval mode, and in training mode without dropout
        ``model.loss(output, labels).total.backward()`` gives every parameter the gradient
        MMSA's trainer (``L1Loss``) gives it, converted by :func:`convert_mmsa_cenet_state_dict`.

    Raises:
        ValueError: no ``text_encoder``, a key or shape MMSA's CENET does not have, or options
            that disagree with the weights.
    """
    if options.get("text_encoder") is None:
        raise ValueError(
            "text_encoder: MMSA's CENET runs inside BERT; pass text_encoder=PATH to a local folder with that "
            "BERT's config.json (its weights come from the checkpoint)"
        )
    defaults = {**REFERENCE_OPTIONS, "dropout": _bert_dropout(options["text_encoder"])}
    state = clean_state_dict(state_dict, "CENET")
    model = CENet(**merge_options(infer_options(state), options, defaults))
    load_converted_state_dict(model, convert_mmsa_cenet_state_dict(state, model))
    return model
