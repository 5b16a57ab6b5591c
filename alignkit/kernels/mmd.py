"""Gaussian-kernel Maximum Mean Discrepancy (DecAlign eqs. 11-12).

With ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))`` and samples ``x: (N, d)``, ``y: (M, d)``::

    biased   MMD^2 = 1/N^2 sum_ij k(x_i, x_j) + 1/M^2 sum_ij k(y_i, y_j) - 2/(NM) sum_ij k(x_i, y_j)
    unbiased MMD^2 = 1/(N(N-1)) sum_{i!=j} k(x_i, x_j) + 1/(M(M-1)) sum_{i!=j} k(y_i, y_j)
                     - 2/(NM) sum_ij k(x_i, y_j)

The biased form (a V-statistic, the paper's eq. 11) is >= 0 and exactly 0 for equal samples;
the unbiased form (a U-statistic) can be slightly negative. A sequence of bandwidths sums the
kernels; ``sigma="median"`` uses the median pairwise distance of the pooled samples.

The three kernel sums are the only part whose cost grows as ``N x M``; they go through the
backend chosen by :func:`alignkit.kernels.dispatch.kernel_sum`. :func:`multimodal_mmd` of three or
more sample sets small enough for that backend to be ``dense`` on all of them pooled computes one
kernel matrix of the pooled samples instead, whose blocks are every pair's sums.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal, Union

import torch
from torch import Tensor

from alignkit._checks import (
    check_choice,
    check_feature_widths,
    check_positive,
    check_same_kind,
    check_sequence,
    check_tensor,
    compute_dtype,
    full_precision,
)
from alignkit.kernels.dispatch import Backend, kernel_sum, resolve_backend
from alignkit.kernels.distances import squared_distances

Bandwidth = Union[float, Sequence[float], Literal["median"]]
Estimator = Literal["biased", "unbiased"]

MEDIAN_MAX_SAMPLES = 2048
"""The median heuristic looks at this many pooled samples at most (evenly spaced rows)."""


def median_bandwidth(x: Tensor, y: Tensor) -> Tensor:
    """Median pairwise Euclidean distance of the pooled samples, without gradient.

    Args:
        x: ``(N, d)``.
        y: ``(M, d)``.

    Returns:
        0-dim tensor. Pairs ``i < j`` of the pooled rows count once each (numpy's median, the
        mean of the two middle values for an even count). Above :data:`MEDIAN_MAX_SAMPLES`
        pooled rows, evenly spaced rows are used so that the cost stays bounded. A median of
        0 (all samples equal) is raised to the dtype's epsilon so that the kernel is defined.
    """
    with torch.no_grad():
        pooled = torch.cat([x, y]).to(compute_dtype(x.dtype))
        if pooled.shape[0] > MEDIAN_MAX_SAMPLES:
            rows = torch.linspace(0, pooled.shape[0] - 1, MEDIAN_MAX_SAMPLES, device=pooled.device)
            pooled = pooled[rows.round().long()]
        distances = torch.pdist(pooled)
        # numpy's median by two selections (linear time; torch.quantile sorts, ~6x slower here).
        n = distances.numel()
        upper = torch.kthvalue(distances, n // 2 + 1).values
        median = upper if n % 2 else 0.5 * (upper + torch.kthvalue(distances, n // 2).values)
        return median.clamp_min(torch.finfo(pooled.dtype).eps)


def _bandwidths(sigma: Bandwidth, x: Tensor, y: Tensor) -> Tensor:
    """The bandwidths as a 1-D tensor of the compute dtype."""
    if isinstance(sigma, str):
        check_choice(sigma, "sigma", ["median"])
        return median_bandwidth(x, y).reshape(1)
    values = [sigma] if isinstance(sigma, (int, float)) else list(sigma)
    if not values:
        raise ValueError("sigma: expected a positive number, a non-empty sequence or 'median', received []")
    for value in values:
        check_positive(value, "sigma")
    # Filled on the device, not copied from the host: a host-to-device copy cannot be captured in a CUDA graph.
    return torch.stack([torch.full((), float(value), dtype=x.dtype, device=x.device) for value in values])


@full_precision
def gaussian_mmd(
    x: Tensor,
    y: Tensor,
    sigma: Bandwidth = 1.0,
    *,
    estimator: Estimator = "biased",
    backend: Backend = "auto",
) -> Tensor:
    """Squared Gaussian-kernel MMD between two sample sets (paper eq. 11).

    Args:
        x: ``(N, d)`` samples of the first distribution.
        y: ``(M, d)`` samples of the second distribution (same ``d``; ``N`` and ``M`` may differ).
        sigma: bandwidth ``> 0``; a sequence sums one kernel per bandwidth; ``"median"`` uses
            :func:`median_bandwidth` (computed without gradient).
        estimator: ``"biased"`` (V-statistic, diagonals included) or ``"unbiased"``
            (U-statistic, diagonals excluded; needs ``N, M >= 2``).
        backend: kernel-reduction backend, see :func:`alignkit.kernels.dispatch.kernel_sum`.

    Returns:
        0-dim tensor ``MMD^2``: float64 for float64 inputs, float32 otherwise.
    """
    check_choice(estimator, "estimator", ["biased", "unbiased"])
    min_rows = 2 if estimator == "unbiased" else 1
    check_tensor(x, "x", ndim=2, min_rows=min_rows)
    check_tensor(y, "y", ndim=2, min_rows=min_rows)
    check_same_kind({"x": x, "y": y})
    check_feature_widths({"x": x, "y": y})
    return _gaussian_mmd(x, y, sigma, estimator, backend)


def _gaussian_mmd(x: Tensor, y: Tensor, sigma: Bandwidth, estimator: str, backend: Backend) -> Tensor:
    """MMD^2 on already validated inputs (shared by :func:`multimodal_mmd`)."""
    dtype = compute_dtype(x.dtype)
    x, y = x.to(dtype), y.to(dtype)
    # Centering does not change distances but keeps the |x|^2 + |y|^2 - 2xy form accurate.
    center = torch.cat([x, y]).mean(0).detach()
    x, y = x - center, y - center
    sigmas = _bandwidths(sigma, x, y)
    scales = 1.0 / (2.0 * sigmas**2)
    n, m = x.shape[0], y.shape[0]
    k_xx = kernel_sum(x, x, scales, same=True, backend=backend)
    k_yy = kernel_sum(y, y, scales, same=True, backend=backend)
    k_xy = kernel_sum(x, y, scales, same=False, backend=backend)
    if estimator == "biased":
        return k_xx / n**2 + k_yy / m**2 - 2.0 * k_xy / (n * m)
    # k(x_i, x_i) = 1 for every bandwidth: remove the diagonal exactly.
    n_kernels = scales.numel()
    return (
        (k_xx - n * n_kernels) / (n * (n - 1))
        + (k_yy - m * n_kernels) / (m * (m - 1))
        - 2.0 * k_xy / (n * m)
    )


@full_precision
def multimodal_mmd(
    features: Sequence[Tensor],
    sigma: Bandwidth = 1.0,
    *,
    estimator: Estimator = "biased",
    backend: Backend = "auto",
) -> Tensor:
    """Average pairwise MMD^2 over modalities (paper eq. 11): ``2/(M(M-1)) sum_{i<j} MMD^2(Z_i, Z_j)``.

    Args:
        features: ``M >= 2`` tensors ``(N_m, d)`` (same ``d``, same device and dtype).
        sigma, estimator, backend: as in :func:`gaussian_mmd`; ``"median"`` is taken per pair.

    Returns:
        0-dim tensor.
    """
    features = check_sequence(features, "features", min_len=2)
    check_choice(estimator, "estimator", ["biased", "unbiased"])
    min_rows = 2 if estimator == "unbiased" else 1
    named = {f"features[{i}]": check_tensor(f, f"features[{i}]", ndim=2, min_rows=min_rows) for i, f in enumerate(features)}
    check_same_kind(named)
    check_feature_widths(named)
    rows = sum(f.shape[0] for f in features)
    if len(features) > 2 and not isinstance(sigma, str) and resolve_backend(backend, rows, rows, features[0].device.type) == "dense":
        return _pooled_mmd(features, sigma, estimator)
    pairs = list(itertools.combinations(features, 2))
    total = sum(_gaussian_mmd(a, b, sigma, estimator, backend) for a, b in pairs)
    return total / len(pairs)  # type: ignore[operator]


def _pooled_mmd(features: Sequence[Tensor], sigma: float | Sequence[float], estimator: str) -> Tensor:
    """:func:`multimodal_mmd` from one kernel matrix of all the modalities' samples.

    For small sample sets (DecAlign: three of 32) the ``3 M (M - 1) / 2`` kernel sums of the
    pairs cost more in per-call overhead than in arithmetic; here each pair's three sums are
    blocks of one matrix. With ``A_ij`` the mean kernel between modalities ``i`` and ``j`` (for
    ``i = j`` and the unbiased estimator, without the diagonal), the pairs' MMD^2 add up to
    ``sum_{i<j} (A_ii + A_jj - 2 A_ij) = M trace(A) - sum(A)``. Centred on the pooled mean rather
    than each pair's, which changes only round-off.
    """
    dtype = compute_dtype(features[0].dtype)
    pooled = torch.cat([f.to(dtype) for f in features])
    pooled = pooled - pooled.mean(0).detach()
    scales = 1.0 / (2.0 * _bandwidths(sigma, pooled, pooled) ** 2)
    off_diagonal = ~torch.eye(pooled.shape[0], dtype=torch.bool, device=pooled.device)
    # Exactly 0 on the diagonal (a sample against itself), as the dense backend's same=True.
    distances = squared_distances(pooled, pooled) * off_diagonal
    kernel = sum(torch.exp(-distances * scale) for scale in scales.unbind())
    sizes = [f.shape[0] for f in features]
    if estimator == "unbiased":  # k(x_i, x_i) = 1 for every bandwidth: drop the diagonal exactly
        kernel = kernel * off_diagonal
        divisors = [n * (n - 1) for n in sizes]
    else:
        divisors = [n * n for n in sizes]
    # Block means: (M, rows) averaging weights; filled on the device (no host copy: CUDA graphs).
    weights = torch.block_diag(*[torch.full((1, n), 1.0 / n, dtype=dtype, device=pooled.device) for n in sizes])
    means = weights @ kernel @ weights.T  # A_ij for i != j; A_ii * n_i^2 / divisor_i on the diagonal
    within = torch.stack([means[i, i] * (n * n / divisor) for i, (n, divisor) in enumerate(zip(sizes, divisors))])
    n_modalities = len(features)
    between = (means * ~torch.eye(n_modalities, dtype=torch.bool, device=means.device)).sum()
    # M trace(A) - sum(A), with trace(A) = within.sum() and sum(A) = within.sum() + between.
    return ((n_modalities - 1) * within.sum() - between) / (n_modalities * (n_modalities - 1) / 2)
