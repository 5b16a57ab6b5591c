"""Benchmark options and the peak-memory probe shared by every group.

    pytest benchmarks/ --benchmark-disable            smoke: smallest size of each group, once
    pytest benchmarks/ --full --benchmark-only        every size, timed (by hand; ~20 min on 2 CPU cores)
    pytest benchmarks/ --full --device cuda ...       the same on a GPU

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` around the call; on the CPU a thread
samples this process's resident set (``/proc/self/statm``) every 2 ms during the call, and the
peak minus the resident set just before the call is recorded. Both go to ``extra_info``.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

try:  # KeOps' cache inside the checkout, as for the tests
    import pykeops

    pykeops.set_build_folder(str(Path(__file__).resolve().parent.parent / ".keops_build"))
except ImportError:
    pass


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device for the benchmarks (cpu or cuda)")
    parser.addoption("--full", action="store_true", help="every size (default: the smallest of each group)")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.exit("--device cuda: no CUDA device here", returncode=2)
    return torch.device(name)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test with a ``case`` argument runs the cases its module's ``cases(full)`` lists:
    every size with ``--full``, the smallest of each group otherwise (no skipped tests)."""
    if "case" in metafunc.fixturenames:
        cases = metafunc.module.cases(bool(metafunc.config.getoption("--full")))
        metafunc.parametrize("case", cases, ids=[str(c) for c in cases])


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def _trim() -> None:
    """Return freed heap to the OS so that the baseline is today's, not yesterday's, peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def peak_extra_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Bytes of memory ``fn()`` needs beyond what was in use before it (see module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _trim()
    baseline = _rss()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, _rss()) - baseline


def synchronized(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` followed by a device synchronisation, so that timings include the GPU work."""
    if device.type != "cuda":
        return fn

    def run() -> Any:
        result = fn()
        torch.cuda.synchronize(device)
        return result

    return run


def measure(benchmark: Any, fn: Callable[[], Any], device: torch.device, *, rounds: int = 3, **info: Any) -> None:
    """Time ``fn`` with pytest-benchmark and record its peak extra memory and ``info``."""
    fn = synchronized(fn, device)
    benchmark.extra_info.update(info)
    benchmark.extra_info["device"] = str(device)
    # The memory probe's call is also the warm-up (allocator, KeOps compilation, lazy imports).
    benchmark.extra_info["peak_extra_bytes"] = peak_extra_memory(fn, device)
    benchmark.pedantic(fn, rounds=rounds, iterations=1)
