"""Supervised contrastive loss (Khosla et al., NeurIPS 2020) on a batch of representations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit._checks import compute_dtype, full_precision
from alignkit.distributed import gather_samples, gathered_scope, sync_active


@full_precision
def supervised_contrastive_loss(representations: Tensor, classes: Tensor, temperature: float = 0.1, *, sync_dist: bool | None = None) -> Tensor:
    """SupCon: pull together samples of one class, push apart the rest.

    Args:
        representations: ``(B, D)``; L2-normalised inside.
        classes: ``(B,)`` integer class of each sample.
        temperature: softmax temperature ``> 0``.
        sync_dist: compute over the global batch of every process (``None``: when more than one
            runs; see :mod:`alignkit.distributed`).

    Computes in float64 for float64 inputs, else in float32, also under autocast.

    Returns:
        0-dim tensor: mean over anchors that have at least one positive of
        ``-mean_{p in P(i)} log softmax_{a != i}(z_i . z_a / t)_p``; 0 when no anchor has one.
    """
    if sync_active(sync_dist):
        with gathered_scope():
            return supervised_contrastive_loss(gather_samples(representations, "representations"), gather_samples(classes, "classes"), temperature)
    z = F.normalize(representations.to(compute_dtype(representations.dtype)), dim=-1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (classes[:, None] == classes[None, :]) & ~self_mask
    counts = positives.sum(1)
    has_positive = counts > 0
    per_anchor = -(log_prob.masked_fill(~positives, 0.0).sum(1)) / counts.clamp_min(1)  # 0 without positives
    if z.device.type != "cpu":
        # No host sync (CUDA graphs capture this): the anchors without positives add zeros.
        return per_anchor.sum() / has_positive.sum().clamp_min(1)
    # The same value; on a CPU the mean over the selected anchors is kept because its rounding
    # (the sum of fewer terms) is what recorded CPU runs were trained with.
    if not bool(has_positive.any()):
        return z.new_zeros(())
    return per_anchor[has_positive].mean()
