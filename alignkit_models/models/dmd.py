"""DMD: decoupled homogeneous / heterogeneous features with graph distillation between modalities.

Li, Wang and Cui, "Decoupled Multimodal Distilling for Emotion Recognition", CVPR 2023. After a
temporal Conv1d to width ``d``, each modality is split by 1x1 maps into a modality-private
(heterogeneous) code ``s_m = E_m(x_m)`` and a common (homogeneous) code ``c_m = E_c(x_m)`` with
one shared ``E_c``; a decoder rebuilds ``x_hat_m = D_m([s_m; c_m])``, re-encoded as
``s_hat_m = E_m(x_hat_m)``. The homogeneous branch predicts from each ``c_m`` alone (and from the
last steps of a self-attention transformer per ``c_m``, concatenated); the heterogeneous branch
runs MulT's pairwise cross-modal transformers on the ``s_m``
(:class:`~alignkit_models.layers.crossmodal.PairwiseCrossModal`) and predicts per modality. The
fused prediction reads the sigmoid-gated heterogeneous streams and common vector. Two graph
distillation (GD) units, one per branch, learn per-sample weights for every directed edge
(teacher ``j`` -> student ``k``) from node codes ``[W_l logit_k; W_r repr_k]``, softmax(``alpha``
score) over the ``M (M-1)`` edges, and distil the teachers' (detached) outputs into the students.
Training loss (weights of the released trainer)::

    sum of task losses over all 2M + 2 outputs
    + 0.05 (GD_homo logit + 10 reg) + 0.05 (GD_hetero logit + 10 repr + 10 reg)
    + 0.1 (L_cyc + L_rec + 0.1 (L_margin + L_ort))

with ``reg = ||mean_batch(edges) - prior||^2``, ``L_rec = MSE(x_hat_m, x_m)``,
``L_cyc = MSE(s_hat_m, s_m)`` (summed over modalities, real steps only), ``L_margin`` a cosine
triplet hinge ``max(0, margin_an - cos(a, p) + cos(a, n))`` over the common codes of all
modalities (positives: equal labels; ``margin_an = 0.15 |y_a - y_n|``), and ``L_ort`` the
overlap of ``s_m`` and ``c_m``, computed with ``alignkit.functional.decoupling_loss(s, c,
mode="abs", granularity="sequence", masks)``: ``|cos|`` of the flattened masked sequences, summed
over modalities. The cosine in ``L_margin`` and the GD representation term is
``alignkit.decoupling.cosine_similarity``; the time pooling is ``alignkit.decoupling.masked_mean``.

Where our version departs from the paper and from the released code (mdswyz/DMD); each
departure from the code that concerns the model has an option whose non-default value restores
the code (:data:`alignkit_models.models.dmd_reference.REFERENCE_OPTIONS` collects them, and
:mod:`~alignkit_models.models.dmd_reference` loads the code's weights):

- the paper fine-tunes BERT for text; the pre-extracted 768-d text vectors go through the same
  Conv1d as audio and vision (hence ``fidelity="adapted"``; the code's ``use_bert=False`` path);
- the code flattens whole fixed-length sequences into Linear layers (per-modality homogeneous
  heads ``d T' -> d -> d T'`` and the margin-loss projection), which ties it to one padded
  length; here the common codes are masked time means before those layers, so any length and
  padding work (``homo_pooling="flatten"`` with ``sequence_lengths``: the code's layers);
- ``L_ort`` is ``|cos|`` of each sample's flattened sequence (alignkit's ``"abs"`` mode). The
  code applies ``CosineEmbeddingLoss`` (target -1: ``max(0, cos)``) to ``(T, B, d)`` tensors;
  under the PyTorch 1.9 its README names, the cosine runs along dim 1, i.e. *across the batch*
  for each step and channel, then ``max(0, cos)`` is averaged over steps and channels
  (``ort_loss="batch_relu"``); later PyTorch rejects that call (DMD issues #5, #6);
- the GD representation term keeps the code's ``max(0, cos(student, teacher))`` (a quirk: it
  pushes students *away* from teachers), weighting each sample by its edge weight; the code
  averages ``max(0, cos)`` over the batch first and multiplies by the batch mean of the edge
  weight (``gd_repr_weighting="batch_mean"``);
- GD node representations: here the input of each heterogeneous head (the memory stream's last
  step) and the first Linear of each homogeneous head; the code uses the heterogeneous head's
  residual output (``gd_hetero_repr="head"``) and the homogeneous first Linear after its
  (in-place) ReLU (``gd_homo_repr="relu"``);
- ``L_margin`` averages the hinge over all triples; the code (``HingeLoss``) averages over each
  anchor's (positive, negative) pairs, then over the anchors that have both
  (``margin_reduction="anchors"``);
- the code's 1x1 decoupling convolutions have no bias (``decoupling_bias=False``); its Conv1d
  has no padding (``projection_padding="valid"``, a kernel per modality) and is skipped for a
  modality already of width ``d`` (``identity_same_width=True``); its transformers use
  fairseq's position table (``position_table="fairseq"``), separate embedding-dropout draws for
  keys and values (``independent_key_value_dropout=True``), the attention dropout of the
  attended modality (``attn_dropout={...}``, ``memory_attn_dropout``) and a future mask; it
  sees no masks: padded steps are data and readouts take index -1 (``padding="included"``);
- any number of modalities: ``M (M-1)`` cross-modal transformers and GD edges. The edge prior
  ``softmax(b / 0.25)`` has ``b = 1`` on edges whose teacher is the modality named ``"text"``,
  and in the heterogeneous unit also on vision -> audio (the code's choice for l, v, a); without
  such names the prior is uniform;
- classification (outside the paper's regression set-up): cross-entropy for every output and a
  constant margin 0.15 (label distances between classes are undefined);
- Conv1d keeps the length (odd kernels, padded steps zeroed first); last *real* steps; smaller
  defaults (``d = 32``, 4 heads, 2 layers); no future mask by default.

Training-loop choices of the code stay with the trainer: Adam without weight decay, gradients
accumulated over ``update_epochs`` batches, value clipping at 0.6.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.decoupling import cosine_similarity, masked_mean
from alignkit.functional import decoupling_loss
from alignkit_models.layers.crossmodal import PairwiseCrossModal
from alignkit_models.layers.heads import ResidualHead
from alignkit_models.layers.options import (
    Padding,
    check_padding,
    padding_masks,
    per_modality,
    positive_int,
)
from alignkit_models.layers.pooling import last_real_step
from alignkit_models.layers.projection import TemporalProjection
from alignkit_models.layers.sequence import zero_padding
from alignkit_models.layers.transformer import CrossModalEncoder
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model

Edge = tuple[str, str]  # (student, teacher)


def masked_mse(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Mean squared difference of ``a, b (B, T, d)`` over the real steps of ``mask (B, T)``."""
    weights = mask.to(a.dtype).unsqueeze(-1)
    return ((a - b).pow(2) * weights).sum() / (weights.sum() * a.shape[-1]).clamp_min(1.0)


def margin_loss(
    codes: Tensor, labels: Tensor, margins: Tensor, reduction: Literal["triples", "anchors"] = "triples"
) -> Tensor:
    """Cosine triplet hinge over all (anchor, positive, negative) triples of ``codes (N, d)``.

    A positive of anchor ``a`` is another row with the same label, a negative any row with a
    different label; the loss is ``sum relu(margins[a, n] - cos(a, p) + cos(a, n))`` divided by
    the number of triples (``"triples"``, 0 when there is none), or each anchor's sum divided by
    its number of triples and averaged over the anchors that have at least one (``"anchors"``,
    the released code's ``HingeLoss``).

    Per anchor, ``sum_{p, n} relu(x_n - y_p)`` with ``x_n = margins[a, n] + cos(a, n)`` and
    ``y_p = cos(a, p)`` equals ``sum_n (c_n x_n - S_n)``, where ``c_n`` counts the ``y_p < x_n`` and
    ``S_n`` is their sum: sorting the ``y`` makes this ``O(N^2 log N)`` instead of the
    ``O(N^3)`` triple tensor (56 M entries for six modalities of 64 samples).

    Args:
        codes: ``(N, d)``.
        labels: ``(N,)``.
        margins: ``(N, N)``, the margin of each (anchor, negative) pair.
        reduction: ``"triples"`` or ``"anchors"``.
    """
    if reduction not in ("triples", "anchors"):
        raise ValueError(f"reduction: expected 'triples' or 'anchors', received {reduction!r}")
    cos = cosine_similarity(codes.unsqueeze(1), codes.unsqueeze(0))  # (N, N)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    positive = same & ~torch.eye(len(codes), dtype=torch.bool, device=codes.device)
    negative = ~same
    # Non-positives sort last (+inf) and are never counted; their value never enters a sum.
    y_sorted, _ = torch.where(positive, cos, torch.inf).sort(dim=1)
    finite = torch.where(torch.isinf(y_sorted), torch.zeros_like(y_sorted), y_sorted)
    prefix = torch.cat([torch.zeros_like(finite[:, :1]), finite.cumsum(1)], dim=1)  # (N, N + 1)
    x = margins + cos
    counts = torch.searchsorted(y_sorted.detach(), x.detach().contiguous())  # y_p < x_n per (a, n)
    per_pair = counts.to(x.dtype) * x - prefix.gather(1, counts)
    triples = positive.sum(1) * negative.sum(1)
    if reduction == "triples":
        return (per_pair * negative).sum() / triples.sum().clamp_min(1)
    per_anchor = (per_pair * negative).sum(1) / triples.clamp_min(1)  # 0 for anchors without triples
    return per_anchor.sum() / (triples > 0).sum().clamp_min(1)


def batch_cosine_overlap(private: Tensor, common: Tensor, mask: Tensor) -> Tensor:
    """The released code's ``L_ort`` term of one modality (PyTorch 1.9 semantics).

    ``max(0, cos)`` where the cosine runs across the batch: for each step ``t`` and channel
    ``k``, between ``private[:, t, k]`` and ``common[:, t, k]`` (padded steps zeroed first);
    averaged over steps and channels.

    Args:
        private, common: ``(B, T, d)``.
        mask: ``(B, T)``.

    Returns:
        0-dim tensor.
    """
    keep = mask.to(private.dtype).unsqueeze(-1)
    cos = cosine_similarity((private * keep).permute(1, 2, 0), (common * keep).permute(1, 2, 0))  # (T, d)
    return F.relu(cos).mean()


def favoured_edges(modalities: Sequence[str], *, heterogeneous: bool) -> set[Edge]:
    """Edges with prior logit 1: teacher ``"text"``; in the heterogeneous unit also vision -> audio."""
    favoured = {(m, "text") for m in modalities if m != "text" and "text" in modalities}
    if heterogeneous and {"audio", "vision"} <= set(modalities):
        favoured.add(("audio", "vision"))
    return favoured


class GraphDistillation(nn.Module):
    """A GD unit: learned per-sample edge weights and the distillation terms they weight.

    Args:
        modalities: node names (``M >= 2``); edges are all ordered (student, teacher) pairs.
        logit_dim, repr_dim: widths of the node logits and representations.
        code_dim: width of each half of the node code ``[W_l logit; W_r repr]``.
        alpha: softmax temperature factor of the edge scores (DMD: 1/8).
        favoured: edges whose prior logit is 1 (others 0); prior = ``softmax(logits / 0.25)``.
        repr_weighting: ``"per_sample"`` (each sample's ``max(0, cos)`` times its edge weight,
            averaged) or ``"batch_mean"`` (the batch means of the two multiplied: the released
            code).
    """

    def __init__(
        self,
        modalities: Sequence[str],
        logit_dim: int,
        repr_dim: int,
        code_dim: int,
        alpha: float,
        favoured: set[Edge],
        repr_weighting: Literal["per_sample", "batch_mean"] = "per_sample",
    ) -> None:
        super().__init__()
        if repr_weighting not in ("per_sample", "batch_mean"):
            raise ValueError(f"repr_weighting: expected 'per_sample' or 'batch_mean', received {repr_weighting!r}")
        self.repr_weighting = repr_weighting
        self.modalities = tuple(modalities)
        self.edges: list[Edge] = [(s, t) for s in self.modalities for t in self.modalities if s != t]
        self.alpha = alpha
        self.logit_code = nn.Linear(logit_dim, code_dim)
        self.repr_code = nn.Linear(repr_dim, code_dim)
        self.edge_score = nn.Linear(4 * code_dim, 1)
        prior_logits = torch.tensor([1.0 if edge in favoured else 0.0 for edge in self.edges])
        self.register_buffer("prior", torch.softmax(prior_logits / 0.25, 0))

    def edge_weights(self, logits: Mapping[str, Tensor], reprs: Mapping[str, Tensor]) -> Tensor:
        """Per-sample weights ``(B, E)`` of the edges, a softmax over edges."""
        codes = {m: torch.cat([self.logit_code(logits[m]), self.repr_code(reprs[m])], -1) for m in self.modalities}
        scores = torch.cat([self.edge_score(torch.cat([codes[s], codes[t]], -1)) for s, t in self.edges], -1)
        return torch.softmax(self.alpha * scores, -1)

    def forward(self, logits: Mapping[str, Tensor], reprs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Unweighted ``logit``, ``repr`` and ``reg`` terms from ``logits[m] (B, C)`` and ``reprs[m] (B, D)``."""
        edges = self.edge_weights(logits, reprs)
        weights = edges + self.prior  # (B, E)
        logit_terms, repr_terms = [], []
        for index, (student, teacher) in enumerate(self.edges):
            distance = (logits[student] - logits[teacher].detach()).abs().sum(-1)
            overlap = F.relu(cosine_similarity(reprs[student], reprs[teacher].detach()))
            logit_terms.append((weights[:, index] * distance).mean())
            if self.repr_weighting == "per_sample":
                repr_terms.append((weights[:, index] * overlap).mean())
            else:
                repr_terms.append(overlap.mean() * weights[:, index].mean())
        return {
            "logit": torch.stack(logit_terms).sum(),
            "repr": torch.stack(repr_terms).sum(),
            "reg": (edges.mean(0) - self.prior).pow(2).sum(),
        }


@register_model(
    "dmd",
    summary="DMD: decoupled homogeneous/heterogeneous features, reconstruction/margin/orthogonality "
    "losses and two graph-distillation units.",
    modalities="any M >= 2 (M(M-1) cross-modal transformers and GD edges)",
    fidelity="adapted",
    notes="no BERT fine-tuning: 768-d text through the same Conv1d as the other modalities; masked time means "
    "instead of flattened fixed-length sequences; L_ort via alignkit decoupling_loss(mode='abs'); "
    "edge prior favours a 'text' teacher (uniform without one); options restore the released code "
    "(dmd_reference.REFERENCE_OPTIONS)",
)
class DMD(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the gated fused vector.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        dim: common width ``d``.
        n_heads: attention heads (divides ``d``).
        n_layers: layers of the cross-modal and common self-attention transformers.
        memory_layers: layers of the memory transformers; None = ``max(n_layers, 3)``.
        kernel_size: temporal Conv1d kernel, one or one per modality (odd with ``"same"`` padding).
        projection_padding: ``"same"`` keeps the length; ``"valid"`` (the code) pads nothing, so
            ``T_m`` becomes ``T_m - k_m + 1`` and an output step is real when the last input step
            of its window is.
        identity_same_width: a modality whose width is already ``d`` skips the Conv1d (the code).
        padding: ``"masked"`` or ``"included"`` (the code: padded steps are data, attended to,
            pooled, and the readouts take the last step).
        text_dropout: input dropout of the modality named ``"text"``.
        attn_dropout: attention dropout, one rate or one per modality: a cross-modal transformer
            uses the rate of the modality it attends to, a common self-attention transformer that
            of its own modality (the code's ``attn_dropout``, ``attn_dropout_a``, ``attn_dropout_v``).
        memory_attn_dropout: attention dropout of the memory transformers; None = ``attn_dropout``
            (then a single rate).
        relu_dropout, res_dropout, embed_dropout: transformer dropouts.
        out_dropout: dropout in the residual heads.
        future_mask: MulT's causal-style mask in the transformers.
        position_table: ``"vaswani"`` or ``"fairseq"`` (the code's table, see
            :class:`~alignkit_models.layers.transformer.CrossModalEncoder`).
        independent_key_value_dropout: separate embedding-dropout draws for the keys and values of
            the cross-modal transformers (the code).
        decoupling_bias: biases in the private/common encoders and the decoders (False: the code's
            bias-free 1x1 convolutions).
        homo_pooling: what the homogeneous heads and the margin projections read: ``"mean"`` (the
            masked time mean of ``c_m``, width ``d``) or ``"flatten"`` (the code: ``c_m``
            flattened time-major, width ``T'_m d``, padded steps zeroed; the head's hidden width is
            ``d``). ``"flatten"`` fixes the input lengths.
        sequence_lengths: the fixed input length ``T_m``, one or one per modality; required by
            ``homo_pooling="flatten"`` and not allowed otherwise (``T'_m`` is ``T_m - k_m + 1``
            with ``"valid"`` projection padding, else ``T_m``).
        gd_homo_repr: homogeneous GD node representation: the first Linear of the homogeneous head
            (``"linear"``) or its ReLU (``"relu"``: the code, whose ReLU is in place).
        gd_hetero_repr: heterogeneous GD node representation: the memory stream's last step, the
            head's input (``"stream"``), or the head's residual output (``"head"``: the code).
        gd_repr_weighting: see :class:`GraphDistillation` (``"batch_mean"``: the code).
        ort_loss: ``"abs"`` (``|cos|`` per sample of the flattened sequences) or ``"batch_relu"``
            (:func:`batch_cosine_overlap`: the code under PyTorch 1.9).
        margin_reduction: see :func:`margin_loss` (``"anchors"``: the code).
        homo_code_dim, hetero_code_dim: half-widths of the GD node codes (DMD: 32 and 16).
        gd_alpha: GD softmax factor.
        gd_weight: weight of each GD unit (0.05).
        decoupling_weight: weight of the decoupling terms (0.1).
        margin_ort_weight: inner weight of ``L_margin + L_ort`` (0.1).
        margin: margin scale (0.15).
        repr_weight, prior_weight: GD representation and prior-regulariser weights (10, 10).
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
        n_layers: int = 2,
        memory_layers: int | None = None,
        kernel_size: int | Mapping[str, int] = 1,
        projection_padding: Literal["same", "valid"] = "same",
        identity_same_width: bool = False,
        padding: Padding = "masked",
        text_dropout: float = 0.1,
        attn_dropout: float | Mapping[str, float] = 0.1,
        memory_attn_dropout: float | None = None,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.1,
        out_dropout: float = 0.1,
        future_mask: bool = False,
        position_table: Literal["vaswani", "fairseq"] = "vaswani",
        independent_key_value_dropout: bool = False,
        decoupling_bias: bool = True,
        homo_pooling: Literal["mean", "flatten"] = "mean",
        sequence_lengths: int | Mapping[str, int] | None = None,
        gd_homo_repr: Literal["linear", "relu"] = "linear",
        gd_hetero_repr: Literal["stream", "head"] = "stream",
        gd_repr_weighting: Literal["per_sample", "batch_mean"] = "per_sample",
        ort_loss: Literal["abs", "batch_relu"] = "abs",
        margin_reduction: Literal["triples", "anchors"] = "triples",
        homo_code_dim: int = 32,
        hetero_code_dim: int = 16,
        gd_alpha: float = 1 / 8,
        gd_weight: float = 0.05,
        decoupling_weight: float = 0.1,
        margin_ort_weight: float = 0.1,
        margin: float = 0.15,
        repr_weight: float = 10.0,
        prior_weight: float = 10.0,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        mods = self.modalities
        if len(mods) < 2:
            raise ValueError(f"input_dims: DMD needs at least 2 modalities, received {list(mods)}")
        self.gd_weight, self.decoupling_weight, self.margin_ort_weight = gd_weight, decoupling_weight, margin_ort_weight
        self.margin, self.repr_weight, self.prior_weight = margin, repr_weight, prior_weight
        choices = {
            "projection_padding": (projection_padding, ("same", "valid")),
            "position_table": (position_table, ("vaswani", "fairseq")),
            "homo_pooling": (homo_pooling, ("mean", "flatten")),
            "gd_homo_repr": (gd_homo_repr, ("linear", "relu")),
            "gd_hetero_repr": (gd_hetero_repr, ("stream", "head")),
            "gd_repr_weighting": (gd_repr_weighting, ("per_sample", "batch_mean")),
            "ort_loss": (ort_loss, ("abs", "batch_relu")),
            "margin_reduction": (margin_reduction, ("triples", "anchors")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {list(allowed)}, received {value!r}")
        flags = {
            "identity_same_width": identity_same_width,
            "independent_key_value_dropout": independent_key_value_dropout,
            "decoupling_bias": decoupling_bias,
        }
        for name, flag in flags.items():
            if not isinstance(flag, bool):
                raise ValueError(f"{name}: expected True or False, received {flag!r}")
        check_padding(padding)
        self.padding = padding
        self.projection_padding = projection_padding
        self.homo_pooling, self.gd_homo_repr, self.gd_hetero_repr = homo_pooling, gd_homo_repr, gd_hetero_repr
        self.ort_loss, self.margin_reduction = ort_loss, margin_reduction
        kernels = per_modality(kernel_size, mods, "kernel_size", default=None)
        for m, k in kernels.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 1 or (projection_padding == "same" and k % 2 == 0):
                raise ValueError(f"kernel_size: expected a positive integer (odd with 'same' padding) for {m!r}, received {k!r}")
        identity = {m for m, d_m in self.input_dims.items() if identity_same_width and d_m == dim}
        self.kernel_sizes = {m: 1 if m in identity else kernels[m] for m in mods}
        self.sequence_lengths: dict[str, int] | None = None
        self.flat_steps: dict[str, int] = {}
        if homo_pooling == "flatten":
            if sequence_lengths is None:
                raise ValueError("sequence_lengths: required with homo_pooling='flatten' (the fixed input length per modality)")
            lengths = per_modality(sequence_lengths, mods, "sequence_lengths", default=None)
            self.sequence_lengths = {m: positive_int(lengths[m], f"sequence_lengths[{m!r}]") for m in mods}
            for m, length in self.sequence_lengths.items():
                shift = self.kernel_sizes[m] - 1 if projection_padding == "valid" else 0
                if length <= shift:
                    raise ValueError(f"sequence_lengths: {m!r} has {length} steps, not more than kernel_size - 1 = {shift}")
                self.flat_steps[m] = length - shift
        elif sequence_lengths is not None:
            raise ValueError(f"sequence_lengths: only used with homo_pooling='flatten', received {sequence_lengths!r}")
        if isinstance(attn_dropout, Mapping):
            if set(attn_dropout) != set(mods):
                raise ValueError(f"attn_dropout: expected one rate per modality {list(mods)}, received {sorted(attn_dropout)}")
            if memory_attn_dropout is None:
                raise ValueError("memory_attn_dropout: required when attn_dropout gives one rate per modality")
        attn_rates = per_modality(attn_dropout, mods, "attn_dropout")
        transformer = {
            "relu_dropout": relu_dropout,
            "res_dropout": res_dropout,
            "embed_dropout": embed_dropout,
            "future_mask": future_mask,
            "position_table": position_table,
        }
        self.text_dropout = nn.Dropout(text_dropout)
        self.projections = nn.ModuleDict(
            {
                m: TemporalProjection(d, dim, self.kernel_sizes[m], projection_padding)
                for m, d in self.input_dims.items()
                if m not in identity
            }
        )
        # decoupling: 1x1 maps = per-step Linear layers
        self.private = nn.ModuleDict({m: nn.Linear(dim, dim, bias=decoupling_bias) for m in mods})
        self.common = nn.Linear(dim, dim, bias=decoupling_bias)
        self.decoders = nn.ModuleDict({m: nn.Linear(2 * dim, dim, bias=decoupling_bias) for m in mods})
        # homogeneous branch
        pooled_dims = {m: self.flat_steps[m] * dim if homo_pooling == "flatten" else dim for m in mods}
        self.homo_heads = nn.ModuleDict(
            {m: ResidualHead(pooled_dims[m], self.output_dim, out_dropout, hidden_dim=dim) for m in mods}
        )
        self.margin_projections = nn.ModuleDict({m: nn.Linear(pooled_dims[m], dim) for m in mods})
        self.common_encoders = nn.ModuleDict(
            {m: CrossModalEncoder(dim, n_heads, n_layers, attn_dropout=attn_rates[m], **transformer) for m in mods}
        )
        common_dim = len(mods) * dim
        self.common_head = ResidualHead(common_dim, self.output_dim, out_dropout)
        # heterogeneous branch
        self.crossmodal = PairwiseCrossModal(
            mods,
            dim,
            n_heads,
            n_layers,
            max(n_layers, 3) if memory_layers is None else memory_layers,
            attn_dropout=attn_dropout,
            memory_attn_dropout=memory_attn_dropout,
            independent_key_value_dropout=independent_key_value_dropout,
            **transformer,
        )
        hetero_dim = self.crossmodal.output_dim
        self.hetero_heads = nn.ModuleDict({m: ResidualHead(hetero_dim, self.output_dim, out_dropout) for m in mods})
        # fusion of the sigmoid-gated streams
        self.gates = nn.ModuleDict({m: nn.Linear(hetero_dim, hetero_dim) for m in mods})
        self.common_gate = nn.Linear(common_dim, common_dim)
        self.fusion_head = ResidualHead(len(mods) * hetero_dim + common_dim, self.output_dim, out_dropout)
        self.gd_homo = GraphDistillation(
            mods, self.output_dim, dim, homo_code_dim, gd_alpha, favoured_edges(mods, heterogeneous=False)
        )
        self.gd_hetero = GraphDistillation(
            mods,
            self.output_dim,
            hetero_dim,
            hetero_code_dim,
            gd_alpha,
            favoured_edges(mods, heterogeneous=True),
            repr_weighting=gd_repr_weighting,
        )

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        input_masks = padding_masks(self.check_inputs(features, masks), self.padding)
        mods = self.modalities
        projected, masks = {}, {}
        for m in mods:
            steps = features[m].shape[1]
            if self.sequence_lengths is not None and steps != self.sequence_lengths[m]:
                raise ValueError(
                    f"features[{m!r}]: {steps} steps, but homo_pooling='flatten' fixes sequence_lengths[{m!r}] = {self.sequence_lengths[m]}"
                )
            # "valid" padding: output step t reads input steps t .. t + k - 1.
            shift = self.kernel_sizes[m] - 1 if self.projection_padding == "valid" else 0
            if shift >= steps:
                raise ValueError(f"features[{m!r}]: {steps} steps, fewer than kernel_size {self.kernel_sizes[m]} with 'valid' padding")
            x = zero_padding(features[m], input_masks[m])
            x = self.text_dropout(x) if m == "text" else x
            projected[m] = self.projections[m](x) if m in self.projections else x
            masks[m] = input_masks[m][:, shift:]
        private = {m: self.private[m](projected[m]) for m in mods}
        common = {m: self.common(projected[m]) for m in mods}

        if self.homo_pooling == "mean":
            pooled = {m: masked_mean(common[m], masks[m]) for m in mods}
        else:  # time-major: step t occupies columns t d .. (t + 1) d - 1
            pooled = {m: zero_padding(common[m], masks[m]).flatten(1) for m in mods}
        common_last = torch.cat(
            [last_real_step(self.common_encoders[m](common[m], source_mask=masks[m]), masks[m]) for m in mods], -1
        )
        hetero = self.crossmodal(private, masks)
        gated = [torch.sigmoid(self.gates[m](hetero[m])) for m in mods] + [torch.sigmoid(self.common_gate(common_last))]
        fused = torch.cat(gated, -1)
        output = ModelOutput(self.head_output(self.fusion_head(fused)), representation=fused)
        if not (self.training and labels is not None):
            return output

        homo_logits = {m: self.homo_heads[m](pooled[m]) for m in mods}
        homo_reprs = {m: self.homo_heads[m].proj1(pooled[m]) for m in mods}
        if self.gd_homo_repr == "relu":
            homo_reprs = {m: F.relu(r) for m, r in homo_reprs.items()}
        hetero_hidden = {m: self.hetero_heads[m].hidden(hetero[m]) for m in mods}
        hetero_logits = {m: self.hetero_heads[m].out(hetero_hidden[m]) for m in mods}
        auxiliary_outputs = [*homo_logits.values(), *hetero_logits.values(), self.common_head(common_last)]
        aux_task = torch.stack([self.task_loss(self.head_output(z), labels) for z in auxiliary_outputs]).sum()
        homo = self.gd_homo(homo_logits, homo_reprs)
        hetero_gd = self.gd_hetero(hetero_logits, hetero_hidden if self.gd_hetero_repr == "head" else hetero)
        decoupling = self._decoupling_terms(projected, private, common, pooled, masks, labels)
        output.components.update(
            {
                "aux_task": aux_task,
                "gd_homo_logit": homo["logit"],
                "gd_homo_reg": homo["reg"],
                "gd_hetero_logit": hetero_gd["logit"],
                "gd_hetero_repr": hetero_gd["repr"],
                "gd_hetero_reg": hetero_gd["reg"],
                **decoupling,
            }
        )
        output.aux_losses.update(
            {
                "aux_task": aux_task,
                "graph_distillation": self.gd_weight
                * (
                    homo["logit"]
                    + self.prior_weight * homo["reg"]
                    + hetero_gd["logit"]
                    + self.repr_weight * hetero_gd["repr"]
                    + self.prior_weight * hetero_gd["reg"]
                ),
                "decoupling": self.decoupling_weight
                * (
                    decoupling["cycle"]
                    + decoupling["recon"]
                    + self.margin_ort_weight * (decoupling["margin"] + decoupling["ort"])
                ),
            }
        )
        return output

    def _decoupling_terms(
        self,
        projected: Mapping[str, Tensor],
        private: Mapping[str, Tensor],
        common: Mapping[str, Tensor],
        pooled: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        labels: Tensor,
    ) -> dict[str, Tensor]:
        """Unweighted ``recon``, ``cycle``, ``margin`` and ``ort`` terms; ``pooled[m]`` is what the
        margin projections read (``(B, d)`` or ``(B, T'_m d)``), ``masks`` the projected steps'."""
        mods = self.modalities
        recon, cycle = [], []
        for m in mods:
            rebuilt = self.decoders[m](torch.cat([private[m], common[m]], -1))
            recon.append(masked_mse(rebuilt, projected[m], masks[m]))
            cycle.append(masked_mse(self.private[m](rebuilt), private[m], masks[m]))
        codes = torch.cat([self.margin_projections[m](pooled[m]) for m in mods])  # (M B, d), modality-major
        code_labels = labels.reshape(-1).repeat(len(mods))
        if self.task == "classification":
            margins = torch.full((len(codes), len(codes)), self.margin, device=codes.device)
        else:
            y = code_labels.to(codes.dtype)
            margins = self.margin * (y.unsqueeze(1) - y.unsqueeze(0)).abs()
        if self.ort_loss == "abs":
            ort = decoupling_loss(
                [private[m] for m in mods],
                [common[m] for m in mods],
                mode="abs",
                granularity="sequence",
                masks=[masks[m] for m in mods],
            )
        else:
            ort = torch.stack([batch_cosine_overlap(private[m], common[m], masks[m]) for m in mods]).sum()
        return {
            "recon": torch.stack(recon).sum(),
            "cycle": torch.stack(cycle).sum(),
            "margin": margin_loss(codes, code_labels, margins, self.margin_reduction),
            "ort": ort,
        }
