"""MulT's fusion core for M modalities: pairwise cross-modal transformers + memory transformers.

For every ordered pair (target ``m``, source ``n != m``) a :class:`CrossModalEncoder` lets the
target sequence attend to the source sequence; the ``M - 1`` outputs of a target are
concatenated on features, a self-attention "memory" transformer runs over them, and the
target's last real step is read out. With three modalities that is MulT's six cross-modal
transformers and three memory transformers (Tsai et al., ACL 2019); DMD reuses it for its
heterogeneous branch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit_models.layers.pooling import last_real_step
from alignkit_models.layers.transformer import CrossModalEncoder


class PairwiseCrossModal(nn.Module):
    """``{m: (B, T_m, d)} -> {m: (B, (M-1) d)}``: the last real step of each target's memory stream.

    Args:
        modalities: modality names, ``M >= 2``; sources of a target are taken in this order.
        dim: common width ``d`` of the input sequences.
        n_heads: attention heads (divides ``d``, hence also ``(M-1) d``).
        n_layers: layers of each cross-modal transformer.
        memory_layers: layers of each memory transformer (MulT: ``max(n_layers, 3)``).
        attn_dropout: attention dropout of the cross-modal transformers: one rate, or one per
            *source* modality (MulT's ``attn_dropout_a`` for every transformer that attends to
            audio, and so on).
        memory_attn_dropout: attention dropout of the memory transformers; None = ``attn_dropout``
            (which must then be a single rate).
        relu_dropout, res_dropout, embed_dropout, future_mask, positions, position_table,
            independent_key_value_dropout: see :class:`CrossModalEncoder` (``position_table``:
            ``"vaswani"`` or ``"fairseq"``, the table of MulT's released code).
    """

    def __init__(
        self,
        modalities: Sequence[str],
        dim: int,
        n_heads: int,
        n_layers: int,
        memory_layers: int,
        *,
        attn_dropout: float | Mapping[str, float] = 0.1,
        memory_attn_dropout: float | None = None,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.1,
        future_mask: bool = False,
        positions: bool = True,
        position_table: Literal["vaswani", "fairseq"] = "vaswani",
        independent_key_value_dropout: bool = False,
    ) -> None:
        super().__init__()
        if len(modalities) < 2:
            raise ValueError(f"modalities: expected at least 2, received {list(modalities)}")
        self.modalities = tuple(modalities)
        self.output_dim = (len(self.modalities) - 1) * dim
        if isinstance(attn_dropout, Mapping):
            if set(attn_dropout) != set(self.modalities):
                raise ValueError(f"attn_dropout: expected one rate per modality {list(self.modalities)}, received {sorted(attn_dropout)}")
            if memory_attn_dropout is None:
                raise ValueError("memory_attn_dropout: required when attn_dropout gives one rate per modality")
        source_dropout = attn_dropout if isinstance(attn_dropout, Mapping) else dict.fromkeys(self.modalities, attn_dropout)
        options = {
            "relu_dropout": relu_dropout,
            "res_dropout": res_dropout,
            "embed_dropout": embed_dropout,
            "future_mask": future_mask,
            "positions": positions,
            "position_table": position_table,
            "independent_key_value_dropout": independent_key_value_dropout,
        }
        self.cross = nn.ModuleDict(
            {
                self.pair_key(target, source): CrossModalEncoder(
                    dim, n_heads, n_layers, attn_dropout=source_dropout[source], **options
                )
                for target in self.modalities
                for source in self.modalities
                if source != target
            }
        )
        # With a single rate every entry of source_dropout is that rate.
        memory_dropout = source_dropout[self.modalities[0]] if memory_attn_dropout is None else memory_attn_dropout
        self.memory = nn.ModuleDict(
            {m: CrossModalEncoder(self.output_dim, n_heads, memory_layers, attn_dropout=memory_dropout, **options) for m in self.modalities}
        )

    @staticmethod
    def pair_key(target: str, source: str) -> str:
        """Name of the encoder in which ``target`` attends to ``source``."""
        return f"{target}_from_{source}"

    def forward(self, sequences: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``sequences[m] (B, T_m, d)``, ``masks[m] (B, T_m)`` -> ``{m: (B, (M-1) d)}``."""
        readout: dict[str, Tensor] = {}
        for target in self.modalities:
            attended = [
                self.cross[self.pair_key(target, source)](
                    sequences[target], sequences[source], source_mask=masks[source]
                )
                for source in self.modalities
                if source != target
            ]
            stream = self.memory[target](torch.cat(attended, -1), source_mask=masks[target])
            readout[target] = last_real_step(stream, masks[target])
        return readout
