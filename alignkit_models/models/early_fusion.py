"""Early fusion: concatenate the modalities step by step, then one sequence encoder (EF-LSTM).

The feature-level ("early") fusion baseline of Snoek, Worring and Smeulders, "Early versus Late
Fusion in Semantic Video Analysis", ACM Multimedia 2005, in the EF-LSTM form used by the
multimodal sentiment literature (e.g. the MMSA toolkit); taxonomy as in Baltrusaitis, Ahuja and
Morency, "Multimodal Machine Learning: A Survey and Taxonomy", IEEE TPAMI 2019. It is the floor
every fusion method must beat::

    x_m -> Linear(d_m -> p) ; concat over m per step -> LSTM -> masked mean over time -> MLP head

Where our version departs from the plain scheme:

- each modality is first projected to a common width ``p`` so that 768-d text does not swamp
  5-d audio in the concatenation (the raw EF-LSTM concatenates raw features);
- unaligned inputs: when the modalities do not share one padded length and one mask, each is
  resampled to ``n_steps`` steps (its real span cut into equal segments, each averaged, see
  :func:`alignkit_models.layers.sequence.resample_segments`) before concatenation; aligned
  inputs keep their steps;
- any number of modalities; padding is kept out by a packed LSTM and a masked time mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit_models.layers.sequence import SequenceEncoder, align_modalities
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model


@register_model(
    "early_fusion",
    summary="Early fusion: per-step concatenation of projected modalities, one LSTM, masked mean, MLP head.",
    modalities="any M >= 2",
    fidelity="faithful",
    notes="generic EF-LSTM baseline; modalities projected to a common width first; "
    "unaligned inputs resampled to n_steps equal segments",
)
class EarlyFusion(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the pooled LSTM state ``(B, hidden_dim)``.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        proj_dim: per-modality width ``p`` before concatenation.
        hidden_dim: LSTM and head width.
        n_steps: common length for unaligned inputs.
        dropout: before the head.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        proj_dim: int = 16,
        hidden_dim: int = 64,
        n_steps: int = 20,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        self.n_steps = n_steps
        self.projections = nn.ModuleDict({m: nn.Linear(d, proj_dim) for m, d in self.input_dims.items()})
        self.encoder = SequenceEncoder(len(self.modalities) * proj_dim, hidden_dim, pooling="mean")
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, self.output_dim)
        )

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = self.check_inputs(features, masks)
        aligned, mask = align_modalities({m: features[m] for m in self.modalities}, masks, self.n_steps)
        fused = torch.cat([self.projections[m](aligned[m]) for m in self.modalities], dim=-1)
        pooled = self.encoder(fused, mask)
        return ModelOutput(self.head_output(self.head(pooled)), representation=pooled)
