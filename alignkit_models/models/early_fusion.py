"""Early fusion: concatenate the modalities step by step, then one sequence encoder (EF-LSTM).

The feature-level ("early") fusion baseline of Snoek, Worring and Smeulders, "Early versus Late
Fusion in Semantic Video Analysis", ACM Multimedia 2005, in the EF-LSTM form used by the
multimodal sentiment literature (e.g. the MMSA toolkit); taxonomy as in Baltrusaitis, Ahuja and
Morency, "Multimodal Machine Learning: A Survey and Taxonomy", IEEE TPAMI 2019. It is the floor
every fusion method must beat::

    x_m -> Linear(d_m -> p) ; concat over m per step -> LSTM -> masked mean over time -> MLP head

Where our version departs from the plain scheme, and the options that restore MMSA's EF-LSTM
(``models/singleTask/EF_LSTM.py``: raw features concatenated per step -> BatchNorm1d with one
channel per time step -> stacked LSTM -> last layer's final state -> Dropout -> Linear-ReLU ->
Dropout -> Linear):

- each modality is first projected to a common width ``p`` so that 768-d text does not swamp
  5-d audio in the concatenation; ``proj_dim=None`` concatenates the raw features;
- the LSTM outputs are averaged over the real steps; ``pooling="last"`` reads the final state,
  ``num_layers`` stacks LSTMs (``dropout`` between them), ``head_dropout`` adds EF-LSTM's
  second dropout inside the head;
- EF-LSTM normalises its input with a BatchNorm whose channels are the time steps (one mean,
  variance, scale and shift per step, over batch and features), which ties it to one sequence
  length; ``step_batchnorm=T`` adds it (inputs must then have exactly ``T`` steps);
- unaligned inputs: when the modalities do not share one padded length and one mask, each is
  resampled to ``n_steps`` steps (its real span cut into equal segments, each averaged, see
  :func:`alignkit_models.layers.sequence.resample_segments`) before concatenation; aligned
  inputs keep their steps (MMSA's EF-LSTM takes word-aligned data);
- any number of modalities; padding is kept out by a packed LSTM and a masked time mean;
  ``padding="included"`` treats padded steps as data, as MMSA does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit_models.layers.sequence import SequenceEncoder, align_modalities
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.layers.options import Padding, check_padding, padding_masks
from alignkit_models.registry import register_model


@register_model(
    "early_fusion",
    summary="Early fusion: per-step concatenation of projected modalities, one LSTM, masked mean, MLP head.",
    modalities="any M >= 2",
    fidelity="faithful",
    notes="generic EF-LSTM baseline; modalities projected to a common width first; "
    "unaligned inputs resampled to n_steps equal segments; options restore MMSA's EF-LSTM",
)
class EarlyFusion(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the pooled LSTM state ``(B, hidden_dim)``.

    MMSA's EF-LSTM is ``EarlyFusion(dims, proj_dim=None, hidden_dim=h, num_layers=L,
    pooling="last", dropout=p, head_dropout=p, step_batchnorm=T, padding="included")``; see
    :func:`alignkit_models.mmsa.fusion.early_fusion_from_mmsa_state_dict`.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        proj_dim: per-modality width ``p`` before concatenation; None concatenates raw features.
        hidden_dim: LSTM and head width.
        n_steps: common length for unaligned inputs.
        dropout: before the head, and between stacked LSTM layers.
        num_layers: stacked LSTM layers.
        pooling: ``"mean"`` (masked time mean of the LSTM outputs) or ``"last"`` (final state).
        head_dropout: dropout between the head's two layers.
        step_batchnorm: number of time steps ``T`` of a BatchNorm over the concatenated input
            with one channel per step (EF-LSTM's); None for none.
        padding: ``"masked"`` keeps padded steps out; ``"included"`` treats them as data (MMSA).
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        proj_dim: int | None = 16,
        hidden_dim: int = 64,
        n_steps: int = 20,
        dropout: float = 0.1,
        num_layers: int = 1,
        pooling: Literal["mean", "last"] = "mean",
        head_dropout: float = 0.0,
        step_batchnorm: int | None = None,
        padding: Padding = "masked",
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        check_padding(padding)
        if proj_dim is not None and proj_dim < 1:
            raise ValueError(f"proj_dim: expected a positive integer or None, received {proj_dim!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers: expected a positive integer, received {num_layers!r}")
        if step_batchnorm is not None and step_batchnorm < 1:
            raise ValueError(f"step_batchnorm: expected a positive number of steps or None, received {step_batchnorm!r}")
        self.n_steps = n_steps
        self.padding = padding
        self.projections = (
            nn.ModuleDict({m: nn.Linear(d, proj_dim) for m, d in self.input_dims.items()}) if proj_dim is not None else None
        )
        width = sum(self.input_dims.values()) if proj_dim is None else len(self.modalities) * proj_dim
        self.step_norm = nn.BatchNorm1d(step_batchnorm) if step_batchnorm is not None else None
        self.encoder = SequenceEncoder(width, hidden_dim, pooling=pooling, num_layers=num_layers, dropout=dropout)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(head_dropout),
            nn.Linear(hidden_dim, self.output_dim),
        )

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = padding_masks(self.check_inputs(features, masks), self.padding)
        aligned, mask = align_modalities({m: features[m] for m in self.modalities}, masks, self.n_steps)
        parts = [aligned[m] if self.projections is None else self.projections[m](aligned[m]) for m in self.modalities]
        fused = torch.cat(parts, dim=-1)
        if self.step_norm is not None:
            if fused.shape[1] != self.step_norm.num_features:
                raise ValueError(
                    f"features: step_batchnorm expects {self.step_norm.num_features} time steps, received {fused.shape[1]}"
                )
            fused = self.step_norm(fused)  # (B, T, d): BatchNorm1d's channel axis 1 is time
        pooled = self.encoder(fused, mask)
        return ModelOutput(self.head_output(self.head(pooled)), representation=pooled)
