"""Masked recurrent encoding and a shared time base, used by the recurrent baselines.

Sequences are batch-first with padding at the end; masks are ``(B, T)`` bool, True on real
steps, and every sequence has at least one real step. Nothing here lets a padded step reach an
output: recurrent layers run on packed sequences, and pooling/resampling give padding weight 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from alignkit.decoupling import masked_mean


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """``x (B, T, d)`` with padded steps set to 0 (``where``, so even inf/NaN padding is removed)."""
    return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


def lengths_from_mask(mask: Tensor) -> Tensor:
    """Real lengths ``(B,)`` as int64 on the CPU, the form packing expects (at least 1)."""
    return mask.sum(1).clamp_min(1).cpu()


def run_packed(rnn: nn.RNNBase, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Run a batch-first RNN over the real steps only.

    Args:
        rnn: an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` built with ``batch_first=True``.
        x: ``(B, T, d)``.
        mask: ``(B, T)``.

    Returns:
        ``outputs (B, T, H * directions)``, zero on padded steps, and the final hidden state
        ``(layers * directions, B, H)`` taken at each sample's last real step.
    """
    packed = pack_padded_sequence(x, lengths_from_mask(mask), batch_first=True, enforce_sorted=False)
    outputs, state = rnn(packed)
    hidden = state[0] if isinstance(state, tuple) else state
    padded, _ = pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])
    return padded, hidden


class SequenceEncoder(nn.Module):
    """One-directional LSTM over the real steps, pooled to a vector: ``(B, T, d_in) -> (B, hidden)``.

    Args:
        in_dim: input width.
        hidden_dim: LSTM width.
        pooling: ``"mean"`` (masked time mean of the outputs) or ``"last"`` (hidden state at
            the last real step).
        num_layers: stacked LSTM layers.
        dropout: dropout between stacked layers (ignored for one layer).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        *,
        pooling: Literal["mean", "last"] = "mean",
        num_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling: expected 'mean' or 'last', received {pooling!r}")
        self.pooling = pooling
        self.lstm = nn.LSTM(
            in_dim, hidden_dim, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        outputs, hidden = run_packed(self.lstm, x, mask)
        return masked_mean(outputs, mask) if self.pooling == "mean" else hidden[-1]


def resample_segments(x: Tensor, mask: Tensor, n_steps: int) -> Tensor:
    """Put a padded sequence on a fixed time base of ``n_steps`` steps: ``(B, T, d) -> (B, n_steps, d)``.

    Each sample's real span ``[0, L)`` is cut into ``n_steps`` equal segments; step ``t`` is the
    mean of ``x`` over ``[floor(t L / n), max(floor((t + 1) L / n), floor(t L / n) + 1))``. For
    ``L >= n`` that is a mean over about ``L / n`` steps; for ``L < n`` each output step copies
    one real step (nearest-step upsampling). Padded steps get weight 0. Every output step is real.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps: expected an integer >= 1, received {n_steps}")
    lengths = mask.sum(1).clamp_min(1)
    boundaries = torch.div(
        torch.arange(n_steps + 1, device=x.device)[None, :] * lengths[:, None], n_steps, rounding_mode="floor"
    )
    start = boundaries[:, :-1]
    end = torch.maximum(boundaries[:, 1:], start + 1)
    steps = torch.arange(x.shape[1], device=x.device)[None, None, :]
    inside = (steps >= start.unsqueeze(-1)) & (steps < end.unsqueeze(-1))
    weights = inside.to(x.dtype)
    weights = weights / weights.sum(-1, keepdim=True)
    return weights @ zero_padding(x, mask)


def align_modalities(
    features: Mapping[str, Tensor], masks: Mapping[str, Tensor], n_steps: int
) -> tuple[dict[str, Tensor], Tensor]:
    """One time base for all modalities, for models that combine modalities step by step.

    Already aligned inputs (the same padded length and identical masks) keep their steps and
    their shared mask. Otherwise every modality is resampled to ``n_steps`` steps with
    :func:`resample_segments`, and the shared mask is all True. Padded steps come back as 0.

    Args:
        features: ``features[m] (B, T_m, d_m)``.
        masks: ``masks[m] (B, T_m)``.
        n_steps: the common length for unaligned inputs.

    Returns:
        ``({m: (B, T*, d_m)}, mask (B, T*))``.
    """
    names = list(features)
    first = masks[names[0]]
    if all(masks[m].shape == first.shape and torch.equal(masks[m], first) for m in names):
        return {m: zero_padding(features[m], first) for m in names}, first
    resampled = {m: resample_segments(features[m], masks[m], n_steps) for m in names}
    shared = torch.ones(first.shape[0], n_steps, dtype=torch.bool, device=first.device)
    return resampled, shared
