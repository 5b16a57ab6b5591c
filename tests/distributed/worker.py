"""One process of the 2-process check: ``python worker.py RANK WORLD_SIZE INIT_FILE OUT_FILE``.

Computes every case on its shard with the default ``sync_dist`` (on under a process group),
averages the parameter gradients over the processes as DDP does, and saves the results.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import CASES, global_batch, run_case, shard  # noqa: E402


def main() -> None:
    rank, world, init_file, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    local = shard(global_batch(), rank)
    results = {}
    for name in CASES:
        result = run_case(name, local)
        for key in ("weight_grad", "bias_grad"):  # DDP's all-reduce mean of parameter gradients
            dist.all_reduce(result[key])
            result[key] /= world
        results[name] = result
    dist.destroy_process_group()
    torch.save(results, out)


if __name__ == "__main__":
    main()
