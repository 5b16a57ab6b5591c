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

- *magnitude*: in a training forward with labels and gradients enabled, the parameters of
  encoder ``i`` (and of its projection, see ``modulate_projections``) enter the computation
  through views of themselves; once ``B`` is known from this batch's classifier accuracies, a
  hook on each view multiplies that parameter's gradient by ``rho B_i``, which is what the
  released code does to ``.grad`` after ``backward``. Hooks are registered, and the accuracy
  memory advances, only in such forwards;
- *classifiers*: their task losses go into ``aux_losses`` (weight 1) and reach only the
  classifiers (detached inputs), so the trainer's optimizer trains them;
- *direction*: with ``g = dL/d logits`` evaluated on the batch (a constant), the output-layer
  gradient is ``u = g^T h`` (``h`` the output layer's input), differentiable through ``h``. The
  weighted term enters ``aux_losses`` as ``lambda (L_gm - sg(L_gm))``: its gradient is
  ``lambda grad L_gm``, its value 0, because ``B`` is state that changes from step to step and
  would otherwise make totals of successive steps incomparable; ``components["direction"]``
  holds ``L_gm``.

Where our version departs from the paper and from the released code (zrguo/CGGM,
``models/msamodel.py``, ``src/msatrain.py``); each option named restores the code's behaviour,
and :mod:`alignkit_models.models.cggm_reference` loads its weights with all of them set:

- the classifiers are trained by the model's optimizer through the summed loss (so they share
  its learning rate and its gradient clipping), not by their own Adam (lr 5e-4);
- ``L_gm`` is built and applied in the step whose ``B`` it uses, with the dependence of ``u``
  through ``g`` dropped (no second-order backward). The code uses the output-layer *weights*
  (``direction="weight"``), lets only the fusion head's receive the gradient (it zeroes the
  classifiers' share before their step) and adds ``L_gm`` to the *next* step's loss, i.e.
  applies the gradient taken at this step's weights and ``B`` one step late
  (``direction_step="next"``, weight mode only);
- the code scales the gradients of the encoders ``Phi_i`` only; we also scale the projection
  in front of each (``modulate_projections=False`` restores the code);
- the classifier applies its hidden Linear once (the code applies the same Linear twice before
  the ReLU: ``classifier_hidden_twice=True``);
- concatenation along time puts each sample's real steps first, so padding never shifts the
  positions of later modalities; padded steps are masked out of every attention (the code has
  no masks: ``padding="included"``);
- position embeddings from :func:`~alignkit_models.layers.transformer.sinusoidal_positions`
  (the code: fairseq's table, ``position_table="fairseq"``); a fusion transformer of
  ``max(L - 2, 1)`` layers (the code: ``L - 2``, set by ``fusion_layers``);
- any number of modalities (the code's ``L_gm`` line hard-codes three); smaller defaults
  (``d = 32``, 4 heads, 3 encoder layers) than the code's MOSI run (40, 5, 5). ``B`` follows the
  code's formula, which explodes when ``sum_j Delta_j`` is near 0 with non-zero ``Delta_i``; the
  code clips the gradient norm (0.8), which a trainer should do as well. ``B`` is computed in
  float32 (the code: float64), which rounds the ``1e-8`` guard away once ``|sum_j Delta_j| >=
  0.25``: ``Delta = (0.25, 0, 0)`` gives ``B_1 = 0`` where the code has ``4e-8``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from alignkit.decoupling import cosine_similarity
from alignkit_models.layers.heads import ResidualHead
from alignkit_models.layers.pooling import concat_real_steps
from alignkit_models.layers.sequence import zero_padding
from alignkit_models.layers.transformer import CrossModalEncoder
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.layers.options import Padding, check_padding, padding_masks
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


def _call_through_views(module: nn.Module, *args: Tensor, **kwargs: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``module(*args, **kwargs)`` with every trainable parameter replaced by a view of itself.

    The values are the parameters'; a hook registered on a view (even after this call) sees,
    and may rescale, exactly the gradient that reaches that parameter in the next backward.
    """
    views = {name: p.view_as(p) for name, p in module.named_parameters() if p.requires_grad}
    return functional_call(module, views, args, kwargs), list(views.values())


class _GuidanceClassifier(nn.Module):
    """Transformer over a detached encoder output, first position, ``Linear -> ReLU -> Linear``.

    With ``hidden_twice`` the hidden Linear runs twice before the ReLU, as in the released code.
    """

    def __init__(
        self, dim: int, out_dim: int, n_heads: int, n_layers: int, encoder_options: Mapping[str, object], hidden_twice: bool
    ) -> None:
        super().__init__()
        self.encoder = CrossModalEncoder(dim, n_heads, n_layers, **encoder_options)  # type: ignore[arg-type]
        self.hidden = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.out = nn.Linear(dim, out_dim)
        self.hidden_twice = hidden_twice

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, T, d)`` -> (input of the output layer ``(B, d)``, logits ``(B, out_dim)``)."""
        first = self.encoder(x, source_mask=mask)[:, 0]
        hidden = self.hidden(self.hidden[0](first) if self.hidden_twice else first)
        return hidden, self.out(hidden)


@register_model(
    "cggm",
    summary="CGGM: unimodal classifiers on detached encoder outputs rescale each encoder's gradient "
    "(accuracy gains) and a direction loss aligns output-layer gradients.",
    modalities="any M >= 2",
    fidelity="faithful",
    notes="modulation via gradient hooks on parameter views registered in forward; classifiers trained by "
    "the main optimizer through aux_losses; direction loss in the same step, as a value-0 gradient term; "
    "projections modulated too; real steps first when concatenating along time; smaller defaults (d 32, "
    "4 heads, 3 layers); options restore the released code (cggm_reference.REFERENCE_OPTIONS)",
)
class CGGM(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the fusion output at position 0.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        dim: common width ``d``.
        n_heads: attention heads (divides ``d``).
        n_layers: layers ``L`` of each modality encoder.
        fusion_layers: layers of the fusion transformer (0 allowed); None = ``max(L - 2, 1)``.
        classifier_layers: layers of each guidance classifier's transformer.
        attn_dropout, relu_dropout, res_dropout, embed_dropout: transformer dropouts.
        out_dropout: dropout in the residual head.
        rho: gradient scale ``rho``.
        direction_weight: ``lambda`` of ``L_gm``.
        direction: ``"gradient"`` (paper: ``u`` = output-layer gradients) or ``"weight"``
            (released code: output-layer weights; only the fusion head's weight receives the
            gradient of ``L_gm``).
        direction_step: ``"same"`` (apply ``L_gm`` in the step that computes it) or ``"next"``
            (released code: its gradient, taken at this step's weights and ``B``, is applied in
            the next training step; needs ``direction="weight"``).
        modulate_projections: scale the gradient of each modality's input projection by
            ``rho B_i`` too (False: the encoder only, as in the released code).
        classifier_hidden_twice: apply each classifier's hidden Linear twice (released code).
        position_table: ``"vaswani"`` or ``"fairseq"`` (released code); see
            :class:`~alignkit_models.layers.transformer.CrossModalEncoder`.
        padding: ``"masked"`` or ``"included"`` (padded steps are data, as in the released
            code, which has no masks).
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
        fusion_layers: int | None = None,
        classifier_layers: int = 2,
        attn_dropout: float = 0.1,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.1,
        out_dropout: float = 0.1,
        rho: float = 1.3,
        direction_weight: float = 0.2,
        direction: Literal["gradient", "weight"] = "gradient",
        direction_step: Literal["same", "next"] = "same",
        modulate_projections: bool = True,
        classifier_hidden_twice: bool = False,
        position_table: Literal["vaswani", "fairseq"] = "vaswani",
        padding: Padding = "masked",
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        if direction not in ("gradient", "weight"):
            raise ValueError(f"direction: expected 'gradient' or 'weight', received {direction!r}")
        if direction_step not in ("same", "next"):
            raise ValueError(f"direction_step: expected 'same' or 'next', received {direction_step!r}")
        if direction_step == "next" and direction != "weight":
            # In gradient mode the term reaches every parameter below the heads; holding its
            # gradient for a step would need a second backward.
            raise ValueError(f"direction_step: 'next' needs direction='weight', received direction={direction!r}")
        if fusion_layers is not None and (isinstance(fusion_layers, bool) or not isinstance(fusion_layers, int) or fusion_layers < 0):
            raise ValueError(f"fusion_layers: expected None or an integer >= 0, received {fusion_layers!r}")
        check_padding(padding)
        self.rho, self.direction_weight, self.direction = rho, direction_weight, direction
        self.direction_step = direction_step
        self.modulate_projections = modulate_projections
        self.padding = padding
        encoder_options = {
            "attn_dropout": attn_dropout,
            "relu_dropout": relu_dropout,
            "res_dropout": res_dropout,
            "embed_dropout": embed_dropout,
            "position_table": position_table,
        }
        self.projections = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.input_dims.items()})
        self.encoders = nn.ModuleDict(
            {m: CrossModalEncoder(dim, n_heads, n_layers, **encoder_options) for m in self.modalities}  # type: ignore[arg-type]
        )
        n_fusion = max(n_layers - 2, 1) if fusion_layers is None else fusion_layers
        self.fusion = CrossModalEncoder(dim, n_heads, n_fusion, **encoder_options)  # type: ignore[arg-type]
        self.head = ResidualHead(dim, self.output_dim, out_dropout)
        self.classifiers = nn.ModuleDict(
            {
                m: _GuidanceClassifier(dim, self.output_dim, n_heads, classifier_layers, encoder_options, classifier_hidden_twice)
                for m in self.modalities
            }
        )
        self.register_buffer("previous_accuracy", torch.zeros(len(self.modalities)))
        if direction_step == "next":
            # dL_gm/d(head.out.weight) from the last training step (lambda not applied), applied in this one.
            self.register_buffer("pending_direction_gradient", torch.zeros(self.output_dim, dim))

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = padding_masks(self.check_inputs(features, masks), self.padding)
        guided = self.training and labels is not None
        modulated = guided and torch.is_grad_enabled()
        encoded: dict[str, Tensor] = {}
        views: dict[str, list[Tensor]] = {}
        for m in self.modalities:
            encoded[m], views[m] = self._encode(m, features[m], masks[m], modulated)
        joined, joined_mask = concat_real_steps(
            [encoded[m] for m in self.modalities], [masks[m] for m in self.modalities]
        )
        summary = self.fusion(joined, source_mask=joined_mask)[:, 0]
        hidden = self.head.hidden(summary)
        logits = self.head.out(hidden)
        output = ModelOutput(self.head_output(logits), representation=summary)
        if guided:
            self._guide(output, encoded, masks, views, hidden, logits, labels)  # type: ignore[arg-type]
        return output

    def _encode(self, m: str, x: Tensor, mask: Tensor, modulated: bool) -> tuple[Tensor, list[Tensor]]:
        """Projection and encoder of modality ``m``: ``x (B, T, d_m) -> (B, T, d)``.

        In a modulated forward the parameters that modulation scales run through views, which
        are returned so that :meth:`_guide` can hook them once ``B`` is known.
        """
        x = zero_padding(x, mask)
        if not modulated:
            return self.encoders[m](self.projections[m](x), source_mask=mask), []
        views: list[Tensor] = []
        if self.modulate_projections:
            x, views = _call_through_views(self.projections[m], x)
        else:
            x = self.projections[m](x)
        encoded, encoder_views = _call_through_views(self.encoders[m], x, source_mask=mask)
        return encoded, views + encoder_views

    def _guide(
        self,
        output: ModelOutput,
        encoded: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        views: Mapping[str, list[Tensor]],
        fusion_hidden: Tensor,
        fusion_logits: Tensor,
        labels: Tensor,
    ) -> None:
        """Classifier losses, balance coefficients, gradient hooks and the direction term, into ``output``."""
        classified = {m: self.classifiers[m](encoded[m].detach(), masks[m]) for m in self.modalities}
        losses = {m: self.task_loss(self.head_output(z), labels) for m, (_, z) in classified.items()}
        accuracy = torch.stack([self._accuracy(z.detach(), labels) for _, z in classified.values()])
        coefficients = balance_coefficients(accuracy, self.previous_accuracy)
        backpropagated = torch.is_grad_enabled()
        if backpropagated:
            self.previous_accuracy.copy_(accuracy)
            for m, c in zip(self.modalities, coefficients):
                for view in views[m]:
                    view.register_hook(lambda grad, scale=self.rho * c: grad * scale)
        if self.direction == "gradient":
            unimodal = [self._output_layer_gradient(h, z, labels) for h, z in classified.values()]
            fusion = self._output_layer_gradient(fusion_hidden, fusion_logits, labels)
        else:  # the released code discards the classifiers' share of this gradient
            unimodal = [self.classifiers[m].out.weight.detach() for m in self.modalities]
            fusion = self.head.out.weight
        if self.direction_step == "same":
            direction = direction_loss(coefficients, unimodal, fusion)
            output.aux_losses["direction"] = self.direction_weight * (direction - direction.detach())
        else:
            direction = self._defer_direction(output, coefficients, unimodal, backpropagated)
        output.components.update({f"classifier_{m}": loss for m, loss in losses.items()})
        output.components.update({f"accuracy_{m}": a for m, a in zip(self.modalities, accuracy)})
        output.components.update({f"balance_{m}": c for m, c in zip(self.modalities, coefficients)})
        output.components["direction"] = direction
        output.aux_losses["classifiers"] = torch.stack(list(losses.values())).sum()

    def _defer_direction(
        self, output: ModelOutput, coefficients: Tensor, unimodal: list[Tensor], backpropagated: bool
    ) -> Tensor:
        """``direction_step="next"``: the last step's ``grad_W L_gm`` applied now (value-0 term in
        ``aux_losses``); this step's ``L_gm`` returned (detached) and, in a forward that will be
        backpropagated, its gradient w.r.t. ``W = head.out.weight (C, d)`` kept for the next one."""
        weight = self.head.out.weight
        pending = self.pending_direction_gradient.clone()  # the buffer is overwritten below
        applied = (pending * weight).sum()
        output.aux_losses["direction"] = self.direction_weight * (applied - applied.detach())
        with torch.enable_grad():
            leaf = weight.detach().requires_grad_()
            direction = direction_loss(coefficients, unimodal, leaf)
            if backpropagated:
                (gradient,) = torch.autograd.grad(direction, leaf)
                self.pending_direction_gradient.copy_(gradient)
        return direction.detach()

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
