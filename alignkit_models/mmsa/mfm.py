"""Load MMSA 2.2.1 checkpoints of MFM (``models/singleTask/MFM.py``) into the zoo's :class:`MFM`.

MMSA's MFM has the modalities text, audio and video (suffixes ``l``, ``a``, ``v``; our
``"vision"``), in that order. Its parameters map onto ours as::

    MMSA                                        ours
    mfn_encoder.lstm_{l,a,v}.*                  memory_fusion.cells.{0,1,2}.*        (LSTMCell)
    mfn_encoder.att1_fc{1,2}.*                  memory_fusion.attention.{0,3}.*
    mfn_encoder.att2_fc{1,2}.*                  memory_fusion.proposal.{0,3}.*
    mfn_encoder.gamma1_fc{1,2}.*                memory_fusion.retain_gate.{0,3}.*
    mfn_encoder.gamma2_fc{1,2}.*                memory_fusion.update_gate.{0,3}.*
    mfn_encoder.out_fc{1,2}.*                   (dropped: the MFN's own prediction head, which
                                                MFM never calls; it reads the MFN's last state)
    last_to_zy_fc1.*                            memory_fusion.out.*
    zy_to_fy_fc{1,2}.*                          discriminative_map.{0,3}.*
    z{l,a,v}_to_f{l,a,v}_fc{1,2}.*              private_maps.<m>.{0,3}.*
    encoder_{l,a,v}.lstm.{weight,bias}_{ih,hh}  encoders.<m>.lstm.{weight,bias}_{ih,hh}_l0
    encoder_{l,a,v}.fc1.*                       to_private.<m>.*
    decoder_{l,a,v}.lstm.*                      decoders.<m>.cell.*
    decoder_{l,a,v}.fc1.*                       decoders.<m>.readout.*
    fy_to_y_fc{1,2}.*                           head.{0,3}.*

Every width (MFN cells, memory, the four MFN networks, ``z``/``f`` factors, encoders, head) and
the output size are read from the shapes; the modality order is MMSA's (the MFN's windows and
output layer lay their columns out text, audio, vision). Dropouts and loss weights, which the
weights do not fix, default to MMSA's MOSI configuration (:data:`MFM_DEFAULTS`), with
``padding="included"`` (MMSA never sees a mask) and ``mmd_prior="sampled"``.

In eval mode the converted model's ``prediction`` is MMSA's ``y_hat``. In training mode (with
every dropout at 0, and the same seed before both calls) its ``aux_losses["reconstruction"]`` is
MMSA's ``gen_loss`` and the sum of its ``mmd_*`` components is MMSA's ``mmd_loss``: both draw the
prior samples in the same order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from alignkit_models.mmsa._common import (
    check_keys,
    clean_state_dict,
    linear_keys,
    merge_options,
    task_options,
    weight_tensor,
)
from alignkit_models.models.base import load_converted_state_dict
from alignkit_models.models.mfm import MFM

SUFFIXES = {"l": "text", "a": "audio", "v": "vision"}
"""MMSA's modality suffixes -> our modality names, in MMSA's order."""
MFM_DEFAULTS: dict[str, Any] = {
    "memory_dropout": {"attention": 0.7, "proposal": 0.0, "retain_gate": 0.0, "update_gate": 0.5},
    "discriminative_dropout": 0.5,
    "private_dropout": {"text": 0.5, "audio": 0.7, "vision": 0.5},
    "head_dropout": 0.0,
    "reconstruction_weight": {"text": 0.5, "audio": 0.01, "vision": 0.5},
    "mmd_weight": 100.0,
    "mmd_prior": "sampled",
    "regression_loss": "l1",
    "padding": "included",
}
"""MMSA's MOSI configuration (``config_regression.json``) for what MFM's weights do not fix, its
trainer's L1 task loss, and its MMD to a fresh prior sample each step."""
_MFN_NETWORKS = {"att1": "attention", "att2": "proposal", "gamma1": "retain_gate", "gamma2": "update_gate"}
_CELL_PARTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_UNUSED_MFN_HEAD = linear_keys("mfn_encoder.out_fc1", "mfn_encoder.out_fc2")


def _cell_keys(layer: str) -> set[str]:
    return {f"{layer}.{part}" for part in _CELL_PARTS}


def mfm_keys() -> set[str]:
    """Every key of MMSA's ``MFM.state_dict()``."""
    keys = set(_UNUSED_MFN_HEAD) | linear_keys("last_to_zy_fc1", "zy_to_fy_fc1", "zy_to_fy_fc2", "fy_to_y_fc1", "fy_to_y_fc2")
    keys |= linear_keys(*(f"mfn_encoder.{network}_fc{i}" for network in _MFN_NETWORKS for i in (1, 2)))
    for s in SUFFIXES:
        keys |= _cell_keys(f"mfn_encoder.lstm_{s}") | _cell_keys(f"encoder_{s}.lstm") | _cell_keys(f"decoder_{s}.lstm")
        keys |= linear_keys(f"encoder_{s}.fc1", f"decoder_{s}.fc1", f"z{s}_to_f{s}_fc1", f"z{s}_to_f{s}_fc2")
    return keys


MFM_KEYS = mfm_keys()


def _our_name(key: str) -> str | None:
    """Our parameter name for an MMSA key; None for the MFN head MFM never uses."""
    if key in _UNUSED_MFN_HEAD:
        return None
    if m := re.fullmatch(r"mfn_encoder\.lstm_([lav])\.(.+)", key):
        return f"memory_fusion.cells.{list(SUFFIXES).index(m.group(1))}.{m.group(2)}"
    if m := re.fullmatch(r"mfn_encoder\.(att1|att2|gamma1|gamma2)_fc([12])\.(.+)", key):
        return f"memory_fusion.{_MFN_NETWORKS[m.group(1)]}.{0 if m.group(2) == '1' else 3}.{m.group(3)}"
    if m := re.fullmatch(r"last_to_zy_fc1\.(.+)", key):
        return f"memory_fusion.out.{m.group(1)}"
    if m := re.fullmatch(r"(zy_to_fy|fy_to_y)_fc([12])\.(.+)", key):
        network = "discriminative_map" if m.group(1) == "zy_to_fy" else "head"
        return f"{network}.{0 if m.group(2) == '1' else 3}.{m.group(3)}"
    if m := re.fullmatch(r"z([lav])_to_f\1_fc([12])\.(.+)", key):
        return f"private_maps.{SUFFIXES[m.group(1)]}.{0 if m.group(2) == '1' else 3}.{m.group(3)}"
    if m := re.fullmatch(r"encoder_([lav])\.(lstm|fc1)\.(.+)", key):
        modality, layer, part = SUFFIXES[m.group(1)], m.group(2), m.group(3)
        return f"encoders.{modality}.lstm.{part}_l0" if layer == "lstm" else f"to_private.{modality}.{part}"
    if m := re.fullmatch(r"decoder_([lav])\.(lstm|fc1)\.(.+)", key):
        modality, layer, part = SUFFIXES[m.group(1)], m.group(2), m.group(3)
        return f"decoders.{modality}.{'cell' if layer == 'lstm' else 'readout'}.{part}"
    raise ValueError(f"state_dict: unexpected parameter {key!r}; is this a checkpoint of MMSA's MFM?")


def _check_order(modalities: tuple[str, ...], name: str) -> None:
    if modalities != tuple(SUFFIXES.values()):
        raise ValueError(f"{name}: MMSA's MFM lays out its MFN text, audio, vision; expected that order, received {list(modalities)}")


def convert_mmsa_state_dict(state_dict: Mapping[str, Any], model: MFM) -> dict[str, Tensor]:
    """MMSA's MFM ``state_dict`` renamed to ``model``'s parameter names (no tensor changes shape).

    Raises:
        ValueError: a key MMSA's MFM does not have or one missing, or a ``model`` whose
            modalities are not text, audio, vision in that order.
    """
    _check_order(model.modalities, "model.modalities")
    state = clean_state_dict(state_dict, "MFM")
    check_keys(state, MFM_KEYS, "MFM")
    return {name: value for key, value in state.items() if (name := _our_name(key)) is not None}


def _inferred_options(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Input widths, every layer width and the output size, read from the shapes."""
    modalities = list(SUFFIXES.items())
    input_dims = {m: int(weight_tensor(state, f"encoder_{s}.lstm.weight_ih", 2).shape[1]) for s, m in modalities}
    networks = {ours: int(weight_tensor(state, f"mfn_encoder.{theirs}_fc1.weight", 2).shape[0]) for theirs, ours in _MFN_NETWORKS.items()}
    head = weight_tensor(state, "fy_to_y_fc2.weight", 2)  # (outputs, head width)
    return {
        "input_dims": input_dims,
        "cell_dim": {m: int(weight_tensor(state, f"mfn_encoder.lstm_{s}.weight_hh", 2).shape[1]) for s, m in modalities},
        "memory_dim": int(weight_tensor(state, "mfn_encoder.att2_fc2.weight", 2).shape[0]),
        "memory_mlp_dim": networks,
        "zy_dim": int(weight_tensor(state, "last_to_zy_fc1.weight", 2).shape[0]),
        "fy_dim": int(weight_tensor(state, "zy_to_fy_fc1.weight", 2).shape[0]),
        "encoder_dim": {m: int(weight_tensor(state, f"encoder_{s}.lstm.weight_hh", 2).shape[1]) for s, m in modalities},
        "z_dim": {m: int(weight_tensor(state, f"z{s}_to_f{s}_fc1.weight", 2).shape[1]) for s, m in modalities},
        "f_dim": {m: int(weight_tensor(state, f"z{s}_to_f{s}_fc1.weight", 2).shape[0]) for s, m in modalities},
        "head_dim": int(head.shape[1]),
        **task_options(int(head.shape[0])),
    }


def from_mmsa_state_dict(state_dict: Mapping[str, Any], **options: Any) -> MFM:
    """An :class:`MFM` holding the weights of MMSA's MFM.

    Args:
        state_dict: MMSA's ``MFM.state_dict()`` (or its ``AMIO`` wrapper's: a ``"Model."`` or
            ``"module."`` prefix is removed).
        **options: MFM options. Widths and the output size are read from the weights (options
            that disagree with them are an error; ``input_dims`` must keep MMSA's order text,
            audio, vision); the rest defaults to MMSA's MOSI configuration (:data:`MFM_DEFAULTS`).

    Returns:
        The model, in training mode like a new ``nn.Module``; in eval mode ``model(features,
        masks).prediction`` (``(B,)`` or ``(B, C)``) equals MMSA's ``y_hat`` (squeezed for
        regression) on word-aligned text, audio and vision sequences.

    Raises:
        ValueError: a key or shape MMSA's MFM does not have, or options that disagree with the weights.
    """
    state = clean_state_dict(state_dict, "MFM")
    check_keys(state, MFM_KEYS, "MFM")
    if "input_dims" in options:
        _check_order(tuple(options["input_dims"]), "input_dims")
    model = MFM(**merge_options(_inferred_options(state), options, MFM_DEFAULTS))
    load_converted_state_dict(model, convert_mmsa_state_dict(state, model))
    return model
