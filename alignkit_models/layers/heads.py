"""MulT's residual output head, shared by the MulT-style baselines (MulT, DMD, CGGM)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ResidualHead(nn.Module):
    """``h (B, D) -> logits (B, out_dim)``: ``out(h + W2 dropout(relu(W1 h)))``.

    Args:
        dim: input width ``D``.
        out_dim: output width.
        dropout: dropout after the ReLU (MulT's ``out_dropout``).
    """

    def __init__(self, dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj1 = nn.Linear(dim, dim)
        self.proj2 = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, out_dim)
        self.dropout = nn.Dropout(dropout)

    def hidden(self, h: Tensor) -> Tensor:
        """The residual block's output ``(B, D)``, i.e. the input of the final Linear ``out``."""
        return h + self.proj2(self.dropout(F.relu(self.proj1(h))))

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.hidden(h))
