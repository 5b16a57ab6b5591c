"""Batch statistics over the global batch under ``torch.distributed`` (DDP).

alignkit's losses are statistics of a batch (moments, MMD, GMM prototypes, OT marginals). Under
data-parallel training each process sees only its shard, so computed naively they would become
per-process statistics. A module with ``sync_dist`` (on by default when a process group with more
than one process is initialised) first gathers its sample sets from every process, so each
process computes the loss of the **global** batch, value for value the single-process loss on the
concatenated shards (in rank order).

Gradients: :func:`gather_samples` is differentiable. Its backward returns ``world_size`` times the
gradient of the loss with respect to the local shard: the sum over the processes of what each
computed for that shard, since all computed the same loss (no collective runs in backward). DDP then averages the
parameter gradients over the processes, which gives exactly the gradient of the global-batch loss:
training with ``N`` processes equals training on the concatenated batch. Shards may differ in size
(the first dimension); every other dimension, the dtype and the device type must agree.

Every process must make the same calls in the same order (as DDP itself requires).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor
from torch import distributed as dist

_scope = threading.local()


def world_size() -> int:
    """Processes in the default group, 1 when ``torch.distributed`` is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sync_active(sync_dist: bool | None) -> bool:
    """Whether a module with this ``sync_dist`` setting gathers now: ``None`` means "when more than
    one process runs"; never inside a module that has already gathered (see :func:`gathered_scope`)."""
    if getattr(_scope, "gathered", False) or sync_dist is False:
        return False
    return world_size() > 1


@contextlib.contextmanager
def gathered_scope() -> Iterator[None]:
    """Inputs are global from here on: nested modules must not gather them again."""
    previous = getattr(_scope, "gathered", False)
    _scope.gathered = True
    try:
        yield
    finally:
        _scope.gathered = previous


class _GatherSamples(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], rank: int) -> Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank
        longest = max(sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded.contiguous())
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        # Every process computed the same loss from the same gathered batch, so the sum over the
        # processes of their gradients for this shard is world_size times this one: no
        # communication here (a collective inside backward could interleave with DDP's own).
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]] * len(ctx.sizes), None, None


def gather_samples(x: Tensor, name: str = "x") -> Tensor:
    """Concatenate ``x: (N_r, ...)`` of every process in rank order, ``(sum_r N_r, ...)``.

    Differentiable (see the module docstring); the identity when only one process runs.

    Raises:
        ValueError: the processes' tensors differ in a dimension other than the first, in dtype
            or in device type (named by ``name``).
    """
    size = world_size()
    if size == 1:
        return x
    if x.ndim == 0:
        raise ValueError(f"{name}: expected a tensor with a batch dimension to gather, received a 0-dim tensor")
    # One small exchange of every shard's shape and dtype: a mismatch is an error, not a hang.
    shards: list[tuple | None] = [None] * size
    dist.all_gather_object(shards, (int(x.shape[0]), tuple(x.shape[1:]), str(x.dtype), x.device.type))
    signatures = {shard[1:] for shard in shards}  # type: ignore[index]
    if len(signatures) > 1:
        raise ValueError(f"{name}: the processes' tensors must agree in all but the first dimension, dtype and device type; received {sorted(signatures)}")
    counts = [int(shard[0]) for shard in shards]  # type: ignore[index]
    if x.dtype == torch.bool:  # masks: not every backend reduces bool tensors
        return _GatherSamples.apply(x.to(torch.uint8), counts, dist.get_rank()).bool()
    return _GatherSamples.apply(x, counts, dist.get_rank())
