"""Load MMSA 2.2.1 checkpoints of MULT (``models/singleTask/MULT.py``) into the zoo's :class:`MulT`.

MMSA's MULT has the modalities text, audio and video (suffixes ``l``, ``a``, ``v``; our
``"vision"``), in that order, and builds its transformers from
``models/subNets/transformers_encoder`` (pre-norm layers, one LayerNorm shared by query, key
and value, a final LayerNorm). Its parameters map onto ours as::

    MMSA                                        ours
    proj_{l,a,v}.weight (d, d_m, k_m)           projections.<m>.conv.weight  (dropped for a
                                                modality of width d: MMSA never applies it)
    trans_<t>_with_<s>.<encoder part>           crossmodal.cross.<t>_from_<s>.<our part>
    trans_<t>_mem.<encoder part>                crossmodal.memory.<t>.<our part>
    proj1.*, proj2.*, out_layer.*               head.proj1.*, head.proj2.*, head.out.*

with, inside every encoder::

    layers.<i>.self_attn.in_proj_{weight,bias}  layers.<i>.attention.in_proj_{weight,bias}
    layers.<i>.self_attn.out_proj.*             layers.<i>.attention.out.*
    layers.<i>.fc1.*, fc2.*                     layers.<i>.feedforward.0.*, feedforward.3.*
    layers.<i>.layer_norms.{0,1}.*              layers.<i>.norm_attention.*, norm_feedforward.*
    layer_norm.*                                norm.*
    version                                     (dropped: a constant of fairseq's format)

The width ``d``, input widths, kernel sizes, layer counts and output size are read from the
shapes; the head count is not in the weights (``n_heads``, default MMSA's MOSI 10), and the
modality order is MMSA's (the memory transformers' features are ``[from first source; from
second source]``). What MMSA does differently from our defaults is restored by
:data:`MULT_DEFAULTS`: no position embeddings, Conv1d without padding, skipped at width ``d``,
per-source attention dropout, independent key/value embedding dropout and no masks.

In eval mode the converted model's ``prediction`` is MMSA's ``output["M"]`` (squeezed for
regression), on padded batches too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from alignkit_models.layers.transformer import MULT_LAYER_NAMES
from alignkit_models.mmsa._common import (
    check_keys,
    clean_state_dict,
    merge_options,
    task_options,
    weight_tensor,
)
from alignkit_models.models.base import load_converted_state_dict
from alignkit_models.models.mult import MulT

SUFFIXES = {"l": "text", "a": "audio", "v": "vision"}
"""MMSA's modality suffixes -> our modality names, in MMSA's order."""
MULT_DEFAULTS: dict[str, Any] = {
    "n_heads": 10,
    "attn_dropout": {"text": 0.3, "audio": 0.2, "vision": 0.0},
    "memory_attn_dropout": 0.3,
    "relu_dropout": 0.0,
    "res_dropout": 0.0,
    "embed_dropout": 0.2,
    "text_dropout": 0.5,
    "out_dropout": 0.5,
    "future_mask": True,
    "positions": False,
    "projection_padding": "valid",
    "identity_same_width": True,
    "independent_key_value_dropout": True,
    "regression_loss": "l1",
    "padding": "included",
}
"""MMSA's MOSI configuration (``config_regression.json``: 10 heads, ``attn_dropout`` 0.3 /
``attn_dropout_a`` 0.2 / ``attn_dropout_v`` 0.0, ``attn_mask`` on...), its trainer's L1 task
loss, and the structure of its code, for what the weights do not fix."""
_HEAD = {"proj1": "head.proj1", "proj2": "head.proj2", "out_layer": "head.out"}
_LAYER_KEY = re.compile(r"trans_([lav])_(?:with_([lav])|mem)\.layers\.(\d+)\..+")


def _encoder_names() -> dict[str, str]:
    """MMSA's transformer names -> ours: ``trans_l_with_a`` -> ``crossmodal.cross.text_from_audio``..."""
    names = {f"trans_{t}_mem": f"crossmodal.memory.{SUFFIXES[t]}" for t in SUFFIXES}
    for t in SUFFIXES:
        for s in SUFFIXES:
            if s != t:
                names[f"trans_{t}_with_{s}"] = f"crossmodal.cross.{SUFFIXES[t]}_from_{SUFFIXES[s]}"
    return names


def key_table(n_layers: int, memory_layers: int) -> dict[str, str | None]:
    """Every key of MMSA's ``MULT.state_dict()`` (without BERT) with the given layer counts ->
    our name (None: dropped). The projections map to ``projections.<m>.conv.weight``."""
    table: dict[str, str | None] = {f"proj_{s}.weight": f"projections.{m}.conv.weight" for s, m in SUFFIXES.items()}
    table.update({f"{theirs}.{part}": f"{ours}.{part}" for theirs, ours in _HEAD.items() for part in ("weight", "bias")})
    for theirs, ours in _encoder_names().items():
        table[f"{theirs}.version"] = None
        table.update({f"{theirs}.layer_norm.{part}": f"{ours}.norm.{part}" for part in ("weight", "bias")})
        for i in range(memory_layers if theirs.endswith("_mem") else n_layers):
            table.update({f"{theirs}.layers.{i}.{a}": f"{ours}.layers.{i}.{b}" for a, b in MULT_LAYER_NAMES.items()})
    return table


def _layer_counts(state: Mapping[str, Tensor]) -> tuple[int, int]:
    """Layers of the cross-modal and of the memory transformers, counted in the keys."""
    cross, memory = {-1}, {-1}
    for key in state:
        if m := _LAYER_KEY.fullmatch(key):
            (memory if m.group(2) is None else cross).add(int(m.group(3)))
    return max(cross) + 1, max(memory) + 1


def _check_order(modalities: tuple[str, ...], name: str) -> None:
    if modalities != tuple(SUFFIXES.values()):
        raise ValueError(f"{name}: MMSA's MULT concatenates text, audio, vision; expected that order, received {list(modalities)}")


def _checked_state(state_dict: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, str | None]]:
    """The cleaned ``state_dict`` and its key table; ``ValueError`` for a key MMSA's MULT does not have, or one missing."""
    state = clean_state_dict(state_dict, "MULT")
    if any(key.startswith("text_model.") for key in state):
        raise ValueError("state_dict: holds a BERT text model (use_bert=True); only MMSA's feature-input MULT is supported")
    table = key_table(*_layer_counts(state))
    check_keys(state, set(table), "MULT")
    return state, table


def convert_mmsa_state_dict(state_dict: Mapping[str, Any], model: MulT) -> dict[str, Tensor]:
    """MMSA's MULT ``state_dict`` renamed to ``model``'s parameter names (no tensor changes shape).

    Raises:
        ValueError: a key MMSA's MULT does not have or one missing, or a ``model`` whose
            modalities are not text, audio, vision in that order.
    """
    _check_order(model.modalities, "model.modalities")
    state, table = _checked_state(state_dict)
    skipped = {f"projections.{m}.conv.weight" for m in model.modalities if m not in model.projections}
    # A same-width projection exists in MMSA's weights but is never applied; ours has none.
    return {name: value for key, value in state.items() if (name := table[key]) is not None and name not in skipped}


def from_mmsa_state_dict(state_dict: Mapping[str, Any], **options: Any) -> MulT:
    """A :class:`MulT` holding the weights of MMSA's MULT (``use_bert=False``).

    Args:
        state_dict: MMSA's ``MULT.state_dict()`` (or its ``AMIO`` wrapper's: a ``"Model."`` or
            ``"module."`` prefix is removed).
        **options: MulT options. Widths, kernel sizes, layer counts and the output size are read
            from the weights (options that disagree with them are an error; ``input_dims`` must
            keep MMSA's order text, audio, vision); ``n_heads`` (not in the weights) and the rest
            default to MMSA's MOSI configuration (:data:`MULT_DEFAULTS`).

    Returns:
        The model, in training mode like a new ``nn.Module``; in eval mode ``model(features,
        masks).prediction`` equals MMSA's ``output["M"]`` (squeezed for regression).

    Raises:
        ValueError: a key or shape MMSA's MULT does not have, or options that disagree with the weights.
    """
    state, _ = _checked_state(state_dict)
    if "input_dims" in options:
        _check_order(tuple(options["input_dims"]), "input_dims")
    projections = {SUFFIXES[s]: weight_tensor(state, f"proj_{s}.weight", 3) for s in SUFFIXES}  # (d, d_m, k_m)
    dims = {int(weight.shape[0]) for weight in projections.values()}
    if len(dims) != 1:
        raise ValueError(f"state_dict['proj_*.weight']: expected one output width d for all modalities, received {sorted(dims)}")
    n_layers, memory_layers = _layer_counts(state)
    inferred: dict[str, Any] = {
        "input_dims": {m: int(weight.shape[1]) for m, weight in projections.items()},
        "dim": dims.pop(),
        "kernel_size": {m: int(weight.shape[2]) for m, weight in projections.items()},
        "n_layers": n_layers,
        "memory_layers": memory_layers,
        **task_options(int(weight_tensor(state, "out_layer.weight", 2).shape[0])),
    }
    model = MulT(**merge_options(inferred, options, MULT_DEFAULTS))
    load_converted_state_dict(model, convert_mmsa_state_dict(state, model))
    return model
