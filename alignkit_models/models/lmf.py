"""Low-rank Multimodal Fusion: TFN's tensor product with a rank-r factorised weight, never formed.

Liu, Shen, Lakshminarasimhan, Liang, Zadeh and Morency, "Efficient Low-rank Multimodal Fusion
with Modality-Specific Factors", ACL 2018. TFN maps the fused tensor ``Z = (x)_m [1; z_m]`` with
a weight tensor ``W``; LMF writes ``W = sum_i (x)_m W_m^(i)`` with one factor
``W_m^(i) in R^{(d_m + 1) x d_out}`` per modality and rank index, so that::

    h = sum_{i=1..r} lambda_i prod_m ([1; z_m] W_m^(i)) + b      (elementwise product over m)

equals ``Z . W`` at a cost linear in M. The learned 1 x r weighting ``lambda`` and the bias
follow the reference code; ``lambda`` is Xavier-normal, the bias 0; ``h`` is the prediction (no
post-fusion network). The subnets are TFN's (see :mod:`alignkit_models.models.tfn`).

Where our version departs from the paper:

- text arrives as pre-extracted 768-d vectors (as in MMSA) instead of GloVe word vectors; the
  text LSTM runs over them;
- any number of modalities: those in ``sequence_modalities`` (default: one called ``"text"``)
  get the LSTM subnet (output ``hidden_dim // 2``, MMSA's ``text_out``), every other one the
  utterance subnet on its masked time mean (output ``hidden_dim``); ``hidden_dim`` takes one
  value or one per modality, as in MMSA;
- widths smaller than MMSA's (hidden 32, rank 4) to keep the zoo light; one optimiser learning
  rate for factors and the rest (the reference uses two parameter groups);
- the utterance subnets start Kaiming-initialised, as in :mod:`alignkit_models.models.tfn`;
- padded steps are kept out by a packed LSTM and masked time means; ``padding="included"``
  treats them as data, as MMSA does;
- factors are Xavier-normal except their constant-one row, which starts at 1 (the reference:
  all Xavier), so that the product over many modalities does not start vanishingly small;
- ``representation`` is None: the fused vector is the prediction itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.layers.options import Padding, check_padding, padding_masks, widths_per_modality
from alignkit_models.models.tfn import build_subnets, with_constant_one
from alignkit_models.registry import register_model


def low_rank_fusion(vectors: Sequence[Tensor], factors: Sequence[Tensor], rank_weights: Tensor, bias: Tensor) -> Tensor:
    """``sum_i lambda_i prod_m ([1; z_m] W_m^(i)) + b``.

    Args:
        vectors: ``z_m (B, d_m)`` per modality.
        factors: ``W_m (r, d_m + 1, d_out)`` per modality.
        rank_weights: ``lambda (r,)``.
        bias: ``(d_out,)``.

    Returns:
        ``(B, d_out)``.
    """
    projected = [
        torch.einsum("bd,rdo->rbo", with_constant_one(z), factor) for z, factor in zip(vectors, factors, strict=True)
    ]
    product = torch.stack(projected).prod(0)  # (r, B, d_out): the elementwise product over modalities
    return torch.einsum("r,rbo->bo", rank_weights, product) + bias


def _factor_init(rank: int, rows: int, out_dim: int) -> Tensor:
    """Xavier-normal, except the row that meets the constant 1, which starts at 1.

    Each modality's projection ``[1; z_m] W_m`` then starts near 1 and the M-way product near
    ``1 + sum_m (linear terms)``. With all-Xavier factors (the reference) each projection is
    ~0.1-0.5 in size, and the product of six was ~1e-7 at initialisation: no gradient reached
    the subnets and LMF stayed at chance on the six UCI views.
    """
    factor = nn.init.xavier_normal_(torch.empty(rank, rows, out_dim))
    with torch.no_grad():
        factor[:, 0, :] = 1.0
    return factor


@register_model(
    "lmf",
    summary="Low-rank Multimodal Fusion: TFN's product with a rank-r modality-factored weight, linear in M.",
    modalities="any M >= 2",
    fidelity="faithful",
    notes="768-d pre-extracted text instead of GloVe; TFN subnets with smaller widths (hidden 32, rank 4); "
    "one learning rate for all parameters; factors' constant-one rows start at 1; Kaiming-initialised utterance subnets",
)
class LMF(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``: the low-rank fusion output is the prediction.

    MMSA's LMF (``models/singleTask/LMF.py``, with its loader's time means) is
    ``LMF({"text": ..., "audio": ..., "vision": ...}, hidden_dim={"text": h_t, "audio": h_a,
    "vision": h_v}, rank=r, padding="included")``; see
    :func:`alignkit_models.mmsa.fusion.lmf_from_mmsa_state_dict`.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        hidden_dim: subnet width, one value or one per modality; utterance subnets output it,
            sequence subnets output half of it.
        rank: number of rank-one terms ``r``.
        sequence_modalities: modalities encoded by the LSTM subnet (absent names are ignored).
        dropout: subnet dropout.
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
        rank: int = 4,
        sequence_modalities: Sequence[str] = ("text",),
        dropout: float = 0.2,
        padding: Padding = "masked",
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        check_padding(padding)
        self.padding = padding
        on_sequence = set(sequence_modalities)
        hidden_dims = widths_per_modality(hidden_dim, self.modalities, "hidden_dim")
        out_dims = {m: h // 2 if m in on_sequence else h for m, h in hidden_dims.items()}
        self.subnets = build_subnets(self.input_dims, out_dims, on_sequence, hidden_dims, dropout)
        self.factors = nn.ParameterList(
            nn.Parameter(_factor_init(rank, out_dims[m] + 1, self.output_dim)) for m in self.modalities
        )
        self.rank_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, rank)))
        self.bias = nn.Parameter(torch.zeros(self.output_dim))

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = padding_masks(self.check_inputs(features, masks), self.padding)
        vectors = [self.subnets[m](features[m], masks[m]) for m in self.modalities]
        output = low_rank_fusion(vectors, list(self.factors), self.rank_weights[0], self.bias)
        return ModelOutput(self.head_output(output))
