"""Options given per modality, and how a model treats padded steps: shared by DecAlign and the baselines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor


def per_modality(value: Any, modalities: tuple[str, ...], name: str, default: Any = 0.0, strict: bool = True) -> dict[str, Any]:
    """Expand a single value, or a partial ``{modality: value}`` mapping, to every modality;
    ``strict``: a key that is not a modality is an error (else ignored, for variant defaults
    such as ``{"text": 0.1}`` on data without text)."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(modalities))
        if unknown and strict:
            raise ValueError(f"{name}: unknown modality {unknown[0]!r} (modalities: {list(modalities)})")
        return {m: value.get(m, default) for m in modalities}
    return dict.fromkeys(modalities, value)


Padding = Literal["masked", "included"]


def check_padding(padding: str) -> None:
    """``ValueError`` unless ``padding`` is ``"masked"`` or ``"included"``."""
    if padding not in ("masked", "included"):
        raise ValueError(f"padding: expected 'masked' or 'included', received {padding!r}")


def padding_masks(masks: Mapping[str, Tensor], padding: Padding) -> dict[str, Tensor]:
    """The masks a model works with: as given (``"masked"``), or all True (``"included"``:
    padded steps count as data, as in MMSA, whose models never see a mask)."""
    if padding == "masked":
        return dict(masks)
    return {m: torch.ones_like(mask) for m, mask in masks.items()}


def widths_per_modality(value: int | Mapping[str, int], modalities: Sequence[str], name: str) -> dict[str, int]:
    """One positive width per modality, from a single value or a ``{modality: width}`` mapping naming each."""
    widths = per_modality(value, tuple(modalities), name, default=None)
    for m, width in widths.items():
        if width is None:
            raise ValueError(f"{name}: no width for modality {m!r} (modalities: {list(modalities)})")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"{name}: expected a positive integer for {m!r}, received {width!r}")
    return widths


def positive_int(value: Any, name: str) -> int:
    """``value`` if it is an integer ``>= 1`` (not a bool); else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, received {value!r}")
    return value


def dropout_rate(value: Any, name: str) -> float:
    """``value`` as a float if it is a number in ``[0, 1)``; else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a dropout rate in [0, 1), received {value!r}")
    return float(value)

