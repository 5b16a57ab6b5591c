"""DecAlign: hierarchical cross-modal alignment by decoupled multimodal representations.

Paper: Chengxuan Qian, Shuo Xing, Shawn Li, Yue Zhao, Zhengzhong Tu, "DecAlign: Hierarchical
Cross-Modal Alignment for Decoupled Multimodal Representation Learning", 2025 (arXiv 2503.11892),
section 3 and Fig. 3. Assembled only from the public alignkit losses::

    X_m --TemporalProjection--> X~_m  (B, T_m, d)                             section 3.1
    F_uni^m = E_uni^m(X~_m),  F_com^m = E_com(X~_m)     decoupling_loss        eq. 1
    heterogeneity on F_uni: GMM prototypes + multi-marginal OT + calibration  eqs. 2-9
    homogeneity on F_com: moment matching + Gaussian MMD                      eqs. 10-12
    cross-modal transformers on the unique streams (target m attends to each source n != m)
    [pooled transformer outputs ; pooled common features] -> linear head      section 3.4
    L = L_task + L_dec + alpha L_hete + beta L_homo  (+ optional supervised contrastive term)

Where this version departs from the paper (or chooses where the paper is silent):

* The unique and common encoders are per-step linear maps followed by GELU (the paper does not
  specify them); the common encoder's weights are shared by every modality.
* ``L_dec`` penalises ``cos^2`` by default (orthogonality) rather than the signed cosine of eq. 1,
  which is minimised by anti-aligned features; ``decoupling_mode="signed"`` restores eq. 1.
* Prototype calibration matches components through the OT plan (``matching="plan"``), not by
  index; ``matching="index"`` gives eq. 9 literally.
* Prototypes and moments use one pooled vector per sequence (``sample_granularity="pooled"``);
  ``"token"`` uses every real time step. GMMs keep running prototypes across batches
  (``gmm_momentum``) so that few EM steps suffice on batches of 32.
* The MMD bandwidth defaults to the median heuristic (the paper does not give ``sigma``).
* OT uses envelope gradients and EM differentiates only its last step by default, which makes
  the alignment terms cheap; both can be switched to fully unrolled gradients.
* Transformer outputs are pooled by a masked mean over the target's real steps (MulT takes the
  last step), so that padded unaligned inputs never influence the prediction.
* Works for any number of modalities ``M >= 2``: ``M (M - 1)`` cross-modal encoders
  (``cross_modal="joint"``: ``M`` encoders, each attending to all other modalities at once).
* No dropout on the attention weights by default (``attn_dropout=0``): on a CPU it was the
  costliest part of a training step (``B x heads x T^2`` random numbers per layer, and it rules
  out the fused attention kernel); residual, feed-forward, embedding and output dropout remain,
  drawn by :class:`~alignkit_models.layers.dropout.FastDropout`.
* Ablations of the paper's tables 3-4: ``use_decoupling`` (MFD: off means one encoder per
  modality feeds both streams and no ``L_dec``), ``use_hete``, ``use_homo``, ``use_proto_ot``
  (the OT + calibration terms inside ``L_hete``), ``use_transformer``, ``use_sem``, ``use_mmd``;
  ``use_contrastive`` adds a supervised contrastive term on the fused representation (off by
  default; "CT" of table 4).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

import alignkit
from alignkit.decoupling import masked_mean
from alignkit_models.layers import CrossModalEncoder, TemporalProjection
from alignkit_models.layers.contrastive import supervised_contrastive_loss
from alignkit_models.layers.dropout import FastDropout
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model


@register_model(
    "decalign",
    summary="DecAlign: decoupled unique/common features, prototype-guided multi-marginal OT, moments + MMD, cross-modal transformers",
    modalities="any M >= 2",
    fidelity="faithful",
    notes="cos^2 decoupling, plan-based calibration, median MMD bandwidth and masked-mean pooling by default; paper forms available as options",
)
class DecAlign(MultimodalModel):
    """The DecAlign network (paper Fig. 3); see the module docstring for the pipeline.

    Args:
        input_dims: feature width per modality.
        task, n_classes, regression_loss: see :class:`MultimodalModel`.
        dim: common width ``d`` after the temporal projection.
        n_heads, n_layers: cross-modal transformer heads and layers.
        kernel_size: temporal Conv1d kernel of the projection (odd).
        n_components: Gaussian prototypes per modality ``K``.
        alpha, beta: weights of ``L_hete`` and ``L_homo`` (paper: 0.05).
        attn_dropout, relu_dropout, res_dropout, embed_dropout: transformer dropouts.
        output_dropout: dropout before the linear head.
        decoupling_mode: ``"squared"`` | ``"abs"`` | ``"signed"`` (eq. 1 literal).
        sample_granularity: ``"pooled"`` | ``"token"`` sample sets for prototypes and moments.
        covariance_type, gmm_iterations, gmm_momentum: prototype options.
        ot_epsilon: entropic regularisation relative to the mean joint cost.
        matching: ``"plan"`` | ``"index"`` (eq. 9 literal).
        mmd_sigma: MMD bandwidth (float, list or ``"median"``).
        use_*: ablation switches (module docstring).
        contrastive_weight, contrastive_temperature: the optional supervised contrastive term.
        cross_modal: ``"pairwise"`` (MulT: one encoder per ordered pair, ``M (M - 1)``) or
            ``"joint"`` (one encoder per target attending to all other modalities' steps at
            once, ``M`` encoders: the same attention pattern at a fraction of the cost for many
            modalities).
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        *,
        task: Task = "regression",
        n_classes: int | None = None,
        regression_loss: Literal["mse", "l1"] = "mse",
        dim: int = 64,
        n_heads: int = 8,
        n_layers: int = 4,
        kernel_size: int = 1,
        n_components: int = 7,
        alpha: float = 0.05,
        beta: float = 0.05,
        attn_dropout: float = 0.0,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.1,
        output_dropout: float = 0.1,
        decoupling_mode: Literal["squared", "abs", "signed"] = "squared",
        sample_granularity: Literal["pooled", "token"] = "pooled",
        covariance_type: Literal["diag", "full"] = "diag",
        gmm_iterations: int = 3,
        gmm_momentum: float | None = 0.1,
        ot_epsilon: float = 0.1,
        matching: Literal["plan", "index"] = "plan",
        mmd_sigma: float | list[float] | Literal["median"] = "median",
        use_decoupling: bool = True,
        use_hete: bool = True,
        use_homo: bool = True,
        use_proto_ot: bool = True,
        use_transformer: bool = True,
        use_sem: bool = True,
        use_mmd: bool = True,
        use_contrastive: bool = False,
        contrastive_weight: float = 0.1,
        contrastive_temperature: float = 0.1,
        cross_modal: Literal["pairwise", "joint"] = "pairwise",
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        n_modalities = len(self.modalities)
        if n_modalities < 2:
            raise ValueError(f"input_dims: DecAlign needs at least 2 modalities, received {n_modalities}")
        self.dim = dim
        self.n_components = n_components
        self.use_decoupling = use_decoupling
        self.use_transformer = use_transformer
        self.use_contrastive = use_contrastive
        self.contrastive_weight = contrastive_weight
        self.contrastive_temperature = contrastive_temperature

        self.projections = nn.ModuleDict({m: TemporalProjection(d, dim, kernel_size) for m, d in self.input_dims.items()})
        self.unique_encoders = nn.ModuleDict({m: nn.Sequential(nn.Linear(dim, dim), nn.GELU()) for m in self.modalities})
        self.common_encoder = nn.Sequential(nn.Linear(dim, dim), nn.GELU()) if use_decoupling else None

        encoder_options = dict(
            attn_dropout=attn_dropout, relu_dropout=relu_dropout, res_dropout=res_dropout, embed_dropout=embed_dropout
        )
        if cross_modal not in ("pairwise", "joint"):
            raise ValueError(f"cross_modal: expected 'pairwise' or 'joint', received {cross_modal!r}")
        self.cross_modal_mode = cross_modal
        sources = {t: [s for s in self.modalities if s != t] for t in self.modalities}
        names = [f"{t}<-{s}" for t in self.modalities for s in sources[t]] if cross_modal == "pairwise" else [f"{t}<-rest" for t in self.modalities]
        self.cross_modal = nn.ModuleDict(
            {name: CrossModalEncoder(dim, n_heads, n_layers, **encoder_options) for name in names} if use_transformer else {}
        )
        streams_per_target = n_modalities - 1 if cross_modal == "pairwise" else 1
        unique_width = streams_per_target * dim if use_transformer else dim
        self.fused_dim = n_modalities * unique_width + dim
        self.output_dropout = FastDropout(output_dropout)
        self.head = nn.Linear(self.fused_dim, self.output_dim)

        self.alignment = alignkit.DecAlignLoss(
            n_modalities,
            alpha=alpha,
            beta=beta,
            decoupling=alignkit.DecouplingLoss(mode=decoupling_mode),
            heterogeneity=alignkit.HeterogeneityLoss(
                n_modalities,
                prototypes=alignkit.GMMPrototypes(
                    n_components, covariance_type=covariance_type, n_iter=gmm_iterations, grad="last_step", momentum=gmm_momentum
                ),
                transport=alignkit.PrototypeOTLoss(epsilon=ot_epsilon, matching=matching),
            ),
            homogeneity=alignkit.HomogeneityLoss(mmd=alignkit.MMDLoss(sigma=mmd_sigma), use_sem=use_sem, use_mmd=use_mmd),
            use_decoupling=use_decoupling,
            use_hete=use_hete and use_proto_ot,  # L_hete is the prototype OT (+ calibration) term
            use_homo=use_homo and (use_sem or use_mmd),
            sample_granularity=sample_granularity,
        )

    def encode(self, features: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Unique and common feature sequences ``(B, T_m, d)`` per modality (section 3.1)."""
        unique, common = {}, {}
        for m in self.modalities:
            projected = self.projections[m](features[m])
            unique[m] = self.unique_encoders[m](projected)
            common[m] = self.common_encoder(projected) if self.common_encoder is not None else unique[m]
        return unique, common

    def fuse(self, unique: Mapping[str, Tensor], common: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> Tensor:
        """``[pooled cross-modal outputs per target ; mean pooled common features]``: ``(B, fused_dim)``."""
        parts = []
        for target in self.modalities:
            if not self.use_transformer:
                parts.append(masked_mean(unique[target], masks[target]))
                continue
            sources = [s for s in self.modalities if s != target]
            if self.cross_modal_mode == "joint":
                # All other modalities' steps form one source sequence; masks keep padding out.
                source = torch.cat([unique[s] for s in sources], dim=1)
                source_mask = torch.cat([masks[s] for s in sources], dim=1)
                attended = self.cross_modal[f"{target}<-rest"](unique[target], source, source_mask=source_mask)
                parts.append(masked_mean(attended, masks[target]))
                continue
            for source in sources:
                attended = self.cross_modal[f"{target}<-{source}"](unique[target], unique[source], source_mask=masks[source])
                parts.append(masked_mean(attended, masks[target]))
        pooled_common = torch.stack([masked_mean(common[m], masks[m]) for m in self.modalities]).mean(0)
        return torch.cat([*parts, pooled_common], dim=-1)

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        masks = self.check_inputs(features, masks)
        unique, common = self.encode(features)
        fused = self.fuse(unique, common, masks)
        prediction = self.head_output(self.head(self.output_dropout(fused)))
        output = ModelOutput(prediction, representation=fused)
        if self.training:
            # The alignment terms shape training only; evaluation skips their cost.
            order = self.modalities
            mask_list = [masks[m] for m in order]
            alignment = self.alignment(
                [unique[m] for m in order], [common[m] for m in order], masks=mask_list, skip=self._parts_to_skip(mask_list)
            )
            output.aux_losses["alignment"] = alignment.total
            output.components.update({k: v.detach() for k, v in alignment.components.items()})
            if self.use_contrastive and labels is not None:
                contrastive = supervised_contrastive_loss(fused, self._contrastive_classes(labels), self.contrastive_temperature)
                output.aux_losses["contrastive"] = self.contrastive_weight * contrastive
                output.components["contrastive"] = contrastive.detach()
        return output

    def _parts_to_skip(self, masks: list[Tensor]) -> set[str]:
        """Prototypes need at least ``K`` samples per modality: a smaller batch (a user's last
        batch, say) trains without ``L_hete`` rather than failing."""
        if self.alignment.sample_granularity == "pooled":
            fewest = masks[0].shape[0]
        else:
            fewest = int(torch.stack([m.sum() for m in masks]).min())
        return {"hete"} if fewest < self.n_components else set()

    def _contrastive_classes(self, labels: Tensor) -> Tensor:
        """Classes for the contrastive term: the labels, or sentiment signs for regression."""
        return labels.long() if self.task == "classification" else torch.sign(labels).long()
