"""PMR: a message hub exchanges information with every modality, layer after layer.

Lv, Chen, Huang, Duan and Lin, "Progressive Modality Reinforcement for Human Multimodal Emotion
Recognition from Unaligned Multimodal Sequences", CVPR 2021, pp. 2554-2562. Built on MulT's
cross-modal transformer (Tsai et al., ACL 2019), for unaligned sequences. What the paper says
(its abstract): a *message hub* exchanges information with each modality; the hub sends a common
message to each modality and reinforces the modality's features by cross-modal attention; in
turn it collects the reinforced features of every modality and uses them to generate a
reinforced common message; repeating this cycle lets the common message and the modalities'
features progressively complement each other; the reinforced features make the prediction.

Sources. The paper's method section could not be read from here (only its abstract and how
later papers cite it), and no code by the authors turned up (no paper list citing it links any,
and searches of public code found none). A public, unofficial re-implementation (a ``PMRModel``
class built on MulT's code; its repository could not be identified) fills in the structure below: the hub starts as the time-concatenation
of the projected modalities; each layer reinforces every modality by cross-modal attention
from the hub (the modality queries, the hub gives keys and values), then lets the hub attend to
each reinforced modality and merges the ``M`` results with per-modality attention weights
``softmax_m(w^T tanh(W c_m))`` and a position-wise feed-forward block; at the end the hub and the
reinforced modalities are concatenated along time and pass a self-attention transformer, then
MulT's residual head. That code is read, not copied, and it departs from any plausible reading of
the paper in places (it creates its merge layers inside ``forward``, so they are never trained;
it merges over the whole flattened batch; one block's weights serve every modality, direction
and layer), so where it does, we chose:

Architecture (``M`` modalities, width ``d``, ``D`` = ``n_layers`` rounds)::

    x_m = Conv1d_m(x_m)                                   (B, T_m, d), padded steps zeroed first
    c   = [x_1; ...; x_M] along time, real steps first     (hub_init="concat")
    for l in 1..D:
        x_m <- CM_{l,m}(x_m <- c)                          hub -> modality (reinforcement)
        c_m  = CM'_{l,m}(c <- x_m)                         modality -> hub (collection)
        a_m  = softmax_m(w_l^T tanh(W_l c_m + b_l))        per sample and hub step
        c   <- sum_m a_m c_m ;  c <- c + FFN_l(LN(c))
    z = SelfAttn([c; x_1; ...; x_M] along time, real steps first)
    h = [last real step of each of the M + 1 segments of z]    (B, (M + 1) d)
    prediction = ResidualHead(h)

``CM(target <- source)`` is :class:`~alignkit_models.layers.CrossModalEncoder` (pre-norm, final
LayerNorm, sinusoidal positions), one layer per unit; every unit has its own weights. No
auxiliary loss. Padded steps of every sequence (and of the hub) are masked out of every
attention and never read out, so unaligned lengths need no alignment.

What the paper leaves open, and what we chose:

- the hub's initial content: the concatenation of all modalities (as in the re-implementation);
  ``hub_init="learned"`` starts it from ``hub_length`` learned vectors instead, lighter for long
  sequences (then a modality first hears the others in round 2);
- the merge weights are computed per sample and per hub step (the re-implementation flattens the
  batch); separate weights per modality, direction and round (it shares one block);
- the readout: the last real step of the hub and of each modality segment after the final
  self-attention, concatenated (MulT reads the last step of each stream; the re-implementation
  reads the last step of the concatenation only, i.e. of the last modality);
- the final transformer's depth (``memory_layers``, default ``D``); no future mask (MulT's causal
  mask has no meaning for a hub that concatenates all modalities);
- ``reinforce=False`` is an ablation, not the method: the hub-to-modality path is replaced by
  self-attention of each modality, so no modality hears the others before the final transformer;
- any number of modalities ``M >= 2``: ``2 M D`` cross-modal units, linear in ``M`` (MulT's
  pairwise design is quadratic); smaller defaults (``d = 32``, 4 heads, 2 rounds) than MulT's
  ``d = 40``, to keep the zoo light.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit_models.layers.heads import ResidualHead
from alignkit_models.layers.options import dropout_rate, positive_int
from alignkit_models.layers.pooling import concat_real_steps
from alignkit_models.layers.projection import TemporalProjection
from alignkit_models.layers.sequence import zero_padding
from alignkit_models.layers.transformer import CrossModalEncoder
from alignkit_models.models.base import ModelOutput, MultimodalModel, Task
from alignkit_models.registry import register_model

HubInit = Literal["concat", "learned"]


def last_real_steps_of_segments(joint: Tensor, masks: list[Tensor]) -> Tensor:
    """Read ``(B, K, d)`` from ``joint (B, sum T_k, d)`` built by
    :func:`~alignkit_models.layers.pooling.concat_real_steps` from ``K`` segments with
    ``masks[k] (B, T_k)``: for each sample, the last real step of each segment (the first real
    step of the joint sequence for a segment without one)."""
    lengths = torch.stack([mask.sum(1) for mask in masks], 1)  # (B, K)
    ends = (lengths.cumsum(1) - 1).clamp_min(0)
    return joint[torch.arange(joint.shape[0], device=joint.device)[:, None], ends]


class MessageMerge(nn.Module):
    """The hub's merge of its ``M`` per-modality messages: ``c = sum_m a_m c_m``, then ``c + FFN(LN(c))``.

    ``a_m = softmax_m(w^T tanh(W c_m + b))`` per sample and hub step; the feed-forward block is
    ``W2 drop(relu(W1 LN(c)))`` (width ``4 d``) with residual dropout, as in MulT's layers.
    """

    def __init__(self, dim: int, relu_dropout: float, res_dropout: float) -> None:
        super().__init__()
        self.score_hidden = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.feedforward = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Dropout(relu_dropout), nn.Linear(4 * dim, dim))
        self.res_dropout = nn.Dropout(res_dropout)

    def weights(self, messages: Tensor) -> Tensor:
        """``messages (B, T_c, M, d)`` -> weights ``(B, T_c, M)``, summing to 1 over the modalities."""
        return self.score(torch.tanh(self.score_hidden(messages))).squeeze(-1).softmax(-1)

    def forward(self, messages: Tensor) -> Tensor:
        """``messages (B, T_c, M, d)`` -> the new common message ``(B, T_c, d)``."""
        common = (self.weights(messages).unsqueeze(-1) * messages).sum(-2)
        return common + self.res_dropout(self.feedforward(self.norm(common)))


@register_model(
    "pmr",
    summary="PMR: a message hub reinforces every modality by cross-modal attention and collects "
    "the reinforced features into a common message, round after round; joint self-attention readout.",
    modalities="any M >= 2 (2 M cross-modal units per round)",
    fidelity="adapted",
    notes="from the abstract and an unofficial re-implementation (paper text and authors' code not "
    "available); hub starts as the time-concatenation of the modalities; merge weights per sample and "
    "hub step; own weights per unit; readout = last real step of hub and each modality; d 32, 4 heads, 2 rounds",
)
class PMR(MultimodalModel):
    """``features[m] (B, T_m, d_m) -> prediction``; ``representation`` is the ``(B, (M + 1) d)`` readout.

    Args:
        input_dims, task, n_classes, regression_loss: see :class:`MultimodalModel`.
        dim: common width ``d``.
        n_heads: attention heads (divides ``d``).
        n_layers: rounds ``D`` of reinforcement (hub -> modalities) and collection (modalities -> hub).
        memory_layers: layers of the final self-attention transformer; None = ``n_layers``.
        kernel_size: temporal Conv1d kernel (odd; the length is kept).
        hub_init: ``"concat"`` (the modalities concatenated along time) or ``"learned"``.
        hub_length: number of learned hub steps (``hub_init="learned"`` only).
        reinforce: the hub-to-modality path; False (an ablation) replaces it by self-attention.
        attn_dropout, relu_dropout, res_dropout, embed_dropout: transformer dropouts.
        out_dropout: dropout in the residual head.
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
        kernel_size: int = 1,
        hub_init: HubInit = "concat",
        hub_length: int = 8,
        reinforce: bool = True,
        attn_dropout: float = 0.1,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.1,
        out_dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dims, task=task, n_classes=n_classes, regression_loss=regression_loss)
        mods = self.modalities
        if len(mods) < 2:
            raise ValueError(f"input_dims: PMR needs at least 2 modalities, received {list(mods)}")
        dim = positive_int(dim, "dim")
        n_heads = positive_int(n_heads, "n_heads")
        if dim % n_heads:
            raise ValueError(f"n_heads: expected a divisor of dim={dim}, received {n_heads}")
        self.n_layers = positive_int(n_layers, "n_layers")
        memory_layers = positive_int(self.n_layers if memory_layers is None else memory_layers, "memory_layers")
        if hub_init not in ("concat", "learned"):
            raise ValueError(f"hub_init: expected 'concat' or 'learned', received {hub_init!r}")
        hub_length = positive_int(hub_length, "hub_length")
        if reinforce is not True and reinforce is not False:
            raise ValueError(f"reinforce: expected True or False, received {reinforce!r}")
        rates = {
            name: dropout_rate(value, name)
            for name, value in (
                ("attn_dropout", attn_dropout),
                ("relu_dropout", relu_dropout),
                ("res_dropout", res_dropout),
                ("embed_dropout", embed_dropout),
                ("out_dropout", out_dropout),
            )
        }
        out_rate = rates.pop("out_dropout")
        self.dim = dim
        self.hub_init: HubInit = hub_init
        self.reinforce = reinforce
        self.projections = nn.ModuleDict({m: TemporalProjection(d_m, dim, kernel_size) for m, d_m in self.input_dims.items()})
        self.hub = nn.Parameter(torch.randn(hub_length, dim)) if hub_init == "learned" else None

        def unit(n: int = 1) -> CrossModalEncoder:
            return CrossModalEncoder(dim, n_heads, n, **rates)

        # rounds[l]["to_modality"][m]: m attends to the hub; rounds[l]["to_hub"][m]: the hub attends to m.
        self.rounds = nn.ModuleList(
            nn.ModuleDict(
                {
                    "to_modality": nn.ModuleDict({m: unit() for m in mods}),
                    "to_hub": nn.ModuleDict({m: unit() for m in mods}),
                    "merge": MessageMerge(dim, rates["relu_dropout"], rates["res_dropout"]),
                }
            )
            for _ in range(self.n_layers)
        )
        self.memory = unit(memory_layers)
        self.head = ResidualHead((len(mods) + 1) * dim, self.output_dim, out_rate)

    def streams(
        self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """The hub and the modality streams after the last round, before the final transformer.

        Returns:
            ``hub (B, T_c, d)``, its mask ``(B, T_c)``, ``{m: (B, T_m, d)}`` and the masks ``{m: (B, T_m)}``.
        """
        masks = self.check_inputs(features, masks)
        mods = self.modalities
        x = {m: self.projections[m](zero_padding(features[m], masks[m])) for m in mods}
        if self.hub is None:
            hub, hub_mask = concat_real_steps([x[m] for m in mods], [masks[m] for m in mods])
        else:
            batch = x[mods[0]].shape[0]
            hub = self.hub.unsqueeze(0).expand(batch, -1, -1)
            hub_mask = torch.ones(batch, self.hub.shape[0], dtype=torch.bool, device=hub.device)
        for layer in self.rounds:
            for m in mods:
                if self.reinforce:
                    x[m] = layer["to_modality"][m](x[m], hub, source_mask=hub_mask)
                else:
                    x[m] = layer["to_modality"][m](x[m], source_mask=masks[m])
            messages = torch.stack([layer["to_hub"][m](hub, x[m], source_mask=masks[m]) for m in mods], -2)
            hub = layer["merge"](messages)
        return hub, hub_mask, x, dict(masks)

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        hub, hub_mask, x, masks = self.streams(features, masks)
        segments = [hub, *(x[m] for m in self.modalities)]
        segment_masks = [hub_mask, *(masks[m] for m in self.modalities)]
        joint, joint_mask = concat_real_steps(segments, segment_masks)
        joint = self.memory(joint, source_mask=joint_mask)
        fused = last_real_steps_of_segments(joint, segment_masks).flatten(1)
        return ModelOutput(self.head_output(self.head(fused)), representation=fused)

