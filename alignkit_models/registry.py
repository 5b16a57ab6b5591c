"""``create_model`` / ``list_models``: the one table of models the zoo offers."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from alignkit_models.models.base import MultimodalModel

_M = TypeVar("_M", bound=type[MultimodalModel])


@dataclass(frozen=True)
class ModelInfo:
    """What ``alignkit models`` shows about a model.

    Attributes:
        name: registry key (``create_model(name)``).
        cls: the model class.
        summary: one line on the method.
        modalities: how many modalities it takes (e.g. ``"any M >= 2"``).
        fidelity: ``"faithful"`` or ``"adapted"`` (departs from the paper in a way that matters,
            e.g. a fine-tuned BERT replaced by an encoder on pre-extracted features).
        notes: where our version departs from the paper.
    """

    name: str
    cls: type[MultimodalModel]
    summary: str
    modalities: str
    fidelity: str
    notes: str


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str, *, summary: str, modalities: str = "any M >= 2", fidelity: str = "faithful", notes: str = ""
) -> Callable[[_M], _M]:
    """Class decorator adding a model to the registry under ``name``."""

    def decorate(cls: _M) -> _M:
        if name in _REGISTRY:
            raise ValueError(f"name: model {name!r} is already registered")
        _REGISTRY[name] = ModelInfo(name, cls, summary, modalities, fidelity, notes)
        return cls

    return decorate


def _load_zoo() -> None:
    """Import every module of :mod:`alignkit_models.models`; each registers its model(s)."""
    import alignkit_models.models as zoo

    for module in pkgutil.iter_modules(zoo.__path__):
        if module.name != "base":
            importlib.import_module(f"{zoo.__name__}.{module.name}")


def list_models() -> list[ModelInfo]:
    """Every registered model, sorted by name."""
    _load_zoo()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def create_model(name: str, **options: Any) -> MultimodalModel:
    """Build a registered model: ``create_model("decalign", input_dims={...}, task=..., ...)``."""
    _load_zoo()
    if name not in _REGISTRY:
        raise ValueError(f"name: expected one of {sorted(_REGISTRY)}, received {name!r}")
    return _REGISTRY[name].cls(**options)


NOT_IN_THE_ZOO: dict[str, str] = {
    "MUTA-Net": "not identifiable: the DecAlign paper's tables cite it as reference [32], but the copy of the "
    "paper we have has no reference list, and searches of public papers and code for 'MUTA-Net' "
    "with multimodal sentiment analysis found no method of that name",
    "MCIS": "not a model: inference-time debiasing of any trained model, `alignkit evaluate --debias mcis` (adapted)",
}
"""The DecAlign paper's comparison systems that are not models of the zoo, and why."""

