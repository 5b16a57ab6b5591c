"""KeOps backend: symbolic ``LazyTensor`` reductions (pykeops) for the Gaussian kernel sum (MMD),
the diagonal-Gaussian log-densities of the GMM E-step and the calibration distances.

Nothing of size ``N x M`` (or ``N x K x d``) is stored; KeOps compiles the formula (and, on
first backward, its gradient) to C++/CUDA once per feature width and dtype, then caches it. Bandwidths enter as a
parameter, so a new ``sigma`` (e.g. the median heuristic on every batch) does not recompile.
It saves memory, but was slower than the blocked backend on a CPU and on an H200 GPU too (2.5x at
N = M = 100k, in a sixth of the memory; see ``benchmarks/README.md``), so it runs only on request.
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor


class KeOpsUnavailable(RuntimeError):
    """pykeops is not installed, or no C++ compiler is there to build its kernels."""


PROBE_TIMEOUT_S = 600
"""How long the CUDA probe may compile before KeOps is declared unusable here."""

UNFINISHED_AFTER_S = 900
"""A formula's files in the build folder without its ``.nfo``, all older than this, are taken for
a build that died (a compile in progress elsewhere writes its ``.nfo`` within a minute or two)."""

_FORMULA_HASH = re.compile(r"(?<![0-9a-f])[0-9a-f]{10}(?![0-9a-f])")


def remove_unfinished_builds(folder: str | os.PathLike[str], older_than_s: float = UNFINISHED_AFTER_S) -> list[str]:
    """Delete the files of formulas whose build never finished; returns the hashes removed.

    KeOps names each formula's files after a 10-hex-digit hash (``<hash>.cpp``,
    ``pykeops_cpp_<hash>...so``, ``cubin_<hash>``, ...) and writes ``<hash>.nfo`` last. When a
    process dies while compiling (KeOps' NVRTC step crashed this way with CUDA 13.0), the other
    files stay, and every later use of that formula fails with ``FileNotFoundError`` on the
    missing ``.nfo``: the folder is broken until those files go. Files younger than
    ``older_than_s`` are left alone, since another process may be compiling them right now.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    files_by_hash: dict[str, list[Path]] = {}
    for path in root.iterdir():
        if path.is_file() and not path.name.endswith(".nfo"):
            for digest in set(_FORMULA_HASH.findall(path.name)):
                files_by_hash.setdefault(digest, []).append(path)
    now = time.time()
    removed = []
    for digest, paths in sorted(files_by_hash.items()):
        if (root / f"{digest}.nfo").exists() or any(now - path.stat().st_mtime < older_than_s for path in paths):
            continue
        for path in paths:
            path.unlink(missing_ok=True)
        removed.append(digest)
    return removed

_GPU_COMPILER_MODULE = "keopscore.binders.nvrtc.Gpu_link_compile"


def set_build_folder(path: str | os.PathLike[str]) -> None:
    """``pykeops.set_build_folder(path)`` that also moves KeOps' CUDA kernels to ``path``.

    pykeops 2.3 reads the build folder of its CUDA kernels (``cubin_<hash>``) and of its NVRTC
    engine once, when it is imported on a machine with CUDA; ``pykeops.set_build_folder`` then moves
    everything else. A formula's ``<hash>.nfo`` is looked for in the new folder while its kernel is
    looked for in the old one, so a kernel compiled earlier in the old folder (by any process that
    used the default) counts as built, and every use of that formula fails with
    ``FileNotFoundError: ... <hash>.nfo``. This happened on an H200 with the build folder that
    our tests pin. Setting that module's folder first makes both agree, and the engine is built in
    ``path`` when it is missing there; without CUDA the module is never loaded and nothing changes.
    """
    import pykeops

    folder = os.path.abspath(path)
    gpu_compiler = sys.modules.get(_GPU_COMPILER_MODULE)
    if gpu_compiler is not None:
        gpu_compiler.build_folder = folder
        # pykeops.set_build_folder does not build the engine in a new folder (seen on the H200).
        os.makedirs(folder, exist_ok=True)
        if not os.path.exists(gpu_compiler.jit_compile_dll()):
            gpu_compiler.Gpu_link_compile.compile_jit_compile_dll()
    pykeops.set_build_folder(folder)


# Compiles and runs a Gaussian reduction and its gradient on the GPU, in a child process: KeOps
# builds on some CUDA set-ups kill the process (we saw a segmentation fault with CUDA 13.0), and
# a child's crash is a message, where our own would lose the user's run.
_CUDA_PROBE = """
import sys, torch
from alignkit.kernels.backends.keops import set_build_folder
set_build_folder(sys.argv[1])
from pykeops.torch import LazyTensor
x = torch.randn(16, 3, device="cuda", requires_grad=True)
k = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(x[None, :, :]))).exp().sum(dim=1).sum()
k.backward()
assert torch.isfinite(x.grad).all()
"""


@functools.lru_cache(maxsize=2)
def unavailable_reason(device_type: str = "cpu") -> str | None:
    """``None`` when KeOps can run on ``device_type`` here, else why not (checked once per process).

    On CUDA this runs a small probe in a child process (seconds once compiled; up to a minute
    the first time), so that a KeOps build that crashes cannot take the caller down.
    """
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "no C++ compiler (g++) on PATH; KeOps compiles its kernels with one"
    try:
        import pykeops
        import pykeops.torch  # the bindings: their import fails where KeOps cannot build
    except ImportError as error:
        return f"pykeops is not installed ({error}); pip install 'alignkit[keops]'"
    remove_unfinished_builds(pykeops.get_build_folder())
    if device_type != "cuda":
        return None
    try:
        probe = subprocess.run(
            # -u: unbuffered, so the last line printed before a crash reaches us.
            [sys.executable, "-u", "-c", _CUDA_PROBE, os.path.abspath(pykeops.get_build_folder())],
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired:
        return f"the KeOps CUDA probe did not finish in {PROBE_TIMEOUT_S} s"
    if probe.returncode != 0:
        how = f"signal {-probe.returncode}" if probe.returncode < 0 else f"exit status {probe.returncode}"
        last = ((probe.stderr.strip() or probe.stdout.strip()).splitlines() or ["no output"])[-1]
        reason = f"a KeOps CUDA reduction failed in a probe process ({how}: {last})"
        if probe.returncode == -11:
            # Seen with CUDA 13.0 on H100/H200: KeOps' NVRTC binder crashed inside C++ stream code,
            # and putting the system libstdc++ first in the process made it run (benchmarks/README.md).
            reason += "; try starting Python with LD_PRELOAD=$(g++ -print-file-name=libstdc++.so.6)"
        return reason
    return None


def gaussian_kernel_sum(x: Tensor, y: Tensor, scales: Tensor, same: bool) -> Tensor:
    """Same contract as :func:`alignkit.kernels.backends.dense.gaussian_kernel_sum`.

    The diagonal of ``x`` against itself is exactly zero here without special handling:
    KeOps forms ``x_i - x_j`` explicitly.
    """
    _require(x)
    from pykeops.torch import LazyTensor

    x_i = LazyTensor(x[:, None, :].contiguous())
    y_j = LazyTensor(y[None, :, :].contiguous())
    neg_d2 = -((x_i - y_j) ** 2).sum(-1)
    total = x.new_zeros(())
    for scale in scales:
        # A 1-D tensor becomes a KeOps parameter: one compiled kernel serves every bandwidth.
        kernel = (neg_d2 * LazyTensor(scale.reshape(1))).exp()
        total = total + kernel.sum(dim=1).sum()
    return total


def _require(x: Tensor) -> None:
    reason = unavailable_reason(x.device.type)
    if reason is not None:
        raise KeOpsUnavailable(f"backend: 'keops' cannot run: {reason}")


def _component_selector(n_components: int, like: Tensor, batch: tuple[int, ...]):
    """``onehot(j)`` as a ``j``-indexed LazyTensor: picks entry ``j`` of a per-row ``K``-vector,
    so that a sum over ``j`` writes row ``i``'s ``K`` values into an ``(N, K)`` result."""
    from pykeops.torch import LazyTensor

    index = torch.arange(n_components, dtype=like.dtype, device=like.device).expand(*batch, n_components)
    return LazyTensor(index[..., None, :, None].contiguous()).one_hot(n_components)


def diag_gaussian_log_density(x: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """``log N(x_n; mu_k, diag(v_k))`` for ``x (G, N, d)``, ``means, variances (G, K, d)`` -> ``(G, N, K)``.

    The ``(N, K)`` result is the only thing of its size; no ``(N, K, d)`` difference is stored.
    KeOps compiles a formula per differentiable variable (~12 s each on a 2-core CPU), so the
    means and precisions travel as one ``j``-variable and the per-component constant is added
    outside: two gradient formulas instead of four, the same values.
    """
    _require(x)
    from pykeops.torch import LazyTensor

    batch, n_components, dim = x.shape[:-2], means.shape[-2], x.shape[-1]
    constant = -0.5 * (dim * math.log(2.0 * math.pi) + variances.log().sum(-1))  # (G, K)
    x_i = LazyTensor(x[..., :, None, :].contiguous())
    parameters_j = LazyTensor(torch.cat([means, 1.0 / variances], -1)[..., None, :, :].contiguous())
    mean_j, precision_j = parameters_j[:dim], parameters_j[dim:]
    half_quadratic = -0.5 * ((x_i - mean_j) ** 2 * precision_j).sum(-1)
    return constant[..., None, :] + (half_quadratic * _component_selector(n_components, x, batch)).sum(dim=len(batch) + 1)


def weighted_squared_distance(features: Tensor, responsibilities: Tensor, targets: Tensor) -> Tensor:
    """``sum_n sum_k w_nk ||x_n - t_k||^2`` for ``x (N, d)``, ``w (N, K)``, ``t (K, d)`` (a 0-dim sum).

    Features and responsibilities travel as one ``i``-variable: one gradient formula to compile
    for both.
    """
    _require(features)
    from pykeops.torch import LazyTensor

    n_components, dim = targets.shape
    rows_i = LazyTensor(torch.cat([features, responsibilities], -1)[:, None, :].contiguous())
    x_i, w_i = rows_i[:dim], rows_i[dim:]
    t_j = LazyTensor(targets[None, :, :].contiguous())
    weight = (w_i * _component_selector(n_components, features, ())).sum(-1)  # w_nk, picked by j = k
    return (weight * x_i.sqdist(t_j)).sum(dim=1).sum()
