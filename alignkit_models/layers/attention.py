"""The softmax-attention core ``softmax(q k^T / sqrt(h) + mask) v`` for ``(B, H, T, h)`` heads.

On a GPU: ``F.scaled_dot_product_attention`` (its fused kernels), or, when attention weights
are dropped in training, the weights formed explicitly and dropped with ``F.dropout``.

On a CPU: :class:`_CpuAttention`, an autograd function whose backward is written out, so that it
can choose the orientation of each batched product at the narrow head widths of the multimodal
transformers (DecAlign: ``h = 8``), which the autograd of ``bmm`` cannot. Which orientation is
fast depends on the CPU's BLAS kernels. On an AMD EPYC, a product whose result is ``h`` columns
wide (``P v``, and in the backward ``dS k``, ``dS^T q``, ``P^T dO``) ran 3-5x slower than the
same product computed transposed, with ``h`` rows (``v^T P^T`` ...). On an Intel Xeon (AVX-512),
whose MKL takes other kernels, ``v^T P^T`` and ``k^T dS^T``, whose second factor is a transposed
view of the ``(T_t, T_s)`` matrix, ran 4-5x slower than ``P v`` and ``dS k`` (2.0 against
0.44 ms at DecAlign's MOSI shapes), while the other two kept the transposed form's lead.
:data:`WEIGHTS_FIRST` picks from the CPU vendor (the same values either way, up to the products'
rounding). Forward and backward took about half the time of SDPA's fused CPU kernel on the EPYC.
The attention-weight dropout on a CPU is :func:`~alignkit_models.layers.dropout.keep_mask` (torch's
own dropout path inside SDPA cost 3x more), applied after the softmax as in ``nn.Dropout``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit_models.layers.dropout import keep_mask


def _intel_cpu() -> bool:
    try:
        return "GenuineIntel" in Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: keep the orientation measured first
        return False


WEIGHTS_FIRST: bool = _intel_cpu()
"""On a CPU, compute ``P v`` and ``dS k`` as such (True: Intel CPUs) rather than transposed,
``(v^T P^T)^T`` and ``(k^T dS^T)^T`` (False: others, e.g. AMD). Read at each call."""


def attention(query: Tensor, key: Tensor, value: Tensor, keep: Tensor | None, dropout: float = 0.0, fast_dropout: bool = True) -> Tensor:
    """Scaled dot-product attention.

    Args:
        query: ``(B, H, T_t, h)``.
        key, value: ``(B, H, T_s, h)``.
        keep: bool, broadcastable to ``(B, H, T_t, T_s)``, True where attention is allowed (every
            row must allow at least one step), or None.
        dropout: probability of dropping an attention weight (pass 0 outside training).
        fast_dropout: on a CPU, draw the dropout mask with ``keep_mask`` (else ``F.dropout``).

    Returns:
        ``(B, H, T_t, h)``.
    """
    if query.device.type != "cpu":
        if dropout == 0:
            return F.scaled_dot_product_attention(query, key, value, attn_mask=keep)
        scores = (query * query.shape[-1] ** -0.5) @ key.transpose(-1, -2)
        if keep is not None:
            scores = scores.masked_fill(~keep, float("-inf"))
        return F.dropout(scores.softmax(-1), dropout) @ value
    batch, heads, t_target, width = query.shape
    t_source = key.shape[2]
    dtype = torch.promote_types(query.dtype, torch.float32)  # what the function computes in
    bias = None
    if keep is not None:  # the mask's own (broadcast) shape, added in place to the scores
        bias = torch.zeros(keep.shape, dtype=dtype, device=query.device).masked_fill_(~keep, float("-inf"))
    mask = None
    if dropout > 0:  # 0/1 (the 1 / (1 - p) of a kept weight is applied to the small output instead)
        shape = torch.Size((batch * heads, t_target, t_source))
        if fast_dropout:
            mask = keep_mask(shape, dropout, query.device, dtype, scaled=False)
        else:  # F.dropout's own draws (the reference comparisons rely on them)
            mask = F.dropout(torch.ones(shape, dtype=dtype), dropout).ne_(0)  # in place: stays dtype, 0/1
    attended = _CpuAttention.apply(
        heads,
        (query * width**-0.5).reshape(batch * heads, t_target, width),
        key.reshape(batch * heads, t_source, width),
        value.reshape(batch * heads, t_source, width),
        bias,
        mask,
        1.0 / (1.0 - dropout),
    )
    return attended.view(batch, heads, t_target, width)


class _CpuAttention(torch.autograd.Function):
    """``scale * (softmax(q k^T + bias) * mask) v`` over a batch of ``(T, h)`` matrices, ``mask`` 0/1
    or None; float32 inside (autocast off); each product in the orientation the module docstring
    describes.

    The ``(N, T_t, T_s)`` matrices (5 MB per layer at DecAlign's MOSI shapes) do not stay in cache
    between passes, so each pass over one costs about as much as a batched product: the function
    makes as few as it can. The mask is overwritten with the dropped weights ``D = P * mask`` (no
    new tensor), the dropout scale multiplies the ``(N, T_t, h)`` output and upstream gradient,
    and the backward uses ``dS = D * G - P * rowsum(D * G)`` with ``G = dO v^T``, whose row sums
    equal ``rowsum(dO * out)``, a product of two small tensors.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(
        ctx, heads: int, query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None, mask: Tensor | None, scale: float
    ) -> Tensor:
        weights = torch.bmm(query, key.transpose(1, 2))  # scores, (N = B * heads, T_t, T_s)
        if bias is not None:
            weights.view(-1, heads, *weights.shape[1:]).add_(bias)
        # In place: a fresh (N, T_t, T_s) tensor per step costs more than the softmax's arithmetic.
        torch._softmax(weights, -1, False, out=weights)
        dropped = weights if mask is None else mask.mul_(weights)
        if WEIGHTS_FIRST:
            attended = torch.bmm(dropped, value)
        else:
            attended = torch.bmm(value.transpose(1, 2), dropped.transpose(1, 2)).transpose(1, 2)  # (v^T P^T)^T = P v
        if scale != 1.0:
            attended = attended.mul_(scale)
        ctx.scale = scale
        ctx.save_for_backward(query, key, value, weights, None if mask is None else dropped, None if mask is None else attended)
        return attended

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad: Tensor):
        query, key, value, weights, dropped, attended = ctx.saved_tensors
        grad = grad.to(weights.dtype)
        scaled = grad if ctx.scale == 1.0 else grad * ctx.scale
        grad_t = scaled.transpose(1, 2)  # (N, h, T_t)
        grad_value = torch.bmm(grad_t, weights if dropped is None else dropped).transpose(1, 2)  # (dO^T D)^T = D^T dO
        grad_weights = torch.bmm(scaled, value.transpose(1, 2))  # G, (N, T_t, T_s)
        if dropped is None:
            grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype, grad_input=grad_weights)
        else:
            row_sums = (grad * attended).sum(-1, keepdim=True)  # rowsum(D * G)
            grad_scores = grad_weights.mul_(dropped).addcmul_(weights, row_sums, value=-1.0)
        if WEIGHTS_FIRST:
            grad_query = torch.bmm(grad_scores, key)
        else:
            grad_query = torch.bmm(key.transpose(1, 2), grad_scores.transpose(1, 2)).transpose(1, 2)  # (k^T dS^T)^T = dS k
        grad_key = torch.bmm(query.transpose(1, 2), grad_scores).transpose(1, 2)  # (q^T dS)^T = dS^T q
        return None, grad_query, grad_key, grad_value, None, None, None
