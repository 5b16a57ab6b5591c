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

MMSA's MULT (2.2.1) differs from the paper in its own ways, each restored by an option (see
:mod:`alignkit_models.mmsa.mult`, which loads its weights): no position embeddings
(``positions=False``), a Conv1d without padding (``projection_padding="valid"``) with a
kernel per modality, skipped for a modality already of width ``d``
(``identity_same_width=True``), the attention dropout chosen by the *source* modality
(``attn_dropout={...}`` with ``memory_attn_dropout``), separate embedding dropout draws for
keys and values (``independent_key_value_dropout=True``), and no masks: padded steps are data
and the readout is index -1 (``padding="included"``).
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
from alignkit_models.layers.options import per_modality
from alignkit_models.layers.options import Padding, check_padding, padding_masks
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
        kernel_size: temporal Conv1d kernel, one or one per modality (odd with ``"same"`` padding).
        projection_padding: ``"same"`` keeps the length; ``"valid"`` (MulT, MMSA) pads nothing,
            so ``T_m`` becomes ``T_m - k_m + 1`` and an output step is real when the last input
            step of its window is (with end padding: when its whole window is real).
        identity_same_width: a modality whose width is already ``d`` skips the Conv1d (MulT, MMSA).
        text_dropout: input dropout of the modality named ``"text"``.
        attn_dropout: attention dropout, one rate or one per source modality (see
            :class:`~alignkit_models.layers.crossmodal.PairwiseCrossModal`).
        memory_attn_dropout: attention dropout of the memory transformers; None = ``attn_dropout``.
        relu_dropout, res_dropout, embed_dropout: transformer dropouts.
        out_dropout: dropout in the residual head.
        future_mask: MulT's causal-style attention mask.
        positions: sinusoidal position embeddings in every transformer (MulT; MMSA has none).
        independent_key_value_dropout: separate embedding dropout draws for keys and values (MMSA).
        padding: ``"masked"`` or ``"included"`` (padded steps are data, as in MMSA: they are
            attended to and the readout is the last step).
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
        kernel_size: int | Mapping[str, int] = 1,
        projection_padding: Literal["same", "valid"] = "same",
        identity_same_width: bool = False,
        text_dropout: float = 0.1,
        attn_dropout: float | Mapping[str, float] = 0.1,
        memory_attn_dropout: float | None = None,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.1,
        out_dropout: float = 0.0,
        future_mask: bool = True,
        positions: bool = True,
        independent_key_value_dropout: bool = False,
        padding: Padding = "masked",
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        check_padding(padding)
        self.padding = padding
        kernels = per_modality(kernel_size, self.modalities, "kernel_size", default=None)
        for m, k in kernels.items():
            if isinstance(k, bool) or not isinstance(k, int):
                raise ValueError(f"kernel_size: expected an integer for {m!r}, received {k!r}")
        self.kernel_sizes = {m: 1 if identity_same_width and d_m == dim else kernels[m] for m, d_m in self.input_dims.items()}
        self.projection_padding = projection_padding
        self.projections = nn.ModuleDict(
            {
                m: TemporalProjection(d_m, dim, kernels[m], projection_padding)
                for m, d_m in self.input_dims.items()
                if not (identity_same_width and d_m == dim)
            }
        )
        self.text_dropout = nn.Dropout(text_dropout)
        self.crossmodal = PairwiseCrossModal(
            self.modalities,
            dim,
            n_heads,
            n_layers,
            max(n_layers, 3) if memory_layers is None else memory_layers,
            attn_dropout=attn_dropout,
            memory_attn_dropout=memory_attn_dropout,
            relu_dropout=relu_dropout,
            res_dropout=res_dropout,
            embed_dropout=embed_dropout,
            future_mask=future_mask,
            positions=positions,
            independent_key_value_dropout=independent_key_value_dropout,
        )
        self.head = ResidualHead(len(self.modalities) * self.crossmodal.output_dim, self.output_dim, out_dropout)

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = padding_masks(self.check_inputs(features, masks), self.padding)
        projected, projected_masks = {}, {}
        for m in self.modalities:
            # "valid" padding: output step t reads input steps t .. t + k - 1.
            shift = self.kernel_sizes[m] - 1 if self.projection_padding == "valid" else 0
            if shift >= features[m].shape[1]:
                raise ValueError(
                    f"features[{m!r}]: {features[m].shape[1]} steps, fewer than kernel_size {self.kernel_sizes[m]} with 'valid' padding"
                )
            x = zero_padding(features[m], masks[m])
            x = self.text_dropout(x) if m == "text" else x
            projected[m] = self.projections[m](x) if m in self.projections else x
            projected_masks[m] = masks[m][:, shift:]
        streams = self.crossmodal(projected, projected_masks)
        fused = torch.cat([streams[m] for m in self.modalities], -1)
        return ModelOutput(self.head_output(self.head(fused)), representation=fused)
