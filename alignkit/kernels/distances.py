"""Squared Euclidean distances through matrix products (the form every kernel backend shares)."""

from __future__ import annotations

import torch
from torch import Tensor


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise squared distances ``||x_i - y_j||^2`` as ``|x|^2 + |y|^2 - 2 x.y``.

    Args:
        x: ``(..., N, d)``.
        y: ``(..., M, d)``.

    Returns:
        ``(..., N, M)``, clamped at 0 against round-off. The matrix-product form is what makes
        large problems fast; callers centre their data first so that the cancellation error
        stays proportional to the spread of the data, not to its offset from the origin.
    """
    x_sq = (x * x).sum(-1, keepdim=True)
    y_sq = (y * y).sum(-1, keepdim=True).transpose(-1, -2)
    return torch.baddbmm(x_sq + y_sq, x, y.transpose(-1, -2), alpha=-2.0).clamp_min(0.0) if x.ndim == 3 else torch.addmm(x_sq + y_sq, x, y.T, alpha=-2.0).clamp_min(0.0)
