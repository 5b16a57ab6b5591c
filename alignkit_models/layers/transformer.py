"""The MulT cross-modal transformer (Tsai et al., ACL 2019), batch-first.

A stack of pre-LayerNorm layers in which a target sequence attends to a source sequence
(self-attention when no source is given)::

    x = sqrt(d) * x + positions ; dropout        (the same for the source)
    each layer:  x = x + drop(MHA(LN(x), LN(src), LN(src)))
                 x = x + drop(W2 relu-drop(W1 LN(x)))
    final LayerNorm

Attention runs on ``F.scaled_dot_product_attention``; dropouts other than the attention weights
use :class:`~alignkit_models.layers.dropout.FastDropout`.

Padding masks (True on real steps) keep padded source steps out of every attention; a sample
whose source is entirely padding attends to all steps instead (its output is masked later),
which avoids the NaN of an all-masked softmax. The optional "future" mask is MulT's: position
``i`` of the target may not see source positions beyond ``i + |T_src - T_tgt|``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit_models.layers.dropout import FastDropout


@functools.lru_cache(maxsize=64)
def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed sinusoidal position embeddings ``(length, dim)`` (Vaswani et al.); cached, do not modify."""
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class _Attention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention`` (the fused kernel when no
    attention-weight dropout is asked for, which is the costly one on a CPU)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        batch, steps, dim = x.shape
        return x.view(batch, steps, self.n_heads, dim // self.n_heads).transpose(1, 2)

    def forward(self, x: Tensor, source: Tensor, keep: Tensor | None) -> Tensor:
        """``keep``: bool, broadcastable to ``(B, heads, T_t, T_s)``, True where attention is allowed."""
        query = self._heads(self.query(x))
        key, value = (self._heads(t) for t in self.key_value(source).chunk(2, dim=-1))
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=keep, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(attended.transpose(1, 2).reshape(x.shape))


class _Layer(nn.Module):
    def __init__(self, dim: int, n_heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float) -> None:
        super().__init__()
        self.attention = _Attention(dim, n_heads, attn_dropout)
        self.norm_attention = nn.LayerNorm(dim)
        self.norm_feedforward = nn.LayerNorm(dim)
        self.feedforward = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.ReLU(), FastDropout(relu_dropout), nn.Linear(4 * dim, dim)
        )
        self.res_dropout = FastDropout(res_dropout)

    def forward(self, x: Tensor, source: Tensor | None, keep: Tensor | None) -> Tensor:
        query = self.norm_attention(x)
        kv = query if source is None else self.norm_attention(source)
        x = x + self.res_dropout(self.attention(query, kv, keep))
        return x + self.res_dropout(self.feedforward(self.norm_feedforward(x)))


class CrossModalEncoder(nn.Module):
    """Target-attends-to-source transformer stack; ``(B, T_t, d)`` in and out.

    Args:
        dim: model width ``d`` (divisible by ``n_heads``).
        n_heads, n_layers: attention heads and layers.
        attn_dropout, relu_dropout, res_dropout, embed_dropout: MulT's four dropout rates.
        future_mask: apply MulT's causal-style mask (MulT's default is on).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int = 8,
        n_layers: int = 4,
        *,
        attn_dropout: float = 0.1,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.1,
        future_mask: bool = False,
    ) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"n_heads: expected a divisor of dim={dim}, received {n_heads}")
        self.dim = dim
        self.layers = nn.ModuleList(_Layer(dim, n_heads, attn_dropout, relu_dropout, res_dropout) for _ in range(n_layers))
        self.embed_dropout = FastDropout(embed_dropout)
        self.norm = nn.LayerNorm(dim)
        self.future_mask = future_mask
        for module in self.modules():
            if isinstance(module, nn.Linear):  # Xavier-uniform weights, zero biases (MulT)
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def _embed(self, x: Tensor) -> Tensor:
        return self.embed_dropout(math.sqrt(self.dim) * x + sinusoidal_positions(x.shape[1], self.dim, x.device))

    def forward(
        self,
        target: Tensor,
        source: Tensor | None = None,
        *,
        source_mask: Tensor | None = None,
    ) -> Tensor:
        """``target (B, T_t, d)``, ``source (B, T_s, d)`` or None (self-attention), ``source_mask (B, T_s)``
        True on real steps (for self-attention: the target's own mask)."""
        x = self._embed(target)
        src = None if source is None else self._embed(source)
        keep = None
        if source_mask is not None:
            usable = source_mask.any(1, keepdim=True)
            keep = (source_mask | ~usable)[:, None, None, :]  # all-padding rows attend everywhere
        if self.future_mask:
            t_tgt, t_src = target.shape[1], (target if source is None else source).shape[1]
            future = torch.ones(t_tgt, t_src, dtype=torch.bool, device=target.device).triu(1 + abs(t_src - t_tgt))
            keep = ~future if keep is None else keep & ~future
        for layer in self.layers:
            x = layer(x, src, keep)
        return self.norm(x)
