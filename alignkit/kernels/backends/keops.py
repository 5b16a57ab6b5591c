"""KeOps backend: the Gaussian kernel sum as a symbolic ``LazyTensor`` reduction (pykeops).

Nothing of size ``N x M`` is stored; KeOps compiles the formula (and, on first backward, its
gradient) to C++/CUDA once per feature width and dtype, then caches it. Bandwidths enter as a
parameter, so a new ``sigma`` (e.g. the median heuristic on every batch) does not recompile.
On a GPU this is the fastest engine we know; on a CPU it saves memory but is slower than the
blocked backend (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import functools
import shutil

import torch
from torch import Tensor


class KeOpsUnavailable(RuntimeError):
    """pykeops is not installed, or no C++ compiler is there to build its kernels."""


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """``None`` when KeOps can run here, else why not (checked once per process)."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "no C++ compiler (g++) on PATH; KeOps compiles its kernels with one"
    try:
        import pykeops.torch  # noqa: F401
    except ImportError as error:
        return f"pykeops is not installed ({error}); pip install 'alignkit[keops]'"
    return None


def gaussian_kernel_sum(x: Tensor, y: Tensor, scales: Tensor, same: bool) -> Tensor:
    """Same contract as :func:`alignkit.kernels.backends.dense.gaussian_kernel_sum`.

    The diagonal of ``x`` against itself is exactly zero here without special handling:
    KeOps forms ``x_i - x_j`` explicitly.
    """
    reason = unavailable_reason()
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
