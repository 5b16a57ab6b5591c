"""Benchmark options, the peak-memory probe and the run's environment, shared by every group.

    pytest benchmarks/ --benchmark-disable            smoke: smallest size of each group, once
    pytest benchmarks/ --full --benchmark-only        every size, timed (by hand)
    pytest benchmarks/ --full --device cuda ...       the same on a GPU
    bash benchmarks/run_cpu.sh                        the stored CPU results: clean tree, one JSON per module

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` around the call; on the CPU a thread
samples this process's resident set (``/proc/self/statm``) every 2 ms during the call, and the
peak minus the resident set just before the call is recorded. It goes to ``extra_info["peak_mib"]``
in MiB (2^20 bytes), the one memory unit of this suite.

Every JSON's ``machine_info`` also records the torch version, torch's intra-op and inter-op
thread counts, ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` as set, the BLAS/OpenMP pools' threads
(threadpoolctl), the device and the peers' versions (:func:`pytest_benchmark_update_machine_info`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

try:  # KeOps' cache inside the checkout, as for the tests
    from alignkit.kernels.backends.keops import set_build_folder

    set_build_folder(Path(__file__).resolve().parent.parent / ".keops_build")
except ImportError:  # no pykeops
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


_PEER_PACKAGES = ("numpy", "scikit-learn", "POT", "geomloss", "pykeops", "pytest-benchmark")
MIB = 2**20


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """What a timing depends on besides the code: torch build and threads, BLAS threads, peers."""
    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl reports)

    machine_info["torch_version"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["torch_interop_threads"] = torch.get_num_interop_threads()
    machine_info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    machine_info["mkl_num_threads"] = os.environ.get("MKL_NUM_THREADS")
    machine_info["cpu_count"] = os.cpu_count()
    try:
        from threadpoolctl import threadpool_info

        machine_info["thread_pools"] = [
            {"api": pool.get("internal_api"), "threads": pool.get("num_threads"), "version": pool.get("version")} for pool in threadpool_info()
        ]
    except ImportError:
        machine_info["thread_pools"] = None
    device = str(config.getoption("--device"))
    machine_info["bench_device"] = device
    if device.startswith("cuda") and torch.cuda.is_available():
        machine_info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        machine_info["cuda_version"] = torch.version.cuda
    versions = {}
    for package in _PEER_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    machine_info["package_versions"] = versions


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
    """Time ``fn`` with pytest-benchmark and record its peak extra memory (MiB) and ``info``."""
    fn = synchronized(fn, device)
    benchmark.extra_info.update(info)
    benchmark.extra_info["device"] = str(device)
    # The memory probe's call is also the warm-up (allocator, KeOps compilation, lazy imports).
    benchmark.extra_info["peak_mib"] = round(peak_extra_memory(fn, device) / MIB, 3)
    benchmark.pedantic(fn, rounds=rounds, iterations=1)


@contextlib.contextmanager
def count_calls(module: Any, *names: str) -> Iterator[dict[str, int]]:
    """Count the calls of the functions ``module.<name>`` while the block runs (for the passes and
    iterations that a like-for-like case must make; not used around timed calls)."""
    counts = dict.fromkeys(names, 0)
    originals = {name: getattr(module, name) for name in names}

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    for name, fn in originals.items():
        setattr(module, name, counted(name, fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)
