"""Decoupling of modality-unique and modality-common features (DecAlign eq. 1).

For each modality ``m`` the cosine similarity between its unique features ``F_uni`` and its
common features ``F_com`` measures their overlap. The paper sums the signed cosine, which is
minimised by *anti*-aligned features rather than orthogonal ones; the default here penalises
``cos^2`` (orthogonality, as the authors' code does), and ``mode="signed"`` keeps the paper's
literal form::

    L_dec = R_m mean_batch phi(cos(F_uni^m, F_com^m)),  phi = x^2 | |x| | x,  R = sum | mean

The paper sums over modalities (``reduction="sum"``); the authors' code averages
(``reduction="mean"``).

``granularity`` says what a "feature vector" is for a sequence ``(B, T, d)``: the whole flattened
sequence (``"sequence"``), each time step separately, with ``phi`` averaged over the steps
(``"token"``), or the mean over time (``"pooled"``). Padded steps (``mask`` False) are ignored in all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from alignkit._checks import check_choice, check_same_kind, check_sequence, check_tensor, compute_dtype, full_precision

Mode = Literal["squared", "abs", "signed"]
Granularity = Literal["sequence", "token", "pooled"]
Reduction = Literal["sum", "mean"]


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Cosine along the last axis, 0 (with finite gradient) when either vector is zero."""
    eps = torch.finfo(a.dtype).eps
    norms = ((a * a).sum(-1) * (b * b).sum(-1)).clamp_min(eps * eps).sqrt()
    return (a * b).sum(-1) / norms


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``x (B, T, ...)`` over ``T``, counting only steps where ``mask (B, T)`` is True."""
    if mask is None:
        return x.mean(1)
    weights = mask.to(x.dtype)
    while weights.ndim < x.ndim:
        weights = weights.unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _modality_penalty(unique: Tensor, common: Tensor, mask: Tensor | None, granularity: str, mode: str) -> Tensor:
    """Per-sample penalty ``(B,)`` for one modality, inputs ``(B, T, d)``."""
    if granularity == "pooled":
        cos = cosine_similarity(masked_mean(unique, mask), masked_mean(common, mask))
    elif granularity == "token":
        # The penalty applies per step before averaging, so opposite signs cannot cancel.
        return masked_mean(_penalty(cosine_similarity(unique, common), mode), mask)
    else:
        if mask is not None:
            keep = mask.to(unique.dtype).unsqueeze(-1)
            unique, common = unique * keep, common * keep
        cos = cosine_similarity(unique.flatten(1), common.flatten(1))
    return _penalty(cos, mode)


def _penalty(cos: Tensor, mode: str) -> Tensor:
    return cos.pow(2) if mode == "squared" else cos.abs() if mode == "abs" else cos


@full_precision
def decoupling_loss(
    unique: Tensor | Sequence[Tensor],
    common: Tensor | Sequence[Tensor],
    *,
    mode: Mode = "squared",
    granularity: Granularity = "sequence",
    masks: Sequence[Tensor | None] | None = None,
    reduction: Reduction = "sum",
) -> Tensor:
    """Decoupling loss ``L_dec`` (paper eq. 1), summed or averaged over modalities.

    Args:
        unique: per-modality unique features, each ``(B, T_m, d)`` or ``(B, d)`` (one tensor = one modality).
        common: per-modality common features, shaped like ``unique``.
        mode: ``"squared"`` (cos^2, default), ``"abs"`` (|cos|) or ``"signed"`` (the paper's cos).
        granularity: ``"sequence"``, ``"token"`` or ``"pooled"`` (see the module docstring).
        masks: per-modality ``(B, T_m)`` boolean masks, True on real (non-padded) steps.
        reduction: ``"sum"`` (the paper) or ``"mean"`` (the authors' code) over modalities.

    Returns:
        0-dim tensor: ``sum_m mean_b phi(cos_b^m)`` (divided by ``M`` for ``"mean"``).
    """
    unique = check_sequence(unique, "unique")
    common = check_sequence(common, "common")
    check_choice(mode, "mode", ["squared", "abs", "signed"])
    check_choice(granularity, "granularity", ["sequence", "token", "pooled"])
    check_choice(reduction, "reduction", ["sum", "mean"])
    if len(common) != len(unique):
        raise ValueError(f"common: expected {len(unique)} tensors (one per modality of unique), received {len(common)}")
    masks = [None] * len(unique) if masks is None else list(masks)
    if len(masks) != len(unique):
        raise ValueError(f"masks: expected {len(unique)} masks (one per modality), received {len(masks)}")

    named: dict[str, Tensor] = {}
    for m, (u, c, mask) in enumerate(zip(unique, common, masks)):
        check_tensor(u, f"unique[{m}]", ndim=(2, 3))
        check_tensor(c, f"common[{m}]", ndim=(2, 3))
        if u.shape != c.shape:
            raise ValueError(f"common[{m}]: expected shape {tuple(u.shape)} (that of unique[{m}]), received {tuple(c.shape)}")
        steps = u.shape[1] if u.ndim == 3 else 1
        if mask is not None and tuple(mask.shape) != (u.shape[0], steps):
            raise ValueError(f"masks[{m}]: expected shape {(u.shape[0], steps)}, received {tuple(mask.shape)}")
        named.update({f"unique[{m}]": u, f"common[{m}]": c})
    check_same_kind(named)

    total = unique[0].new_zeros((), dtype=compute_dtype(unique[0].dtype))
    for u, c, mask in zip(unique, common, masks):
        u3 = u.to(total.dtype) if u.ndim == 3 else u.to(total.dtype).unsqueeze(1)
        c3 = c.to(total.dtype) if c.ndim == 3 else c.to(total.dtype).unsqueeze(1)
        penalty = _modality_penalty(u3, c3, None if mask is None else mask.to(u3.device), granularity, mode)
        total = total + penalty.mean()
    return total / len(unique) if reduction == "mean" else total
