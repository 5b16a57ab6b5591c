"""MISA: modality-invariant (shared) and modality-specific (private) subspaces, fused by a transformer.

Hazarika, Zimmermann and Poria, "MISA: Modality-Invariant and -Specific Representations for
Multimodal Sentiment Analysis", ACM Multimedia 2020. Each modality's utterance vector ``u_m``
(BiLSTM -> LayerNorm -> BiLSTM, final states of both layers and directions, then Linear-ReLU-
LayerNorm) is split into a private vector ``p_m`` (one encoder per modality) and a shared vector
``s_m`` (one encoder for all), both Linear + sigmoid. The ``2M`` vectors form a sequence for one
transformer encoder layer; its flattened output feeds Linear -> Dropout -> ReLU -> Linear. Training
adds ``alpha L_sim + beta L_diff + gamma L_recon``:

- ``L_sim``: central moment discrepancy (CMD, Zellinger et al., ICLR 2017) between the shared
  vectors, averaged over modality pairs, ``||E x - E y|| + sum_{k=2..K} ||c_k(x) - c_k(y)||``
  with per-dimension batch central moments ``c_k`` and *unsquared* L2 norms, ``K = 5``. Implemented
  here (:func:`central_moment_discrepancy`): alignkit's ``moment_matching_loss`` uses squared
  norms, a covariance matrix and standardised skewness, a different formula, so nothing is reused.
  MISA's shared vectors are sigmoid outputs in ``[0, 1]``, so CMD's ``1 / |b - a|^k`` scaling is 1.
- ``L_diff``: soft orthogonality ``mean((P^T S)^2)`` of batch-centred, row-normalised (norm
  detached) matrices, summed over the pairs (private, shared) of each modality and (private,
  private) of each modality pair (:func:`difference_loss`, implemented here: alignkit's
  ``decoupling_loss`` penalises the per-sample cosine, not the cross-correlation of the batch).
- ``L_recon``: mean over modalities of ``MSE(D_m(p_m + s_m), u_m)``.

Where our version departs from the paper:

- the paper fine-tunes BERT for text (masked mean of its last layer); no language model can be
  fine-tuned here, so the pre-extracted 768-d text vectors go through the same BiLSTM encoder as
  every other modality (hence ``fidelity="adapted"``);
- one LSTM width for every modality (``rnn_dim``) instead of ``d_m`` per modality, so the 768-d
  text does not get a 768-wide LSTM; hidden width 64 instead of 128; the fusion layer's
  feed-forward width is ``4 d_h`` instead of PyTorch's default 2048;
- any number of modalities: all pairs enter ``L_sim`` and ``L_diff``, the fusion sequence has
  ``2M`` tokens; loss weights are the official code's (1.0, 0.3, 1.0).

Options that give MMSA 2.2.1's network (``models/singleTask/MISA.py``; its weights load with
:func:`alignkit_models.mmsa.bert_models.misa_from_mmsa_state_dict`): ``text_encoder=PATH`` (a
local BERT; the text modality is then token ids and its utterance vector is BERT's masked mean,
projected like the others), ``rnn_dim={"audio": d_a, "vision": d_v}`` (MMSA's LSTM width is the
input width), ``fusion_feedforward_dim=2048`` and ``fusion_dropout=0.1`` (PyTorch's defaults,
which MMSA keeps), ``hidden_dim=128``. MMSA's MOSI loss weights are ``sim_weight=0.3``,
``diff_weight=0.1``, ``recon_weight=1.0``. MMSA packs audio and vision with the *text* lengths;
here every modality uses its own mask (the same thing on word-aligned data).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit_models.layers.sequence import run_packed
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.layers.options import per_modality
from alignkit_models.registry import register_model


def central_moment_discrepancy(x: Tensor, y: Tensor, n_moments: int = 5) -> Tensor:
    """CMD between two sample sets ``x (N, d)`` and ``y (N', d)``.

    ``||mean x - mean y||_2 + sum_{k=2..n_moments} ||E[(x - mean x)^k] - E[(y - mean y)^k]||_2``,
    every expectation a per-dimension mean over the samples. The norm is
    ``torch.linalg.vector_norm``, whose gradient at 0 is 0 (e.g. for ``N = 1``, where all
    central moments vanish), not NaN.
    """
    mean_x, mean_y = x.mean(0), y.mean(0)
    total = torch.linalg.vector_norm(mean_x - mean_y)
    centred_x, centred_y = x - mean_x, y - mean_y
    for k in range(2, n_moments + 1):
        total = total + torch.linalg.vector_norm(centred_x.pow(k).mean(0) - centred_y.pow(k).mean(0))
    return total


def _centred_unit_rows(x: Tensor) -> Tensor:
    """Batch-centre ``x (B, d)`` and divide each row by its (detached) L2 norm, as MISA does."""
    centred = x - x.mean(0, keepdim=True)
    return centred / (torch.linalg.vector_norm(centred, dim=1, keepdim=True).detach() + 1e-6)


def difference_loss(a: Tensor, b: Tensor) -> Tensor:
    """MISA's soft orthogonality ``mean((A^T B)^2)`` of two ``(B, d)`` batches (centred, unit rows)."""
    return (_centred_unit_rows(a).mT @ _centred_unit_rows(b)).pow(2).mean()


class _UtteranceEncoder(nn.Module):
    """BiLSTM -> LayerNorm -> BiLSTM over the real steps: ``(B, T, d_in) -> (B, 4 h)``."""

    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.rnn1 = nn.LSTM(in_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(2 * hidden_dim)
        self.rnn2 = nn.LSTM(2 * hidden_dim, hidden_dim, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        outputs, final1 = run_packed(self.rnn1, x, mask)
        _, final2 = run_packed(self.rnn2, self.norm(outputs), mask)
        # final states (directions, B, h) of both layers -> (B, 4 h)
        return torch.cat([final1, final2], -1).transpose(0, 1).flatten(1)


@register_model(
    "misa",
    summary="MISA: private/shared subspaces with CMD similarity, soft-orthogonal difference and "
    "reconstruction losses; transformer fusion of the 2M vectors.",
    modalities="any M >= 2",
    fidelity="adapted",
    notes="by default no BERT fine-tuning: the pre-extracted 768-d text goes through the same BiLSTM encoder as the "
    "other modalities (text_encoder=PATH: a fine-tuned BERT's masked mean, as MMSA); one LSTM width for all; "
    "hidden 64; fusion feed-forward 4 d_h",
)
class MISA(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the flattened fusion output.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        hidden_dim: subspace width ``d_h``.
        rnn_dim: LSTM width of every utterance encoder; one value or ``{modality: width}``
            (modalities left out get 32).
        n_heads: heads of the fusion transformer layer (MISA: 2).
        dropout: dropout of the head, and of the fusion layer unless ``fusion_dropout`` is given.
        sim_weight, diff_weight, recon_weight: ``alpha``, ``beta``, ``gamma``.
        n_moments: highest CMD moment ``K``.
        fusion_feedforward_dim: feed-forward width of the fusion layer (None: ``4 d_h``;
            MMSA: 2048).
        fusion_dropout: dropout inside the fusion layer (None: ``dropout``; MMSA: 0.1).
        text_encoder: path of a local BERT folder. The ``"text"`` modality is then token ids
            ``(B, L, 3)`` (``input_dims["text"] = 3``) and its utterance vector, before the
            projection, is the mean of BERT's last hidden state over the attention mask, as in
            MMSA (no LSTM for text).
        text_encoder_finetune: train BERT's weights (else it runs frozen).
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
        sim_weight: float = 1.0,
        diff_weight: float = 0.3,
        recon_weight: float = 1.0,
        n_moments: int = 5,
        fusion_feedforward_dim: int | None = None,
        fusion_dropout: float | None = None,
        text_encoder: str | None = None,
        text_encoder_finetune: bool = True,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        if len(self.modalities) < 2:
            raise ValueError(f"input_dims: MISA needs at least 2 modalities, received {list(self.modalities)}")
        if fusion_feedforward_dim is not None and fusion_feedforward_dim < 1:
            raise ValueError(f"fusion_feedforward_dim: expected a positive integer or None, received {fusion_feedforward_dim!r}")
        if fusion_dropout is not None and not 0.0 <= fusion_dropout < 1.0:
            raise ValueError(f"fusion_dropout: expected a probability in [0, 1) or None, received {fusion_dropout!r}")
        self.loss_weights = {"sim": sim_weight, "diff": diff_weight, "recon": recon_weight}
        self.n_moments = n_moments
        rnn_dims = per_modality(rnn_dim, self.modalities, "rnn_dim", default=32)
        for m, width in rnn_dims.items():
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(f"rnn_dim: expected a positive integer for {m!r}, received {width!r}")

        self.text_encoder = None
        # Width of each utterance vector before its projection: 4 h (two BiLSTM layers' final states).
        utterance_dims = {m: 4 * rnn_dims[m] for m in self.modalities}
        if text_encoder is not None:
            if "text" not in self.modalities:
                raise ValueError(f"text_encoder: needs a 'text' modality, received modalities {list(self.modalities)}")
            from alignkit_models.layers.text import BertTextEncoder

            self.text_encoder = BertTextEncoder(text_encoder, finetune=text_encoder_finetune, pooling="mean")
            utterance_dims["text"] = self.text_encoder.hidden_size
        self.encoders = nn.ModuleDict(
            {
                m: _UtteranceEncoder(d, rnn_dims[m])
                for m, d in self.input_dims.items()
                if not (m == "text" and self.text_encoder is not None)
            }
        )
        self.projections = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(utterance_dims[m], hidden_dim), nn.ReLU(), nn.LayerNorm(hidden_dim))
                for m in self.modalities
            }
        )
        self.private = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.Sigmoid()) for m in self.modalities}
        )
        self.shared = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.Sigmoid())
        self.reconstruct = nn.ModuleDict({m: nn.Linear(hidden_dim, hidden_dim) for m in self.modalities})
        self.fusion = nn.TransformerEncoderLayer(
            hidden_dim,
            n_heads,
            dim_feedforward=4 * hidden_dim if fusion_feedforward_dim is None else fusion_feedforward_dim,
            dropout=dropout if fusion_dropout is None else fusion_dropout,
            batch_first=True,
        )
        n_tokens = 2 * len(self.modalities)
        self.head = nn.Sequential(
            nn.Linear(n_tokens * hidden_dim, 3 * hidden_dim),
            nn.Dropout(dropout),
            nn.ReLU(),
            nn.Linear(3 * hidden_dim, self.output_dim),
        )

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        utterances = self.encode(features, masks)
        private = [self.private[m](utterances[m]) for m in self.modalities]
        shared = [self.shared(utterances[m]) for m in self.modalities]
        tokens = self.fusion(torch.stack(private + shared, 1))
        fused = tokens.flatten(1)
        output = ModelOutput(self.head_output(self.head(fused)), representation=fused)
        if self.training and labels is not None:
            components = self._auxiliary_terms(utterances, private, shared)
            output.components.update(components)
            output.aux_losses.update({name: self.loss_weights[name] * value for name, value in components.items()})
        return output

    def encode(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The projected utterance vectors ``u_m (B, d_h)``, before the private/shared split."""
        masks = self.check_inputs(features, masks)
        utterances = {}
        for m in self.modalities:
            if m == "text" and self.text_encoder is not None:
                raw = self.text_encoder(features[m])
            else:
                raw = self.encoders[m](features[m], masks[m])
            utterances[m] = self.projections[m](raw)
        return utterances

    def _auxiliary_terms(
        self, utterances: Mapping[str, Tensor], private: Sequence[Tensor], shared: Sequence[Tensor]
    ) -> dict[str, Tensor]:
        """Unweighted ``sim`` (CMD), ``diff`` and ``recon`` from ``(B, d_h)`` vectors."""
        sim = torch.stack(
            [central_moment_discrepancy(a, b, self.n_moments) for a, b in itertools.combinations(shared, 2)]
        ).mean()
        diff_pairs = list(zip(private, shared)) + list(itertools.combinations(private, 2))
        diff = torch.stack([difference_loss(a, b) for a, b in diff_pairs]).sum()
        recon = torch.stack(
            [
                F.mse_loss(self.reconstruct[m](p + s), utterances[m])
                for m, p, s in zip(self.modalities, private, shared)
            ]
        ).mean()
        return {"sim": sim, "diff": diff, "recon": recon}
