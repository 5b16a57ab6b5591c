"""CubeMLP: MLP mixing along the sequence, modality and channel axes of a stacked feature cube.

Sun, Wang, Liu, Chen and Lin, "CubeMLP: An MLP-based Model for Multimodal Sentiment Analysis and
Depression Estimation", ACM Multimedia 2022. Each modality is encoded to ``d_c`` channels, padded
to a fixed length ``L`` and stacked into a cube ``X in R^{B x L x K x d_c}`` (K modalities).
Each of N blocks applies three MLP units in turn, along the sequence axis L, the modality axis K
and the channel axis D; a unit is LayerNorm (first) -> Linear(in -> hidden) -> GELU -> Dropout
-> Linear(hidden -> out) -> Dropout, plus a residual (a bias-free linear projection when the axis
size changes). The cube is then averaged over L and flattened over K, and a head (one Linear for
<= 128 inputs, else Linear -> 128, ReLU, Dropout, Linear) predicts. Encoders: text = BERT last
hidden states -> Linear(768 -> d_c, no bias); audio/vision = 2-layer bidirectional GRU with the
two directions summed -> LayerNorm -> ReLU; dropout per modality. No auxiliary loss.

Where our version departs from the paper:

- text arrives as pre-extracted 768-d vectors: the partly fine-tuned BERT is replaced by the
  bias-free Linear on those vectors (modalities named in ``linear_modalities``, default
  ``"text"``); every other modality gets the BiGRU encoder;
- any number of modalities K (the modality axis is just a size);
- unaligned inputs: each modality is placed on the L axis on its own (its real steps first,
  zeros after), which needs no cross-modal alignment because the sequence unit mixes each
  modality's time axis separately; a modality longer than ``time_len`` is resampled to
  ``time_len`` equal-segment means (:func:`alignkit_models.layers.sequence.resample_segments`)
  instead of being truncated. Padded steps are zero (as the original zero padding) whatever the
  input holds there, and the GRUs run packed;
- smaller sizes than the README's MOSI run (d_c 32, L 20, blocks (L, D) = (20, 32) then (5, 16),
  the modality axis kept at K) to keep the zoo light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit_models.layers.sequence import resample_segments, run_packed, zero_padding
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model

HEAD_DIRECT_MAX = 128
"""Pooled widths up to this go straight to one Linear; wider ones pass a 128-wide hidden layer."""


class AxisMLP(nn.Module):
    """One CubeMLP unit mixing one axis of a ``(B, L, K, D)`` cube; the other axes are untouched.

    Args:
        axis: the axis to mix (1 = sequence, 2 = modality, 3 = channel).
        in_size, hidden_size, out_size: size of that axis before, inside and after the unit.
        dropout: after the GELU and after the second Linear.
    """

    def __init__(self, axis: int, in_size: int, hidden_size: int, out_size: int, dropout: float) -> None:
        super().__init__()
        self.axis = axis
        self.norm = nn.LayerNorm(in_size)
        self.mlp = nn.Sequential(
            nn.Linear(in_size, hidden_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, out_size),
            nn.Dropout(dropout),
        )
        self.residual = nn.Identity() if in_size == out_size else nn.Linear(in_size, out_size, bias=False)

    def forward(self, cube: Tensor) -> Tensor:
        x = cube.movedim(self.axis, -1)
        return (self.mlp(self.norm(x)) + self.residual(x)).movedim(-1, self.axis)


class CubeBlock(nn.Module):
    """Sequence, modality and channel mixing in turn: ``(B, L, K, D) -> (B, L', K, D')``."""

    def __init__(self, sizes: tuple[int, int, int], outs: tuple[int, int, int], dropout: float) -> None:
        super().__init__()
        self.units = nn.Sequential(
            *(AxisMLP(axis, size, out, out, dropout) for axis, size, out in zip((1, 2, 3), sizes, outs, strict=True))
        )

    def forward(self, cube: Tensor) -> Tensor:
        return self.units(cube)


class GRUEncoder(nn.Module):
    """2-layer BiGRU over the real steps, directions summed, LayerNorm, ReLU: ``(B, T, d) -> (B, T, d_c)``."""

    def __init__(self, in_dim: int, channels: int) -> None:
        super().__init__()
        self.gru = nn.GRU(in_dim, channels, num_layers=2, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        outputs, _ = run_packed(self.gru, x, mask)
        forward_half, backward_half = outputs.chunk(2, dim=-1)
        return F.relu(self.norm(forward_half + backward_half))


def fit_to_length(x: Tensor, mask: Tensor, length: int) -> Tensor:
    """``(B, T, d) -> (B, length, d)``: zero-pad (padded steps zeroed) when ``T <= length``, else resample."""
    if x.shape[1] > length:
        return resample_segments(x, mask, length)
    return F.pad(zero_padding(x, mask), (0, 0, 0, length - x.shape[1]))


@register_model(
    "cubemlp",
    summary="CubeMLP: MLP units mixing the sequence, modality and channel axes of a stacked (L, K, D) cube.",
    modalities="any M >= 2",
    fidelity="adapted",
    notes="fine-tuned BERT replaced by a bias-free Linear on pre-extracted text vectors; unaligned modalities "
    "zero-padded separately, longer than time_len resampled; smaller sizes than the paper",
)
class CubeMLP(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the pooled cube ``(B, K * D_last)``.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        channels: encoder width ``d_c``.
        time_len: the fixed sequence length ``L`` of the cube.
        blocks: per block, the (sequence, channel) sizes it maps to (hidden = out, as in the
            README run); the modality axis keeps size K.
        linear_modalities: modalities encoded by the bias-free Linear (absent names are ignored).
        dropout: per-modality encoder dropout, MLP-unit dropout and head dropout.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        channels: int = 32,
        time_len: int = 20,
        blocks: Sequence[tuple[int, int]] = ((20, 32), (5, 16)),
        linear_modalities: Sequence[str] = ("text",),
        dropout: float = 0.1,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        if not blocks:
            raise ValueError("blocks: expected at least one (sequence, channel) size pair, received none")
        self.time_len = time_len
        on_linear = set(linear_modalities)
        self.encoders = nn.ModuleDict(
            {
                m: nn.Linear(d, channels, bias=False) if m in on_linear else GRUEncoder(d, channels)
                for m, d in self.input_dims.items()
            }
        )
        self.encoder_dropout = nn.Dropout(dropout)
        k = len(self.modalities)
        sizes = [(time_len, k, channels)] + [(length, k, width) for length, width in blocks]
        self.blocks = nn.Sequential(*(CubeBlock(sizes[i], sizes[i + 1], dropout) for i in range(len(blocks))))
        self.head = self._build_head(k * blocks[-1][1], dropout)

    def _build_head(self, pooled_dim: int, dropout: float) -> nn.Module:
        if pooled_dim <= HEAD_DIRECT_MAX:
            return nn.Linear(pooled_dim, self.output_dim)
        return nn.Sequential(
            nn.Linear(pooled_dim, HEAD_DIRECT_MAX),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(HEAD_DIRECT_MAX, self.output_dim),
        )

    def _encode(self, m: str, x: Tensor, mask: Tensor) -> Tensor:
        encoder = self.encoders[m]
        encoded = encoder(x) if isinstance(encoder, nn.Linear) else encoder(x, mask)
        return fit_to_length(self.encoder_dropout(encoded), mask, self.time_len)

    def build_cube(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> Tensor:
        """The stacked encodings ``(B, time_len, K, channels)``, modalities in ``self.modalities`` order."""
        return torch.stack([self._encode(m, features[m], masks[m]) for m in self.modalities], dim=2)

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = self.check_inputs(features, masks)
        mixed = self.blocks(self.build_cube(features, masks))
        pooled = mixed.mean(1).flatten(1)  # mean over the sequence axis, concatenation over modalities
        return ModelOutput(self.head_output(self.head(pooled)), representation=pooled)
