"""Per-modality temporal 1-D convolution to a common width (DecAlign section 3.1)."""

from __future__ import annotations

from torch import Tensor, nn


class TemporalProjection(nn.Module):
    """``(B, T, d_in) -> (B, T, d_out)`` by a Conv1d over time that keeps ``T`` (odd kernels).

    Args:
        in_dim: input feature width ``d_in``.
        out_dim: common width ``d``.
        kernel_size: temporal receptive field (1 = per-step linear map); must be odd so that
            ``padding = kernel_size // 2`` preserves the length, as the paper requires.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd integer >= 1, received {kernel_size}")
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)
