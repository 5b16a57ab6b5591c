"""CENet: the text encoder's hidden states are shifted by text-queried attention over the other modalities.

Wang, Liu, Wang, Tian, He and Gao, "Cross-modal Enhancement Network for Multimodal Sentiment
Analysis", IEEE Transactions on Multimedia 2022 (doi 10.1109/TMM.2022.3183830). Text is the
backbone: a pre-trained language model runs over the words, and before its transformer layer of
index 1 a cross-modal enhancement (CE) module adds a shift to the text hidden states. For each
non-verbal modality ``m``, its features are transformed to the text width
(``Linear -> ReLU -> Linear``, MMSA's continuous form of the paper's feature transformation), and
a single-head attention with queries from the text states and keys/values from ``m`` (scores
multiplied by 8, as in the released code) gives a context per text token; the contexts of all
non-verbal modalities are concatenated and a Linear maps them to the shift. The first token's
final state feeds ``Dropout -> Linear -> tanh -> Dropout -> Linear``. No auxiliary loss (no
alignkit function is involved).

Where our version departs from the paper:

- the paper fine-tunes SentiLARE (the MMSA version: BERT-base) end to end; no language model can
  be fine-tuned here, so a small transformer encoder (post-LayerNorm, GELU, as BERT's layers)
  runs over the pre-extracted 768-d text vectors after a Linear to width ``d``, sinusoidal
  positions and LayerNorm, with a learned first token prepended in place of ``[CLS]`` (hence
  ``fidelity="adapted"``); the CE module sits before layer ``ce_layer`` (1, as in the paper);
- the centre modality is the one named ``"text"``; without one (e.g. UCI multiple features),
  the first modality plays the text role (or the one named by ``centre``);
- any number of non-centre modalities: one attention each, all contexts concatenated into one
  Linear; padded non-verbal steps are masked out of the attention (the released code has none);
- the paper's discrete non-verbal codes (k-means ids, computed offline) are replaced by MMSA's
  continuous feature transformation; smaller defaults (``d = 64``, 4 heads, 2 layers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit_models.layers.sequence import zero_padding
from alignkit_models.layers.transformer import sinusoidal_positions
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model


class TextQueriedAttention(nn.Module):
    """Single-head attention of text states over one modality: ``(B, T_t, d), (B, T_m, d) -> (B, T_t, d)``.

    Args:
        dim: width ``d`` of both inputs.
        score_scale: factor on the raw dot products before the softmax (released code: 8).
    """

    def __init__(self, dim: int, score_scale: float = 8.0) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.score_scale = score_scale

    def forward(self, text: Tensor, other: Tensor, other_mask: Tensor) -> Tensor:
        scores = self.score_scale * self.query(text) @ self.key(other).mT  # (B, T_t, T_m)
        usable = other_mask | ~other_mask.any(1, keepdim=True)  # an all-padding sample attends everywhere
        scores = scores.masked_fill(~usable.unsqueeze(1), float("-inf"))
        return torch.softmax(scores, -1) @ self.value(other)


class CrossModalEnhancement(nn.Module):
    """CE module: ``text + Linear([attn_1; ...; attn_K])`` over the ``K`` non-centre modalities.

    Args:
        other_dims: input width of each non-centre modality.
        dim: text width ``d``.
        score_scale: see :class:`TextQueriedAttention`.
    """

    def __init__(self, other_dims: Mapping[str, int], dim: int, score_scale: float) -> None:
        super().__init__()
        self.transforms = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, dim), nn.ReLU(), nn.Linear(dim, dim)) for m, d in other_dims.items()}
        )
        self.attentions = nn.ModuleDict({m: TextQueriedAttention(dim, score_scale) for m in other_dims})
        self.merge = nn.Linear(len(other_dims) * dim, dim)

    def forward(self, text: Tensor, others: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> Tensor:
        """``text (B, T_t, d)``, ``others[m] (B, T_m, d_m)`` -> shifted text ``(B, T_t, d)``."""
        contexts = [
            self.attentions[m](text, self.transforms[m](zero_padding(others[m], masks[m])), masks[m])
            for m in self.transforms
        ]
        return text + self.merge(torch.cat(contexts, -1))


@register_model(
    "cenet",
    summary="CENet: text-centred encoder whose hidden states get a shift from text-queried attention "
    "over the other modalities (CE module before layer 1).",
    modalities="any M >= 2 (text-centred: the 'text' modality, else the first one)",
    fidelity="adapted",
    notes="no SentiLARE/BERT fine-tuning: a small post-LN transformer over the pre-extracted 768-d text with a "
    "learned first token; without a 'text' modality the first modality is the centre; continuous (MMSA) "
    "feature transformation; padded steps masked in the CE attention",
)
class CENet(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the first token's final state.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        centre: the text-role modality; None = ``"text"`` if present, else the first modality.
        dim: encoder width ``d``.
        n_heads: attention heads of the encoder layers.
        n_layers: encoder layers.
        ce_layer: index of the layer the CE module precedes (``0 <= ce_layer <= n_layers``).
        score_scale: CE attention score factor.
        dropout: dropout of the encoder and the head.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        centre: str | None = None,
        dim: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        ce_layer: int = 1,
        score_scale: float = 8.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        if len(self.modalities) < 2:
            raise ValueError(f"input_dims: CENet needs at least 2 modalities, received {list(self.modalities)}")
        if centre is None:
            centre = "text" if "text" in self.modalities else self.modalities[0]
        if centre not in self.modalities:
            raise ValueError(f"centre: expected one of {list(self.modalities)}, received {centre!r}")
        if not 0 <= ce_layer <= n_layers:
            raise ValueError(f"ce_layer: expected an integer in [0, {n_layers}], received {ce_layer}")
        self.centre = centre
        self.ce_layer = ce_layer
        self.embed = nn.Linear(self.input_dims[centre], dim)
        self.first_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.embed_norm = nn.LayerNorm(dim)
        self.embed_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, n_heads, 4 * dim, dropout, activation="gelu", batch_first=True)
            for _ in range(n_layers)
        )
        others = {m: d for m, d in self.input_dims.items() if m != centre}
        self.enhancement = CrossModalEnhancement(others, dim, score_scale)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(dropout), nn.Linear(dim, self.output_dim)
        )

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = self.check_inputs(features, masks)
        text = self.embed(zero_padding(features[self.centre], masks[self.centre]))
        text = torch.cat([self.first_token.expand(text.shape[0], -1, -1), text], 1)
        positions = sinusoidal_positions(text.shape[1], text.shape[2], text.device)
        text = self.embed_dropout(self.embed_norm(text + positions))
        first_real = torch.ones_like(masks[self.centre][:, :1])
        padding = ~torch.cat([first_real, masks[self.centre]], 1)
        others = {m: features[m] for m in self.modalities if m != self.centre}
        for index, layer in enumerate(self.layers):
            if index == self.ce_layer:
                text = self.enhancement(text, others, masks)
            text = layer(text, src_key_padding_mask=padding)
        if self.ce_layer == len(self.layers):
            text = self.enhancement(text, others, masks)
        summary = text[:, 0]
        return ModelOutput(self.head_output(self.head(summary)), representation=summary)
