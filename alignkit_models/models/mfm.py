"""Multimodal Factorization Model: a discriminative factor for the label, generative factors per modality.

Tsai, Liang, Zadeh, Morency and Salakhutdinov, "Learning Factorized Multimodal Representations",
ICLR 2019. The representation factorises into a multimodal discriminative factor ``z_y`` and one
modality-specific generative factor ``z_m`` per modality:

- discriminative branch: a Memory Fusion Network (Zadeh et al., AAAI 2018) over all modalities
  (one LSTMCell per modality; the cell states of steps t-1 and t go through a softmax attention,
  a tanh MLP proposes a memory update, two sigmoid gates on [attended; memory] mix old memory
  and proposal) -> Linear -> ``z_y``;
- generative branch: per modality an LSTM -> last hidden -> Linear -> ``z_m``;
- factor maps ``f = Linear-ReLU-Dropout-Linear-ReLU(z)`` for ``z_y`` and every ``z_m``;
- a decoder per modality: an LSTMCell fed ``[f_y; f_m]`` at step 1 and its own previous hidden
  state afterwards, with a Linear read-out per step, reconstructs ``x_m``;
- the prediction uses ``f_y`` only: Linear-ReLU-Dropout-Linear.

Training loss (joint training, as the main routine of the authors' code)::

    L = task + sum_m lambda_m MSE(x_hat_m, x_m) + lambda_mmd sum_{z in {z_y, z_1..z_M}} MMD^2(z, eps)

with ``eps ~ N(0, I)`` drawn afresh each step and MFM's kernel ``exp(-||x - y||^2 / D^2)``
(biased estimator), computed by :func:`alignkit.functional.gaussian_mmd` with
``sigma = D / sqrt(2)``. The reconstruction term is a masked mean squared error written here
(alignkit has no reconstruction loss). Both terms are computed only in training; at evaluation
the generative branch is skipped, since the prediction depends on ``f_y`` alone.

Where our version departs from the paper:

- any number of modalities (one generative factor, encoder and decoder each); text arrives as
  pre-extracted 768-d vectors;
- unaligned inputs (modalities with different padded lengths or masks) are resampled to
  ``n_steps`` steps by equal-segment means (:func:`alignkit_models.layers.sequence.align_modalities`)
  because the MFN needs word-aligned steps; the whole model then works on those steps and the
  decoders reconstruct them. Aligned inputs keep their steps, and on padded steps the MFN keeps
  its state and the reconstruction error is not counted;
- one reconstruction weight for all modalities by default (0.5; MMSA's MOSI setting uses
  text 0.5, audio 0.01, vision 0.5: pass a mapping), ``lambda_mmd`` 100 as MMSA's MOSI setting;
- widths smaller than MMSA's (hidden 32, z 32/16, f 16/8, memory 32) to keep the zoo light.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit.functional import gaussian_mmd
from alignkit_models.layers.sequence import SequenceEncoder, align_modalities
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model


def mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout -> Linear, the MFN's small networks."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim))


def mfm_mmd(z: Tensor, prior: Tensor) -> Tensor:
    """MFM's MMD^2 between ``z (N, D)`` and prior samples ``(M, D)``: kernel ``exp(-||x - y||^2 / D^2)``, biased.

    That kernel is the Gaussian ``exp(-||x - y||^2 / (2 sigma^2))`` with ``sigma = D / sqrt(2)``.
    """
    return gaussian_mmd(z, prior, sigma=z.shape[1] / math.sqrt(2.0), estimator="biased")


def masked_mse(reconstruction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the real steps only: ``(B, T, d), (B, T, d), (B, T) -> ()``."""
    keep = mask.unsqueeze(-1)
    error = torch.where(keep, reconstruction - target, torch.zeros((), dtype=target.dtype, device=target.device))
    return error.pow(2).sum() / (keep.sum() * target.shape[-1]).clamp_min(1)


class MemoryFusion(nn.Module):
    """Memory Fusion Network over aligned sequences: ``[(B, T, d_m)], (B, T) -> (B, out_dim)``.

    On a padded step every LSTM state and the memory stay as they were, so the output is the
    state after each sample's last real step.
    """

    def __init__(
        self, input_dims: Sequence[int], hidden_dim: int, memory_dim: int, mlp_dim: int, out_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.hidden_dim, self.memory_dim = hidden_dim, memory_dim
        self.cells = nn.ModuleList(nn.LSTMCell(d, hidden_dim) for d in input_dims)
        window = 2 * len(input_dims) * hidden_dim  # cell states of steps t-1 and t, all modalities
        self.attention = mlp(window, mlp_dim, window, dropout)
        self.proposal = mlp(window, mlp_dim, memory_dim, dropout)
        self.retain_gate = mlp(window + memory_dim, mlp_dim, memory_dim, dropout)
        self.update_gate = mlp(window + memory_dim, mlp_dim, memory_dim, dropout)
        self.out = nn.Linear(len(input_dims) * hidden_dim + memory_dim, out_dim)

    def _update_memory(self, previous_cells: Tensor, cells: Tensor, memory: Tensor) -> Tensor:
        window = torch.cat([previous_cells, cells], dim=-1)
        attended = torch.softmax(self.attention(window), dim=-1) * window
        proposal = torch.tanh(self.proposal(attended))
        both = torch.cat([attended, memory], dim=-1)
        return torch.sigmoid(self.retain_gate(both)) * memory + torch.sigmoid(self.update_gate(both)) * proposal

    def forward(self, sequences: Sequence[Tensor], mask: Tensor) -> Tensor:
        batch, steps = mask.shape
        zeros = sequences[0].new_zeros(batch, self.hidden_dim)
        hidden, cells = [zeros] * len(sequences), [zeros] * len(sequences)
        memory = sequences[0].new_zeros(batch, self.memory_dim)
        for t in range(steps):
            real = mask[:, t : t + 1]
            new = [cell(x[:, t], (h, c)) for cell, x, h, c in zip(self.cells, sequences, hidden, cells, strict=True)]
            new_hidden, new_cells = [h for h, _ in new], [c for _, c in new]
            new_memory = self._update_memory(torch.cat(cells, dim=-1), torch.cat(new_cells, dim=-1), memory)
            hidden = [torch.where(real, h_new, h) for h_new, h in zip(new_hidden, hidden, strict=True)]
            cells = [torch.where(real, c_new, c) for c_new, c in zip(new_cells, cells, strict=True)]
            memory = torch.where(real, new_memory, memory)
        return self.out(torch.cat([*hidden, memory], dim=-1))


class SequenceDecoder(nn.Module):
    """LSTMCell unrolled for ``T`` steps from a code: ``(B, code_dim) -> (B, T, out_dim)``.

    Step 1 reads the code, later steps read the previous hidden state (hence hidden width =
    code width); a Linear maps each hidden state to a reconstructed feature vector.
    """

    def __init__(self, code_dim: int, out_dim: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(code_dim, code_dim)
        self.readout = nn.Linear(code_dim, out_dim)

    def forward(self, code: Tensor, steps: int) -> Tensor:
        hidden, cell = torch.zeros_like(code), torch.zeros_like(code)
        step_input, outputs = code, []
        for _ in range(steps):
            hidden, cell = self.cell(step_input, (hidden, cell))
            outputs.append(hidden)
            step_input = hidden
        return self.readout(torch.stack(outputs, dim=1))


def factor_map(z_dim: int, f_dim: int, dropout: float) -> nn.Sequential:
    """``z -> f``: Linear-ReLU-Dropout-Linear-ReLU."""
    return nn.Sequential(nn.Linear(z_dim, f_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(f_dim, f_dim), nn.ReLU())


@register_model(
    "mfm",
    summary="Multimodal Factorization Model: MFN discriminative factor + per-modality generative factors, "
    "reconstruction and MMD-to-prior terms.",
    modalities="any M >= 2",
    fidelity="faithful",
    notes="unaligned inputs resampled to n_steps equal segments (MFN needs aligned steps); "
    "smaller widths than MMSA; one reconstruction weight by default",
)
class MFM(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is ``f_y (B, fy_dim)``.

    In training, ``aux_losses`` holds ``reconstruction`` (``sum_m lambda_m MSE_m``) and ``mmd``
    (``lambda_mmd sum_z MMD^2``); ``components`` holds ``reconstruction_<m>`` and ``mmd_y`` /
    ``mmd_<m>`` unweighted.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        hidden_dim: width of the MFN cells, their small MLPs, the generative encoders and the head.
        memory_dim: MFN memory width.
        zy_dim, z_dim: widths of ``z_y`` and of each ``z_m``.
        fy_dim, f_dim: widths of ``f_y`` and of each ``f_m``.
        n_steps: common length for unaligned inputs.
        reconstruction_weight: ``lambda_m``, one value or one per modality.
        mmd_weight: ``lambda_mmd``.
        dropout: dropout inside the MFN networks, factor maps and prediction head.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        hidden_dim: int = 32,
        memory_dim: int = 32,
        zy_dim: int = 32,
        z_dim: int = 16,
        fy_dim: int = 16,
        f_dim: int = 8,
        n_steps: int = 20,
        reconstruction_weight: float | Mapping[str, float] = 0.5,
        mmd_weight: float = 100.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        dims = self.input_dims
        self.n_steps, self.mmd_weight = n_steps, mmd_weight
        self.reconstruction_weights = (
            dict.fromkeys(self.modalities, float(reconstruction_weight))
            if isinstance(reconstruction_weight, (int, float))
            else {m: float(reconstruction_weight[m]) for m in self.modalities}
        )
        self.memory_fusion = MemoryFusion(list(dims.values()), hidden_dim, memory_dim, hidden_dim, zy_dim, dropout)
        self.discriminative_map = factor_map(zy_dim, fy_dim, dropout)
        self.encoders = nn.ModuleDict({m: SequenceEncoder(d, hidden_dim, pooling="last") for m, d in dims.items()})
        self.to_private = nn.ModuleDict({m: nn.Linear(hidden_dim, z_dim) for m in self.modalities})
        self.private_maps = nn.ModuleDict({m: factor_map(z_dim, f_dim, dropout) for m in self.modalities})
        self.decoders = nn.ModuleDict({m: SequenceDecoder(fy_dim + f_dim, d) for m, d in dims.items()})
        self.head = mlp(fy_dim, hidden_dim, self.output_dim, dropout)

    def _generative_terms(
        self, aligned: Mapping[str, Tensor], mask: Tensor, z_y: Tensor, f_y: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Encode, factor and decode every modality: ``(aux_losses, components)``."""
        mmd_terms = {"y": mfm_mmd(z_y, torch.randn_like(z_y))}
        reconstruction_terms: dict[str, Tensor] = {}
        for m in self.modalities:
            z_m = self.to_private[m](self.encoders[m](aligned[m], mask))
            code = torch.cat([f_y, self.private_maps[m](z_m)], dim=-1)
            reconstruction_terms[m] = masked_mse(self.decoders[m](code, mask.shape[1]), aligned[m], mask)
            mmd_terms[m] = mfm_mmd(z_m, torch.randn_like(z_m))
        weighted = [self.reconstruction_weights[m] * error for m, error in reconstruction_terms.items()]
        aux_losses = {
            "reconstruction": torch.stack(weighted).sum(),
            "mmd": self.mmd_weight * torch.stack(list(mmd_terms.values())).sum(),
        }
        components = {f"reconstruction_{m}": e for m, e in reconstruction_terms.items()}
        components.update({f"mmd_{name}": v for name, v in mmd_terms.items()})
        return aux_losses, components

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = self.check_inputs(features, masks)
        aligned, mask = align_modalities({m: features[m] for m in self.modalities}, masks, self.n_steps)
        z_y = self.memory_fusion([aligned[m] for m in self.modalities], mask)
        f_y = self.discriminative_map(z_y)
        prediction = self.head_output(self.head(f_y))
        if not self.training:
            return ModelOutput(prediction, representation=f_y)
        aux_losses, components = self._generative_terms(aligned, mask, z_y, f_y)
        return ModelOutput(prediction, aux_losses, components, representation=f_y)
