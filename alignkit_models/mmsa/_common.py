"""What every MMSA converter shares: reading MMSA's state_dict keys, checking them, reordering
column blocks between MMSA's modality order and ours, and loading the result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

MODALITIES = {"text": "text", "audio": "audio", "video": "vision"}


def clean_state_dict(state_dict: Mapping[str, Any], model_name: str) -> dict[str, Any]:
    """The ``state_dict`` without a ``"module."`` / ``"Model."`` prefix (``DataParallel``, MMSA's ``AMIO``)."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict: expected a mapping of parameter names to tensors, received {type(state_dict).__name__}")
    state = {key.removeprefix("module.").removeprefix("Model."): value for key, value in state_dict.items()}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"state_dict[{key!r}]: expected a tensor, received {type(value).__name__} ({model_name} checkpoint)")
    return state


def linear_keys(*layers: str) -> set[str]:
    return {f"{layer}.{part}" for layer in layers for part in ("weight", "bias")}


def lstm_keys(layer: str, n_layers: int) -> set[str]:
    return {f"{layer}.{kind}_{gate}_l{i}" for i in range(n_layers) for kind in ("weight", "bias") for gate in ("ih", "hh")}


def check_keys(state: Mapping[str, Tensor], expected: set[str], model_name: str) -> None:
    """``ValueError`` naming the first key of ``state`` that MMSA's model does not have, or the first one missing."""
    unexpected, missing = sorted(set(state) - expected), sorted(expected - set(state))
    if unexpected:
        raise ValueError(f"state_dict: unexpected parameter {unexpected[0]!r}; is this a checkpoint of MMSA's {model_name}?")
    if missing:
        raise ValueError(f"state_dict: missing {missing[0]!r}; is this a checkpoint of MMSA's {model_name}?")


def weight_tensor(state: Mapping[str, Tensor], key: str, ndim: int) -> Tensor:
    """``state[key]`` (the key set is checked first), with ``ndim`` dimensions."""
    value = state[key]
    if value.ndim != ndim:
        raise ValueError(f"state_dict[{key!r}]: expected {ndim} dimensions, received shape {tuple(value.shape)}")
    return value


def task_options(n_outputs: int) -> dict[str, Any]:
    """MMSA builds ``num_classes`` outputs for classification and one for regression."""
    return {"task": "classification", "n_classes": n_outputs} if n_outputs > 1 else {"task": "regression"}


def reorder_blocks(weight: Tensor, widths: Mapping[str, int], source: Sequence[str], target: Sequence[str]) -> Tensor:
    """Columns of ``weight (out, sum widths)`` laid out as modality blocks in ``source`` order, rearranged to ``target`` order."""
    blocks = dict(zip(source, weight.split([widths[m] for m in source], dim=1), strict=True))
    return torch.cat([blocks[m] for m in target], dim=1)


def merge_options(inferred: dict[str, Any], options: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """MMSA defaults < caller's options < what the weights fix; ``input_dims`` may be given in
    another order, and anything else the weights fix must agree with them."""
    given = dict(options)
    if "input_dims" in given:
        order = dict(given.pop("input_dims"))
        if order != inferred["input_dims"]:
            raise ValueError(f"input_dims: the checkpoint has {inferred['input_dims']}, received {order}")
        inferred = {**inferred, "input_dims": order}
    clashes = sorted(k for k in set(inferred) & set(given) if given[k] != inferred[k])
    if clashes:
        raise ValueError(f"{clashes[0]}: the checkpoint has {inferred[clashes[0]]!r}, received {given[clashes[0]]!r}")
    return {**defaults, **given, **inferred}
