"""DecAlign: hierarchical cross-modal alignment by decoupled multimodal representations.

Paper: Chengxuan Qian, Shuo Xing, Shawn Li, Yue Zhao, Zhengzhong Tu, "DecAlign: Hierarchical
Cross-Modal Alignment for Decoupled Multimodal Representation Learning", 2025 (arXiv 2503.11892),
section 3 and Fig. 3; by default the network and objective of the authors' public code
(:mod:`alignkit_models.models.decalign.variants`). Assembled from the public alignkit losses::

    X_m --(BERT for token-id text)--(input dropout)--Conv1d--> X~_m  (B, T_m', d)    section 3.1
    F_uni^m = E_uni^m(X~_m),  F_com^m = E_com(X~_m)            decoupling_loss  eq. 1
    heterogeneity on pooled F_uni: GMM prototypes + multi-marginal OT + calibration  eqs. 2-9
    homogeneity on pooled F_com (through a distribution encoder): moments + MMD     eqs. 10-12
    cross-modal transformers on the unique streams; pooled outputs
    [attended streams ; pooled common streams] -> dropout -> linear head           section 3.4
    L = L_task + L_dec + alpha L_hete + beta L_homo (+ contrastive, + sign term)

Any number of modalities ``M >= 2``; for the authors' three (text, audio, vision) with
``variant="official"`` this is their model's function. Where the two variants differ, see
:data:`~alignkit_models.models.decalign.variants.OPTIONS`.

The alignment terms are computed in training mode, and in evaluation mode when ``labels`` are
passed (``model(features, masks, labels)`` reports them as ``components``, as the authors' model
does on every call); prediction alone (``labels=None`` in evaluation) skips their cost.

Ablations of the paper's tables 3-4: ``use_decoupling`` (MFD: off means one encoder per
modality feeds both streams and no ``L_dec``), ``use_hete``, ``use_homo``, ``use_proto_ot`` (the
OT + calibration terms inside ``L_hete``), ``use_transformer``, ``use_sem``, ``use_mmd``;
``contrastive_weight`` is "CT" of table 4.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import alignkit
from alignkit.decoupling import masked_mean
from alignkit_models.layers import CrossModalEncoder, TemporalProjection, supervised_contrastive_loss
from alignkit_models.layers.dropout import make_dropout
from alignkit_models.layers.options import per_modality
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.models.decalign.variants import Variant, variant_options
from alignkit_models.registry import register_model

PerModality = float | Mapping[str, float]


def make_feature_encoder(dim: int, kind: str) -> nn.Module:
    """The per-step unique/common encoder: a linear map without bias (the authors' 1x1 Conv1d),
    or a linear map with bias followed by GELU."""
    if kind == "linear":
        return nn.Linear(dim, dim, bias=False)
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU())


class DistributionEncoder(nn.Sequential):
    """``Linear(d, d) - ReLU - Dropout - Linear(d, d')`` on pooled common features ``(B, d)``."""

    def __init__(self, dim: int, out_dim: int, dropout: float, fast_dropout: bool) -> None:
        super().__init__(nn.Linear(dim, dim), nn.ReLU(), make_dropout(dropout, fast_dropout), nn.Linear(dim, out_dim))


@register_model(
    "decalign",
    summary="DecAlign: decoupled unique/common features, prototype-guided multi-marginal OT, moments + MMD, cross-modal transformers",
    modalities="any M >= 2",
    fidelity="faithful",
    notes="default = the authors' code (value-for-value on three modalities, loads their checkpoints); variant='alignkit' for our version",
)
class DecAlign(MultimodalModel):
    """The DecAlign network (paper Fig. 3); see the module docstring for the pipeline.

    Args:
        input_dims: feature width per modality (for token-id text with ``text_encoder``: 3).
        task, n_classes, regression_loss: see :class:`MultimodalModel`.
        variant: ``"official"`` (the authors' code) or ``"alignkit"``: the starting value of
            every option below that is left at None. The options, their values in each variant
            and their meaning: :data:`alignkit_models.models.decalign.variants.OPTIONS`.
        text_encoder: path of a local BERT folder; the ``"text"`` modality is then token ids
            ``(B, L, 3)`` (ids, attention mask, segment ids), encoded by a fine-tuned BERT.
        text_encoder_finetune: train BERT's weights (else it runs frozen).
        use_*: ablation switches (module docstring).
        **options: any option of the variant table, e.g. ``dim=32, attn_dropout={"text": 0.2}``.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        variant: Variant = "official",
        text_encoder: str | None = None,
        text_encoder_finetune: bool = True,
        use_decoupling: bool = True,
        use_hete: bool = True,
        use_homo: bool = True,
        use_proto_ot: bool = True,
        use_transformer: bool = True,
        use_sem: bool = True,
        use_mmd: bool = True,
        dim: int | None = None,
        n_heads: int | None = None,
        n_layers: int | None = None,
        kernel_size: int | Mapping[str, int] | None = None,
        projection_padding: Literal["valid", "same"] | None = None,
        project_equal_width: bool | None = None,
        feature_encoder: Literal["linear", "linear_gelu"] | None = None,
        cross_modal: Literal["joint", "pairwise"] | None = None,
        transformer_norm: Literal["post", "pre"] | None = None,
        positional_encoding: bool | None = None,
        feedforward_init: Literal["torch", "xavier"] | None = None,
        independent_key_value_dropout: bool | None = None,
        fast_dropout: bool | None = None,
        attn_dropout: PerModality | None = None,
        relu_dropout: float | None = None,
        res_dropout: float | None = None,
        embed_dropout: float | None = None,
        output_dropout: float | None = None,
        input_dropout: PerModality | None = None,
        use_masks: bool | None = None,
        common_fusion: Literal["concat", "mean"] | None = None,
        distribution_encoder: bool | None = None,
        distribution_dim: int | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        decoupling_mode: Literal["squared", "abs", "signed"] | None = None,
        decoupling_reduction: Literal["mean", "sum"] | None = None,
        n_components: int | None = None,
        covariance_type: Literal["diag", "full"] | None = None,
        gmm_iterations: int | None = None,
        gmm_init: Literal["spaced", "kmeans++"] | None = None,
        gmm_momentum: float | None = None,
        gmm_regularization: Literal["clamp", "add"] | None = None,
        gmm_reg_covar: float | None = None,
        gmm_grad: Literal["unrolled", "last_step"] | None = None,
        ot_marginals: Literal["responsibilities", "weights"] | None = None,
        ot_epsilon: float | None = None,
        ot_relative_epsilon: bool | None = None,
        ot_objective: Literal["regularized", "transport"] | None = None,
        ot_iterations: int | None = None,
        ot_tol: float | None = None,
        ot_grad: Literal["unrolled", "envelope"] | None = None,
        ot_kernel_floor: float | None = None,
        ot_scaling_guard: float | None = None,
        cost_reduction: Literal["mean", "sum"] | None = None,
        bures_eps: float | None = None,
        matching: Literal["index", "plan"] | None = None,
        moment_reduction: Literal["mean", "sum"] | None = None,
        skewness_variance_floor: float | None = None,
        mmd_sigma: float | list[float] | Literal["median"] | None = None,
        contrastive_weight: float | None = None,
        contrastive_temperature: float | None = None,
        binary_task_weight: float | None = None,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        # Every option left at None takes the variant's value (locals() holds the arguments here).
        given = {k: v for k, v in locals().items() if k in _OPTION_ARGUMENTS and v is not None}
        o = {**variant_options(variant), **given}
        self.variant = variant
        self.options = o
        modalities = self.modalities
        if len(modalities) < 2:
            raise ValueError(f"input_dims: DecAlign needs at least 2 modalities, received {len(modalities)}")
        for name, choices in _CHOICES.items():
            if o[name] not in choices:
                raise ValueError(f"{name}: expected one of {choices}, received {o[name]!r}")
        for name in ("alpha", "beta", "contrastive_weight", "binary_task_weight"):
            if not o[name] >= 0:
                raise ValueError(f"{name}: expected a number >= 0, received {o[name]!r}")
        dim = self.dim = int(o["dim"])
        self.n_components = int(o["n_components"])
        self.use_decoupling = use_decoupling
        self.use_transformer = use_transformer
        self.use_masks = bool(o["use_masks"])
        self.common_fusion = o["common_fusion"]
        self.contrastive_weight = float(o["contrastive_weight"])
        self.contrastive_temperature = float(o["contrastive_temperature"])
        self.binary_task_weight = float(o["binary_task_weight"])
        if self.binary_task_weight > 0 and task != "regression":
            raise ValueError("binary_task_weight: applies to regression only")
        fast = bool(o["fast_dropout"])

        self.text_encoder = None
        widths = dict(self.input_dims)
        if text_encoder is not None:
            if "text" not in modalities:
                raise ValueError(f"text_encoder: needs a 'text' modality, received modalities {list(modalities)}")
            from alignkit_models.layers.text import BertTextEncoder

            self.text_encoder = BertTextEncoder(text_encoder, finetune=text_encoder_finetune)
            widths["text"] = self.text_encoder.hidden_size
        self.input_dropout = nn.ModuleDict(
            {
                m: make_dropout(p, fast)
                for m, p in per_modality(o["input_dropout"], modalities, "input_dropout", strict="input_dropout" in given).items()
                if p > 0
            }
        )
        kernels = per_modality(o["kernel_size"], modalities, "kernel_size", default=1, strict="kernel_size" in given)
        self.projections = nn.ModuleDict(
            {
                m: TemporalProjection(widths[m], dim, int(kernels[m]), o["projection_padding"])
                for m in modalities
                if o["project_equal_width"] or widths[m] != dim
            }
        )
        self.unique_encoders = nn.ModuleDict({m: make_feature_encoder(dim, o["feature_encoder"]) for m in modalities})
        self.common_encoder = make_feature_encoder(dim, o["feature_encoder"]) if use_decoupling else None

        self.cross_modal_mode = o["cross_modal"]
        attn_dropout = per_modality(o["attn_dropout"], modalities, "attn_dropout", strict="attn_dropout" in given)
        encoder_options = dict(
            relu_dropout=o["relu_dropout"],
            res_dropout=o["res_dropout"],
            embed_dropout=o["embed_dropout"],
            norm=o["transformer_norm"],
            positions=o["positional_encoding"],
            independent_key_value_dropout=o["independent_key_value_dropout"],
            feedforward_init=o["feedforward_init"],
            fast_dropout=fast,
        )
        sources = {t: [s for s in modalities if s != t] for t in modalities}
        names = (
            {f"{t}<-{s}": t for t in modalities for s in sources[t]}
            if self.cross_modal_mode == "pairwise"
            else {f"{t}<-rest": t for t in modalities}
        )
        self.cross_modal = nn.ModuleDict(
            {
                name: CrossModalEncoder(dim, int(o["n_heads"]), int(o["n_layers"]), attn_dropout=attn_dropout[t], **encoder_options)
                for name, t in names.items()
            }
            if use_transformer
            else {}
        )
        streams_per_target = len(modalities) - 1 if self.cross_modal_mode == "pairwise" and use_transformer else 1
        common_width = len(modalities) * dim if self.common_fusion == "concat" else dim
        self.fused_dim = len(modalities) * streams_per_target * dim + common_width
        distribution_dim = o["distribution_dim"] or dim
        self.distribution_encoders = nn.ModuleDict(
            {m: DistributionEncoder(dim, distribution_dim, o["output_dropout"], fast) for m in modalities}
            if o["distribution_encoder"]
            else {}
        )
        # Layers are created in the authors' order (distribution encoders before the head), so
        # that a seed draws their initial weights when every modality is projected.
        self.output_dropout = make_dropout(o["output_dropout"], fast)
        self.head = nn.Linear(self.fused_dim, self.output_dim)
        self.alignment = alignkit.DecAlignLoss(
            len(modalities),
            alpha=o["alpha"],
            beta=o["beta"],
            decoupling=alignkit.DecouplingLoss(mode=o["decoupling_mode"], reduction=o["decoupling_reduction"]),
            heterogeneity=alignkit.HeterogeneityLoss(
                len(modalities),
                prototypes=alignkit.GMMPrototypes(
                    self.n_components,
                    covariance_type=o["covariance_type"],
                    n_iter=int(o["gmm_iterations"]),
                    init=o["gmm_init"],
                    reg_covar=o["gmm_reg_covar"],
                    grad=o["gmm_grad"],
                    momentum=o["gmm_momentum"] or None,  # 0 turns the running prototypes off
                    regularization=o["gmm_regularization"],
                ),
                transport=alignkit.PrototypeOTLoss(
                    epsilon=o["ot_epsilon"],
                    relative_epsilon=o["ot_relative_epsilon"],
                    max_iter=int(o["ot_iterations"]),
                    tol=o["ot_tol"],
                    grad=o["ot_grad"],
                    matching=o["matching"],
                    objective=o["ot_objective"],
                    marginals=o["ot_marginals"],
                    cost_reduction=o["cost_reduction"],
                    bures_eps=o["bures_eps"],
                    kernel_floor=o["ot_kernel_floor"],
                    scaling_guard=o["ot_scaling_guard"],
                ),
            ),
            homogeneity=alignkit.HomogeneityLoss(
                moments=alignkit.MomentMatchingLoss(
                    reduction=o["moment_reduction"], skewness_variance_floor=o["skewness_variance_floor"] or None
                ),
                mmd=alignkit.MMDLoss(sigma=o["mmd_sigma"]),
                use_sem=use_sem,
                use_mmd=use_mmd,
            ),
            use_decoupling=use_decoupling,
            use_hete=use_hete and use_proto_ot,  # L_hete is the prototype OT (+ calibration) term
            use_homo=use_homo and (use_sem or use_mmd),
            sample_granularity="pooled",
        )

    # ------------------------------------------------------------------ forward pieces
    def project(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``X~_m (B, T_m', d)`` per modality, and the masks cut to the projected lengths."""
        projected, cut_masks = {}, {}
        for m in self.modalities:
            x = features[m]
            if m == "text" and self.text_encoder is not None:
                x = self.text_encoder(x)
            if m in self.input_dropout:
                x = self.input_dropout[m](x)
            x = self.projections[m](x) if m in self.projections else x
            projected[m] = x
            cut_masks[m] = masks[m][:, : x.shape[1]]
        return projected, cut_masks

    def encode(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Unique and common feature sequences ``(B, T_m', d)`` per modality (section 3.1), and masks."""
        projected, masks = self.project(features, masks)
        unique, common = {}, {}
        for m in self.modalities:
            unique[m] = self.unique_encoders[m](projected[m])
            common[m] = self.common_encoder(projected[m]) if self.common_encoder is not None else unique[m]
        return unique, common, masks

    def decoupled_features(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Pooled unique and common features ``(B, d)`` per modality: the streams the alignment
        losses act on (the common ones before any distribution encoder), pooled as the model pools."""
        masks = self.check_inputs(features, masks)
        unique, common, masks = self.encode(features, masks)
        used = {m: masks[m] if self.use_masks else None for m in self.modalities}
        return {m: masked_mean(unique[m], used[m]) for m in self.modalities}, {m: masked_mean(common[m], used[m]) for m in self.modalities}

    def fuse(self, unique: Mapping[str, Tensor], common: Mapping[str, Tensor], masks: Mapping[str, Tensor | None]) -> Tensor:
        """``[pooled cross-modal outputs per target ; pooled common features]``: ``(B, fused_dim)``."""
        parts = []
        for target in self.modalities:
            if not self.use_transformer:
                parts.append(masked_mean(unique[target], masks[target]))
                continue
            sources = [s for s in self.modalities if s != target]
            if self.cross_modal_mode == "joint":
                # All other modalities' steps form one source sequence; masks keep padding out.
                source = torch.cat([unique[s] for s in sources], dim=1)
                source_mask = None if masks[target] is None else torch.cat([masks[s] for s in sources], dim=1)
                attended = self.cross_modal[f"{target}<-rest"](unique[target], source, source_mask=source_mask)
                parts.append(masked_mean(attended, masks[target]))
                continue
            for source in sources:
                attended = self.cross_modal[f"{target}<-{source}"](unique[target], unique[source], source_mask=masks[source])
                parts.append(masked_mean(attended, masks[target]))
        pooled_common = [masked_mean(common[m], masks[m]) for m in self.modalities]
        if self.common_fusion == "concat":
            return torch.cat([*parts, *pooled_common], dim=-1)
        return torch.cat([*parts, torch.stack(pooled_common).mean(0)], dim=-1)

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = self.check_inputs(features, masks)
        unique, common, masks = self.encode(features, masks)
        # Without masks every step counts, padding included (the authors' pooling and attention).
        used: dict[str, Tensor | None] = dict(masks) if self.use_masks else dict.fromkeys(self.modalities)
        order = self.modalities
        with_losses = self.training or labels is not None
        homogeneity_features = None
        if with_losses and self.distribution_encoders:
            # Before the transformers, as in the authors' code, so that nn.Dropout draws their masks.
            homogeneity_features = [self.distribution_encoders[m](masked_mean(common[m], used[m])) for m in order]
        fused = self.fuse(unique, common, used)
        prediction = self.head_output(self.head(self.output_dropout(fused)))
        output = ModelOutput(prediction, representation=fused)
        if with_losses:
            mask_list = [used[m] for m in order]
            # The network's own activations: skip the per-call NaN/Inf scans (a host sync each).
            with alignkit.input_checks(False):
                alignment = self.alignment(
                    [unique[m] for m in order],
                    [common[m] for m in order],
                    masks=mask_list,
                    skip=self._parts_to_skip(unique, masks),
                    homogeneity_features=homogeneity_features,
                )
            output.aux_losses["alignment"] = alignment.total
            output.components.update({k: v.detach() for k, v in alignment.components.items()})
            if self.contrastive_weight > 0 and labels is not None:
                contrastive = supervised_contrastive_loss(fused, self.contrastive_classes(labels), self.contrastive_temperature)
                output.aux_losses["contrastive"] = self.contrastive_weight * contrastive
                output.components["contrastive"] = contrastive.detach()
        return output

    def task_loss(self, prediction: Tensor, labels: Tensor) -> Tensor:
        """The task loss, plus ``binary_task_weight`` times the binary cross-entropy of the
        prediction (as a logit) against the sign of the non-zero labels (the authors' CH-SIMS term)."""
        loss = super().task_loss(prediction, labels)
        if self.binary_task_weight > 0:
            flat, target = prediction.reshape(-1), labels.to(prediction.dtype).reshape(-1)
            non_zero = target != 0
            if bool(non_zero.any()):
                binary = F.binary_cross_entropy_with_logits(flat[non_zero], (target[non_zero] > 0).to(flat.dtype))
                loss = loss + self.binary_task_weight * binary
        return loss

    def _parts_to_skip(self, unique: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> set[str]:
        """k-means++ needs at least ``K`` samples per modality: a smaller batch (a user's last
        batch, say) then trains without ``L_hete`` rather than failing. Evenly spaced starting
        rows work for any batch (the authors' rule repeats rows)."""
        if self.alignment.heterogeneity.prototypes[0].init != "kmeans++":
            return set()
        fewest = next(iter(unique.values())).shape[0]
        return {"hete"} if fewest < self.n_components else set()

    def contrastive_classes(self, labels: Tensor) -> Tensor:
        """Classes for the contrastive term: the labels, or for regression the sentiment rounded
        to the seven integers of [-3, 3] (the authors' rule)."""
        if self.task == "classification":
            return labels.long()
        return torch.round(labels.float().clamp(-3.0, 3.0)).long() + 3


_OPTION_ARGUMENTS = frozenset(variant_options("official"))
_CHOICES: dict[str, tuple[Any, ...]] = {
    "projection_padding": ("valid", "same"),
    "feature_encoder": ("linear", "linear_gelu"),
    "cross_modal": ("joint", "pairwise"),
    "transformer_norm": ("post", "pre"),
    "feedforward_init": ("torch", "xavier"),
    "common_fusion": ("concat", "mean"),
    "decoupling_reduction": ("mean", "sum"),
    "gmm_init": ("spaced", "kmeans++"),
    "gmm_regularization": ("clamp", "add"),
    "ot_marginals": ("responsibilities", "weights"),
    "ot_objective": ("regularized", "transport"),
    "cost_reduction": ("mean", "sum"),
    "matching": ("index", "plan"),
    "moment_reduction": ("mean", "sum"),
}
