"""Tensor Fusion Network: the outer product of the modality vectors, each extended by a constant 1.

Zadeh, Chen, Poria, Cambria and Morency, "Tensor Fusion Network for Multimodal Sentiment
Analysis", EMNLP 2017. Each modality goes through a subnetwork to a vector ``z_m``; the fused
tensor is ``[1; z_1] (x) [1; z_2] (x) ... (x) [1; z_M]``, flattened to ``prod_m (w_m + 1)``
entries, so that it holds every unimodal, bimodal, ..., M-modal product at once; an MLP maps it
to the prediction. Facts from the paper and its PyTorch reference (see ``BASELINES.md``):
sequence modalities (text) use a 1-layer LSTM -> last hidden state -> Dropout -> Linear;
utterance-level modalities (audio, vision, averaged over time) use BatchNorm -> Dropout ->
3 x (Linear + ReLU); post-fusion Dropout -> Linear-ReLU -> Linear-ReLU -> Linear; regression
output ``6 sigmoid(o) - 3``.

Where our version departs from the paper:

- text arrives as pre-extracted 768-d vectors (as in MMSA) instead of GloVe word vectors; the
  text LSTM runs over them;
- any number of modalities: those named in ``sequence_modalities`` (default: one called
  ``"text"``, if present) get the LSTM subnet, every other one the utterance subnet on its
  masked time mean;
- by default every subnet ends at one fusion width ``w`` (the reference ends at ``h_m``): the
  largest value <= 16 with ``(w + 1)^M <= max_fused_dim`` (4096): 15 for M=3, 7 for M=4, 4 for
  M=5, 3 for M=6, since the product grows as ``prod (w_m + 1)`` (6 views of width 32 would give
  ~1.3e9 entries); explicit widths over the budget raise an error (use LMF). ``fusion_dim`` and
  ``hidden_dim`` also take one value per modality, as in MMSA (e.g. audio 32, vision 128, text
  LSTM 128 -> 32);
- widths smaller than MMSA's (hidden 32, post-fusion 32) to keep the zoo light;
- the utterance subnets' Linear layers start Kaiming-normal with zero bias (the reference
  keeps PyTorch's default). With the default init each Linear-ReLU layer shrinks the second
  moment about six-fold, so ``z_m`` starts near 0.05, the k-modal products near ``0.05^k``, and
  a unit whose bias is negative is off for every input; the fused tensor is then almost the
  constant 1 and the output hardly depends on the input (logit std 3e-4 over a UCI batch). TFN
  sat at chance on UCI for one seed in five (its width-3 subnets lost their last live units)
  and, at lr 6e-5, at the mean predictor on synthetic MOSI;
- the regression squash ``lo + (hi - lo) sigmoid(o)`` takes its range from ``output_range``
  (default ``(-3, 3)``, the paper's; ``None`` leaves the output linear);
- padded steps are kept out by a packed LSTM and masked time means; ``padding="included"``
  treats them as data instead, as MMSA does (its text LSTM runs over every step and its
  loader averages audio and vision over the padded length).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit.decoupling import masked_mean
from alignkit_models.layers.sequence import SequenceEncoder
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.layers.options import Padding, check_padding, padding_masks, widths_per_modality
from alignkit_models.registry import register_model

MAX_FUSION_WIDTH = 16
"""Largest per-modality width the automatic choice of ``fusion_dim`` picks."""


def with_constant_one(z: Tensor) -> Tensor:
    """``(B, d) -> (B, d + 1)``: prepend the constant 1 that keeps lower-order terms in the product."""
    return torch.cat([torch.ones_like(z[:, :1]), z], dim=1)


def tensor_fusion(vectors: Sequence[Tensor]) -> Tensor:
    """The flattened outer product ``[1; z_1] (x) ... (x) [1; z_M]``: ``(B, d_m)`` each -> ``(B, prod (d_m + 1))``.

    Entries are ordered with the first modality's index varying slowest (C order of the tensor).
    """
    fused = with_constant_one(vectors[0])
    for z in vectors[1:]:
        fused = (fused.unsqueeze(2) * with_constant_one(z).unsqueeze(1)).flatten(1)
    return fused


def automatic_fusion_width(n_modalities: int, max_fused_dim: int) -> int:
    """Largest ``w <= MAX_FUSION_WIDTH`` with ``(w + 1)^M <= max_fused_dim``."""
    fitting = [w for w in range(1, MAX_FUSION_WIDTH + 1) if (w + 1) ** n_modalities <= max_fused_dim]
    if not fitting:
        raise ValueError(
            f"max_fused_dim: {max_fused_dim} cannot hold even width 1 for {n_modalities} modalities "
            f"(needs {2 ** n_modalities}); raise it or use the linear-cost 'lmf' model"
        )
    return max(fitting)


class UtteranceSubnet(nn.Module):
    """Masked time mean, then BatchNorm -> Dropout -> Linear-ReLU x 3: ``(B, T, d), (B, T) -> (B, out_dim)``.

    The Linear layers start Kaiming-normal (fan-in, ReLU gain) with zero bias, so that the
    output keeps the size of the normalised input (see the module docstring for why).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.BatchNorm1d(in_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, out_dim),
            nn.ReLU(),
        )
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.layers(masked_mean(x, mask))


class SequenceSubnet(nn.Module):
    """LSTM over the real steps -> last hidden -> Dropout -> Linear: ``(B, T, d), (B, T) -> (B, out_dim)``.

    No activation after the Linear, as in the reference code.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.encoder = SequenceEncoder(in_dim, hidden_dim, pooling="last")
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.out(self.encoder(x, mask))


def build_subnets(
    input_dims: Mapping[str, int],
    out_dims: Mapping[str, int],
    sequence_modalities: Iterable[str],
    hidden_dims: Mapping[str, int],
    dropout: float,
) -> nn.ModuleDict:
    """One subnet per modality: :class:`SequenceSubnet` for ``sequence_modalities``, else :class:`UtteranceSubnet`."""
    on_sequence = set(sequence_modalities)
    return nn.ModuleDict(
        {
            m: (SequenceSubnet if m in on_sequence else UtteranceSubnet)(d, hidden_dims[m], out_dims[m], dropout)
            for m, d in input_dims.items()
        }
    )


def squash(output: Tensor, output_range: tuple[float, float] | None) -> Tensor:
    """``lo + (hi - lo) sigmoid(output)``, the reference's bounded regression output; identity for None."""
    if output_range is None:
        return output
    low, high = output_range
    return low + (high - low) * torch.sigmoid(output)


@register_model(
    "tfn",
    summary="Tensor Fusion Network: flattened outer product of [1; z_m] over modalities, then an MLP.",
    modalities="any M >= 2 (product size (w+1)^M, default width shrinks with M: 15 for 3, 3 for 6)",
    fidelity="faithful",
    notes="768-d pre-extracted text instead of GloVe; one fusion width w capped so (w+1)^M <= 4096 unless "
    "given per modality; smaller widths than MMSA; Kaiming-initialised utterance subnets",
)
class TFN(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the fused tensor ``(B, prod (w_m + 1))``.

    MMSA's TFN (``models/singleTask/TFN.py``, with its loader's time means) is
    ``TFN({"text": ..., "audio": ..., "vision": ...}, hidden_dim={"text": h_t, "audio": h_a,
    "vision": h_v}, fusion_dim={"text": text_out, "audio": h_a, "vision": h_v},
    max_fused_dim=<the product>, post_fusion_dim=..., padding="included")``; see
    :func:`alignkit_models.mmsa.fusion.tfn_from_mmsa_state_dict`.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        hidden_dim: subnet width (LSTM width for sequence modalities), one value or one per modality.
        fusion_dim: width ``w_m`` each subnet outputs into the product, one value or one per
            modality; None picks one ``w`` from ``max_fused_dim`` (see the module docstring).
        max_fused_dim: largest allowed product size ``prod_m (w_m + 1)``.
        post_fusion_dim: width of the post-fusion MLP.
        sequence_modalities: modalities encoded by the LSTM subnet (absent names are ignored).
        dropout: subnet dropout.
        post_fusion_dropout: dropout on the fused tensor.
        output_range: regression output range of the sigmoid squash; None for a linear output.
        padding: ``"masked"`` keeps padded steps out; ``"included"`` treats them as data (MMSA).
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        hidden_dim: int | Mapping[str, int] = 32,
        fusion_dim: int | Mapping[str, int] | None = None,
        max_fused_dim: int = 4096,
        post_fusion_dim: int = 32,
        sequence_modalities: Sequence[str] = ("text",),
        dropout: float = 0.2,
        post_fusion_dropout: float = 0.3,
        output_range: tuple[float, float] | None = (-3.0, 3.0),
        padding: Padding = "masked",
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        check_padding(padding)
        n_modalities = len(self.modalities)
        if fusion_dim is None:
            fusion_dim = automatic_fusion_width(n_modalities, max_fused_dim)
        widths = widths_per_modality(fusion_dim, self.modalities, "fusion_dim")
        fused_dim = math.prod(w + 1 for w in widths.values())
        if fused_dim > max_fused_dim:
            raise ValueError(
                f"fusion_dim: prod(w_m + 1) over {widths} = {fused_dim} exceeds max_fused_dim={max_fused_dim}; "
                "lower it, raise max_fused_dim, or use the linear-cost 'lmf' model"
            )
        self.padding = padding
        self.fusion_dims = widths
        self.output_range = output_range if task == "regression" else None
        hidden_dims = widths_per_modality(hidden_dim, self.modalities, "hidden_dim")
        self.subnets = build_subnets(self.input_dims, widths, sequence_modalities, hidden_dims, dropout)
        self.post_fusion = nn.Sequential(
            nn.Dropout(post_fusion_dropout),
            nn.Linear(fused_dim, post_fusion_dim),
            nn.ReLU(),
            nn.Linear(post_fusion_dim, post_fusion_dim),
            nn.ReLU(),
            nn.Linear(post_fusion_dim, self.output_dim),
        )

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = padding_masks(self.check_inputs(features, masks), self.padding)
        fused = tensor_fusion([self.subnets[m](features[m], masks[m]) for m in self.modalities])
        output = squash(self.post_fusion(fused), self.output_range)
        return ModelOutput(self.head_output(output), representation=fused)
