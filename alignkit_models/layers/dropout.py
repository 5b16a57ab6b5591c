"""Dropout with ``nn.Dropout``'s distribution at an eighth of its random draws on a CPU (on other
devices :class:`FastDropout` is ``nn.Dropout`` itself).

``nn.Dropout`` draws one random number per element; on a 2-core CPU that was a quarter to a
third of a DecAlign training step. Here one draw of a 64-bit integer supplies eight random bytes
``b``. With ``t = floor(256 p)``, an element is dropped when ``b < t`` (probability ``t / 256``)
and, independently, with the small leftover probability ``r = (p - t/256) / (1 - t/256)``, so
that it is kept with probability ``(1 - t/256)(1 - r) = 1 - p`` exactly. The elements that ``r``
drops are found without a draw per element: the gaps between them are geometric with parameter
``r`` (drawn in double precision; DecAlign's rates give ``r`` of about 1/400). Kept values are
scaled by ``1 / (1 - p)``: the same random function as ``nn.Dropout``. The draws come from
torch's global generator, so ``torch.manual_seed`` makes them reproducible (they differ from
``nn.Dropout``'s own stream).
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


def keep_mask(shape: torch.Size, p: float, device: torch.device, dtype: torch.dtype, scaled: bool = True) -> Tensor:
    """A ``dtype`` tensor of ``shape``: ``1 / (1 - p)`` (``scaled``, else 1) with probability ``1 - p``,
    else 0, independently."""
    threshold = math.floor(256.0 * p)
    count = shape.numel()
    # Kept where the byte is >= threshold: probability 1 - threshold / 256. (Comparisons run
    # faster on floats than on bytes.)
    mask = random_bytes(torch.Size([count]), device).to(dtype).ge_(threshold)
    if 256.0 * p > threshold:
        # Drop each element also with probability extra (independently), chosen so that
        # (1 - threshold / 256) (1 - extra) = 1 - p.
        extra = (p - threshold / 256.0) / (1.0 - threshold / 256.0)
        mask[bernoulli_positions(count, extra, device)] = 0
    mask = mask.view(shape)
    return mask.mul_(1.0 / (1.0 - p)) if scaled else mask


def bernoulli_positions(count: int, rate: float, device: torch.device, batch: int | None = None) -> Tensor:
    """The indices in ``[0, count)``, ascending, of ``count`` independent Bernoulli(``rate``)
    draws that came out 1, drawn as geometric gaps between successes: about ``count * rate``
    draws instead of ``count`` (DecAlign's rates are about 1/400). ``batch``: gaps drawn per round
    (default: enough to pass ``count`` nearly always, so one round)."""
    if batch is None:
        expected = count * rate
        batch = int(expected + 6.0 * math.sqrt(expected) + 16)
    positions = torch.empty(batch, dtype=torch.int64, device=device).geometric_(rate).cumsum_(0).sub_(1)
    while int(positions[-1]) < count:  # the gaps fell short of the end: draw more
        more = torch.empty(batch, dtype=torch.int64, device=device).geometric_(rate).cumsum_(0).add_(positions[-1])
        positions = torch.cat([positions, more])
    # Ascending, so the ones in range are a prefix: a view, without a pass over a boolean mask.
    return positions[: int(torch.searchsorted(positions, count))]


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
            # On a GPU the draws are cheap, and the geometric gaps above would cost host syncs
            # (a loop on a drawn value, boolean indexing) that CUDA-graph capture forbids: the
            # native kernel is the fast path there.
            return F.dropout(x, self.p, training=True)
        return x * keep_mask(x.shape, self.p, x.device, x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReorderedDropout(nn.Dropout):
    """``nn.Dropout(p)`` whose mask is drawn over ``x.permute(draw_order)``.

    ``nn.Dropout`` fills its mask in the order of the input's memory. Code that stores a
    sequence time-first ``(T, B, d)``, as MulT and the DecAlign authors' transformers do, draws
    other masks than the same code batch-first from the same generator state; drawing over the
    permuted shape and permuting back gives theirs (on a CPU, value for value). ``draw_order``:
    the dimensions of ``x`` from the outermost of that memory order, e.g. ``(1, 0, 2)`` for a
    time-first reference and batch-first ``x``.
    """

    def __init__(self, p: float, draw_order: tuple[int, ...]) -> None:
        super().__init__(p)
        if sorted(draw_order) != list(range(len(draw_order))):
            raise ValueError(f"draw_order: expected a permutation of 0..{len(draw_order) - 1}, received {draw_order}")
        self.draw_order = tuple(draw_order)
        self.inverse = tuple(sorted(range(len(draw_order)), key=draw_order.__getitem__))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.dim() != len(self.draw_order):
            raise ValueError(f"x: expected {len(self.draw_order)} dimensions, received shape {tuple(x.shape)}")
        # F.dropout's own draws on ones are exactly its noise (0 or 1 / (1 - p)).
        noise = F.dropout(x.new_ones([x.shape[d] for d in self.draw_order]), self.p)
        return x * noise.permute(self.inverse)

    def extra_repr(self) -> str:
        return f"p={self.p}, draw_order={self.draw_order}"


def make_dropout(p: float, fast: bool = True, draw_order: tuple[int, ...] | None = None) -> nn.Module:
    """:class:`FastDropout` (``fast``) or ``nn.Dropout``: the same distribution, different draws.

    ``draw_order`` (only without ``fast``): draw ``nn.Dropout``'s mask in that order of the
    input's dimensions (:class:`ReorderedDropout`), to reproduce a reference's masks.
    """
    if fast:
        return FastDropout(p)
    return nn.Dropout(p) if draw_order is None else ReorderedDropout(p, draw_order)
