"""Latent-space semantic alignment by moment matching (DecAlign eq. 10).

Per modality ``i`` with common features ``Z_i: (N_i, d)``: mean ``mu_i (d,)``, unbiased
covariance ``S_i (d, d)`` and per-dimension skewness ``G_i (d,)`` (the standardised third
moment, ``m3 / m2^{3/2}`` with biased central moments, as ``scipy.stats.skew(bias=True)``)::

    L_sem = 1/(M(M-1)) sum_{i<j} ( w_mu ||mu_i - mu_j||^2 + w_S ||S_i - S_j||_F^2 + w_G ||G_i - G_j||^2 )

The normalisation ``1/(M(M-1))`` is the paper's. A weight of 0 drops that moment. A single
sample has zero covariance (the divisor is ``max(N - 1, 1)``).

``reduction="mean"`` is the form of the authors' DecAlign code: each term is a mean squared error
(divided by ``d``, ``d^2`` and ``d``) and the pairs are averaged (``2/(M(M-1))``); with
``skewness_variance_floor`` the skewness divides by ``max(m2, floor)^{3/2}`` (their floor is
``1e-6``) instead of being set to 0 where the spread is round-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from alignkit._checks import (
    check_choice,
    check_feature_widths,
    check_positive,
    check_representable,
    check_same_kind,
    check_sequence,
    check_tensor,
    compute_dtype,
    full_precision,
)


class FeatureMoments(NamedTuple):
    """Moments of one sample set: mean ``(d,)``, covariance ``(d, d)``, skewness ``(d,)``."""

    mean: Tensor
    covariance: Tensor
    skewness: Tensor


def skewness(x: Tensor) -> Tensor:
    """Per-dimension skewness ``m3 / m2^{3/2}`` of ``x (..., N, d)`` -> ``(..., d)``.

    A dimension whose spread is at the level of round-off (standard deviation below
    ``10 eps max|x|``) has no defined skewness; it is 0 there, with a finite (zero) gradient.
    """
    centered = x - x.mean(-2, keepdim=True)
    m2 = centered.pow(2).mean(-2)
    m3 = centered.pow(3).mean(-2)
    noise_level = (10.0 * torch.finfo(x.dtype).eps * x.detach().abs().amax(-2)).pow(2)
    defined = m2 > noise_level
    safe_m2 = torch.where(defined, m2, torch.ones_like(m2))
    return torch.where(defined, m3 / safe_m2.pow(1.5), torch.zeros_like(m3))


def floored_skewness(x: Tensor, variance_floor: float) -> Tensor:
    """Per-dimension ``m3 / max(m2, variance_floor)^{3/2}`` of ``x (..., N, d)`` -> ``(..., d)``."""
    centered = x - x.mean(-2, keepdim=True)
    return centered.pow(3).mean(-2) / centered.pow(2).mean(-2).clamp_min(variance_floor).pow(1.5)


def _moments(x: Tensor, need_covariance: bool, need_skewness: bool, variance_floor: float | None = None) -> FeatureMoments:
    """The moments of ``x (..., N, d)``; a moment not needed is a 0 of shape ``x.shape[:-2]``."""
    mean = x.mean(-2)
    covariance = x.new_zeros(x.shape[:-2])
    if need_covariance:
        centered = x - mean.unsqueeze(-2)
        covariance = centered.mT @ centered / max(x.shape[-2] - 1, 1)
    skew = x.new_zeros(x.shape[:-2])
    if need_skewness:
        skew = skewness(x) if variance_floor is None else floored_skewness(x, variance_floor)
    return FeatureMoments(mean, covariance, skew)


@full_precision
def feature_moments(x: Tensor) -> FeatureMoments:
    """Mean, unbiased covariance and skewness of ``x: (N, d)``, ``N >= 2``."""
    check_tensor(x, "x", ndim=2, min_rows=2)
    dtype = compute_dtype(x.dtype)
    moments = _moments(x.to(dtype), True, True)
    check_representable(list(moments), "x", dtype)
    return moments


@full_precision
def moment_matching_loss(
    features: Sequence[Tensor],
    *,
    mean_weight: float = 1.0,
    covariance_weight: float = 1.0,
    skewness_weight: float = 1.0,
    reduction: Literal["sum", "mean"] = "sum",
    skewness_variance_floor: float | None = None,
) -> Tensor:
    """Latent-space semantic alignment loss ``L_sem`` (paper eq. 10).

    Args:
        features: ``M >= 2`` tensors ``(N_i, d)``.
        mean_weight, covariance_weight, skewness_weight: non-negative weights of the three terms.
        reduction: ``"sum"`` (squared norms, ``1/(M(M-1))``, the paper) or ``"mean"`` (mean
            squared errors averaged over pairs, the authors' code); see the module docstring.
        skewness_variance_floor: ``> 0`` or None (module docstring).

    Returns:
        0-dim tensor.
    """
    features = check_sequence(features, "features", min_len=2)
    weights = {"mean_weight": mean_weight, "covariance_weight": covariance_weight, "skewness_weight": skewness_weight}
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ValueError(f"{name}: expected a number >= 0, received {w!r}")
    check_choice(reduction, "reduction", ["sum", "mean"])
    if skewness_variance_floor is not None:
        check_positive(skewness_variance_floor, "skewness_variance_floor")
    named = {f"features[{i}]": check_tensor(f, f"features[{i}]", ndim=2) for i, f in enumerate(features)}
    check_same_kind(named)
    check_feature_widths(named)

    dtype = compute_dtype(features[0].dtype)
    options = (covariance_weight > 0, skewness_weight > 0, skewness_variance_floor)
    # Every modality's moments at once, (M, ...), and every pair's differences at once: for
    # DecAlign's small sets the loss is bound by per-operation overhead, not arithmetic.
    if len({f.shape for f in features}) == 1:
        moments = _moments(torch.stack([f.to(dtype) for f in features]), *options)
    else:
        moments = FeatureMoments(*(torch.stack(parts) for parts in zip(*(_moments(f.to(dtype), *options) for f in features))))
    n = len(features)
    first, second = torch.triu_indices(n, n, 1, device=moments.mean.device)  # the pairs i < j
    total = moments.mean.new_zeros(())
    for weight, values in ((mean_weight, moments.mean), (covariance_weight, moments.covariance), (skewness_weight, moments.skewness)):
        if weight > 0:
            squares = (values[first] - values[second]).pow(2)  # (pairs, ...)
            # "mean": each pair's mean squared error, summed over the pairs; "sum": squared norms.
            total = total + weight * (squares.mean() * first.numel() if reduction == "mean" else squares.sum())
    return total / (n * (n - 1) / 2 if reduction == "mean" else n * (n - 1))
