"""Late fusion: encode each modality on its own, then fuse the per-modality vectors (LF-DNN style).

The decision-level ("late") fusion baseline of Snoek, Worring and Smeulders, "Early versus Late
Fusion in Semantic Video Analysis", ACM Multimedia 2005, in the form the multimodal sentiment
literature uses as a baseline (per-modality subnetworks whose outputs are combined, e.g. MMSA's
LF-DNN); taxonomy as in Baltrusaitis, Ahuja and Morency, "Multimodal Machine Learning: A Survey
and Taxonomy", IEEE TPAMI 2019::

    x_m -> LSTM_m -> masked mean over time -> h_m ; concat_m h_m -> Linear-ReLU-Dropout -> head

Where our version departs from the plain scheme:

- the per-modality vectors are combined by a learned MLP on their concatenation, not by
  averaging per-modality decisions, so the fusion can weigh modalities;
- every modality, text included, gets the same kind of encoder (an LSTM over pre-extracted
  feature vectors, e.g. 768-d text features); unaligned inputs need no alignment since the
  modalities meet only after pooling;
- any number of modalities; padding is kept out by packed LSTMs and masked time means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit_models.layers.sequence import SequenceEncoder
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model


@register_model(
    "late_fusion",
    summary="Late fusion: one LSTM + masked mean per modality, concatenated vectors fused by an MLP.",
    modalities="any M >= 2",
    fidelity="faithful",
    notes="generic baseline; fusion is concat + MLP of pooled per-modality states, not decision averaging",
)
class LateFusion(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the fused vector ``(B, fusion_dim)``.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        hidden_dim: width of each modality's LSTM.
        fusion_dim: width of the fusion MLP.
        dropout: after the fusion layer.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        hidden_dim: int = 32,
        fusion_dim: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        self.encoders = nn.ModuleDict(
            {m: SequenceEncoder(d, hidden_dim, pooling="mean") for m, d in self.input_dims.items()}
        )
        self.fusion = nn.Sequential(
            nn.Linear(len(self.modalities) * hidden_dim, fusion_dim), nn.ReLU(), nn.Dropout(dropout)
        )
        self.head = nn.Linear(fusion_dim, self.output_dim)

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = self.check_inputs(features, masks)
        pooled = [self.encoders[m](features[m], masks[m]) for m in self.modalities]
        fused = self.fusion(torch.cat(pooled, dim=-1))
        return ModelOutput(self.head_output(self.head(fused)), representation=fused)
