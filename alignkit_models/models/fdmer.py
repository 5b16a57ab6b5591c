"""FDMER: common and private subspaces, an adversarial modality discriminator, attention fusion.

Yang, Huang, Kuang, Du and Zhang, "Disentangled Representation Learning for Multimodal Emotion
Recognition", ACM Multimedia 2022 (doi 10.1145/3503161.3547754). No code from the authors was
found, and the only text of the paper we could read is its abstract, so this module is built
from that description; everything below the level of the abstract is our choice, listed at the
end (hence ``fidelity="adapted"``).

What the abstract says: a *common* encoder projects every modality into one modality-invariant
subspace ("explore the commonality among different modalities and reduce the distribution
gap"), and a *private* encoder per modality into a modality-specific subspace ("enhance the
diversity and capture the unique characteristics of each modality"); a *modality
discriminator* "guides the parameter learning of the common and private encoders in an
adversarial manner"; "tailored losses" impose *consistency* (common subspace) and *disparity*
(private subspaces) constraints; a *cross-modal attention fusion* module "learns adaptive
weights" to form the multimodal representation used by the task head.

Our network, for ``M >= 2`` modalities of width ``d_m``:

- utterance vector ``u_m (B, d_h)``: a one-directional LSTM over the real steps, its outputs
  averaged over those steps (:class:`~alignkit_models.layers.sequence.SequenceEncoder`), then
  ``Linear -> ReLU -> LayerNorm`` to width ``d_h``;
- common ``c_m = sigmoid(W_c u_m + b_c)`` (one ``W_c`` for all modalities) and private
  ``p_m = sigmoid(W_m u_m + b_m)`` (one per modality), as MISA builds its subspaces;
- discriminator ``D``: ``Linear(d_h, d_h) -> ReLU -> Dropout -> Linear(d_h, M)``, modality logits;
- fusion: the ``2M`` vectors ``[c_1..c_M, p_1..p_M]`` plus a learned embedding per position
  (which modality, common or private) form a sequence for one transformer encoder layer
  (multi-head self-attention across modalities and subspaces); adaptive weights
  ``a = softmax_i(w^T tanh(W t_i))`` over its ``2M`` outputs ``t_i`` give the fused vector
  ``h = sum_i a_i t_i (B, d_h)``, the ``representation``; head ``Linear -> ReLU -> Dropout ->
  Linear``.

Training adds, with ``CE(z, m) = -log softmax(z)_m`` averaged over the batch::

    L = L_task + w_con L_con + w_dis L_dis + w_adv (L_adv_c + L_adv_p)

- ``L_con = mean_{m < n} mean_b ||c_m - c_n||^2 / d_h`` (:func:`consistency_loss`): the common
  vectors of one utterance agree across modalities, per sample. Ours: the abstract names no
  formula. The distribution-level part of "reducing the gap" is left to the discriminator, so
  the consistency term pairs the samples (MISA's CMD, a distribution distance, is the other
  natural reading; it is not used here);
- ``L_dis = sum_m d(c_m, p_m) + sum_{m < n} d(p_m, p_n)`` (:func:`disparity_loss`), with
  ``d(a, b) = mean((A^T B)^2)`` of batch-centred ``(B, d_h)`` matrices whose rows are scaled to
  unit norm (:func:`soft_orthogonality`): the squared cross-correlation of the two subspaces'
  features, DSN's difference loss as MISA writes it, with one change: MISA divides by the
  *detached* row norm (:func:`alignkit_models.models.misa.difference_loss`), so shrinking the
  batch spread of a vector lowers the loss. MISA's reconstruction term stops that; without one
  the common and private vectors collapsed to constants (chance accuracy on the zoo's
  learnability task), so here the norm stays in the graph and the term is scale-invariant.
  alignkit's ``decoupling_loss`` penalises a per-sample cosine, which for sigmoid (positive)
  vectors cannot reach 0, so it is not used;
- ``L_adv_p = mean_m CE(D(p_m), m)``: the discriminator and the private encoders both minimise
  it, so private vectors carry their modality (disparity across modalities);
- ``L_adv_c = mean_m CE(D(R(c_m)), m)``, ``R`` a gradient-reversal layer (:func:`reverse_gradient`,
  identity forward, ``-lambda`` times the gradient backward, Ganin and Lempitsky, ICML 2015): the
  discriminator minimises it while the common encoder, and the utterance encoders below it,
  receive the negated gradient and so maximise it, i.e. make the common vectors
  indistinguishable by modality. One optimizer and one backward pass play the min-max game; no
  alternating discriminator steps. ``lambda = reversal_scale`` (1 by default), constant (no
  DANN warm-up schedule). ``adv_common`` near ``log M`` means the discriminator cannot tell the
  modalities apart; above ``log M``, the encoder has made it confidently wrong (the encoder
  maximises the cross-entropy rather than driving the discriminator to a uniform guess).

What the paper leaves open (to us) and what we chose: every encoder architecture and width
(MISA-like LSTM utterance encoders and sigmoid subspace maps, ``d_h = 64``, LSTM width 32; the
paper's text encoder is not known to us, and its peers such as MISA fine-tune BERT: here the
pre-extracted text vectors go through the same LSTM encoder as the other modalities); the consistency and disparity formulas (above); whether one discriminator
reads both subspaces (one, shared) and how the adversarial game is optimised (gradient reversal,
constant ``lambda``); the fusion's exact form (one self-attention layer over the ``2M`` vectors,
position embeddings, tanh-scored softmax weights); the loss weights (``w_con = 1``, ``w_dis =
0.3``, ``w_adv = 0.1``); no reconstruction loss (MISA has one; the abstract names none). Any
number of modalities: all pairs enter ``L_con`` and ``L_dis``, the discriminator has ``M``
classes, the fusion sequence has ``2M`` vectors.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit._checks import check_non_negative
from alignkit_models.layers.options import dropout_rate, positive_int, widths_per_modality
from alignkit_models.layers.sequence import SequenceEncoder
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model


class _GradientReversal(torch.autograd.Function):
    """Identity forward; ``-scale`` times the incoming gradient backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: Tensor, scale: float = 1.0) -> Tensor:
    """Gradient-reversal layer: returns ``x``; the gradient that flows back into ``x`` is negated and scaled by ``scale``."""
    return _GradientReversal.apply(x, scale)


def consistency_loss(commons: Sequence[Tensor]) -> Tensor:
    """``mean_{m < n} mean_b ||c_m - c_n||^2 / d`` over the ``(B, d)`` common vectors of ``M >= 2`` modalities."""
    return torch.stack([F.mse_loss(a, b) for a, b in itertools.combinations(commons, 2)]).mean()


def _centred_unit_rows(x: Tensor) -> Tensor:
    """Batch-centre ``x (B, d)`` and divide each row by its L2 norm (kept in the graph; a zero row stays 0)."""
    centred = x - x.mean(0, keepdim=True)
    return centred / (torch.linalg.vector_norm(centred, dim=1, keepdim=True) + 1e-6)


def soft_orthogonality(a: Tensor, b: Tensor) -> Tensor:
    """``mean((A^T B)^2)`` of two ``(B, d)`` batches after batch-centring and scaling each row to unit norm."""
    return (_centred_unit_rows(a).mT @ _centred_unit_rows(b)).pow(2).mean()


def disparity_loss(commons: Sequence[Tensor], privates: Sequence[Tensor]) -> Tensor:
    """``sum_m d(c_m, p_m) + sum_{m < n} d(p_m, p_n)`` with ``d`` = :func:`soft_orthogonality`."""
    pairs = list(zip(commons, privates)) + list(itertools.combinations(privates, 2))
    return torch.stack([soft_orthogonality(a, b) for a, b in pairs]).sum()


def modality_cross_entropy(logits: Sequence[Tensor]) -> Tensor:
    """``mean_m CE(logits[m], m)``: each ``(B, M)`` entry scored against the index ``m`` of its modality."""
    terms = [
        F.cross_entropy(z, torch.full((z.shape[0],), m, dtype=torch.long, device=z.device)) for m, z in enumerate(logits)
    ]
    return torch.stack(terms).mean()


@register_model(
    "fdmer",
    summary="FDMER: shared common and per-modality private encoders, an adversarial modality "
    "discriminator (gradient reversal), consistency and disparity losses, attention fusion of the 2M vectors.",
    modalities="any M >= 2",
    fidelity="adapted",
    notes="built from the paper's abstract (no code or full text found): MISA-like LSTM encoders, no BERT "
    "fine-tuning; per-sample MSE consistency, soft-orthogonality disparity (MISA's, norm not detached); one discriminator, "
    "CE on private vectors and gradient-reversed CE on common vectors; weights 1 / 0.3 / 0.1 are ours",
)
class FDMER(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the attention-weighted fused vector ``(B, d_h)``.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        hidden_dim: subspace width ``d_h``.
        rnn_dim: LSTM width of every utterance encoder; one value or ``{modality: width}`` naming each.
        n_heads: heads of the fusion self-attention (divides ``hidden_dim``).
        dropout: dropout of the fusion layer, the discriminator and the head.
        consistency_weight, disparity_weight, adversarial_weight: ``w_con``, ``w_dis``, ``w_adv``.
        reversal_scale: ``lambda`` of the gradient-reversal layer in front of the discriminator
            on the common vectors.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        hidden_dim: int = 64,
        rnn_dim: int | Mapping[str, int] = 32,
        n_heads: int = 2,
        dropout: float = 0.1,
        consistency_weight: float = 1.0,
        disparity_weight: float = 0.3,
        adversarial_weight: float = 0.1,
        reversal_scale: float = 1.0,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        mods = self.modalities
        if len(mods) < 2:
            raise ValueError(f"input_dims: FDMER needs at least 2 modalities, received {list(mods)}")
        positive_int(hidden_dim, "hidden_dim")
        positive_int(n_heads, "n_heads")
        if hidden_dim % n_heads:
            raise ValueError(f"n_heads: expected a divisor of hidden_dim={hidden_dim}, received {n_heads}")
        dropout_rate(dropout, "dropout")
        for name, value in (
            ("consistency_weight", consistency_weight),
            ("disparity_weight", disparity_weight),
            ("adversarial_weight", adversarial_weight),
            ("reversal_scale", reversal_scale),
        ):
            check_non_negative(value, name)
        rnn_dims = widths_per_modality(rnn_dim, mods, "rnn_dim")
        self.loss_weights = {
            "consistency": float(consistency_weight),
            "disparity": float(disparity_weight),
            "adv_common": float(adversarial_weight),
            "adv_private": float(adversarial_weight),
        }
        self.reversal_scale = float(reversal_scale)

        self.encoders = nn.ModuleDict({m: SequenceEncoder(d, rnn_dims[m], pooling="mean") for m, d in self.input_dims.items()})
        self.projections = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(rnn_dims[m], hidden_dim), nn.ReLU(), nn.LayerNorm(hidden_dim)) for m in mods}
        )
        self.common = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.Sigmoid())
        self.private = nn.ModuleDict({m: nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.Sigmoid()) for m in mods})
        self.discriminator = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, len(mods))
        )
        self.positions = nn.Parameter(torch.randn(2 * len(mods), hidden_dim) * 0.02)
        self.fusion = nn.TransformerEncoderLayer(
            hidden_dim, n_heads, dim_feedforward=4 * hidden_dim, dropout=dropout, batch_first=True
        )
        self.fusion_score = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1))
        self.head = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, self.output_dim)
        )

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        utterances = self.encode(features, masks)
        commons, privates = self.subspaces(utterances)
        fused, _ = self.fuse(commons, privates)
        output = ModelOutput(self.head_output(self.head(fused)), representation=fused)
        if self.training and labels is not None:
            components = self.auxiliary_terms(commons, privates)
            output.components.update(components)
            output.aux_losses.update({name: self.loss_weights[name] * value for name, value in components.items()})
        return output

    def encode(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The utterance vectors ``u_m (B, d_h)``."""
        masks = self.check_inputs(features, masks)
        return {m: self.projections[m](self.encoders[m](features[m], masks[m])) for m in self.modalities}

    def subspaces(self, utterances: Mapping[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Common ``[c_1..c_M]`` and private ``[p_1..p_M]`` vectors ``(B, d_h)``, in modality order."""
        commons = [self.common(utterances[m]) for m in self.modalities]
        privates = [self.private[m](utterances[m]) for m in self.modalities]
        return commons, privates

    def fuse(self, commons: Sequence[Tensor], privates: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Fused vector ``(B, d_h)`` and the adaptive weights ``(B, 2M)`` (commons first) that form it."""
        tokens = self.fusion(torch.stack([*commons, *privates], 1) + self.positions)
        weights = torch.softmax(self.fusion_score(tokens).squeeze(-1), -1)
        return (weights.unsqueeze(-1) * tokens).sum(1), weights

    def adversarial_terms(self, commons: Sequence[Tensor], privates: Sequence[Tensor]) -> dict[str, Tensor]:
        """``adv_common`` (through gradient reversal) and ``adv_private``, both unweighted."""
        common_logits = [self.discriminator(reverse_gradient(c, self.reversal_scale)) for c in commons]
        private_logits = [self.discriminator(p) for p in privates]
        return {"adv_common": modality_cross_entropy(common_logits), "adv_private": modality_cross_entropy(private_logits)}

    def auxiliary_terms(self, commons: Sequence[Tensor], privates: Sequence[Tensor]) -> dict[str, Tensor]:
        """Unweighted ``consistency``, ``disparity``, ``adv_common`` and ``adv_private``."""
        return {
            "consistency": consistency_loss(commons),
            "disparity": disparity_loss(commons, privates),
            **self.adversarial_terms(commons, privates),
        }
