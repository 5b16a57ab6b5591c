"""The global-batch sampler: one process gets DataLoader's own shuffled batches, N processes split them."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from alignkit_models.training import distributed
from alignkit_models.training.distributed import GlobalBatchSampler


@pytest.mark.parametrize(("n", "batch", "drop_last"), [(10, 4, False), (10, 4, True), (12, 4, False), (3, 8, False)])
def test_one_process_yields_the_batches_of_a_shuffling_data_loader(n: int, batch: int, drop_last: bool) -> None:
    data = list(range(n))
    reference = DataLoader(data, batch_size=batch, shuffle=True, drop_last=drop_last, generator=torch.Generator().manual_seed(5))
    ours = DataLoader(data, batch_sampler=GlobalBatchSampler(n, batch, drop_last=drop_last, generator=torch.Generator().manual_seed(5)),
                      generator=torch.Generator().manual_seed(5))
    ours.generator = ours.batch_sampler.generator  # one generator, as the trainer has
    reference_batches = [[b.tolist() for b in reference] for _ in range(3)]  # three epochs: the generator advances alike
    our_batches = [[b.tolist() for b in ours] for _ in range(3)]
    assert our_batches == reference_batches
    assert len(ours) == len(reference)


def test_processes_split_each_global_batch_in_rank_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    shards = []
    for r in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shards.append(list(GlobalBatchSampler(10, 4, drop_last=False, generator=torch.Generator().manual_seed(5))))
    monkeypatch.setattr(distributed, "world_size", lambda: 1)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    whole = list(GlobalBatchSampler(10, 4, drop_last=False, generator=torch.Generator().manual_seed(5)))
    assert [a + b for a, b in zip(*shards)] == whole
    assert [len(a) for a in shards[0]] == [2, 2, 1]


def test_a_global_batch_the_processes_cannot_divide_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match="protocol.batch_size"):
        distributed.local_batch_size(32)
