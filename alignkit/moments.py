"""Latent-space semantic alignment by moment matching (DecAlign eq. 10).

Per modality ``i`` with common features ``Z_i: (N_i, d)``: mean ``mu_i (d,)``, unbiased
covariance ``S_i (d, d)`` and per-dimension skewness ``G_i (d,)`` (the standardised third
moment, ``m3 / m2^{3/2}`` with biased central moments, as ``scipy.stats.skew(bias=True)``)::

    L_sem = 1/(M(M-1)) sum_{i<j} ( w_mu ||mu_i - mu_j||^2 + w_S ||S_i - S_j||_F^2 + w_G ||G_i - G_j||^2 )

The normalisation ``1/(M(M-1))`` is the paper's. A weight of 0 drops that moment (and its
requirement, e.g. ``N >= 2`` for the unbiased covariance).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from alignkit._checks import (
    check_feature_widths,
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
    """Per-dimension skewness ``m3 / m2^{3/2}`` of ``x (N, d)`` -> ``(d,)``.

    A dimension whose spread is at the level of round-off (standard deviation below
    ``10 eps max|x|``) has no defined skewness; it is 0 there, with a finite (zero) gradient.
    """
    centered = x - x.mean(0)
    m2 = centered.pow(2).mean(0)
    m3 = centered.pow(3).mean(0)
    noise_level = (10.0 * torch.finfo(x.dtype).eps * x.detach().abs().amax(0)).pow(2)
    defined = m2 > noise_level
    safe_m2 = torch.where(defined, m2, torch.ones_like(m2))
    return torch.where(defined, m3 / safe_m2.pow(1.5), torch.zeros_like(m3))


def _moments(x: Tensor, need_covariance: bool, need_skewness: bool) -> FeatureMoments:
    mean = x.mean(0)
    covariance = x.new_zeros(())
    if need_covariance:
        centered = x - mean
        covariance = centered.mT @ centered / (x.shape[0] - 1)
    return FeatureMoments(mean, covariance, skewness(x) if need_skewness else x.new_zeros(()))


@full_precision
def feature_moments(x: Tensor) -> FeatureMoments:
    """Mean, unbiased covariance and skewness of ``x: (N, d)``, ``N >= 2``."""
    check_tensor(x, "x", ndim=2, min_rows=2)
    return _moments(x.to(compute_dtype(x.dtype)), True, True)


@full_precision
def moment_matching_loss(
    features: Sequence[Tensor],
    *,
    mean_weight: float = 1.0,
    covariance_weight: float = 1.0,
    skewness_weight: float = 1.0,
) -> Tensor:
    """Latent-space semantic alignment loss ``L_sem`` (paper eq. 10).

    Args:
        features: ``M >= 2`` tensors ``(N_i, d)`` (``N_i >= 2`` when ``covariance_weight > 0``).
        mean_weight, covariance_weight, skewness_weight: non-negative weights of the three terms.

    Returns:
        0-dim tensor.
    """
    features = check_sequence(features, "features", min_len=2)
    weights = {"mean_weight": mean_weight, "covariance_weight": covariance_weight, "skewness_weight": skewness_weight}
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ValueError(f"{name}: expected a number >= 0, received {w!r}")
    min_rows = 2 if covariance_weight > 0 else 1
    named = {f"features[{i}]": check_tensor(f, f"features[{i}]", ndim=2, min_rows=min_rows) for i, f in enumerate(features)}
    check_same_kind(named)
    check_feature_widths(named)

    dtype = compute_dtype(features[0].dtype)
    moments = [_moments(f.to(dtype), covariance_weight > 0, skewness_weight > 0) for f in features]
    total = moments[0].mean.new_zeros(())
    for a, b in itertools.combinations(moments, 2):
        if mean_weight > 0:
            total = total + mean_weight * (a.mean - b.mean).pow(2).sum()
        if covariance_weight > 0:
            total = total + covariance_weight * (a.covariance - b.covariance).pow(2).sum()
        if skewness_weight > 0:
            total = total + skewness_weight * (a.skewness - b.skewness).pow(2).sum()
    n = len(features)
    return total / (n * (n - 1))
