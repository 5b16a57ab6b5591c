"""Data-parallel training with ``torchrun``: process group, device, sampler, rank-zero helpers.

``torchrun --nproc_per_node=N -m alignkit_models.cli train ...`` (or the ``alignkit`` script)
sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_from_environment` joins the group
(NCCL on CUDA, gloo on the CPU). Each process trains a ``DistributedDataParallel`` copy of the
model on its shard of every global batch; the alignment losses gather their sample sets across
the processes (:mod:`alignkit.distributed`), so the objective is that of the global batch.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import distributed as dist

from alignkit.distributed import world_size


def init_from_environment(device: str) -> torch.device:
    """Join the process group ``torchrun`` describes (if any, and not joined yet); returns the
    device this process uses (``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun)."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    target = torch.device(device)
    if launched and target.type == "cuda" and target.index is None:
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(target)
    if launched and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return target


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    """Rank zero (or the only process): the one that writes files and shows progress."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank zero's ``value`` on every process."""
    if world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_objects(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order."""
    if world_size() == 1:
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def local_batch_size(batch_size: int) -> int:
    """Rows per process of a global batch of ``batch_size`` (which the processes must divide)."""
    processes = world_size()
    if batch_size % processes:
        raise ValueError(f"protocol.batch_size: the global batch ({batch_size}) must be divisible by the number of processes ({processes})")
    return batch_size // processes


class GlobalBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Global batches of a shuffled pass over ``n`` samples, each process taking its slice.

    Every process draws the same permutation from ``generator`` (same seed everywhere), cuts it
    into global batches of ``batch_size`` and yields rows ``[r B / W, (r + 1) B / W)`` of each
    (``torch.tensor_split``: a ragged last batch is shared as evenly as possible; one with fewer
    rows than processes is left out). With one process this is exactly ``DataLoader(shuffle=True,
    generator=generator, batch_size=batch_size, drop_last=drop_last)``: the generator is drawn as
    ``RandomSampler`` draws it (two permutations per pass, the second unused), so single-process
    runs keep their batch order and ``N`` processes train on the batches one process would.
    """

    def __init__(self, n: int, batch_size: int, *, drop_last: bool, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.drop_last, self.generator = n, batch_size, drop_last, generator
        self.rank, self.world = rank(), world_size()

    def _global_batches(self, order: list[int]) -> list[list[int]]:
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        if batches and len(batches[-1]) < self.batch_size and (self.drop_last or len(batches[-1]) < self.world):
            batches.pop()
        return batches

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        for batch in self._global_batches(order):
            yield torch.tensor_split(torch.tensor(batch), self.world)[self.rank].tolist()
        torch.randperm(self.n, generator=self.generator)  # RandomSampler's second (empty-sliced) draw

    def __len__(self) -> int:
        return len(self._global_batches(list(range(self.n))))
