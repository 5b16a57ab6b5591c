"""Cross-modal transformer stacks, batch-first: MulT's (Tsai et al., ACL 2019) and DecAlign's.

A stack of layers in which a target sequence attends to a source sequence (self-attention when
no source is given). Two layer layouts::

    input:       x = sqrt(d) * x (+ sinusoidal positions) ; dropout       (the same for the source)
    norm="pre"   (MulT)      x = x + drop(MHA(LN(x), LN(src), LN(src)))
                             x = x + drop(W2 relu-drop(W1 LN(x)))          ... final LayerNorm
    norm="post"  (DecAlign)  x = LN(x + drop(MHA(x, src, src)))
                             x = LN(x + drop(W2 relu-drop(W1 x)))          (no final LayerNorm)

The authors' DecAlign code uses the post-norm layout without positions, draws the embedding
dropout of keys and values separately (``independent_key_value_dropout``), and leaves the
feed-forward layers at PyTorch's default initialisation (``feedforward_init="torch"``); MulT
initialises them Xavier-uniform with zero biases. In both, the attention's packed ``(3d, d)``
input projection is Xavier-uniform with zero biases and its output bias is zero.

The attention core is :func:`~alignkit_models.layers.attention.attention` (SDPA on a GPU, a
written-out backward on a CPU). Padding masks (True on real steps) keep padded source steps out of
every attention; a sample whose source is entirely padding attends to all steps instead (its
output is masked later), which avoids the NaN of an all-masked softmax. The optional "future"
mask is MulT's: position ``i`` of the target may not see source positions beyond
``i + |T_src - T_tgt|``.

Two position tables: ``"vaswani"`` (:func:`sinusoidal_positions`: interleaved sine/cosine,
steps counted from 0) and ``"fairseq"`` (:func:`fairseq_positions`: the table MulT's released
code and the code built on it, e.g. CGGM, take from fairseq: sines then cosines, steps counted
from 1, and a step whose first feature is exactly 0 taken for padding and given no position).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit_models.layers.attention import attention
from alignkit_models.layers.dropout import make_dropout

# Where nn.Dropout draws its masks without fast_dropout: in the memory order of the authors' code,
# whose transformers run time-first (T, B, d). Residual, feed-forward and source (key/value)
# tensors are time-first there; the target enters as a permuted convolution output, (B, d, T)
# in memory. In dimensions of our batch-first (B, T, d):
TIME_FIRST = (1, 0, 2)
CHANNELS_FIRST = (0, 2, 1)


@functools.lru_cache(maxsize=64)
def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed sinusoidal position embeddings ``(length, dim)`` (Vaswani et al.); cached, do not modify."""
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


MULT_LAYER_NAMES: dict[str, str] = {
    "self_attn.in_proj_weight": "attention.in_proj_weight",
    "self_attn.in_proj_bias": "attention.in_proj_bias",
    "self_attn.out_proj.weight": "attention.out.weight",
    "self_attn.out_proj.bias": "attention.out.bias",
    "fc1.weight": "feedforward.0.weight",
    "fc1.bias": "feedforward.0.bias",
    "fc2.weight": "feedforward.3.weight",
    "fc2.bias": "feedforward.3.bias",
    "layer_norms.0.weight": "norm_attention.weight",
    "layer_norms.0.bias": "norm_attention.bias",
    "layer_norms.1.weight": "norm_feedforward.weight",
    "layer_norms.1.bias": "norm_feedforward.bias",
}
"""Parameter names inside one layer of MulT's released ``TransformerEncoder`` (and of the code
built on it: MMSA, CGGM) -> ours inside ``CrossModalEncoder.layers.<i>``; the stack's final
``layer_norm`` is our ``norm``. Shapes are the same."""


@functools.lru_cache(maxsize=64)
def _fairseq_table(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """fairseq's table ``(length + 1, dim)``: row ``p >= 1`` is ``[sin(p w_k) | cos(p w_k)]`` with
    ``w_k = 10000^(-k / (dim/2 - 1))``, ``k < dim // 2`` (a zero column appended for odd ``dim``);
    row 0 (padding) is zero. Cached, do not modify."""
    half = dim // 2
    frequency = torch.exp(torch.arange(half, dtype=torch.float32, device=device) * -(math.log(10000.0) / (half - 1)))
    angle = torch.arange(length + 1, dtype=torch.float32, device=device).unsqueeze(1) * frequency.unsqueeze(0)
    table = torch.cat([torch.sin(angle), torch.cos(angle), torch.zeros(length + 1, dim % 2, device=device)], dim=1)
    table[0] = 0.0
    return table


def fairseq_positions(x: Tensor) -> Tensor:
    """fairseq's position embeddings for ``x (B, T, d)`` -> ``(B, T, d)``.

    Step ``t`` (0-based) gets row ``t + 1`` of :func:`_fairseq_table`, except where
    ``x[b, t, 0] == 0``: fairseq reads the first feature as a token id and a 0 as padding, which
    gets the zero row. Needs ``d >= 4`` (the frequencies divide by ``d/2 - 1``).
    """
    batch, steps, dim = x.shape
    if dim < 4:
        raise ValueError(f"x: fairseq positions need a width of at least 4, received shape {tuple(x.shape)}")
    table = _fairseq_table(steps, dim, x.device)
    step = torch.arange(1, steps + 1, device=x.device).expand(batch, steps)
    return table.to(x.dtype)[torch.where(x[..., 0] != 0, step, 0)]


class MultiheadAttention(nn.Module):
    """Multi-head attention with a packed ``(3d, d)`` query/key/value projection.

    ``forward(x, key, value, keep)``: queries from ``x (B, T_t, d)``, keys and values from
    ``key``/``value (B, T_s, d)`` (the same tensor for ordinary attention: one fused product).
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, fast_dropout: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.n_heads = n_heads
        self.dropout = dropout
        self.fast_dropout = fast_dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out.bias)

    def _heads(self, x: Tensor) -> Tensor:
        batch, steps, dim = x.shape
        return x.view(batch, steps, self.n_heads, dim // self.n_heads).transpose(1, 2)

    def _source_heads(self, source: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Keys or values ``(B, heads, T_s, h)`` projected from ``source (B, T_s, d)``.

        On a CPU the projection is computed transposed, ``W source^T + b`` ``(B, d, T_s)``, whose
        heads are a view in which each head's ``(T_s, h)`` matrix is stored transposed. The
        attention core reads that layout as it is and hands the gradients back in it, so
        neither pass copies keys or values between the ``(B, T, heads, h)`` and per-head
        layouts (on the Intel Xeon, 1 ms of the 15 ms a DecAlign layer's projections and
        attention take; the same values up to the products' rounding).
        """
        if source.device.type != "cpu":
            return self._heads(F.linear(source, weight, bias))
        batch, steps, _ = source.shape
        projected = torch.baddbmm(bias.unsqueeze(-1), weight.expand(batch, -1, -1), source.transpose(1, 2))
        return projected.view(batch, self.n_heads, -1, steps).transpose(2, 3)

    def forward(self, x: Tensor, key: Tensor, value: Tensor, keep: Tensor | None) -> Tensor:
        """``keep``: bool, broadcastable to ``(B, heads, T_t, T_s)``, True where attention is allowed."""
        d, weight, bias = self.dim, self.in_proj_weight, self.in_proj_bias
        if key is x and value is x:
            query, k, v = F.linear(x, weight, bias).chunk(3, dim=-1)
            query, k, v = self._heads(query), self._heads(k), self._heads(v)
        else:
            query = self._heads(F.linear(x, weight[:d], bias[:d]))
            k = self._source_heads(key, weight[d : 2 * d], bias[d : 2 * d])
            v = self._source_heads(value, weight[2 * d :], bias[2 * d :])
        dropout = self.dropout if self.training else 0.0
        attended = attention(query, k, v, keep, dropout, self.fast_dropout)
        return self.out(attended.transpose(1, 2).reshape(x.shape))


class _Layer(nn.Module):
    def __init__(
        self, dim: int, n_heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float, norm: str, fast_dropout: bool
    ) -> None:
        super().__init__()
        self.post_norm = norm == "post"
        self.attention = MultiheadAttention(dim, n_heads, attn_dropout, fast_dropout)
        self.norm_attention = nn.LayerNorm(dim)
        self.norm_feedforward = nn.LayerNorm(dim)
        self.feedforward = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.ReLU(), make_dropout(relu_dropout, fast_dropout, TIME_FIRST), nn.Linear(4 * dim, dim)
        )
        self.res_dropout = make_dropout(res_dropout, fast_dropout, TIME_FIRST)

    def forward(self, x: Tensor, key: Tensor | None, value: Tensor | None, keep: Tensor | None) -> Tensor:
        if self.post_norm:
            key = x if key is None else key
            value = x if value is None else value
            x = self.norm_attention(x + self.res_dropout(self.attention(x, key, value, keep)))
            return self.norm_feedforward(x + self.res_dropout(self.feedforward(x)))
        query = self.norm_attention(x)
        if key is None:
            key = value = query
        else:  # pre-norm: keys and values are the normalised source
            key = self.norm_attention(key)
            value = key if value is None or value is key else self.norm_attention(value)
        x = x + self.res_dropout(self.attention(query, key, value, keep))
        return x + self.res_dropout(self.feedforward(self.norm_feedforward(x)))


class CrossModalEncoder(nn.Module):
    """Target-attends-to-source transformer stack; ``(B, T_t, d)`` in and out.

    Args:
        dim: model width ``d`` (divisible by ``n_heads``).
        n_heads, n_layers: attention heads and layers.
        attn_dropout, relu_dropout, res_dropout, embed_dropout: MulT's four dropout rates.
        future_mask: apply MulT's causal-style mask (MulT's default is on).
        norm: ``"pre"`` (MulT, with a final LayerNorm) or ``"post"`` (the authors' DecAlign code).
        positions: add sinusoidal position embeddings to the scaled inputs.
        position_table: ``"vaswani"`` (:func:`sinusoidal_positions`) or ``"fairseq"``
            (:func:`fairseq_positions`, MulT's released code).
        independent_key_value_dropout: draw the source's embedding dropout separately for keys
            and for values (the authors' DecAlign code) instead of once.
        feedforward_init: ``"xavier"`` (Xavier-uniform weights, zero biases: MulT) or ``"torch"``
            (``nn.Linear``'s default: the authors' DecAlign code).
        fast_dropout: :class:`~alignkit_models.layers.dropout.FastDropout` (byte-quantised
            probability) for the residual, feed-forward and embedding dropouts, else ``nn.Dropout``
            with the masks the DecAlign authors' time-first code draws from the same generator
            state (:data:`TIME_FIRST`, :data:`CHANNELS_FIRST`).
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
        norm: Literal["pre", "post"] = "pre",
        positions: bool = True,
        position_table: Literal["vaswani", "fairseq"] = "vaswani",
        independent_key_value_dropout: bool = False,
        feedforward_init: Literal["xavier", "torch"] = "xavier",
        fast_dropout: bool = True,
    ) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"n_heads: expected a divisor of dim={dim}, received {n_heads}")
        if norm not in ("pre", "post"):
            raise ValueError(f"norm: expected 'pre' or 'post', received {norm!r}")
        if position_table not in ("vaswani", "fairseq"):
            raise ValueError(f"position_table: expected 'vaswani' or 'fairseq', received {position_table!r}")
        if positions and position_table == "fairseq" and dim < 4:
            raise ValueError(f"position_table: 'fairseq' needs dim >= 4, received dim={dim}")
        if feedforward_init not in ("xavier", "torch"):
            raise ValueError(f"feedforward_init: expected 'xavier' or 'torch', received {feedforward_init!r}")
        self.dim = dim
        self.layers = nn.ModuleList(
            _Layer(dim, n_heads, attn_dropout, relu_dropout, res_dropout, norm, fast_dropout) for _ in range(n_layers)
        )
        self.embed_dropout = make_dropout(embed_dropout, fast_dropout, CHANNELS_FIRST)
        self.source_embed_dropout = make_dropout(embed_dropout, fast_dropout, TIME_FIRST)
        self.norm = nn.LayerNorm(dim) if norm == "pre" else None
        self.future_mask = future_mask
        self.positions = positions
        self.position_table = position_table
        self.independent_key_value_dropout = independent_key_value_dropout
        if feedforward_init == "xavier":
            for layer in self.layers:
                for module in layer.feedforward:
                    if isinstance(module, nn.Linear):
                        nn.init.xavier_uniform_(module.weight)
                        nn.init.zeros_(module.bias)

    def _embed(self, x: Tensor, dropout: nn.Module) -> Tensor:
        scaled = math.sqrt(self.dim) * x
        if self.positions and self.position_table == "fairseq":
            scaled = scaled + fairseq_positions(x)
        elif self.positions:
            scaled = scaled + sinusoidal_positions(x.shape[1], self.dim, x.device)
        return dropout(scaled)

    def forward(
        self,
        target: Tensor,
        source: Tensor | None = None,
        *,
        source_mask: Tensor | None = None,
    ) -> Tensor:
        """``target (B, T_t, d)``, ``source (B, T_s, d)`` or None (self-attention), ``source_mask (B, T_s)``
        True on real steps (for self-attention: the target's own mask)."""
        x = self._embed(target, self.embed_dropout)
        key = value = None
        if source is not None:
            key = self._embed(source, self.source_embed_dropout)
            value = self._embed(source, self.source_embed_dropout) if self.independent_key_value_dropout and self.training else key
        keep = None
        if source_mask is not None:
            usable = source_mask.any(1, keepdim=True)
            keep = (source_mask | ~usable)[:, None, None, :]  # all-padding rows attend everywhere
        if self.future_mask:
            t_tgt, t_src = target.shape[1], (target if source is None else source).shape[1]
            future = torch.ones(t_tgt, t_src, dtype=torch.bool, device=target.device).triu(1 + abs(t_src - t_tgt))
            keep = ~future if keep is None else keep & ~future
        for layer in self.layers:
            x = layer(x, key, value, keep)
        return x if self.norm is None else self.norm(x)
