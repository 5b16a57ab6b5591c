"""Self-MM: unimodal heads trained on unimodal labels generated from class centres (self-supervised).

Yu, Xu, Yuan and Wu, "Learning Modality-Specific Representations with Self-Supervised Multi-Task
Learning for Multimodal Sentiment Analysis", AAAI 2021. Each modality is encoded to a vector
``f_m``; a fusion head reads ``[f_1; ...; f_M]`` and one head per modality reads ``f_m``, all
``Dropout -> Linear -> ReLU -> Linear -> ReLU -> Linear``; the first ReLU output of each head is
its feature ``F`` for the unimodal label generation module (ULGM). ULGM keeps, per head, a
positive and a negative centre (mean feature of samples with label > 0 / < 0, zero excluded)
and turns the multimodal label ``y`` into a unimodal label per modality::

    delta = (||F - c_neg|| - ||F - c_pos||) / (||F - c_pos|| + eps)       (per head)
    alpha = delta_m / (delta_fusion + eps)
    y_m   = clip(alpha y / 2 + (y + delta_m - delta_fusion) / 2, -H, H)

The loss is ``L(prediction, y) + sum_m mean(w_m |y_hat_m - y_m|)`` with ``w_m = tanh(|y_m - y|)``
(unimodal labels and weights carry no gradient). No alignkit function applies (ULGM is a
label-generation scheme, not a feature loss).

Where our version departs from the paper:

- the paper fine-tunes BERT for text ([CLS] vector); no language model can be fine-tuned here,
  so the pre-extracted 768-d text goes through the same one-layer LSTM (last real step, packed)
  as audio and vision (hence ``fidelity="adapted"``); one width for every modality;
- the paper stores every training sample's features and unimodal labels (indexed by sample)
  and smooths each label over epochs, ``y_m <- (n-1)/(n+1) y_m + 2/(n+1) y_m_new``. The zoo
  interface passes no sample indices, so the centres are a momentum (EMA) average of
  per-batch class means instead of means over the whole stored training set, samples are
  grouped by the sign of the multimodal label (the paper: of each head's own current label),
  and each batch's unimodal labels are used as generated, without per-sample smoothing;
- the paper generates labels from epoch 2 on, once a full epoch of features is stored; here
  generation starts after ``label_warmup`` centre updates (default 10 = ``1 / (1 - momentum)``,
  the effective memory of the EMA), using centres that already include the current batch.
  Until then, or while a head lacks a positive or a negative centre, its unimodal labels equal
  ``y`` (the paper's initialisation), so its weight ``tanh(0)`` is 0, as in the paper's epoch 1;
- classification (outside the paper, whose labels are scalar sentiment): ULGM has no meaning,
  and each unimodal head is trained with cross-entropy on the true class instead.

Options that give MMSA 2.2.1's network (``models/multiTask/SELF_MM.py``; its weights load with
:func:`alignkit_models.mmsa.bert_models.self_mm_from_mmsa_state_dict`): ``text_encoder=PATH`` (a
local BERT; the text modality is then token ids and ``f_text`` is BERT's ``[CLS]`` vector, with
no LSTM or linear layer after it), per-modality ``rnn_dim`` / ``feature_dim`` / ``head_dim``
(MOSI: LSTM audio 16, vision 32; ``f`` audio 16, vision 32; heads text 32, audio 16, vision 32;
fusion 128) and per-head ``encoder_dropout`` / ``head_dropout``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit_models.layers.sequence import SequenceEncoder
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.layers.options import per_modality
from alignkit_models.registry import register_model

PerModality = int | Mapping[str, int]

_EPS = 1e-8  # the paper code's MIN, in the denominators of delta and alpha
FUSION = "fusion"  # the name of the multimodal head among the ULGM heads


def relative_shift(feature: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """``delta = (||F - c_neg|| - ||F - c_pos||) / (||F - c_pos|| + eps)`` for ``feature (B, d)`` -> ``(B,)``."""
    to_positive = torch.linalg.vector_norm(feature - positive, dim=-1)
    to_negative = torch.linalg.vector_norm(feature - negative, dim=-1)
    return (to_negative - to_positive) / (to_positive + _EPS)


def unimodal_labels(delta_unimodal: Tensor, delta_fusion: Tensor, fused_labels: Tensor, bound: float) -> Tensor:
    """Self-MM's label generation: ``clip(alpha y / 2 + (y + delta_s - delta_f) / 2, -H, H)``, ``(B,)``."""
    alpha = delta_unimodal / (delta_fusion + _EPS)
    generated = 0.5 * alpha * fused_labels + 0.5 * (fused_labels + delta_unimodal - delta_fusion)
    return generated.clamp(-bound, bound)


class ClassCentres(nn.Module):
    """Momentum centres of one head's features for positive and negative samples.

    Args:
        dim: feature width.
        momentum: weight of the old centre in ``c <- momentum c + (1 - momentum) batch_mean``;
            a centre's first batch sets it directly.
    """

    def __init__(self, dim: int, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("positive", torch.zeros(dim))
        self.register_buffer("negative", torch.zeros(dim))
        self.register_buffer("seen", torch.zeros(2, dtype=torch.bool))  # (positive, negative) set at least once

    @property
    def ready(self) -> bool:
        return bool(self.seen.all())

    @torch.no_grad()
    def update(self, feature: Tensor, labels: Tensor) -> None:
        """Fold the batch means of ``feature (B, d)`` over ``labels > 0`` and ``labels < 0`` into the centres."""
        for index, (centre, members) in enumerate(((self.positive, labels > 0), (self.negative, labels < 0))):
            if not bool(members.any()):
                continue
            batch_mean = feature[members].mean(0)
            weight = self.momentum if bool(self.seen[index]) else 0.0
            centre.mul_(weight).add_((1.0 - weight) * batch_mean)
            self.seen[index] = True

    def shift(self, feature: Tensor) -> Tensor:
        """:func:`relative_shift` of ``feature (B, d)`` with respect to these centres."""
        return relative_shift(feature, self.positive, self.negative)


class UnimodalLabelGenerator(nn.Module):
    """ULGM: class centres per head and the unimodal labels derived from them.

    Args:
        head_dims: feature width of each head; must include :data:`FUSION`.
        momentum: centre momentum (see :class:`ClassCentres`).
        bound: ``H``, the label range (3 for MOSI/MOSEI, 1 for SIMS).
        warmup_updates: centre updates (batches) before labels are generated.
    """

    def __init__(
        self, head_dims: Mapping[str, int], momentum: float = 0.9, bound: float = 3.0, warmup_updates: int = 10
    ) -> None:
        super().__init__()
        if FUSION not in head_dims:
            raise ValueError(f"head_dims: expected a {FUSION!r} head, received {sorted(head_dims)}")
        self.bound = bound
        self.warmup_updates = warmup_updates
        self.centres = nn.ModuleDict({name: ClassCentres(dim, momentum) for name, dim in head_dims.items()})
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def update(self, features: Mapping[str, Tensor], labels: Tensor) -> None:
        """Update every head's centres with its batch features ``(B, d)``, grouped by the sign of ``labels``."""
        for name, feature in features.items():
            self.centres[name].update(feature.detach(), labels)
        self.updates += 1

    @torch.no_grad()
    def generate(self, features: Mapping[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        """Unimodal labels ``(B,)`` for every head in ``features`` other than :data:`FUSION`.

        During the warm-up, and for a head whose centres (or the fusion head's) are not both set
        yet, the unimodal labels are ``labels``.
        """
        fusion = self.centres[FUSION]
        warm = int(self.updates) >= self.warmup_updates
        generated: dict[str, Tensor] = {}
        for name, feature in features.items():
            if name == FUSION:
                continue
            head = self.centres[name]
            if warm and head.ready and fusion.ready:
                delta_fusion = fusion.shift(features[FUSION])
                generated[name] = unimodal_labels(head.shift(feature), delta_fusion, labels, self.bound)
            else:
                generated[name] = labels.clone()
        return generated


class _Head(nn.Module):
    """``Dropout -> Linear -> ReLU -> Linear -> ReLU -> Linear``; returns (first ReLU output, logits)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden_dim), nn.ReLU())
        self.rest = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.first(x)
        return feature, self.rest(feature)


@register_model(
    "self_mm",
    summary="Self-MM: unimodal heads trained on unimodal labels generated from positive/negative class centres.",
    modalities="any M >= 2",
    fidelity="adapted",
    notes="by default no BERT fine-tuning: 768-d text through the same LSTM as the other modalities "
    "(text_encoder=PATH: a fine-tuned BERT's [CLS] vector, as MMSA); no sample indices "
    "in the zoo interface, so momentum (EMA) class centres, labels per batch without per-sample smoothing, "
    "generated after a 10-batch warm-up; "
    "classification: unimodal heads use cross-entropy on the true class",
)
class SelfMM(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is ``[f_1; ...; f_M]``.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        rnn_dim: LSTM width of each modality encoder (one value, or ``{modality: width}``;
            modalities left out get 32).
        feature_dim: width of each modality vector ``f_m`` (Linear after the LSTM); one value
            or per modality.
        fusion_dim: hidden width of the fusion head (Self-MM: 128).
        head_dim: hidden width of each unimodal head; one value or per modality.
        dropout: dropout after each LSTM and at the input of every head, wherever
            ``encoder_dropout`` / ``head_dropout`` do not give one.
        encoder_dropout: dropout between each LSTM and its Linear; one value or per modality.
        head_dropout: dropout at the input of each head; one value or ``{name: p}`` with the
            modalities and ``"fusion"`` as names.
        centre_momentum: momentum of the ULGM centres.
        label_bound: ``H`` (3 for MOSI/MOSEI, 1 for SIMS).
        label_warmup: training batches before unimodal labels are generated.
        unimodal_weight: weight of the summed unimodal losses (Self-MM: 1).
        text_encoder: path of a local BERT folder. The ``"text"`` modality is then token ids
            ``(B, L, 3)`` (``input_dims["text"] = 3``) and ``f_text`` is BERT's ``[CLS]`` vector
            (width: BERT's hidden size; ``rnn_dim``, ``feature_dim`` and ``encoder_dropout``
            do not apply to text), as in MMSA.
        text_encoder_finetune: train BERT's weights (else it runs frozen).
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        rnn_dim: PerModality = 32,
        feature_dim: PerModality = 32,
        fusion_dim: int = 64,
        head_dim: PerModality = 32,
        dropout: float = 0.1,
        encoder_dropout: float | Mapping[str, float] | None = None,
        head_dropout: float | Mapping[str, float] | None = None,
        centre_momentum: float = 0.9,
        label_bound: float = 3.0,
        label_warmup: int = 10,
        unimodal_weight: float = 1.0,
        text_encoder: str | None = None,
        text_encoder_finetune: bool = True,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        if FUSION in self.modalities:
            raise ValueError(f"input_dims: {FUSION!r} is reserved for the multimodal head")
        self.unimodal_weight = unimodal_weight
        rnn_dims = _widths(rnn_dim, self.modalities, "rnn_dim")
        feature_dims = _widths(feature_dim, self.modalities, "feature_dim")
        head_dims = _widths(head_dim, self.modalities, "head_dim")
        encoder_dropouts = _dropouts(encoder_dropout, dropout, self.modalities, "encoder_dropout")
        head_dropouts = _dropouts(head_dropout, dropout, (*self.modalities, FUSION), "head_dropout")

        self.text_encoder = None
        sequence_modalities = self.modalities
        if text_encoder is not None:
            if "text" not in self.modalities:
                raise ValueError(f"text_encoder: needs a 'text' modality, received modalities {list(self.modalities)}")
            from alignkit_models.layers.text import BertTextEncoder

            self.text_encoder = BertTextEncoder(text_encoder, finetune=text_encoder_finetune, pooling="first")
            feature_dims["text"] = self.text_encoder.hidden_size
            sequence_modalities = tuple(m for m in self.modalities if m != "text")
        self.encoders = nn.ModuleDict(
            {m: SequenceEncoder(self.input_dims[m], rnn_dims[m], pooling="last") for m in sequence_modalities}
        )
        self.to_features = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Dropout(encoder_dropouts[m]), nn.Linear(rnn_dims[m], feature_dims[m]))
                for m in sequence_modalities
            }
        )
        fused_dim = sum(feature_dims.values())
        self.fusion_head = _Head(fused_dim, fusion_dim, self.output_dim, head_dropouts[FUSION])
        self.unimodal_heads = nn.ModuleDict(
            {m: _Head(feature_dims[m], head_dims[m], self.output_dim, head_dropouts[m]) for m in self.modalities}
        )
        self.label_generator = UnimodalLabelGenerator(
            {FUSION: fusion_dim, **head_dims}, centre_momentum, label_bound, label_warmup
        )

    def encode(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The modality vectors ``f_m (B, feature_dim_m)`` that the fusion and unimodal heads read."""
        masks = self.check_inputs(features, masks)
        vectors = {}
        for m in self.modalities:
            if m == "text" and self.text_encoder is not None:
                vectors[m] = self.text_encoder(features[m])
            else:
                vectors[m] = self.to_features[m](self.encoders[m](features[m], masks[m]))
        return vectors

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        vectors = self.encode(features, masks)
        fused = torch.cat([vectors[m] for m in self.modalities], -1)
        fusion_feature, logits = self.fusion_head(fused)
        output = ModelOutput(self.head_output(logits), representation=fused)
        if self.training and labels is not None:
            heads = {m: self.unimodal_heads[m](vectors[m]) for m in self.modalities}
            head_features = {FUSION: fusion_feature, **{m: heads[m][0] for m in self.modalities}}
            unimodal_logits = {m: heads[m][1] for m in self.modalities}
            losses = self._unimodal_losses(head_features, unimodal_logits, labels)
            output.components.update({f"unimodal_{m}": loss for m, loss in losses.items()})
            output.aux_losses["unimodal"] = self.unimodal_weight * torch.stack(list(losses.values())).sum()
        return output

    def _unimodal_losses(
        self, head_features: Mapping[str, Tensor], unimodal_logits: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        """Per-modality loss of the unimodal heads (weighted L1 on generated labels, or cross-entropy)."""
        if self.task == "classification":
            return {m: F.cross_entropy(z, labels.long()) for m, z in unimodal_logits.items()}
        target = labels.to(head_features[FUSION].dtype).view(-1)
        self.label_generator.update(head_features, target)
        generated = self.label_generator.generate(head_features, target)
        losses = {}
        for m, z in unimodal_logits.items():
            weight = torch.tanh((generated[m] - target).abs())
            losses[m] = (weight * (self.head_output(z) - generated[m]).abs()).mean()
        return losses


def _widths(value: PerModality, modalities: tuple[str, ...], name: str) -> dict[str, int]:
    """One width per modality from one value or a ``{modality: width}`` mapping (others: 32)."""
    widths = per_modality(value, modalities, name, default=32)
    for m, width in widths.items():
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"{name}: expected a positive integer for {m!r}, received {width!r}")
    return widths


def _dropouts(
    value: float | Mapping[str, float] | None, default: float, names: tuple[str, ...], name: str
) -> dict[str, float]:
    """One dropout probability per name from one value or a partial mapping (others, or all
    when ``value`` is None: ``default``)."""
    probabilities = per_modality(default if value is None else value, names, name, default=default)
    for key, p in probabilities.items():
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name}: expected a probability in [0, 1) for {key!r}, received {p!r}")
    return probabilities
