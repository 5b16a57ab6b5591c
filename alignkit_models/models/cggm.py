"""CGGM: unimodal classifiers steer the magnitude and direction of each encoder's gradient.

Guo, Jin, Chen and Zhao, "Classifier-guided Gradient Modulation for Enhanced Multimodal
Learning", NeurIPS 2024 (arXiv 2411.01409). Backbone (the paper's MOSI model): per modality a
width-``d`` projection and a self-attention transformer encoder ``Phi_i`` (the MulT block); the
encoder outputs are concatenated along time, a fusion transformer with ``L - 2`` layers runs
over them, and its first position feeds MulT's residual head. During training a classifier
``f_i`` per modality (2-layer transformer, first position, ``Linear -> ReLU -> Linear``) reads the
*detached* encoder output, so it measures what modality ``i`` alone achieves without training
the encoder. At step ``t``, with ``eps_i^t`` the batch accuracy of ``f_i`` (sign agreement for
regression, top-1 for classification)::

    Delta_i = eps_i^t - eps_i^{t-1},   S = sum_j Delta_j + 1e-8,   B_i = (S - Delta_i) / S
    gradient of encoder i  *=  rho B_i                                  (magnitude, rho = 1.3)
    L_gm = (1/M) sum_i ( |B_i| - B_i cos(u_i, u_F) )                   (direction, weight 0.2)

``u_i`` and ``u_F`` are the gradients of the classifier's and the fusion head's output layers
(the paper), or those layers' weights (``direction="weight"``, the released code). ``cos`` is
``alignkit.decoupling.cosine_similarity`` on the flattened tensors; no other alignkit function
applies.

How it runs under a plain trainer (``loss(...).total.backward(); optimizer.step()``):

- *magnitude*: ``forward`` computes ``B`` from this batch's classifier accuracies and registers
  an autograd hook on each encoder output that multiplies the incoming gradient by ``rho B_i``.
  Every parameter of encoder ``i`` (and of its projection) receives gradient only through that
  output (the classifier reads a detached copy), so this scales exactly those parameters'
  gradients, as the released code does after ``backward``. Hooks are registered, and the
  accuracy memory advances, only in training forwards with labels and gradients enabled;
- *classifiers*: their task losses go into ``aux_losses`` (weight 1) and reach only the
  classifiers (detached inputs), so the trainer's optimizer trains them;
- *direction*: with ``g = dL/d logits`` evaluated on the batch (a constant), the output-layer
  gradient is ``u = g^T h`` (``h`` the output layer's input), differentiable through ``h``. The
  weighted term enters ``aux_losses`` as ``lambda (L_gm - sg(L_gm))``: its gradient is
  ``lambda grad L_gm``, its value 0, because ``B`` is state that changes from step to step and
  would otherwise make totals of successive steps incomparable; ``components["direction"]``
  holds ``L_gm``.

Where our version departs from the paper:

- the classifiers are trained by the model's optimizer through the summed loss, not by their
  own Adam (lr 5e-4); ``L_gm`` is built and applied in the step whose ``B`` it uses (the code
  adds it to the next step's loss), with the dependence of ``u`` through ``g`` dropped (no
  second-order backward);
- the classifier applies its hidden Linear once (the code applies the same Linear twice);
- concatenation along time puts each sample's real steps first, so padding never shifts the
  positions of later modalities; padded steps are masked out of every attention;
- any number of modalities (the code's ``L_gm`` line hard-codes three); smaller defaults
  (``d = 32``, 4 heads, 3 encoder layers) than the paper's (40, 5, 5). ``B`` follows the code's
  formula, which explodes when ``sum_j Delta_j`` is near 0 with non-zero ``Delta_i``; the paper
  clips the gradient norm (0.8), which a trainer should do as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.decoupling import cosine_similarity
from alignkit_models.layers.heads import ResidualHead
from alignkit_models.layers.pooling import concat_real_steps
from alignkit_models.layers.sequence import zero_padding
from alignkit_models.layers.transformer import CrossModalEncoder
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model


def balance_coefficients(accuracy: Tensor, previous_accuracy: Tensor) -> Tensor:
    """``B_i = (S - Delta_i) / S`` with ``Delta = accuracy - previous_accuracy``, ``S = sum Delta + 1e-8``; ``(M,)``."""
    delta = accuracy - previous_accuracy
    total = delta.sum() + 1e-8
    return (total - delta) / total


def direction_loss(coefficients: Tensor, unimodal: list[Tensor], fusion: Tensor) -> Tensor:
    """``L_gm = (1/M) sum_i (|B_i| - B_i cos(u_i, u_F))`` for tensors ``u`` of one shape."""
    cosines = torch.stack([cosine_similarity(u.flatten(), fusion.flatten()) for u in unimodal])
    return (coefficients.abs() - coefficients * cosines).mean()


class _GuidanceClassifier(nn.Module):
    """Transformer over a detached encoder output, first position, ``Linear -> ReLU -> Linear``."""

    def __init__(self, dim: int, out_dim: int, n_heads: int, n_layers: int, dropouts: Mapping[str, float]) -> None:
        super().__init__()
        self.encoder = CrossModalEncoder(dim, n_heads, n_layers, **dropouts)
        self.hidden = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.out = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, T, d)`` -> (input of the output layer ``(B, d)``, logits ``(B, out_dim)``)."""
        hidden = self.hidden(self.encoder(x, source_mask=mask)[:, 0])
        return hidden, self.out(hidden)


@register_model(
    "cggm",
    summary="CGGM: unimodal classifiers on detached encoder outputs rescale each encoder's gradient "
    "(accuracy gains) and a direction loss aligns output-layer gradients.",
    modalities="any M >= 2",
    fidelity="faithful",
    notes="modulation via autograd hooks registered in forward; classifiers trained by the main optimizer "
    "through aux_losses; direction loss in the same step, as a value-0 gradient term; real steps first "
    "when concatenating along time; smaller defaults (d 32, 4 heads, 3 layers)",
)
class CGGM(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the fusion output at position 0.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        dim: common width ``d``.
        n_heads: attention heads (divides ``d``).
        n_layers: layers ``L`` of each modality encoder; the fusion transformer has ``max(L - 2, 1)``.
        classifier_layers: layers of each guidance classifier's transformer.
        attn_dropout, relu_dropout, res_dropout, embed_dropout: transformer dropouts.
        out_dropout: dropout in the residual head.
        rho: gradient scale ``rho``.
        direction_weight: ``lambda`` of ``L_gm``.
        direction: ``"gradient"`` (paper: ``u`` = output-layer gradients) or ``"weight"``
            (released code: output-layer weights).
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        dim: int = 32,
        n_heads: int = 4,
        n_layers: int = 3,
        classifier_layers: int = 2,
        attn_dropout: float = 0.1,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.1,
        out_dropout: float = 0.1,
        rho: float = 1.3,
        direction_weight: float = 0.2,
        direction: Literal["gradient", "weight"] = "gradient",
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        if direction not in ("gradient", "weight"):
            raise ValueError(f"direction: expected 'gradient' or 'weight', received {direction!r}")
        self.rho, self.direction_weight, self.direction = rho, direction_weight, direction
        dropouts = {
            "attn_dropout": attn_dropout,
            "relu_dropout": relu_dropout,
            "res_dropout": res_dropout,
            "embed_dropout": embed_dropout,
        }
        self.projections = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.input_dims.items()})
        self.encoders = nn.ModuleDict(
            {m: CrossModalEncoder(dim, n_heads, n_layers, **dropouts) for m in self.modalities}
        )
        self.fusion = CrossModalEncoder(dim, n_heads, max(n_layers - 2, 1), **dropouts)
        self.head = ResidualHead(dim, self.output_dim, out_dropout)
        self.classifiers = nn.ModuleDict(
            {
                m: _GuidanceClassifier(dim, self.output_dim, n_heads, classifier_layers, dropouts)
                for m in self.modalities
            }
        )
        self.register_buffer("previous_accuracy", torch.zeros(len(self.modalities)))

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = self.check_inputs(features, masks)
        encoded = {
            m: self.encoders[m](self.projections[m](zero_padding(features[m], masks[m])), source_mask=masks[m])
            for m in self.modalities
        }
        joined, joined_mask = concat_real_steps(
            [encoded[m] for m in self.modalities], [masks[m] for m in self.modalities]
        )
        summary = self.fusion(joined, source_mask=joined_mask)[:, 0]
        hidden = self.head.hidden(summary)
        logits = self.head.out(hidden)
        output = ModelOutput(self.head_output(logits), representation=summary)
        if self.training and labels is not None:
            self._guide(output, encoded, masks, hidden, logits, labels)
        return output

    def _guide(
        self,
        output: ModelOutput,
        encoded: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        fusion_hidden: Tensor,
        fusion_logits: Tensor,
        labels: Tensor,
    ) -> None:
        """Classifier losses, balance coefficients, gradient hooks and the direction term, into ``output``."""
        classified = {m: self.classifiers[m](encoded[m].detach(), masks[m]) for m in self.modalities}
        losses = {m: self.task_loss(self.head_output(z), labels) for m, (_, z) in classified.items()}
        accuracy = torch.stack([self._accuracy(z.detach(), labels) for _, z in classified.values()])
        coefficients = balance_coefficients(accuracy, self.previous_accuracy)
        if torch.is_grad_enabled():
            self.previous_accuracy.copy_(accuracy)
            for m, c in zip(self.modalities, coefficients.tolist()):
                if encoded[m].requires_grad:
                    encoded[m].register_hook(lambda grad, scale=self.rho * c: grad * scale)
        if self.direction == "gradient":
            unimodal = [self._output_layer_gradient(h, z, labels) for h, z in classified.values()]
            fusion = self._output_layer_gradient(fusion_hidden, fusion_logits, labels)
        else:
            unimodal = [self.classifiers[m].out.weight for m in self.modalities]
            fusion = self.head.out.weight
        direction = direction_loss(coefficients, unimodal, fusion)
        output.components.update({f"classifier_{m}": loss for m, loss in losses.items()})
        output.components.update({f"accuracy_{m}": a for m, a in zip(self.modalities, accuracy)})
        output.components.update({f"balance_{m}": c for m, c in zip(self.modalities, coefficients)})
        output.components["direction"] = direction
        output.aux_losses["classifiers"] = torch.stack(list(losses.values())).sum()
        output.aux_losses["direction"] = self.direction_weight * (direction - direction.detach())

    def _accuracy(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Batch accuracy: sign agreement for regression, top-1 for classification."""
        if self.task == "classification":
            return (logits.argmax(-1) == labels).float().mean()
        return ((self.head_output(logits) > 0) == (labels.view(-1) > 0)).float().mean()

    def _output_layer_gradient(self, hidden: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        """``u = g^T h``: the task loss's gradient w.r.t. the output layer's weight ``(C, d)``.

        ``g = dL/d logits (B, C)`` is evaluated on the batch and held constant; ``u`` stays
        differentiable through ``hidden (B, d)``.
        """
        with torch.enable_grad():
            leaf = logits.detach().requires_grad_()
            (g,) = torch.autograd.grad(self.task_loss(self.head_output(leaf), labels), leaf)
        return g.mT @ hidden
