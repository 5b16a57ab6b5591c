"""CENet: the text encoder's hidden states are shifted by text-queried attention over the other modalities.

Wang, Liu, Wang, Tian, He and Gao, "Cross-modal Enhancement Network for Multimodal Sentiment
Analysis", IEEE Transactions on Multimedia 2022 (doi 10.1109/TMM.2022.3183830). Text is the
backbone: a pre-trained language model runs over the words, and before its transformer layer of
index 1 a cross-modal enhancement (CE) module adds a shift to the text hidden states. For each
non-verbal modality ``m``, its features are transformed to the text width
(``Linear -> ReLU -> Linear``, MMSA's continuous form of the paper's feature transformation), and
a single-head attention with queries from the text states and keys/values from ``m`` (scores
multiplied by 8, as in the released code) gives a context per text token; the contexts of all
non-verbal modalities are concatenated and a Linear maps them to the shift. The first token's
final state feeds ``Dropout -> Linear -> tanh -> Dropout -> Linear``. No auxiliary loss (no
alignkit function is involved).

Where our version departs from the paper:

- the paper fine-tunes SentiLARE (the MMSA version: BERT-base) end to end; no language model can
  be fine-tuned here, so a small transformer encoder (post-LayerNorm, GELU, as BERT's layers)
  runs over the pre-extracted 768-d text vectors after a Linear to width ``d``, sinusoidal
  positions and LayerNorm, with a learned first token prepended in place of ``[CLS]`` (hence
  ``fidelity="adapted"``); the CE module sits before layer ``ce_layer`` (1, as in the paper);
- the centre modality is the one named ``"text"``; without one (e.g. UCI multiple features),
  the first modality plays the text role (or the one named by ``centre``);
- any number of non-centre modalities: one attention each, all contexts concatenated into one
  Linear; padded non-verbal steps are masked out of the attention (the released code has none:
  ``padding="included"``);
- the paper's discrete non-verbal codes (k-means ids, computed offline) are replaced by MMSA's
  continuous feature transformation; smaller defaults (``d = 64``, 4 heads, 2 layers).

Options that give MMSA's network (``models/singleTask/CENET.py`` of github.com/thuiar/MMSA,
added after the 2.2.1 release; its weights load with
:func:`alignkit_models.mmsa.cenet.cenet_from_mmsa_state_dict`, which sets them, see
:data:`alignkit_models.mmsa.cenet.REFERENCE_OPTIONS`): ``text_encoder=PATH`` (a local BERT
folder; the ``"text"`` modality is then token ids ``(B, L, 3)`` and the CE module runs between
BERT's layers ``ce_layer - 1`` and ``ce_layer``, on BERT's hidden states, in place of our small
encoder), ``freeze_text_embeddings=True`` (MMSA computes BERT's embedding layer under
``torch.no_grad``: word, position and segment embeddings and their LayerNorm are never
trained), ``padding="included"`` (MMSA's CE attends over every non-verbal step, padding
included), ``regression_loss="l1"`` (MMSA's trainer) and ``dropout`` = BERT's
``hidden_dropout_prob`` (MMSA's head reads it from the BERT configuration). With these, our
model is MMSA's CENET: same predictions in eval mode and same gradients in training
(``tests/models/test_cenet_reference.py``). MMSA concatenates the CE contexts as
``[vision; audio]``; ours follow ``input_dims`` order, the converter permutes the merge columns.

What the authors' released code (github.com/Say2L/CENet at e208a83, the paper's MOSI code) does
differently from MMSA's, and why it is not reproduced here:

- non-verbal inputs are discrete: each frame's k-means code (16 clusters, computed offline and
  stored in the authors' data pickle) indexes an ``nn.Embedding(17, 768)`` (index 16: padding),
  where MMSA and we transform the continuous features; a model that reads features cannot take
  their codes;
- the backbone is SentiLARE, a RoBERTa-base further pre-trained with part-of-speech and
  sentiment knowledge (RoBERTa positions, plus POS-tag, word-sentiment and sentence-polarity
  embeddings fed from their pickle), built on ``pytorch_transformers`` 1.2 with weights from a
  Google Drive download: neither is available offline, and its embedding layer is not BERT's.
  (MMSA's CENET builds the three extra embedding tables too but never feeds them ids: they are
  unused, and the converter drops them.) Their embedding layer is trained, MMSA's is frozen;
- their loss is MSE (MMSA: L1), with AdamW, a linear warm-up schedule and learning rate 6e-5.

Both codes share, and our model has by default or with the options above: the CE module before
encoder layer index 1, single-head attention with scores multiplied by 8 (no ``1/sqrt(d)``), no
masks in the CE attention (``padding="included"``), the residual ``text + Linear([contexts])``,
and RoBERTa's classification head on the first token (``Dropout -> Linear -> tanh -> Dropout ->
Linear``). Given their code embeddings in place of MMSA's feature transformation, the authors' CE
module and ours agree (``tests/models/test_cenet_reference.py``, with ``ALIGNKIT_CENET_REFERENCE``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit_models.layers.options import Padding, check_padding, padding_masks
from alignkit_models.layers.sequence import zero_padding
from alignkit_models.layers.transformer import sinusoidal_positions
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model

# Width of the "text" modality with a BERT text encoder: token id, attention mask, segment id.
_TOKEN_CHANNELS = 3


class TextQueriedAttention(nn.Module):
    """Single-head attention of text states over one modality: ``(B, T_t, d), (B, T_m, d) -> (B, T_t, d)``.

    Args:
        dim: width ``d`` of both inputs.
        score_scale: factor on the raw dot products before the softmax (released code: 8).
    """

    def __init__(self, dim: int, score_scale: float = 8.0) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.score_scale = score_scale

    def forward(self, text: Tensor, other: Tensor, other_mask: Tensor) -> Tensor:
        scores = self.score_scale * self.query(text) @ self.key(other).mT  # (B, T_t, T_m)
        usable = other_mask | ~other_mask.any(1, keepdim=True)  # an all-padding sample attends everywhere
        scores = scores.masked_fill(~usable.unsqueeze(1), float("-inf"))
        return torch.softmax(scores, -1) @ self.value(other)


class CrossModalEnhancement(nn.Module):
    """CE module: ``text + Linear([attn_1; ...; attn_K])`` over the ``K`` non-centre modalities.

    Args:
        other_dims: input width of each non-centre modality.
        dim: text width ``d``.
        score_scale: see :class:`TextQueriedAttention`.
    """

    def __init__(self, other_dims: Mapping[str, int], dim: int, score_scale: float) -> None:
        super().__init__()
        self.transforms = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, dim), nn.ReLU(), nn.Linear(dim, dim)) for m, d in other_dims.items()}
        )
        self.attentions = nn.ModuleDict({m: TextQueriedAttention(dim, score_scale) for m in other_dims})
        self.merge = nn.Linear(len(other_dims) * dim, dim)

    def forward(self, text: Tensor, others: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> Tensor:
        """``text (B, T_t, d)``, ``others[m] (B, T_m, d_m)`` -> shifted text ``(B, T_t, d)``."""
        contexts = [
            self.attentions[m](text, self.transforms[m](zero_padding(others[m], masks[m])), masks[m])
            for m in self.transforms
        ]
        return text + self.merge(torch.cat(contexts, -1))


@register_model(
    "cenet",
    summary="CENet: text-centred encoder whose hidden states get a shift from text-queried attention "
    "over the other modalities (CE module before layer 1).",
    modalities="any M >= 2 (text-centred: the 'text' modality, else the first one)",
    fidelity="adapted",
    notes="no SentiLARE/BERT fine-tuning: a small post-LN transformer over the pre-extracted 768-d text with a "
    "learned first token; without a 'text' modality the first modality is the centre; continuous (MMSA) "
    "feature transformation; padded steps masked in the CE attention (text_encoder=PATH, "
    "freeze_text_embeddings=True, padding='included': MMSA's CENET)",
)
class CENet(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the first token's final state.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        centre: the text-role modality; None = ``"text"`` if present, else the first modality.
        dim: encoder width ``d`` (with ``text_encoder``: BERT's hidden size instead).
        n_heads: attention heads of the encoder layers (with ``text_encoder``: BERT's).
        n_layers: encoder layers (with ``text_encoder``: BERT's).
        ce_layer: index of the layer the CE module precedes (``0 <= ce_layer <= n_layers``;
            ``n_layers``: after the last one).
        score_scale: CE attention score factor.
        dropout: dropout of the encoder and the head (with ``text_encoder``: of the head only;
            BERT's dropouts are those of its configuration).
        padding: ``"masked"`` (padded steps of the non-verbal modalities are zeroed and left out
            of the CE attention, padded text steps out of the encoder's attention) or
            ``"included"`` (padded steps are data, as in MMSA's and the authors' code, which have
            no masks for them). With ``text_encoder``, BERT's attention always follows the token
            ids' own attention mask, as in MMSA.
        text_encoder: path of a local BERT folder (``save_pretrained`` output; nothing is
            downloaded). The ``"text"`` modality, which must be the centre, is then token ids
            ``(B, L, 3)`` (token id, attention mask, segment id; ``input_dims["text"] = 3``),
            BERT's embedding layer and transformer layers replace our encoder, and the CE module
            shifts BERT's hidden states before its layer ``ce_layer``; the head reads the final
            state of the first token (``[CLS]``). None (default): our small encoder over text
            features.
        freeze_text_embeddings: run BERT's embedding layer under :func:`torch.no_grad`, so that
            it is never trained (MMSA). Needs ``text_encoder``.

    Raises:
        ValueError: fewer than two modalities; an unknown ``centre``; ``ce_layer`` outside
            ``[0, layers]``; ``padding`` not ``"masked"`` / ``"included"``; ``text_encoder``
            without a ``"text"`` centre of width 3, or not a BERT folder;
            ``freeze_text_embeddings`` without ``text_encoder``.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        centre: str | None = None,
        dim: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        ce_layer: int = 1,
        score_scale: float = 8.0,
        dropout: float = 0.1,
        padding: Padding = "masked",
        text_encoder: str | os.PathLike[str] | None = None,
        freeze_text_embeddings: bool = False,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        if len(self.modalities) < 2:
            raise ValueError(f"input_dims: CENet needs at least 2 modalities, received {list(self.modalities)}")
        if centre is None:
            centre = "text" if "text" in self.modalities else self.modalities[0]
        if centre not in self.modalities:
            raise ValueError(f"centre: expected one of {list(self.modalities)}, received {centre!r}")
        check_padding(padding)
        if not isinstance(freeze_text_embeddings, bool):
            raise ValueError(f"freeze_text_embeddings: expected a bool, received {freeze_text_embeddings!r}")
        if freeze_text_embeddings and text_encoder is None:
            raise ValueError("freeze_text_embeddings: freezes BERT's embedding layer, so it needs text_encoder=PATH")
        self.centre = centre
        self.padding = padding
        self.freeze_text_embeddings = freeze_text_embeddings
        self.text_encoder = None
        if text_encoder is not None:
            if centre != "text":
                raise ValueError(f"text_encoder: needs the 'text' modality as the centre, received centre {centre!r}")
            if self.input_dims["text"] != _TOKEN_CHANNELS:
                raise ValueError(
                    f"input_dims: with text_encoder, 'text' is token ids (B, L, 3) of width 3, "
                    f"received {self.input_dims['text']}"
                )
            from alignkit_models.layers.text import BertTextEncoder

            self.text_encoder = BertTextEncoder(text_encoder)
            dim = self.text_encoder.hidden_size
            n_layers = len(self.text_encoder.bert.encoder.layer)
        if isinstance(ce_layer, bool) or not isinstance(ce_layer, int) or not 0 <= ce_layer <= n_layers:
            raise ValueError(f"ce_layer: expected an integer in [0, {n_layers}], received {ce_layer!r}")
        self.ce_layer = ce_layer
        if self.text_encoder is None:
            self.embed = nn.Linear(self.input_dims[centre], dim)
            self.first_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.embed_norm = nn.LayerNorm(dim)
            self.embed_dropout = nn.Dropout(dropout)
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(dim, n_heads, 4 * dim, dropout, activation="gelu", batch_first=True)
                for _ in range(n_layers)
            )
        others = {m: d for m, d in self.input_dims.items() if m != centre}
        self.enhancement = CrossModalEnhancement(others, dim, score_scale)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(dropout), nn.Linear(dim, self.output_dim)
        )

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = padding_masks(self.check_inputs(features, masks), self.padding)
        if self.text_encoder is None:
            text, layers = self._embed_features(features[self.centre], masks[self.centre])
        else:
            text, layers = self._embed_tokens(features[self.centre])
        others = {m: features[m] for m in self.modalities if m != self.centre}
        for index, layer in enumerate(layers):
            if index == self.ce_layer:
                text = self.enhancement(text, others, masks)
            text = layer(text)
        if self.ce_layer == len(layers):
            text = self.enhancement(text, others, masks)
        summary = text[:, 0]
        return ModelOutput(self.head_output(self.head(summary)), representation=summary)

    def _embed_features(self, x: Tensor, mask: Tensor) -> tuple[Tensor, list[Callable[[Tensor], Tensor]]]:
        """Our encoder's input ``(B, 1 + T, d)`` from text features ``x (B, T, d_t)`` and ``mask (B, T)``,
        and its layers as functions of the hidden states."""
        text = self.embed(zero_padding(x, mask))
        text = torch.cat([self.first_token.expand(text.shape[0], -1, -1), text], 1)
        positions = sinusoidal_positions(text.shape[1], text.shape[2], text.device)
        text = self.embed_dropout(self.embed_norm(text + positions))
        padding = ~torch.cat([torch.ones_like(mask[:, :1]), mask], 1)

        def run(layer: nn.Module) -> Callable[[Tensor], Tensor]:
            return lambda hidden: layer(hidden, src_key_padding_mask=padding)

        return text, [run(layer) for layer in self.layers]

    def _embed_tokens(self, tokens: Tensor) -> tuple[Tensor, list[Callable[[Tensor], Tensor]]]:
        """BERT's embedding output ``(B, L, H)`` for token ids ``tokens (B, L, 3)``, and its layers
        as functions of the hidden states (attending to the tokens whose attention mask is 1)."""
        assert self.text_encoder is not None
        bert = self.text_encoder.bert
        ids, attention, segments = tokens.long().unbind(-1)
        if self.freeze_text_embeddings:
            with torch.no_grad():
                text = bert.embeddings(input_ids=ids, token_type_ids=segments)
        else:
            text = bert.embeddings(input_ids=ids, token_type_ids=segments)
        # Additive mask (B, 1, 1, L), the form BERT's eager and SDPA attention both take.
        excluded = (1 - attention)[:, None, None, :].to(text.dtype)
        additive = excluded * torch.finfo(text.dtype).min

        def run(layer: nn.Module) -> Callable[[Tensor], Tensor]:
            def call(hidden: Tensor) -> Tensor:
                output = layer(hidden, additive)
                return output[0] if isinstance(output, tuple) else output  # transformers 4 returns a tuple

            return call

        return text, [run(layer) for layer in bert.encoder.layer]
