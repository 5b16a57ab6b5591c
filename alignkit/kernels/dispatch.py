"""The one place that chooses a kernel-reduction backend.

For the Gaussian kernel sums of MMD, ``backend="auto"`` follows this table (first matching row
wins); the reductions against ``K`` prototypes (GMM E-step, calibration) follow
:func:`resolve_rowwise_backend`.

=============================================  ===========
condition                                      backend
=============================================  ===========
``$ALIGNKIT_BACKEND`` is set                   that value
CPU tensor, ``N * M <= CPU_DENSE_MAX``         ``dense``
CUDA tensor, ``N * M <= CUDA_DENSE_MAX``       ``dense``
otherwise                                      ``blocked``
=============================================  ===========

On the CPU the blocked backend, which computes value and gradient in one pass, was faster than
the dense one from ``N = M = 128`` up; on an H200 it tied dense from ``N = M = 1k`` up, with a
quarter of the memory at 4k and 1.9x the speed at 16k (``benchmarks/README.md``). ``auto`` never
picks KeOps by itself: on the H200 (KeOps 2.3, CUDA 13.0) blocked was 3.7x faster at 16k and 2.5x
faster at 100k, and on the CPU it is faster too. KeOps needs far less memory (148 MiB against
969 MiB at 100k on the H200), so it stays one argument (or ``$ALIGNKIT_BACKEND=keops``) away.

Whether KeOps runs on a GPU is checked once per process by a small reduction in a child process
(:func:`alignkit.kernels.backends.keops.unavailable_reason`): some KeOps/CUDA combinations crash
the process outright (KeOps 2.3 with CUDA 13.0 did, in its NVRTC compile step), which no ``except`` could catch.
A KeOps failure under ``"auto"`` with ``$ALIGNKIT_BACKEND=keops`` falls back to ``blocked`` with
one warning; an explicit ``backend="keops"`` raises
:class:`~alignkit.kernels.backends.keops.KeOpsUnavailable` instead.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal

from torch import Tensor

from alignkit._checks import check_choice
from alignkit.kernels.backends import blocked, dense, keops

Backend = Literal["auto", "dense", "blocked", "keops"]
BACKENDS = ("auto", "dense", "blocked", "keops")
ENV_VAR = "ALIGNKIT_BACKEND"

CPU_DENSE_MAX = 128 * 128
"""Largest ``N * M`` that ``auto`` computes densely on a CPU."""
CUDA_DENSE_MAX = 1024 * 1024
"""Largest ``N * M`` that ``auto`` computes densely on a GPU: on an H200 blocked tied dense at
1k and 4k with a quarter of the memory, and was 1.9x faster at 16k."""


def _environment_choice() -> str | None:
    """The concrete backend ``$ALIGNKIT_BACKEND`` names (validated), or ``None`` when it is unset."""
    override = os.environ.get(ENV_VAR)
    if override:
        check_choice(override, ENV_VAR, BACKENDS[1:])
    return override or None


def resolve_backend(backend: str, n: int, m: int, device_type: str) -> str:
    """Name of the concrete backend ``auto`` (or an explicit choice) maps to."""
    check_choice(backend, "backend", BACKENDS)
    if backend != "auto":
        return backend
    override = _environment_choice()
    if override:
        return override
    if n * m <= (CUDA_DENSE_MAX if device_type == "cuda" else CPU_DENSE_MAX):
        return "dense"
    return "blocked"


def resolve_rowwise_backend(backend: str, *, large: bool, device_type: str, keops_supported: bool = True) -> str:
    """The backend of a row-wise reduction against ``K`` prototypes (GMM E-step, calibration).

    These produce or consume an ``(N, K)`` matrix with ``K`` small, so ``auto`` is ``dense``, or
    ``blocked`` when the caller's dense form would need a ``large`` temporary. KeOps runs only
    when asked for, by argument or ``$ALIGNKIT_BACKEND`` (it was not faster here); an
    environment request that cannot be met (KeOps not running, or a form KeOps does not
    support) keeps the ``auto`` choice, with one warning when KeOps does not run.
    """
    check_choice(backend, "backend", BACKENDS)
    if backend != "auto":
        return backend
    override = _environment_choice()
    if override:
        if override != "keops":
            return override
        reason = keops.unavailable_reason(device_type)
        if reason is not None:
            _disable_keops(keops.KeOpsUnavailable(reason))
        elif keops_supported:
            return "keops"
    return "blocked" if large else "dense"


def kernel_sum(x: Tensor, y: Tensor, scales: Tensor, *, same: bool, backend: str = "auto") -> Tensor:
    """``sum_s sum_ij exp(-scales[s] ||x_i - y_j||^2)`` on the chosen backend.

    Args:
        x: ``(N, d)``; y: ``(M, d)``; scales: ``(S,)`` = ``1 / (2 sigma_s^2)``.
        same: ``y`` is ``x`` (diagonal distances exactly zero).
    """
    name = resolve_backend(backend, x.shape[0], y.shape[0], x.device.type)
    if name == "dense":
        return dense.gaussian_kernel_sum(x, y, scales, same)
    if name == "blocked":
        return blocked.gaussian_kernel_sum(x, y, scales, same)
    if backend == "keops":  # asked for explicitly: failures are the caller's to see
        return keops.gaussian_kernel_sum(x, y, scales, same)
    if _KEOPS_FAILED:  # "auto" with $ALIGNKIT_BACKEND=keops, after KeOps failed once
        return blocked.gaussian_kernel_sum(x, y, scales, same)
    try:
        return keops.gaussian_kernel_sum(x, y, scales, same)
    except Exception as error:  # noqa: BLE001 - any compile or load failure means "use blocked"
        _disable_keops(error)
        return blocked.gaussian_kernel_sum(x, y, scales, same)


_KEOPS_FAILED: list[str] = []


def _disable_keops(error: Exception) -> None:
    """Remember a KeOps failure under ``auto`` and warn once; later calls go straight to blocked."""
    if not _KEOPS_FAILED:
        warnings.warn(f"KeOps failed ({type(error).__name__}: {error}); backend='auto' falls back to the torch backends", RuntimeWarning, stacklevel=4)
    _KEOPS_FAILED.append(str(error))
