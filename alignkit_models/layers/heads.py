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
        hidden_dim: width ``H`` of ``W1 h``; None = ``D`` (MulT). ``W1`` is ``(H, D)`` and
            ``W2`` is ``(D, H)`` (DMD's released code: ``H = d`` on flattened sequences).
    """

    def __init__(self, dim: int, out_dim: int, dropout: float = 0.0, hidden_dim: int | None = None) -> None:
        super().__init__()
        if hidden_dim is not None and (isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1):
            raise ValueError(f"hidden_dim: expected a positive integer or None, received {hidden_dim!r}")
        hidden = dim if hidden_dim is None else hidden_dim
        self.proj1 = nn.Linear(dim, hidden)
        self.proj2 = nn.Linear(hidden, dim)
        self.out = nn.Linear(dim, out_dim)
        self.dropout = nn.Dropout(dropout)

    def hidden(self, h: Tensor) -> Tensor:
        """The residual block's output ``(B, D)``, i.e. the input of the final Linear ``out``."""
        return h + self.proj2(self.dropout(F.relu(self.proj1(h))))

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.hidden(h))
