"""KeOps backend: the Gaussian kernel sum as a symbolic ``LazyTensor`` reduction (pykeops).

Nothing of size ``N x M`` is stored; KeOps compiles the formula (and, on first backward, its
gradient) to C++/CUDA once per feature width and dtype, then caches it. Bandwidths enter as a
parameter, so a new ``sigma`` (e.g. the median heuristic on every batch) does not recompile.
On a GPU this is the fastest engine we know; on a CPU it saves memory but is slower than the
blocked backend (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import torch
from torch import Tensor


class KeOpsUnavailable(RuntimeError):
    """pykeops is not installed, or no C++ compiler is there to build its kernels."""


PROBE_TIMEOUT_S = 600
"""How long the CUDA probe may compile before KeOps is declared unusable here."""

# Compiles and runs a Gaussian reduction and its gradient on the GPU, in a child process: KeOps
# builds on some CUDA set-ups kill the process (we saw a segmentation fault with CUDA 13.0), and
# a child's crash is a message, where our own would lose the user's run.
_CUDA_PROBE = """
import sys, torch, pykeops
pykeops.set_build_folder(sys.argv[1])
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
        import pykeops.torch  # noqa: F401
    except ImportError as error:
        return f"pykeops is not installed ({error}); pip install 'alignkit[keops]'"
    if device_type != "cuda":
        return None
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _CUDA_PROBE, os.path.abspath(pykeops.get_build_folder())],
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=os.environ.copy(), check=False,
        )
    except subprocess.TimeoutExpired:
        return f"the KeOps CUDA probe did not finish in {PROBE_TIMEOUT_S} s"
    if probe.returncode != 0:
        how = f"signal {-probe.returncode}" if probe.returncode < 0 else f"exit status {probe.returncode}"
        last = ((probe.stderr.strip() or probe.stdout.strip()).splitlines() or ["no output"])[-1]
        return f"a KeOps CUDA reduction failed in a probe process ({how}: {last})"
    return None


def gaussian_kernel_sum(x: Tensor, y: Tensor, scales: Tensor, same: bool) -> Tensor:
    """Same contract as :func:`alignkit.kernels.backends.dense.gaussian_kernel_sum`.

    The diagonal of ``x`` against itself is exactly zero here without special handling:
    KeOps forms ``x_i - x_j`` explicitly.
    """
    reason = unavailable_reason(x.device.type)
    if reason is not None:
        raise KeOpsUnavailable(f"backend: 'keops' cannot run: {reason}")
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
