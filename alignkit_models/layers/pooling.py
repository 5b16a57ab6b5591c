"""Mask-aware readouts of padded sequences: the last real step, and real steps gathered first.

Sequences are batch-first ``(B, T, d)``; masks are ``(B, T)`` bool, True on real steps. Both
functions read only real steps, so what padded steps contain never reaches their output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def last_real_step(x: Tensor, mask: Tensor) -> Tensor:
    """The step of ``x (B, T, d)`` at each sample's last True position of ``mask`` -> ``(B, d)``.

    Replaces MulT's ``h[-1]``, which with end padding would read a padded step. A sample with
    no real step reads step 0.
    """
    positions = torch.arange(1, x.shape[1] + 1, device=x.device)
    index = (mask.long() * positions).argmax(1)  # largest real position; 0 when none is real
    return x[torch.arange(x.shape[0], device=x.device), index]


def concat_real_steps(sequences: Sequence[Tensor], masks: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Concatenate sequences along time with each sample's real steps first, in order.

    ``torch.cat`` along time would place the second sequence after the first one's padding,
    so the position of every later step would depend on how much padding came before it.
    Here sample ``b`` gets ``[real steps of sequence 0, real steps of sequence 1, ...]``
    followed by all of its padded steps.

    Args:
        sequences: ``(B, T_i, d)`` each.
        masks: ``(B, T_i)`` each.

    Returns:
        ``(B, sum_i T_i, d)`` and its mask ``(B, sum_i T_i)``.
    """
    x = torch.cat(list(sequences), 1)
    mask = torch.cat(list(masks), 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # real (0) before padded (1)
    x = torch.gather(x, 1, order.unsqueeze(-1).expand_as(x))
    return x, torch.gather(mask, 1, order)
