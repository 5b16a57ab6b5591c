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

Where our version departs from the paper (defaults):

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

The authors' released code (``kiva12138/CubeMLP``, ``Model.py`` / ``MLPProcess.py``) differs
further, and each difference has an option whose non-default value restores it (see
:mod:`alignkit_models.models.cubemlp_reference` for the weights and the values of its MOSI run):

- ``text_encoder``: BERT runs inside the model on token ids (fine-tuned);
- ``shared_time_axis="text"``: every modality lives on the text's token axis. The other
  modalities are centred on it (zeros split before / after, or cropped alike), all-zero steps
  inside the text's real span become ``1e-6`` everywhere, and the GRUs run packed over the
  text's real length; the other modalities' own masks are not used;
- ``padded_steps="encoded"``: the encoders' outputs at padded steps are kept (the Linear of
  BERT's states at padding tokens, ``ReLU(LayerNorm(0))`` after a GRU) instead of zeros;
- ``long_sequences="truncate"``: steps past ``time_len`` are dropped instead of resampled;
- ``norm_position="last"`` (their default without ``--ln_first``), ``norm_eps=1e-6`` (all their
  LayerNorms), ``unit_bias=False`` (their default without ``--bias``), ``hidden_dropout=False``
  (their units drop out only after the second Linear), ``residual_projection="always"`` (their
  ``res_project``: a projection even when the size is kept);
- ``blocks`` triples (sequence, modality, channel) and ``block_hiddens``: their ``d_outs`` may
  shrink the modality axis and their ``d_hiddens`` differ from ``d_outs``;
- ``sequence_pooling`` / ``modality_pooling``: their ``features_compose_t`` / ``_k`` (``"cat"``
  -> ``"concat"``; their ``"sum"`` computes a mean, so it is ``"mean"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit_models.layers.sequence import resample_segments, run_packed, zero_padding
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model

HEAD_DIRECT_MAX = 128
"""Pooled widths up to this go straight to one Linear; wider ones pass a 128-wide hidden layer."""
BLANK_STEP_VALUE = 1e-6
"""With a shared time axis, what an all-zero step inside the anchor's real span is set to."""

NormPosition = Literal["first", "last"]
ResidualProjection = Literal["resized", "always"]
_NORM_POSITIONS = ("first", "last")
_RESIDUAL_PROJECTIONS = ("resized", "always")
_LONG_SEQUENCES = ("resample", "truncate")
_PADDED_STEPS = ("zeroed", "encoded")
_SEQUENCE_POOLINGS = ("mean", "concat")
_MODALITY_POOLINGS = ("concat", "mean")


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, received {value!r}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, received {value!r}")
    return value


def _sizes(value: Any, lengths: tuple[int, ...], name: str) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints whose length is one of ``lengths``; else ``ValueError``."""
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or len(value) not in lengths
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
    ):
        shape = " or ".join(f"{n} positive integers" for n in lengths)
        raise ValueError(f"{name}: expected {shape}, received {value!r}")
    return tuple(value)


class AxisMLP(nn.Module):
    """One CubeMLP unit mixing one axis of a ``(B, L, K, D)`` cube; the other axes are untouched.

    Args:
        axis: the axis to mix (1 = sequence, 2 = modality, 3 = channel).
        in_size, hidden_size, out_size: size of that axis before, inside and after the unit.
        dropout: after the second Linear, and after the GELU with ``hidden_dropout``.
        bias: biases in the two Linears.
        hidden_dropout: dropout after the GELU too.
        norm_position: ``"first"``: ``mlp(LN(x)) + res(x)`` (LayerNorm of width ``in_size``);
            ``"last"``: ``LN(mlp(x) + res(x))`` (width ``out_size``).
        norm_eps: the LayerNorm's epsilon.
        residual: ``"resized"``: the residual is a bias-free Linear only when ``in_size !=
            out_size``; ``"always"``: also when the size is kept.
    """

    def __init__(
        self,
        axis: int,
        in_size: int,
        hidden_size: int,
        out_size: int,
        dropout: float,
        *,
        bias: bool = True,
        hidden_dropout: bool = True,
        norm_position: NormPosition = "first",
        norm_eps: float = 1e-5,
        residual: ResidualProjection = "resized",
    ) -> None:
        super().__init__()
        self.axis = axis
        self.norm_first = _choice(norm_position, _NORM_POSITIONS, "norm_position") == "first"
        self.norm = nn.LayerNorm(in_size if self.norm_first else out_size, eps=norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(in_size, hidden_size, bias=bias),
            nn.GELU(),
            nn.Dropout(dropout) if hidden_dropout else nn.Identity(),  # kept as a slot: same parameter names
            nn.Linear(hidden_size, out_size, bias=bias),
            nn.Dropout(dropout),
        )
        projected = _choice(residual, _RESIDUAL_PROJECTIONS, "residual") == "always" or in_size != out_size
        self.residual = nn.Linear(in_size, out_size, bias=False) if projected else nn.Identity()

    def forward(self, cube: Tensor) -> Tensor:
        x = cube.movedim(self.axis, -1)
        if self.norm_first:
            mixed = self.mlp(self.norm(x)) + self.residual(x)
        else:
            mixed = self.norm(self.mlp(x) + self.residual(x))
        return mixed.movedim(-1, self.axis)


class CubeBlock(nn.Module):
    """Sequence, modality and channel mixing in turn: ``(B, L, K, D) -> (B, L', K', D')``.

    Args:
        sizes, outs: the cube's (L, K, D) before and after the block.
        dropout: see :class:`AxisMLP`.
        hiddens: the units' hidden sizes (L, K, D); None: ``outs``.
        **unit_options: passed to each :class:`AxisMLP`.
    """

    def __init__(
        self,
        sizes: tuple[int, int, int],
        outs: tuple[int, int, int],
        dropout: float,
        hiddens: tuple[int, int, int] | None = None,
        **unit_options: Any,
    ) -> None:
        super().__init__()
        hiddens = outs if hiddens is None else hiddens
        self.units = nn.Sequential(
            *(
                AxisMLP(axis, size, hidden, out, dropout, **unit_options)
                for axis, size, hidden, out in zip((1, 2, 3), sizes, hiddens, outs, strict=True)
            )
        )

    def forward(self, cube: Tensor) -> Tensor:
        return self.units(cube)


class GRUEncoder(nn.Module):
    """2-layer BiGRU over the real steps, directions summed, LayerNorm, ReLU: ``(B, T, d) -> (B, T, d_c)``.

    Padded steps leave the GRU as 0 and come out as ``ReLU(LayerNorm(0))``.
    """

    def __init__(self, in_dim: int, channels: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.gru = nn.GRU(in_dim, channels, num_layers=2, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(channels, eps=norm_eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        outputs, _ = run_packed(self.gru, x, mask)
        forward_half, backward_half = outputs.chunk(2, dim=-1)
        return F.relu(self.norm(forward_half + backward_half))


def fit_to_length(
    x: Tensor,
    mask: Tensor,
    length: int,
    *,
    long_sequences: Literal["resample", "truncate"] = "resample",
    zero_padded: bool = True,
) -> Tensor:
    """``(B, T, d) -> (B, length, d)``.

    Padded steps (``mask (B, T)`` False) are zeroed when ``zero_padded``; then a short sequence
    gets zeros appended, and a long one is resampled (:func:`resample_segments`, over the real
    steps) or truncated to its first ``length`` steps.
    """
    if x.shape[1] > length and long_sequences == "resample":
        return resample_segments(x, mask, length)
    if zero_padded:
        x = zero_padding(x, mask)
    return F.pad(x, (0, 0, 0, length - x.shape[1]))  # a negative amount truncates


def center_on_axis(x: Tensor, length: int) -> Tensor:
    """``(B, T, d) -> (B, length, d)``: ``x`` centred, the odd zero step (or cropped step) at the end."""
    gap = length - x.shape[1]
    before = gap // 2 if gap >= 0 else -((-gap) // 2)
    return F.pad(x, (0, 0, before, gap - before))


def mark_blank_steps(x: Tensor, mask: Tensor) -> Tensor:
    """``x (B, T, d)`` with every all-zero step where ``mask (B, T)`` is True set to :data:`BLANK_STEP_VALUE`."""
    blank = (x.abs().sum(-1) == 0) & mask
    return x.masked_fill(blank.unsqueeze(-1), BLANK_STEP_VALUE)


@register_model(
    "cubemlp",
    summary="CubeMLP: MLP units mixing the sequence, modality and channel axes of a stacked (L, K, D) cube.",
    modalities="any M >= 2",
    fidelity="adapted",
    notes="fine-tuned BERT replaced by a bias-free Linear on pre-extracted text vectors (text_encoder=PATH: "
    "BERT inside); unaligned modalities zero-padded separately, longer than time_len resampled; smaller sizes "
    "than the paper; options restore the released code (cubemlp_reference)",
)
class CubeMLP(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the pooled cube
    ``(B, D_last)`` times ``L_last`` / ``K_last`` where the sequence / modality pooling is ``"concat"``
    (by default ``(B, K * D_last)``).

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        channels: encoder width ``d_c``.
        time_len: the fixed sequence length ``L`` of the cube.
        blocks: per block, the sizes it maps the cube to: (sequence, channel) keeps the modality
            axis, (sequence, modality, channel) sets it too.
        block_hiddens: per block, the hidden sizes (sequence, modality, channel) of its three
            units; None: the block's output sizes (as in the README run).
        linear_modalities: modalities encoded by the bias-free Linear (absent names are ignored).
        dropout: per-modality encoder dropout, MLP-unit dropout and head dropout.
        norm_position: ``"first"`` (LayerNorm before each unit's MLP) or ``"last"`` (after the
            residual sum; the code without ``--ln_first``).
        norm_eps: epsilon of every LayerNorm (units and GRU encoders; the code: 1e-6).
        unit_bias: biases in the units' Linears (the code: only with ``--bias``).
        hidden_dropout: dropout after each unit's GELU as well as after its output (the code:
            False, output only).
        residual_projection: ``"resized"`` (a projection only where an axis changes size) or
            ``"always"`` (the code's ``res_project``); one value, or one per block.
        sequence_pooling: ``"mean"`` over L, or ``"concat"`` of the L steps.
        modality_pooling: ``"concat"`` of the K slots, or ``"mean"`` over K. The pooled width,
            ``D_last`` times ``L_last`` (concat) times ``K_last`` (concat), is the head's input.
        shared_time_axis: None (each modality on its own, see the module docstring), or the name
            of a modality (the code: ``"text"``) on whose padded time axis every modality is
            placed: the others centred on it, all-zero steps inside its real span set to
            ``1e-6``, every GRU run over its real steps.
        long_sequences: ``"resample"`` or ``"truncate"`` a sequence longer than ``time_len``.
        padded_steps: ``"zeroed"`` (padded steps are 0 in the cube) or ``"encoded"`` (they keep
            what the encoders give there, as in the code).
        text_encoder: path of a local BERT folder. The ``"text"`` modality is then token ids
            ``(B, L, 3)`` (``input_dims["text"] = 3``), its mask their attention mask, and BERT's
            last hidden state feeds the text encoder (the code's fine-tuned BERT).
        text_encoder_finetune: train BERT's weights (else it runs frozen).

    Raises:
        ValueError: a bad value, naming the argument.
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
        blocks: Sequence[tuple[int, int] | tuple[int, int, int]] = ((20, 32), (5, 16)),
        block_hiddens: Sequence[tuple[int, int, int]] | None = None,
        linear_modalities: Sequence[str] = ("text",),
        dropout: float = 0.1,
        norm_position: NormPosition = "first",
        norm_eps: float = 1e-5,
        unit_bias: bool = True,
        hidden_dropout: bool = True,
        residual_projection: ResidualProjection | Sequence[ResidualProjection] = "resized",
        sequence_pooling: Literal["mean", "concat"] = "mean",
        modality_pooling: Literal["concat", "mean"] = "concat",
        shared_time_axis: str | None = None,
        long_sequences: Literal["resample", "truncate"] = "resample",
        padded_steps: Literal["zeroed", "encoded"] = "zeroed",
        text_encoder: str | None = None,
        text_encoder_finetune: bool = True,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        if not blocks:
            raise ValueError("blocks: expected at least one (sequence, channel) size pair, received none")
        if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not norm_eps > 0:
            raise ValueError(f"norm_eps: expected a positive number, received {norm_eps!r}")
        if shared_time_axis is not None and shared_time_axis not in self.modalities:
            raise ValueError(f"shared_time_axis: expected None or one of {list(self.modalities)}, received {shared_time_axis!r}")
        if text_encoder is not None and "text" not in self.modalities:
            raise ValueError(f"text_encoder: needs a 'text' modality, received modalities {list(self.modalities)}")
        self.time_len = time_len
        self.shared_time_axis = shared_time_axis
        self.long_sequences = _choice(long_sequences, _LONG_SEQUENCES, "long_sequences")
        self.padded_steps = _choice(padded_steps, _PADDED_STEPS, "padded_steps")
        self.sequence_pooling = _choice(sequence_pooling, _SEQUENCE_POOLINGS, "sequence_pooling")
        self.modality_pooling = _choice(modality_pooling, _MODALITY_POOLINGS, "modality_pooling")
        unit_options = {
            "norm_position": _choice(norm_position, _NORM_POSITIONS, "norm_position"),
            "norm_eps": float(norm_eps),
            "bias": _flag(unit_bias, "unit_bias"),
            "hidden_dropout": _flag(hidden_dropout, "hidden_dropout"),
        }
        residuals = self._residuals(residual_projection, len(blocks))

        self.text_encoder = None
        encoder_dims = dict(self.input_dims)
        if text_encoder is not None:
            from alignkit_models.layers.text import BertTextEncoder

            self.text_encoder = BertTextEncoder(text_encoder, finetune=text_encoder_finetune)
            encoder_dims["text"] = self.text_encoder.hidden_size
        on_linear = set(linear_modalities)
        self.encoders = nn.ModuleDict(
            {
                m: nn.Linear(d, channels, bias=False) if m in on_linear else GRUEncoder(d, channels, float(norm_eps))
                for m, d in encoder_dims.items()
            }
        )
        self.encoder_dropout = nn.Dropout(dropout)
        sizes = [(time_len, len(self.modalities), channels)]
        for i, block in enumerate(blocks):
            out = _sizes(block, (2, 3), f"blocks[{i}]")
            sizes.append((out[0], sizes[-1][1], out[1]) if len(out) == 2 else out)  # type: ignore[arg-type]
        hiddens: list[tuple[int, ...] | None] = [None] * len(blocks)
        if block_hiddens is not None:
            if isinstance(block_hiddens, (str, bytes)) or not isinstance(block_hiddens, Sequence) or len(block_hiddens) != len(blocks):
                raise ValueError(f"block_hiddens: expected None or one size triple per block ({len(blocks)}), received {block_hiddens!r}")
            hiddens = [_sizes(h, (3,), f"block_hiddens[{i}]") for i, h in enumerate(block_hiddens)]
        self.blocks = nn.Sequential(
            *(
                CubeBlock(sizes[i], sizes[i + 1], dropout, hiddens[i], residual=residuals[i], **unit_options)  # type: ignore[arg-type]
                for i in range(len(blocks))
            )
        )
        length, k, width = sizes[-1]
        pooled = width * (length if self.sequence_pooling == "concat" else 1) * (k if self.modality_pooling == "concat" else 1)
        self.head = self._build_head(pooled, dropout)

    @staticmethod
    def _residuals(value: Any, n_blocks: int) -> list[str]:
        if isinstance(value, str):
            return [_choice(value, _RESIDUAL_PROJECTIONS, "residual_projection")] * n_blocks
        if not isinstance(value, Sequence) or len(value) != n_blocks:
            raise ValueError(
                f"residual_projection: expected one of {_RESIDUAL_PROJECTIONS} or one per block ({n_blocks}), received {value!r}"
            )
        return [_choice(v, _RESIDUAL_PROJECTIONS, f"residual_projection[{i}]") for i, v in enumerate(value)]

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
        """``x (B, T, d_m)`` on the real steps ``mask (B, T)`` -> ``(B, time_len, channels)``."""
        if m == "text" and self.text_encoder is not None:
            x = self.text_encoder(x)
        encoder = self.encoders[m]
        encoded = encoder(x) if isinstance(encoder, nn.Linear) else encoder(x, mask)
        return fit_to_length(
            self.encoder_dropout(encoded),
            mask,
            self.time_len,
            long_sequences=self.long_sequences,  # type: ignore[arg-type]
            zero_padded=self.padded_steps == "zeroed",
        )

    def build_cube(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> Tensor:
        """The stacked encodings ``(B, time_len, K, channels)``, modalities in ``self.modalities`` order."""
        masks = dict(masks)
        if self.text_encoder is not None:
            masks["text"] = features["text"][..., 1] != 0  # the tokens' attention mask
        anchor = self.shared_time_axis
        if anchor is None:
            return torch.stack([self._encode(m, features[m], masks[m]) for m in self.modalities], dim=2)
        mask, length = masks[anchor], features[anchor].shape[1]
        placed = {m: features[m] if m == anchor else mark_blank_steps(center_on_axis(features[m], length), mask) for m in self.modalities}
        return torch.stack([self._encode(m, placed[m], mask) for m in self.modalities], dim=2)

    def pool(self, cube: Tensor) -> Tensor:
        """``(B, L, K, D)`` -> the head's input ``(B, [L] [K] D)``: ``concat`` flattens in the order K, L, D."""
        pooled = cube.mean(1) if self.sequence_pooling == "mean" else cube.transpose(1, 2).flatten(2)
        return pooled.flatten(1) if self.modality_pooling == "concat" else pooled.mean(1)

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = self.check_inputs(features, masks)
        pooled = self.pool(self.blocks(self.build_cube(features, masks)))
        return ModelOutput(self.head_output(self.head(pooled)), representation=pooled)
