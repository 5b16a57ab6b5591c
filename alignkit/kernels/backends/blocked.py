"""Blocked backend: the Gaussian kernel sum in tiles, memory ``O((N + M) d + tile^2)``.

The sum ``S = sum_s sum_ij exp(-c_s ||x_i - y_j||^2)`` has the gradients

    dS/dx_i = sum_j W_ij (x_i - y_j) = x_i * rowsum(W)_i - (W y)_i,   W = sum_s -2 c_s K_s
    dS/dy_j = y_j * colsum(W)_j - (W^T x)_j

so one pass over the tiles computes the value *and* both gradients (two more matrix products per
tile), and backward only scales them by the incoming gradient. Nothing of size ``N x M`` is ever
held, and the kernel is never recomputed for backward. With ``same=True`` (``y`` is ``x``) only
the tiles on and above the diagonal are visited and the off-diagonal ones count twice.
Double backward is not supported (use ``backend="dense"`` for that).
"""

from __future__ import annotations

import torch
from torch import Tensor

TILE = 2048
"""Tile side on the CPU: a float32 tile is 16 MB; measured fastest of 512-4096 on a 2-core CPU at d = 64."""
CUDA_TILE = 8192
"""Tile side on a GPU: a float32 tile is 256 MB; fewer, larger tiles keep the GPU busy between launches."""


def _tile_kernel(
    x: Tensor, y: Tensor, x_sq: Tensor, y_sq: Tensor, scales: list[float], diagonal: bool, need_grad: bool
) -> tuple[Tensor, Tensor | None, float]:
    """One tile: its kernel sum, and ``(V, f)`` with ``W = f * V`` the gradient weights.

    ``-d^2`` comes from one fused ``addmm``; for a single bandwidth the kernel is built in place
    in the same buffer and doubles as ``V`` (``f = -2 c``), so a tile costs one matrix product,
    three elementwise passes and the exponential.
    """
    neg_d2 = torch.addmm(-(x_sq[:, None] + y_sq[None, :]), x, y.T, alpha=2.0).clamp_max_(0.0)
    if diagonal:
        neg_d2.fill_diagonal_(0.0)
    if len(scales) == 1:
        kernel = neg_d2.mul_(scales[0]).exp_()
        return kernel.sum(), kernel if need_grad else None, -2.0 * scales[0]
    total = neg_d2.new_zeros(())
    weights = torch.zeros_like(neg_d2) if need_grad else None
    for scale in scales:
        kernel = torch.exp(neg_d2 * scale)
        total = total + kernel.sum()
        if weights is not None:
            weights.add_(kernel, alpha=-2.0 * scale)
    return total, weights, 1.0


def _weighted_gradient(weights: Tensor, factor: float, rows: Tensor, others: Tensor, others_ones: Tensor) -> Tensor:
    """``f * (rows * rowsum(V) - V @ others)``; one product gives both (a column of ones appended)."""
    product = weights @ others_ones  # (R, d + 1): V @ others and rowsum(V)
    return factor * (rows * product[:, -1:] - product[:, :-1])


class _BlockedKernelSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, scales: Tensor, same: bool, tile: int) -> Tensor:  # type: ignore[override]
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_grad = need_x or need_y
        x_sq, y_sq = (x * x).sum(-1), (y * y).sum(-1)
        scale_values = scales.tolist()  # one host sync per call, not one per tile
        x_ones = torch.cat([x, torch.ones_like(x[:, :1])], 1) if need_grad else x
        y_ones = torch.cat([y, torch.ones_like(y[:, :1])], 1) if need_grad else y
        grad_x = torch.zeros_like(x) if need_grad else None
        grad_y = torch.zeros_like(y) if need_grad and not same else None
        total = x.new_zeros(())
        for i in range(0, x.shape[0], tile):
            xi, xi_sq = x[i : i + tile], x_sq[i : i + tile]
            for j in range(i if same else 0, y.shape[0], tile):
                yj, yj_sq = y[j : j + tile], y_sq[j : j + tile]
                on_diagonal = same and i == j
                value, weights, factor = _tile_kernel(xi, yj, xi_sq, yj_sq, scale_values, on_diagonal, need_grad)
                # A tile above the diagonal stands for itself and its mirror image.
                total = total + (2.0 * value if same and not on_diagonal else value)
                if weights is None:
                    continue
                row_part = _weighted_gradient(weights, factor, xi, yj, y_ones[j : j + tile])
                col_part = None if on_diagonal else _weighted_gradient(weights.T, factor, yj, xi, x_ones[i : i + tile])
                if same:
                    # dS/dx_a = 2 sum_b W_ab (x_a - x_b): this tile's rows and, above the
                    # diagonal, its mirror's rows (this tile's columns).
                    grad_x[i : i + tile] += 2.0 * row_part
                    if col_part is not None:
                        grad_x[j : j + tile] += 2.0 * col_part
                else:
                    grad_x[i : i + tile] += row_part
                    grad_y[j : j + tile] += col_part
        ctx.save_for_backward(*(t for t in (grad_x, grad_y) if t is not None))
        ctx.same = same
        ctx.need = (need_x, need_y)
        return total

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        if not saved:
            return None, None, None, None, None
        grad_x = saved[0] * grad_output if ctx.need[0] else None
        grad_y = None if ctx.same or not ctx.need[1] else saved[1] * grad_output
        return grad_x, grad_y, None, None, None


def gaussian_kernel_sum(x: Tensor, y: Tensor, scales: Tensor, same: bool, tile: int | None = None) -> Tensor:
    """Same contract as :func:`alignkit.kernels.backends.dense.gaussian_kernel_sum`; ``tile``
    defaults to :data:`CUDA_TILE` on a GPU and :data:`TILE` elsewhere (read at call time, so
    tests can shrink them)."""
    return _BlockedKernelSum.apply(x, y, scales, same, tile or (CUDA_TILE if x.is_cuda else TILE))
