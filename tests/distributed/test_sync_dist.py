"""Under torch.distributed (2 CPU processes, gloo) every batch-statistic loss is the loss of the
global batch: value, parameter gradients after DDP's averaging, and input gradients, equal to one
process computing on the concatenated shards (shards of unequal size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignkit.distributed import gather_samples, sync_active, world_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import CASES, SHARDS, global_batch, run_case  # noqa: E402

WORKER = Path(__file__).resolve().parent / "worker.py"


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    outputs = [folder / f"rank{r}.pt" for r in range(2)]
    processes = [
        subprocess.Popen([sys.executable, str(WORKER), str(r), "2", str(folder / "init"), str(outputs[r])], stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    errors = [p.communicate(timeout=600)[1] for p in processes]
    for p, err in zip(processes, errors):
        assert p.returncode == 0, err[-3000:]
    return [torch.load(o, weights_only=True) for o in outputs]


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_process_on_the_concatenated_batch(two_processes: list[dict], name: str) -> None:
    single = run_case(name, global_batch())
    for rank, results in enumerate(two_processes):
        got = results[name]
        torch.testing.assert_close(got["loss"], single["loss"], rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(got["weight_grad"], single["weight_grad"], rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(got["bias_grad"], single["bias_grad"], rtol=1e-5, atol=1e-12)
        # Each process's own rows get world_size x their share, which DDP's averaging divides out.
        start = sum(SHARDS[:rank])
        torch.testing.assert_close(got["input_grad"] / 2, single["input_grad"][:, start : start + SHARDS[rank]], rtol=1e-5, atol=1e-12)


def test_one_process_is_untouched() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert world_size() == 1 and not sync_active(None) and not sync_active(True)
    assert gather_samples(x) is x
