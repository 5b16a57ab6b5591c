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

with MFM's kernel ``exp(-||x - y||^2 / D^2)`` and the prior ``eps ~ N(0, I)``. MFM (and MMSA)
draws a fresh sample of ``eps`` each step (biased estimator, :func:`mfm_mmd`, computed by
:func:`alignkit.functional.gaussian_mmd` with ``sigma = D / sqrt(2)``); by default we use the
prior itself, in closed form (:func:`mfm_mmd_to_standard_normal`), whose gradient is that
estimator's expected gradient. The reconstruction term is a masked mean squared error written here
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
- widths smaller than MMSA's (hidden 32, z 32/16, f 16/8, memory 32) to keep the zoo light;
  every width and dropout of MMSA's configuration has an option (``cell_dim``,
  ``memory_mlp_dim``, ``memory_dropout``, ``encoder_dim``, ``head_dim``...), and
  :mod:`alignkit_models.mmsa.mfm` loads MMSA's weights;
- two changes that let MFM learn (evidence from UCI, six views, ``lambda_mmd`` 100, the preset's
  Adam with weight decay 5e-3): the Linear layers start Xavier-uniform with zero bias
  (``linear_init="xavier"``; PyTorch's default, as in MMSA, is ``"torch"``), and the MMD is
  taken to the prior itself (``mmd_prior="exact"``; MMSA's fresh sample is ``"sampled"``).
  With PyTorch's default init every Linear shrinks the second moment about three-fold: the
  logits' spread over samples started at 0.002 against biases of 0.12, and the task gradient
  on the MFN's input weights (~7e-3) was 15 times smaller than the ``100 x MMD`` gradient and
  7 times smaller than the weight-decay term ``5e-3 w``; Adam normalises that sum, so the
  weights shrank instead of learning and MFM stayed at chance (0.10-0.16 test accuracy).
  Xavier brings the task gradient to the MMD gradient's size, but a sampled prior of 64 draws
  still makes the MMD gradient on ``z_y`` mostly noise at the start: a single draw's gradient
  is six times the size of its expectation for ``D = 32`` (and the noise is about four times
  smaller at MMSA's ``D = 80``). One seed in five stalled at 0.62, its noisy validation
  accuracy having cut the learning rate early; with the exact prior all five reach 0.96-0.98,
  and the exact prior alone, without Xavier, does not learn (0.22 and 0.66 on two seeds);
- ``padding="masked"`` (default) follows the masks as above; ``"included"`` treats padded steps
  as data, as MMSA does (its models never see a mask).
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
from alignkit_models.layers.options import Padding, check_padding, dropout_rate, padding_masks, per_modality, widths_per_modality
from alignkit_models.registry import register_model

MEMORY_PARTS: tuple[str, ...] = ("attention", "proposal", "retain_gate", "update_gate")
"""The MFN's four small networks (MMSA's ``NN1``, ``NN2``, ``gamma1``, ``gamma2``)."""


def mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout -> Linear, the MFN's small networks."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim))


def mfm_mmd(z: Tensor, prior: Tensor) -> Tensor:
    """MFM's MMD^2 between ``z (N, D)`` and prior samples ``(M, D)``: kernel ``exp(-||x - y||^2 / D^2)``, biased.

    That kernel is the Gaussian ``exp(-||x - y||^2 / (2 sigma^2))`` with ``sigma = D / sqrt(2)``.
    """
    return gaussian_mmd(z, prior, sigma=z.shape[1] / math.sqrt(2.0), estimator="biased")


def mfm_mmd_to_standard_normal(z: Tensor) -> Tensor:
    """MFM's MMD^2 between ``z (N, D)`` and the prior ``N(0, I)`` itself rather than a sample of it.

    With ``c = D^2`` and ``k(x, y) = exp(-||x - y||^2 / c)``, Gaussian integrals give
    ``E_y k(x, y) = (c / (c + 2))^(D/2) exp(-||x||^2 / (c + 2))`` and
    ``E_{y, y'} k(y, y') = (c / (c + 4))^(D/2)``, so::

        MMD^2 = mean_ij k(z_i, z_j) - 2 mean_i E_y k(z_i, y) + E_{y, y'} k(y, y')

    Its gradient is the expectation, over the prior draws, of the gradient of :func:`mfm_mmd`
    with a fresh sample (the sample enters that estimator linearly through ``k``); its value
    lacks only the constant that the sampled estimator's diagonal ``k(y_i, y_i) = 1`` adds.
    """
    dim = z.shape[1]
    c = float(dim) ** 2
    within = torch.exp(-(z.unsqueeze(1) - z.unsqueeze(0)).pow(2).sum(-1) / c).mean()
    cross = (c / (c + 2.0)) ** (dim / 2) * torch.exp(-z.pow(2).sum(1) / (c + 2.0)).mean()
    return within - 2.0 * cross + (c / (c + 4.0)) ** (dim / 2)


def masked_mse(reconstruction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the real steps only: ``(B, T, d), (B, T, d), (B, T) -> ()``."""
    keep = mask.unsqueeze(-1)
    error = torch.where(keep, reconstruction - target, torch.zeros((), dtype=target.dtype, device=target.device))
    return error.pow(2).sum() / (keep.sum() * target.shape[-1]).clamp_min(1)


def per_part(value: float | Mapping[str, float], name: str) -> dict[str, float]:
    """One value per MFN network (:data:`MEMORY_PARTS`), from a single value or a mapping naming each."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(MEMORY_PARTS))
        missing = [part for part in MEMORY_PARTS if part not in value]
        if unknown or missing:
            raise ValueError(f"{name}: expected the keys {list(MEMORY_PARTS)}, received {sorted(value)}")
        return {part: value[part] for part in MEMORY_PARTS}
    return dict.fromkeys(MEMORY_PARTS, value)


class MemoryFusion(nn.Module):
    """Memory Fusion Network over aligned sequences: ``[(B, T, d_m)], (B, T) -> (B, out_dim)``.

    On a padded step every LSTM state and the memory stay as they were, so the output is the
    state after each sample's last real step.

    Args:
        input_dims: input width per modality.
        hidden_dim: LSTM width, one for all modalities or one per modality (MMSA's ``hidden_dims``).
        memory_dim: memory width.
        mlp_dim: hidden width of the four small networks, one or a mapping over :data:`MEMORY_PARTS`.
        out_dim: width of the output Linear over ``[h_1; ...; h_M; memory]``.
        dropout: dropout inside the small networks, one or a mapping over :data:`MEMORY_PARTS`.
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        hidden_dim: int | Sequence[int],
        memory_dim: int,
        mlp_dim: int | Mapping[str, int],
        out_dim: int,
        dropout: float | Mapping[str, float],
    ) -> None:
        super().__init__()
        hidden_dims = [hidden_dim] * len(input_dims) if isinstance(hidden_dim, int) else list(hidden_dim)
        if len(hidden_dims) != len(input_dims):
            raise ValueError(f"hidden_dim: expected {len(input_dims)} widths, received {hidden_dims}")
        widths, dropouts = per_part(mlp_dim, "mlp_dim"), per_part(dropout, "dropout")
        self.hidden_dims, self.memory_dim = hidden_dims, memory_dim
        self.cells = nn.ModuleList(nn.LSTMCell(d, h) for d, h in zip(input_dims, hidden_dims, strict=True))
        window = 2 * sum(hidden_dims)  # cell states of steps t-1 and t, all modalities
        self.attention = mlp(window, int(widths["attention"]), window, dropouts["attention"])
        self.proposal = mlp(window, int(widths["proposal"]), memory_dim, dropouts["proposal"])
        self.retain_gate = mlp(window + memory_dim, int(widths["retain_gate"]), memory_dim, dropouts["retain_gate"])
        self.update_gate = mlp(window + memory_dim, int(widths["update_gate"]), memory_dim, dropouts["update_gate"])
        self.out = nn.Linear(sum(hidden_dims) + memory_dim, out_dim)

    def _update_memory(self, previous_cells: Tensor, cells: Tensor, memory: Tensor) -> Tensor:
        window = torch.cat([previous_cells, cells], dim=-1)
        attended = torch.softmax(self.attention(window), dim=-1) * window
        proposal = torch.tanh(self.proposal(attended))
        both = torch.cat([attended, memory], dim=-1)
        return torch.sigmoid(self.retain_gate(both)) * memory + torch.sigmoid(self.update_gate(both)) * proposal

    def forward(self, sequences: Sequence[Tensor], mask: Tensor) -> Tensor:
        batch, steps = mask.shape
        hidden = [sequences[0].new_zeros(batch, h) for h in self.hidden_dims]
        cells = list(hidden)
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
    "smaller widths than MMSA; one reconstruction weight by default; Xavier-initialised Linear layers; "
    "MMD to the exact N(0, I) prior instead of a fresh sample",
)
class MFM(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is ``f_y (B, fy_dim)``.

    In training, ``aux_losses`` holds ``reconstruction`` (``sum_m lambda_m MSE_m``) and ``mmd``
    (``lambda_mmd sum_z MMD^2``); ``components`` holds ``reconstruction_<m>`` and ``mmd_y`` /
    ``mmd_<m>`` unweighted.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        hidden_dim: the default width of the MFN cells, the MFN's small networks, the generative
            encoders and the head (each has its own option below).
        memory_dim: MFN memory width.
        zy_dim: width of ``z_y``.
        z_dim, f_dim: widths of each ``z_m`` and ``f_m`` (one, or one per modality).
        fy_dim: width of ``f_y``.
        n_steps: common length for unaligned inputs.
        reconstruction_weight: ``lambda_m``, one value or one per modality.
        mmd_weight: ``lambda_mmd``.
        dropout: the default dropout of the MFN networks, factor maps and head.
        cell_dim: MFN LSTM width per modality (MMSA's ``hidden_dims``); None = ``hidden_dim``.
        memory_mlp_dim: hidden width of the MFN's ``attention``, ``proposal``, ``retain_gate``
            and ``update_gate`` networks (MMSA's ``NN1``, ``NN2``, ``gamma1``, ``gamma2``
            shapes), one or a mapping naming each; None = ``hidden_dim``.
        memory_dropout: their dropouts, likewise; None = ``dropout``.
        encoder_dim: width of each generative LSTM encoder (MMSA: ``z_m``'s width); None = ``hidden_dim``.
        discriminative_dropout: dropout of the ``z_y -> f_y`` map; None = ``dropout``.
        private_dropout: dropout of each ``z_m -> f_m`` map, one or one per modality; None = ``dropout``.
        head_dim: hidden width of the prediction head (MMSA: ``fy_dim``); None = ``hidden_dim``.
        head_dropout: the head's dropout; None = ``dropout``.
        linear_init: ``"xavier"`` (Xavier-uniform weights, zero biases) or ``"torch"``
            (PyTorch's default, as in MMSA) for every Linear layer; see the module docstring.
        mmd_prior: ``"exact"``: MMD^2 to ``N(0, I)`` in closed form
            (:func:`mfm_mmd_to_standard_normal`); ``"sampled"``: to a fresh prior sample of the
            batch's size each step (MFM, MMSA), whose gradient has the same expectation plus
            the sample's noise.
        padding: ``"masked"`` or ``"included"`` (padded steps count as data, as in MMSA).
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
        z_dim: int | Mapping[str, int] = 16,
        fy_dim: int = 16,
        f_dim: int | Mapping[str, int] = 8,
        n_steps: int = 20,
        reconstruction_weight: float | Mapping[str, float] = 0.5,
        mmd_weight: float = 100.0,
        dropout: float = 0.2,
        cell_dim: int | Mapping[str, int] | None = None,
        memory_mlp_dim: int | Mapping[str, int] | None = None,
        memory_dropout: float | Mapping[str, float] | None = None,
        encoder_dim: int | Mapping[str, int] | None = None,
        discriminative_dropout: float | None = None,
        private_dropout: float | Mapping[str, float] | None = None,
        head_dim: int | None = None,
        head_dropout: float | None = None,
        linear_init: Literal["xavier", "torch"] = "xavier",
        mmd_prior: Literal["exact", "sampled"] = "exact",
        padding: Padding = "masked",
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        if linear_init not in ("xavier", "torch"):
            raise ValueError(f"linear_init: expected 'xavier' or 'torch', received {linear_init!r}")
        if mmd_prior not in ("exact", "sampled"):
            raise ValueError(f"mmd_prior: expected 'exact' or 'sampled', received {mmd_prior!r}")
        check_padding(padding)
        dims, names = self.input_dims, self.modalities
        self.n_steps, self.mmd_weight, self.mmd_prior, self.padding = n_steps, mmd_weight, mmd_prior, padding
        self.reconstruction_weights = (
            dict.fromkeys(names, float(reconstruction_weight))
            if isinstance(reconstruction_weight, (int, float))
            else {m: float(reconstruction_weight[m]) for m in names}
        )
        cells = widths_per_modality(hidden_dim if cell_dim is None else cell_dim, names, "cell_dim")
        encoders = widths_per_modality(hidden_dim if encoder_dim is None else encoder_dim, names, "encoder_dim")
        z_dims, f_dims = widths_per_modality(z_dim, names, "z_dim"), widths_per_modality(f_dim, names, "f_dim")
        private_dropouts = per_modality(dropout if private_dropout is None else private_dropout, names, "private_dropout", default=None)
        memory_dropouts = per_part(dropout if memory_dropout is None else memory_dropout, "memory_dropout")
        rates = {"dropout": dropout, "discriminative_dropout": discriminative_dropout, "head_dropout": head_dropout}
        for name, rate in rates.items():
            if rate is not None:  # None: use ``dropout``
                dropout_rate(rate, name)
        for part, rate in memory_dropouts.items():
            dropout_rate(rate, f"memory_dropout[{part!r}]")
        for m, rate in private_dropouts.items():
            dropout_rate(rate, f"private_dropout[{m!r}]")
        self.memory_fusion = MemoryFusion(
            list(dims.values()),
            [cells[m] for m in names],
            memory_dim,
            per_part(hidden_dim if memory_mlp_dim is None else memory_mlp_dim, "memory_mlp_dim"),
            zy_dim,
            memory_dropouts,
        )
        self.discriminative_map = factor_map(zy_dim, fy_dim, dropout if discriminative_dropout is None else discriminative_dropout)
        self.encoders = nn.ModuleDict({m: SequenceEncoder(d, encoders[m], pooling="last") for m, d in dims.items()})
        self.to_private = nn.ModuleDict({m: nn.Linear(encoders[m], z_dims[m]) for m in names})
        self.private_maps = nn.ModuleDict({m: factor_map(z_dims[m], f_dims[m], private_dropouts[m]) for m in names})
        self.decoders = nn.ModuleDict({m: SequenceDecoder(fy_dim + f_dims[m], d) for m, d in dims.items()})
        self.head = mlp(
            fy_dim, hidden_dim if head_dim is None else head_dim, self.output_dim, dropout if head_dropout is None else head_dropout
        )
        if linear_init == "xavier":
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)

    def _mmd(self, z: Tensor) -> Tensor:
        if self.mmd_prior == "exact":
            return mfm_mmd_to_standard_normal(z)
        return mfm_mmd(z, torch.randn_like(z))

    def _generative_terms(
        self, aligned: Mapping[str, Tensor], mask: Tensor, z_y: Tensor, f_y: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Encode, factor and decode every modality: ``(aux_losses, components)``.

        The prior samples are drawn for the modalities first and for ``z_y`` last, MMSA's order,
        so that a seeded step of both draws the same samples.
        """
        mmd_terms: dict[str, Tensor] = {}
        reconstruction_terms: dict[str, Tensor] = {}
        for m in self.modalities:
            z_m = self.to_private[m](self.encoders[m](aligned[m], mask))
            code = torch.cat([f_y, self.private_maps[m](z_m)], dim=-1)
            reconstruction_terms[m] = masked_mse(self.decoders[m](code, mask.shape[1]), aligned[m], mask)
            mmd_terms[m] = self._mmd(z_m)
        mmd_terms["y"] = self._mmd(z_y)
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
        masks = padding_masks(self.check_inputs(features, masks), self.padding)
        aligned, mask = align_modalities({m: features[m] for m in self.modalities}, masks, self.n_steps)
        z_y = self.memory_fusion([aligned[m] for m in self.modalities], mask)
        f_y = self.discriminative_map(z_y)
        prediction = self.head_output(self.head(f_y))
        if not self.training:
            return ModelOutput(prediction, representation=f_y)
        aux_losses, components = self._generative_terms(aligned, mask, z_y, f_y)
        return ModelOutput(prediction, aux_losses, components, representation=f_y)
