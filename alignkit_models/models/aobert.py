"""AOBERT: one single-stream transformer reads text and the non-verbal streams together.

Kim and Park, "AOBERT: All-modalities-in-One BERT for multimodal sentiment analysis",
Information Fusion 92 (2023) 37-45. What the paper says (its abstract): a single-stream
transformer, All-modalities-in-One BERT, takes every modality in one sequence, so that no fusion
step loses intra- or inter-modality information; it is pre-trained on two tasks at once,
Multimodal Masked Language Modelling (MMLM) and Alignment Prediction (AP), which teach it the
dependencies between modalities; then it is fine-tuned for sentiment.

Sources. Only the abstract could be read from here; no code by the authors turned up. Everything
below that the abstract does not fix is our choice, in the manner of single-stream
vision-language BERTs (VisualBERT, UNITER): the model is "adapted".

Architecture (``M`` modalities; the *verbal* modality is ``"text"`` when present, else the
first one; the others are *non-verbal*)::

    verbal:      BERT word embeddings of the token ids   (with ``text_encoder``)
                 or Linear(x_text)                       (without: text as features)
    non-verbal:  Linear_m(x_m), resampled to at most ``max_frames`` steps, + e_m
    sequence  =  [verbal ; non-verbal_1 ; ... ] (real steps only attend), positions restart
                 at 0 in every segment
    h = Transformer(sequence)                            BERT itself, or a BERT-shaped encoder
    prediction = Linear(drop(h[first step]))             [CLS]

With ``text_encoder`` (a local BERT folder, as for DecAlign) the transformer *is* that BERT:
the projected frames enter through its ``inputs_embeds`` with token type 1 (text keeps its
segment ids) plus a learned embedding ``e_m`` per non-verbal modality (zero at the start, so
the pretrained model sees what it knows). Without it, a post-LayerNorm GELU transformer of width
``dim`` (BERT's layer) is built from scratch with learned positions and one type embedding per
modality, and a learned [CLS] vector starts the sequence.

Pre-training objectives, on a corrupted copy of the batch (a second forward pass):

- MMLM: each real verbal step is masked with probability ``mask_probability`` (at least one per
  sample). With token ids the step becomes ``[MASK]`` (except [CLS], the first token, and the last
  real token, [SEP]) and BERT's vocabulary is predicted (decoder tied to the word embeddings;
  cross-entropy). With features the step's input becomes a learned mask vector and its features
  are regressed (mean squared error, averaged over masked steps and feature columns).
- AP: each sample's non-verbal streams are, with probability ``misalign_probability``, those of
  the next sample in the batch; a linear head on the first step predicts "aligned" (binary
  cross-entropy). Batches of one sample skip AP.

Schedule: the abstract pre-trains, then fine-tunes. Here the first ``pretrain_steps`` training
steps optimise ``pretrain_weight * (MMLM + AP)`` only (task loss logged, not optimised); later
steps optimise the task loss plus ``pretrain_weight * (MMLM + AP)``. The default
``pretrain_steps=0`` trains all three together from the start, which fits the trainer's early
stopping (a pre-training phase counts as epochs without validation gain: raise
``protocol.early_stopping_patience`` when setting it). The step counter is a buffer, so a resumed
run continues the schedule. In evaluation mode the objectives are not computed.

Also our choices: ``max_frames`` = 50 (BERT's 512 positions and CPU time; MOSI's unaligned audio
and vision have 375 and 500 steps); [MASK] replaces a token always (BERT's 80/10/10 split is not
used); the next sample provides the misaligned streams (a derangement that needs no draw).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.losses import LossOutput
from alignkit_models.layers.options import dropout_rate, positive_int
from alignkit_models.layers.sequence import resample_segments, zero_padding
from alignkit_models.layers.text import BertTextEncoder
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model


def mask_token_id_from_vocab(folder: str | os.PathLike[str]) -> int:
    """The line number of ``[MASK]`` in ``folder/vocab.txt`` (BERT's WordPiece vocabulary)."""
    vocab = Path(folder) / "vocab.txt"
    try:
        tokens = vocab.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise ValueError(f"mask_token_id: not given, and {vocab} is missing or unreadable") from None
    if "[MASK]" not in tokens:
        raise ValueError(f"mask_token_id: not given, and {vocab} has no [MASK] token")
    return tokens.index("[MASK]")


def choose_masked_steps(mask: Tensor, probability: float, protected: Tensor | None = None) -> Tensor:
    """``(B, T)`` bool: each real, unprotected step with ``probability``, and at least one per
    sample that has such a step (its first one when the draw picked none)."""
    eligible = mask if protected is None else mask & ~protected
    chosen = (torch.rand(mask.shape, device=mask.device) < probability) & eligible
    none = ~chosen.any(1) & eligible.any(1)
    first = torch.zeros_like(chosen).scatter_(1, eligible.to(torch.int8).argmax(1, keepdim=True), True)
    return chosen | (none[:, None] & first)


class _ScratchEncoder(nn.Module):
    """BERT's embedding sum and post-LayerNorm layers, built from scratch at width ``dim``."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_layers: int,
        n_types: int,
        max_positions: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.positions = nn.Embedding(max_positions, dim)
        self.types = nn.Embedding(n_types, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, n_heads, 4 * dim, dropout, activation="gelu", batch_first=True)
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)

    def forward(self, embeds: Tensor, mask: Tensor, positions: Tensor, types: Tensor) -> Tensor:
        x = self.dropout(self.norm(embeds + self.positions(positions) + self.types(types)))
        return self.layers(x, src_key_padding_mask=~mask)


@register_model(
    "aobert",
    summary="AOBERT: text tokens (or features) and non-verbal frames in one BERT-style sequence, "
    "with masked multimodal language modelling and alignment prediction as training objectives.",
    modalities="any M >= 2 (text, or the first modality, is the verbal one)",
    fidelity="adapted",
    notes="from the abstract only (paper text and code not available); BERT with text_encoder, else a "
    "BERT-shaped encoder from scratch; frames resampled to <= 50 steps; MMLM and AP weighted by "
    "pretrain_weight, optionally alone for the first pretrain_steps steps; [CLS] readout",
)
class AOBERT(MultimodalModel):
    """``features[m] (B, T_m, d_m)`` (text: token ids ``(B, L, 3)`` with ``text_encoder``) ``-> prediction``;
    ``representation`` is the first step's hidden state ``(B, H)``.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        text_encoder: a local BERT folder; the transformer is that BERT (fine-tuned). None: a
            BERT-shaped encoder of width ``dim`` from scratch, text given as features.
        dim, n_heads, n_layers: the from-scratch encoder (ignored with ``text_encoder``).
        dropout: embedding, attention and feed-forward dropout of the from-scratch encoder.
        out_dropout: dropout before the prediction head.
        max_frames: non-verbal streams (and verbal features) longer than this are resampled to
            this many steps (:func:`~alignkit_models.layers.sequence.resample_segments`).
        mask_probability: per-step probability of masking a verbal step for MMLM.
        misalign_probability: per-sample probability of misaligned non-verbal streams for AP.
        pretrain_weight: weight of MMLM + AP (0 turns both off and skips their forward pass).
        pretrain_steps: first training steps that optimise MMLM + AP only.
        mask_token_id: the ``[MASK]`` id; None reads it from ``text_encoder``'s ``vocab.txt``.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        text_encoder: str | None = None,
        dim: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        dropout: float = 0.1,
        out_dropout: float = 0.1,
        max_frames: int = 50,
        mask_probability: float = 0.15,
        misalign_probability: float = 0.5,
        pretrain_weight: float = 1.0,
        pretrain_steps: int = 0,
        mask_token_id: int | None = None,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        mods = self.modalities
        if len(mods) < 2:
            raise ValueError(f"input_dims: AOBERT needs at least 2 modalities, received {list(mods)}")
        if text_encoder is not None and "text" not in mods:
            raise ValueError(f"text_encoder: needs a 'text' modality of token ids, received modalities {list(mods)}")
        self.verbal = "text" if "text" in mods else mods[0]
        self.nonverbal = tuple(m for m in mods if m != self.verbal)
        self.max_frames = positive_int(max_frames, "max_frames")
        for name, value in (
            ("mask_probability", mask_probability),
            ("misalign_probability", misalign_probability),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], received {value!r}")
        if isinstance(pretrain_weight, bool) or not isinstance(pretrain_weight, (int, float)) or not 0.0 <= pretrain_weight < float("inf"):
            raise ValueError(f"pretrain_weight: expected a finite number >= 0, received {pretrain_weight!r}")
        if isinstance(pretrain_steps, bool) or not isinstance(pretrain_steps, int) or pretrain_steps < 0:
            raise ValueError(f"pretrain_steps: expected an integer >= 0, received {pretrain_steps!r}")
        self.mask_probability = float(mask_probability)
        self.misalign_probability = float(misalign_probability)
        self.pretrain_weight = float(pretrain_weight)
        self.pretrain_steps = pretrain_steps
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        out_rate = dropout_rate(out_dropout, "out_dropout")

        if text_encoder is not None:
            self.text_encoder = BertTextEncoder(text_encoder)
            bert = self.text_encoder.bert
            hidden = self.text_encoder.hidden_size
            vocab_size = int(bert.config.vocab_size)
            if mask_token_id is None:
                mask_token_id = mask_token_id_from_vocab(text_encoder)
            if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or not 0 <= mask_token_id < vocab_size:
                raise ValueError(f"mask_token_id: expected an id in [0, {vocab_size}), received {mask_token_id!r}")
            self.mask_token_id = mask_token_id
            self.encoder = None
            self.cls = None
            self.mask_vector = None
            # BERT's prediction-head shape: transform, then scores against the word embeddings.
            self.mlm_transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
            self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))
            self.mlm_regression = None
        else:
            self.text_encoder = None
            hidden = positive_int(dim, "dim")
            n_heads = positive_int(n_heads, "n_heads")
            if hidden % n_heads:
                raise ValueError(f"n_heads: expected a divisor of dim={hidden}, received {n_heads}")
            rate = dropout_rate(dropout, "dropout")
            self.mask_token_id = None
            self.encoder = _ScratchEncoder(
                hidden,
                n_heads,
                positive_int(n_layers, "n_layers"),
                len(mods) + 1,
                self.max_frames + 1,
                rate,
            )
            self.cls = nn.Parameter(torch.zeros(hidden))
            self.mask_vector = nn.Parameter(torch.zeros(hidden))
            self.mlm_transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
            self.mlm_bias = None
            self.mlm_regression = nn.Linear(hidden, self.input_dims[self.verbal])
        self.hidden_size = hidden
        names = mods if text_encoder is None else self.nonverbal
        self.projections = nn.ModuleDict({m: nn.Linear(self.input_dims[m], hidden) for m in names})
        # Zero at the start: with BERT, the frames first arrive as plain token-type-1 inputs.
        self.modality_embeddings = nn.ParameterDict({m: nn.Parameter(torch.zeros(hidden)) for m in self.nonverbal})
        self.alignment_head = nn.Linear(hidden, 1)
        self.head = nn.Sequential(nn.Dropout(out_rate), nn.Linear(hidden, self.output_dim))

    # ------------------------------------------------------------------ pieces
    def _frames(self, m: str, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T, d_m) -> (B, min(T, max_frames), H)`` projected frames and their mask."""
        if x.shape[1] > self.max_frames:
            x, mask = (
                resample_segments(x, mask, self.max_frames),
                torch.ones(x.shape[0], self.max_frames, dtype=torch.bool, device=x.device),
            )
        return self.projections[m](zero_padding(x, mask)) + self.modality_embeddings[m], mask

    def _verbal_input(self, x: Tensor, mask: Tensor, masked: Tensor | None) -> tuple[Tensor, Tensor]:
        """The verbal segment's input embeddings ``(B, L, H)`` and mask; ``masked`` steps replaced."""
        if self.text_encoder is not None:
            ids = x[..., 0].long()
            if masked is not None:
                ids = ids.masked_fill(masked, self.mask_token_id)
            return self.text_encoder.bert.embeddings.word_embeddings(ids), x[..., 1].bool()
        if x.shape[1] > self.max_frames:
            x, mask = (
                resample_segments(x, mask, self.max_frames),
                torch.ones(x.shape[0], self.max_frames, dtype=torch.bool, device=x.device),
            )
        embeds = self.projections[self.verbal](zero_padding(x, mask))
        if masked is not None:
            embeds = torch.where(masked[..., None], self.mask_vector.to(embeds.dtype), embeds)
        return embeds, mask

    def verbal_steps(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """What MMLM masks and predicts: the verbal mask ``(B, L)``, the targets (token ids
        ``(B, L)`` or features ``(B, L, d)``), and the steps never masked ([CLS], [SEP]) or None."""
        x = features[self.verbal]
        if self.text_encoder is not None:
            mask = x[..., 1].bool()
            protected = torch.zeros_like(mask)
            protected[:, 0] = True
            protected.scatter_(1, (mask.sum(1, keepdim=True) - 1).clamp_min(0), True)
            return mask, x[..., 0].long(), protected
        mask = masks[self.verbal]
        if x.shape[1] > self.max_frames:
            x = resample_segments(x, mask, self.max_frames)
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return mask, zero_padding(x, mask), None

    def encode(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        *,
        masked: Tensor | None = None,
        partner: Tensor | None = None,
    ) -> Tensor:
        """Hidden states ``(B, N, H)`` of the joint sequence: [CLS] (BERT's first token, else a
        learned vector), each sample's real steps in modality order, then padding.
        ``masked (B, L)``: verbal steps to mask; ``partner (B,)``: the sample whose non-verbal
        streams each sample receives."""
        verbal, verbal_mask = self._verbal_input(features[self.verbal], masks[self.verbal], masked)
        segments, segment_masks = [verbal], [verbal_mask]
        for m in self.nonverbal:
            frames, mask = self._frames(m, features[m], masks[m])
            if partner is not None:
                frames, mask = frames[partner], mask[partner]
            segments.append(frames)
            segment_masks.append(mask)
        positions = [torch.arange(s.shape[1], device=s.device).expand(s.shape[0], -1) for s in segments]
        if self.text_encoder is not None:
            frame_type = min(1, int(self.text_encoder.bert.config.type_vocab_size) - 1)
            types = [features[self.verbal][..., 2].long()] + [torch.full_like(p, frame_type) for p in positions[1:]]
        else:
            types = [torch.full_like(p, i) for i, p in enumerate(positions)]
        # Each sample's real steps first, in modality order (as concat_real_steps orders them),
        # with their positions and types; padding last.
        joint_mask = torch.cat(segment_masks, 1)
        order = torch.argsort((~joint_mask).to(torch.int8), dim=1, stable=True)
        joint = torch.gather(torch.cat(segments, 1), 1, order.unsqueeze(-1).expand(-1, -1, segments[0].shape[-1]))
        joint_mask, positions, types = (torch.gather(torch.cat(x, 1) if isinstance(x, list) else x, 1, order) for x in (joint_mask, positions, types))
        if self.text_encoder is not None:
            return self.text_encoder.bert(
                inputs_embeds=joint, attention_mask=joint_mask.long(), token_type_ids=types, position_ids=positions
            ).last_hidden_state
        batch = joint.shape[0]
        ones = torch.ones(batch, 1, dtype=torch.bool, device=joint.device)
        zeros = torch.zeros(batch, 1, dtype=torch.long, device=joint.device)
        return self.encoder(
            torch.cat([self.cls.to(joint.dtype).expand(batch, 1, -1), joint], 1),
            torch.cat([ones, joint_mask], 1),
            torch.cat([zeros, positions], 1),
            torch.cat([zeros + len(self.modalities), types], 1),  # [CLS] has a type of its own
        )

    def masked_states(self, hidden: Tensor, verbal_mask: Tensor, masked: Tensor) -> Tensor:
        """The hidden states ``(K, H)`` of the ``K`` masked verbal steps, in ``masked.nonzero()`` order.

        The verbal segment comes first among each sample's real steps (after the learned [CLS]
        without BERT), so its ``r``-th real step sits at ``offset + r``.
        """
        offset = 0 if self.text_encoder is not None else 1
        rank = verbal_mask.long().cumsum(1) - 1
        rows, steps = masked.nonzero(as_tuple=True)
        return hidden[rows, offset + rank[rows, steps]]

    def pretraining_losses(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """MMLM and AP on a corrupted copy of the batch (see the module docstring)."""
        verbal_mask, targets, protected = self.verbal_steps(features, masks)
        masked = choose_masked_steps(verbal_mask, self.mask_probability, protected)
        batch = verbal_mask.shape[0]
        device = verbal_mask.device
        misaligned = (
            (torch.rand(batch, device=device) < self.misalign_probability) if batch > 1 else torch.zeros(batch, dtype=torch.bool, device=device)
        )
        partner = torch.where(
            misaligned,
            torch.arange(1, batch + 1, device=device) % batch,
            torch.arange(batch, device=device),
        )
        hidden = self.encode(features, masks, masked=masked, partner=partner)
        rows, steps = masked.nonzero(as_tuple=True)
        states = self.mlm_transform(self.masked_states(hidden, verbal_mask, masked))
        if self.text_encoder is not None:
            logits = states @ self.text_encoder.bert.embeddings.word_embeddings.weight.T + self.mlm_bias
            mmlm = F.cross_entropy(logits.float(), targets[rows, steps])
        else:
            mmlm = F.mse_loss(self.mlm_regression(states).float(), targets[rows, steps].float())
        if not rows.numel():
            mmlm = hidden.sum() * 0.0
        if batch > 1:
            ap = F.binary_cross_entropy_with_logits(
                self.alignment_head(hidden[:, 0]).squeeze(-1).float(),
                (~misaligned).float(),
            )
        else:
            ap = hidden.sum() * 0.0
        return mmlm, ap

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = self.check_inputs(features, masks)
        hidden = self.encode(features, masks)
        fused = hidden[:, 0]
        output = ModelOutput(self.head_output(self.head(fused)), representation=fused)
        if self.training and self.pretrain_weight > 0:
            mmlm, ap = self.pretraining_losses(features, masks)
            output.aux_losses["pretraining"] = self.pretrain_weight * (mmlm + ap)
            output.components.update(mmlm=mmlm.detach(), ap=ap.detach())
        if self.training:
            self.steps_done += 1
        return output

    def in_pretraining(self) -> bool:
        """Whether the step just taken belongs to the pre-training phase (task loss not optimised)."""
        return int(self.steps_done) <= self.pretrain_steps

    def loss(self, output: ModelOutput, labels: Tensor) -> LossOutput:
        """The task loss plus MMLM + AP; MMLM + AP alone during the first ``pretrain_steps`` steps."""
        result = super().loss(output, labels)
        if self.training and self.pretrain_steps and self.in_pretraining() and "pretraining" in output.aux_losses:
            return LossOutput(output.aux_losses["pretraining"], result.components)
        return result
