"""Dense backend: materialises the ``(N, M)`` kernel matrix. The reference every backend matches."""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.kernels.distances import squared_distances


def gaussian_kernel_sum(x: Tensor, y: Tensor, scales: Tensor, same: bool) -> Tensor:
    """``sum_s sum_ij exp(-scales[s] * ||x_i - y_j||^2)`` for ``x: (N, d)``, ``y: (M, d)``.

    ``same=True`` says ``y`` is ``x``: the diagonal distances are then exactly zero instead of
    round-off, so that the unbiased estimator can subtract the diagonal exactly.
    """
    d2 = squared_distances(x, y)
    if same:
        off_diagonal = ~torch.eye(d2.shape[0], dtype=torch.bool, device=d2.device)
        d2 = d2 * off_diagonal
    return sum(torch.exp(-d2 * scale).sum() for scale in scales.unbind())  # type: ignore[return-value]
