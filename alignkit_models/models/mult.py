"""MulT: cross-modal transformers for every ordered modality pair, then per-target memory transformers.

Tsai, Bai, Liang, Kolter, Morency and Salakhutdinov, "Multimodal Transformer for Unaligned
Multimodal Language Sequences", ACL 2019. Each modality is projected to a common width ``d``
by a temporal Conv1d; for each target modality ``m`` and each source ``n != m`` a cross-modal
transformer lets ``m`` attend to ``n`` (no alignment of the sequences is needed); the ``M - 1``
outputs of ``m`` are concatenated on features and pass a self-attention memory transformer
(``max(D, 3)`` layers); the last step of every target stream is concatenated (``M (M-1) d``)
and read by a residual head ``h + W2 drop(relu(W1 h))`` and a Linear. No auxiliary loss.
The cross-modal block is :class:`alignkit_models.layers.CrossModalEncoder`; the pairwise
structure is :class:`alignkit_models.layers.crossmodal.PairwiseCrossModal`.

Where our version departs from the paper:

- the Conv1d keeps the length (``padding = k // 2``, odd kernels) and is applied to every
  modality, also when ``d_m = d`` (MulT uses no padding and skips that case); padded steps are
  zeroed before it, so only real steps reach a real step's output;
- "last time step" is each sample's last *real* step of the target stream (MulT reads index
  -1, which is padding for short samples); padded source steps are masked out of every attention;
- any number of modalities: ``M (M-1)`` cross-modal transformers and ``M`` memory transformers
  (quadratic in ``M``); the input dropout of the paper's text stream applies to a modality
  called ``"text"`` if there is one;
- smaller defaults (``d = 32``, 4 heads, 2 layers) than the paper's (``d = 40``, 8-10 heads,
  4 layers) to keep the zoo light; the future mask stays on by default, as in MulT.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit_models.layers.crossmodal import PairwiseCrossModal
from alignkit_models.layers.heads import ResidualHead
from alignkit_models.layers.projection import TemporalProjection
from alignkit_models.layers.sequence import zero_padding
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model


@register_model(
    "mult",
    summary="Multimodal Transformer: M(M-1) cross-modal transformers + memory transformers, last-step fusion.",
    modalities="any M >= 2 (M(M-1) cross-modal transformers)",
    fidelity="faithful",
    notes="length-keeping Conv1d on every modality; last real step instead of index -1; "
    "smaller defaults (d 32, 4 heads, 2 layers); text input dropout only on a modality named 'text'",
)
class MulT(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the ``(B, M (M-1) d)`` fused vector.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        dim: common width ``d``.
        n_heads: attention heads (divides ``d``).
        n_layers: layers ``D`` of each cross-modal transformer.
        memory_layers: layers of each memory transformer; None = ``max(D, 3)`` as in MulT.
        kernel_size: temporal Conv1d kernel (odd).
        text_dropout: input dropout of the modality named ``"text"``.
        attn_dropout, relu_dropout, res_dropout, embed_dropout: transformer dropouts.
        out_dropout: dropout in the residual head.
        future_mask: MulT's causal-style attention mask.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        dim: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        memory_layers: int | None = None,
        kernel_size: int = 1,
        text_dropout: float = 0.1,
        attn_dropout: float = 0.1,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.1,
        out_dropout: float = 0.0,
        future_mask: bool = True,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        self.projections = nn.ModuleDict(
            {m: TemporalProjection(d_m, dim, kernel_size) for m, d_m in self.input_dims.items()}
        )
        self.text_dropout = nn.Dropout(text_dropout)
        self.crossmodal = PairwiseCrossModal(
            self.modalities,
            dim,
            n_heads,
            n_layers,
            max(n_layers, 3) if memory_layers is None else memory_layers,
            attn_dropout=attn_dropout,
            relu_dropout=relu_dropout,
            res_dropout=res_dropout,
            embed_dropout=embed_dropout,
            future_mask=future_mask,
        )
        self.head = ResidualHead(len(self.modalities) * self.crossmodal.output_dim, self.output_dim, out_dropout)

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = self.check_inputs(features, masks)
        projected = {}
        for m in self.modalities:
            x = zero_padding(features[m], masks[m])
            projected[m] = self.projections[m](self.text_dropout(x) if m == "text" else x)
        streams = self.crossmodal(projected, masks)
        fused = torch.cat([streams[m] for m in self.modalities], -1)
        return ModelOutput(self.head_output(self.head(fused)), representation=fused)
