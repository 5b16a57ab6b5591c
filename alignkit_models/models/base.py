"""The interface every model of the zoo implements, so that one trainer runs them all.

A model maps per-modality feature sequences to a prediction::

    output = model(features, masks, labels)      # features[m]: (B, T_m, d_m), masks[m]: (B, T_m) bool
    loss = model.loss(output, labels)            # LossOutput: total + components for logging

``labels`` reach ``forward`` because some methods build label-dependent auxiliary terms during
training (Self-MM's unimodal labels, supervised contrastive terms); they are never used to
compute the prediction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.losses import LossOutput

Task = Literal["regression", "classification"]


@dataclass
class ModelOutput:
    """What a forward pass returns.

    Attributes:
        prediction: ``(B,)`` for regression, ``(B, n_classes)`` logits for classification.
        aux_losses: auxiliary training terms, already weighted; :meth:`MultimodalModel.loss`
            adds them to the task loss.
        components: unweighted terms for logging (e.g. each alignment loss).
        representation: the fused representation ``(B, D)`` fed to the head, if any.
    """

    prediction: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    components: dict[str, Tensor] = field(default_factory=dict)
    representation: Tensor | None = None


class MultimodalModel(nn.Module):
    """Base class: stores the modalities, the task and the output width; defines the task loss.

    Args:
        input_dims: feature width per modality, in the order the model uses them.
        task: ``"regression"`` (one output, MSE or L1) or ``"classification"`` (cross-entropy).
        n_classes: number of classes for classification.
        regression_loss: ``"mse"`` (the DecAlign paper) or ``"l1"`` (MMSA's usual choice).
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
    ) -> None:
        super().__init__()
        if len(input_dims) < 1:
            raise ValueError("input_dims: expected at least one modality, received none")
        if task not in ("regression", "classification"):
            raise ValueError(f"task: expected 'regression' or 'classification', received {task!r}")
        if task == "classification" and (n_classes is None or n_classes < 2):
            raise ValueError(f"n_classes: expected an integer >= 2 for classification, received {n_classes!r}")
        if regression_loss not in ("mse", "l1"):
            raise ValueError(f"regression_loss: expected 'mse' or 'l1', received {regression_loss!r}")
        self.modalities: tuple[str, ...] = tuple(input_dims)
        self.input_dims = dict(input_dims)
        self.task = task
        self.n_classes = n_classes
        self.output_dim = 1 if task == "regression" else int(n_classes)  # type: ignore[arg-type]
        self.regression_loss = regression_loss

    def head_output(self, logits: Tensor) -> Tensor:
        """Squeeze a ``(B, 1)`` regression output to ``(B,)``; leave logits as they are."""
        return logits.squeeze(-1) if self.task == "regression" else logits

    def task_loss(self, prediction: Tensor, labels: Tensor) -> Tensor:
        if self.task == "classification":
            return F.cross_entropy(prediction.float(), labels.long())
        target = labels.to(prediction.dtype).view_as(prediction)
        return F.mse_loss(prediction, target) if self.regression_loss == "mse" else F.l1_loss(prediction, target)

    def loss(self, output: ModelOutput, labels: Tensor) -> LossOutput:
        """Task loss plus the model's weighted auxiliary terms, with every component for logging."""
        task = self.task_loss(output.prediction, labels)
        total = task + sum(output.aux_losses.values(), torch.zeros((), device=task.device))
        return LossOutput(total, {"task": task, **output.components})

    def check_inputs(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
        """Every modality present with the right width; returns masks (all True when not given)."""
        full_masks: dict[str, Tensor] = {}
        for m in self.modalities:
            if m not in features:
                raise ValueError(f"features: expected modality {m!r}, received keys {sorted(features)}")
            x = features[m]
            if x.ndim != 3 or x.shape[-1] != self.input_dims[m]:
                raise ValueError(
                    f"features[{m!r}]: expected shape (B, T, {self.input_dims[m]}), received {tuple(x.shape)}"
                )
            mask = None if masks is None else masks.get(m)
            full_masks[m] = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.to(x.device)
        # Models with a BERT text encoder (attribute ``text_encoder``) read token ids, not features.
        if getattr(self, "text_encoder", None) is not None and features["text"].is_floating_point():
            raise ValueError(
                f"features['text']: expected token ids (B, L, 3) of an integer dtype for the BERT text encoder, "
                f"received {features['text'].dtype}"
            )
        return full_masks


def clean_reference_state_dict(state_dict: Mapping[str, Any], name: str = "state_dict") -> dict[str, Tensor]:
    """A reference code's ``state_dict`` without a ``"module."`` prefix (``DataParallel``), every
    value checked to be a tensor; ``name`` is the argument named in the ``ValueError``."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{name}: expected a mapping of parameter names to tensors, received {type(state_dict).__name__}")
    state = {key.removeprefix("module."): value for key, value in state_dict.items()}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"{name}[{key!r}]: expected a tensor, received {type(value).__name__}")
    return state


def load_converted_state_dict(model: nn.Module, converted: Mapping[str, Tensor]) -> None:
    """Load weights converted from another code base into ``model``; a missing, unexpected or misshapen entry is one ``ValueError``."""
    try:
        missing, unexpected = model.load_state_dict(converted, strict=False)
    except RuntimeError as error:  # shape mismatches: report the first one in one line
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error).splitlines()[0])
        raise ValueError(f"state_dict: does not fit the options given ({detail})") from None
    problems = [f"missing {k!r}" for k in missing] + [f"unexpected {k!r}" for k in unexpected]
    if problems:
        raise ValueError(f"state_dict: does not match the model built from it ({'; '.join(problems[:3])})")
