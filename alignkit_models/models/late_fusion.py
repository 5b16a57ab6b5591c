"""Late fusion: encode each modality on its own, then fuse the per-modality vectors (LF-DNN style).

The decision-level ("late") fusion baseline of Snoek, Worring and Smeulders, "Early versus Late
Fusion in Semantic Video Analysis", ACM Multimedia 2005, in the form the multimodal sentiment
literature uses as a baseline (per-modality subnetworks whose outputs are combined, e.g. MMSA's
LF-DNN); taxonomy as in Baltrusaitis, Ahuja and Morency, "Multimodal Machine Learning: A Survey
and Taxonomy", IEEE TPAMI 2019::

    x_m -> LSTM_m -> masked mean over time -> h_m ; concat_m h_m -> Linear-ReLU-Dropout -> head

Where our version departs from the plain scheme:

- the per-modality vectors are combined by a learned MLP on their concatenation, not by
  averaging per-modality decisions, so the fusion can weigh modalities (as MMSA's LF-DNN does);
- every modality, text included, gets the same kind of encoder (an LSTM over pre-extracted
  feature vectors, e.g. 768-d text features); unaligned inputs need no alignment since the
  modalities meet only after pooling;
- any number of modalities; padding is kept out by packed LSTMs and masked time means.

MMSA's LF-DNN (``models/singleTask/LF_DNN.py``) is the same scheme with TFN's subnets as
encoders (an LSTM subnet for text, time mean -> BatchNorm -> 3 x Linear-ReLU for audio and
vision) and a deeper fusion MLP, Dropout -> 2 x Linear-ReLU -> Linear: ``encoder="subnet"``,
``fusion_layers=2``, ``input_dropout`` and ``dropout=0`` give it (see
:func:`alignkit_models.mmsa.fusion.late_fusion_from_mmsa_state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit_models.layers.sequence import SequenceEncoder
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.layers.options import Padding, check_padding, padding_masks, widths_per_modality
from alignkit_models.models.tfn import build_subnets
from alignkit_models.registry import register_model


@register_model(
    "late_fusion",
    summary="Late fusion: one encoder per modality (LSTM + masked mean, or TFN's subnets), concatenated vectors fused by an MLP.",
    modalities="any M >= 2",
    fidelity="faithful",
    notes="generic baseline; fusion is concat + MLP of pooled per-modality states, not decision averaging; "
    "options restore MMSA's LF-DNN",
)
class LateFusion(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the fused vector ``(B, fusion_dim)``.

    The network is ``encoder_m -> concat -> Dropout(input_dropout) -> [Linear-ReLU-Dropout(dropout)]
    x fusion_layers -> Linear``.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        hidden_dim: width of each modality's LSTM (``encoder="subnet"``: of each subnet), one
            value or one per modality.
        fusion_dim: width of the fusion MLP.
        dropout: after each fusion layer.
        encoder: ``"lstm"`` (an LSTM over every modality, masked time mean of its outputs) or
            ``"subnet"`` (TFN's subnets, :func:`alignkit_models.models.tfn.build_subnets`: the
            LSTM subnet for ``sequence_modalities``, the utterance subnet for the others).
        encoder_dim: with ``encoder="subnet"``, each subnet's output width, one value or one per
            modality (None: ``hidden_dim``); the LSTM encoders output ``hidden_dim``.
        sequence_modalities: with ``encoder="subnet"``, the modalities given the LSTM subnet.
        encoder_dropout: dropout inside the subnets (``encoder="subnet"`` only).
        input_dropout: dropout on the concatenated vectors.
        fusion_layers: number of Linear-ReLU fusion layers.
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
        fusion_dim: int = 64,
        dropout: float = 0.1,
        encoder: Literal["lstm", "subnet"] = "lstm",
        encoder_dim: int | Mapping[str, int] | None = None,
        sequence_modalities: Sequence[str] = ("text",),
        encoder_dropout: float = 0.0,
        input_dropout: float = 0.0,
        fusion_layers: int = 1,
        padding: Padding = "masked",
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        check_padding(padding)
        if encoder not in ("lstm", "subnet"):
            raise ValueError(f"encoder: expected 'lstm' or 'subnet', received {encoder!r}")
        if encoder == "lstm" and encoder_dim is not None:
            raise ValueError(
                "encoder_dim: only the 'subnet' encoders have an output width of their own; the LSTMs output hidden_dim"
            )
        if encoder == "lstm" and encoder_dropout != 0.0:
            raise ValueError(
                f"encoder_dropout: only the 'subnet' encoders have dropout, received {encoder_dropout!r} with encoder='lstm'"
            )
        if fusion_layers < 1:
            raise ValueError(f"fusion_layers: expected a positive integer, received {fusion_layers!r}")
        self.padding = padding
        hidden_dims = widths_per_modality(hidden_dim, self.modalities, "hidden_dim")
        if encoder == "lstm":
            out_dims = hidden_dims
            self.encoders = nn.ModuleDict(
                {m: SequenceEncoder(d, hidden_dims[m], pooling="mean") for m, d in self.input_dims.items()}
            )
        else:
            out_dims = hidden_dims if encoder_dim is None else widths_per_modality(encoder_dim, self.modalities, "encoder_dim")
            self.encoders = build_subnets(self.input_dims, out_dims, sequence_modalities, hidden_dims, encoder_dropout)
        self.encoder_dims = out_dims
        self.input_dropout = nn.Dropout(input_dropout)
        layers: list[nn.Module] = []
        width = sum(out_dims.values())
        for _ in range(fusion_layers):
            layers += [nn.Linear(width, fusion_dim), nn.ReLU(), nn.Dropout(dropout)]
            width = fusion_dim
        self.fusion = nn.Sequential(*layers)
        self.head = nn.Linear(fusion_dim, self.output_dim)

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = padding_masks(self.check_inputs(features, masks), self.padding)
        pooled = [self.encoders[m](features[m], masks[m]) for m in self.modalities]
        fused = self.fusion(self.input_dropout(torch.cat(pooled, dim=-1)))
        return ModelOutput(self.head_output(self.head(fused)), representation=fused)
