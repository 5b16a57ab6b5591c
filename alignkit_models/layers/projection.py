"""Per-modality temporal 1-D convolution to a common width (DecAlign section 3.1)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn


class TemporalProjection(nn.Module):
    """``(B, T, d_in) -> (B, T', d_out)`` by a Conv1d over time without bias.

    Args:
        in_dim: input feature width ``d_in``.
        out_dim: common width ``d``.
        kernel_size: temporal receptive field (1 = per-step linear map).
        padding: ``"same"`` keeps ``T`` (odd kernels only; the paper's "preserves the temporal
            dimension") or ``"valid"``, no padding, ``T' = T - k + 1`` (the authors' code).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 1, padding: Literal["same", "valid"] = "same") -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding: expected 'same' or 'valid', received {padding!r}")
        if kernel_size < 1 or (padding == "same" and kernel_size % 2 == 0):
            raise ValueError(f"kernel_size: expected an integer >= 1 (odd for 'same' padding), received {kernel_size}")
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, padding=kernel_size // 2 if padding == "same" else 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)
