"""Dropout with ``nn.Dropout``'s distribution at an eighth of its random draws on a CPU (on other
devices :class:`FastDropout` is ``nn.Dropout`` itself).

``nn.Dropout`` draws one random number per element; on a 2-core CPU that was a quarter to a
third of a DecAlign training step. Here one draw of a 64-bit integer supplies eight random bytes
``b``. With ``p = (t + q) / 256`` (``t`` whole, ``0 <= q < 1``), an element is dropped when
``b < t``, and when ``b == t`` (one element in 256) with probability ``q``, decided by a second,
float draw for those elements only. So each element is dropped independently with probability
exactly ``p`` (to float32 resolution of ``q``: ``2^-32`` overall, finer than ``nn.Dropout``'s
own ``2^-24``), and kept values are scaled by ``1 / (1 - p)``: the same random function as
``nn.Dropout``. The draws come from torch's global generator, so ``torch.manual_seed`` makes
them reproducible (they differ from ``nn.Dropout``'s own stream).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def random_bytes(shape: torch.Size, device: torch.device) -> Tensor:
    """Uniform random uint8 of ``shape``, eight per 64-bit draw of the global generator."""
    count = shape.numel()
    # random_(-2**63, None) spans the whole int64 range, so all eight bytes are uniform.
    draws = torch.empty((count + 7) // 8, dtype=torch.int64, device=device).random_(-(2**63), None)
    return draws.view(torch.uint8)[:count].view(shape)


def keep_mask(shape: torch.Size, p: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A ``dtype`` tensor of ``shape``: ``1 / (1 - p)`` with probability ``1 - p``, else 0, independently."""
    whole, fraction = divmod(256.0 * p, 1.0)
    threshold = int(whole)
    count = shape.numel()
    words = torch.empty((count + 7) // 8, dtype=torch.int64, device=device).random_(-(2**63), None)
    scores = words.view(torch.uint8).to(dtype)  # comparisons run faster on floats than on bytes
    boundary = _boundary_elements(scores, threshold, count) if fraction > 0 else None
    mask = scores.ge_(threshold)
    if boundary is not None and boundary.numel():
        # Elements on the boundary byte are dropped with the leftover probability.
        mask[boundary] = (torch.rand(boundary.numel(), device=device) >= fraction).to(dtype)
    return mask[:count].view(shape).mul_(1.0 / (1.0 - p))


def _boundary_elements(scores: Tensor, threshold: int, count: int) -> Tensor:
    """Indices below ``count`` where ``scores == threshold``: found word by word (eight scores per
    64-bit word, 3% of words hold one), since ``nonzero`` over every element cost more than the draws."""
    hits = scores == threshold
    words = hits.view(torch.int64).nonzero().squeeze(1)
    candidates = (words.unsqueeze(1) * 8 + torch.arange(8, device=scores.device)).view(-1)
    candidates = candidates[hits[candidates]]
    return candidates[candidates < count]


class FastDropout(nn.Module):
    """``nn.Dropout(p)`` in distribution, with fewer random draws (see the module docstring)."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        if not (0.0 <= p < 1.0 and math.isfinite(p)):
            raise ValueError(f"p: expected a probability in [0, 1), received {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            # On a GPU the draws are cheap, and the boundary search above would cost a host sync
            # (``nonzero``) that CUDA-graph capture forbids: the native kernel is the fast path there.
            return F.dropout(x, self.p, training=True)
        return x * keep_mask(x.shape, self.p, x.device, x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_dropout(p: float, fast: bool = True) -> nn.Module:
    """:class:`FastDropout` (``fast``) or ``nn.Dropout``: the same distribution, different draws."""
    return FastDropout(p) if fast else nn.Dropout(p)
