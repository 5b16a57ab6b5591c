"""Gaussian MMD^2 forward + backward, N = M, d = 64: alignkit's backends against geomloss."""

from __future__ import annotations

import pytest
import torch
from conftest import measure

D = 64
SIGMA = 8.0  # ~ the typical distance of N(0, I_64) samples, so that no kernel underflows
IMPLS = ["alignkit-dense", "alignkit-blocked", "alignkit-keops", "alignkit-auto", "geomloss-tensorized", "geomloss-online"]


def cases(full: bool) -> list[tuple[int, str]]:
    """(N, implementation): every implementation at 1k, 4k, 16k; the bounded-memory ones at 100k.
    The smoke run (not ``full``) leaves out geomloss's online backend: its first call compiles
    geomloss's own three KeOps formulas (about a minute of CI on a 2-core CPU) and runs nothing of
    ours that the other 1k cases do not (the same wrapper as ``geomloss-tensorized``)."""
    sizes = [1000, 4000, 16000] if full else [1000]
    # On a GPU the online peers are fast enough for 100k too (on 2 CPU cores they take hours).
    bounded = ("alignkit-blocked", "alignkit-auto") + (("alignkit-keops", "geomloss-online") if torch.cuda.is_available() else ())
    large = [(100_000, impl) for impl in bounded] if full else []
    impls = IMPLS if full else [impl for impl in IMPLS if impl != "geomloss-online"]
    return [(n, impl) for n in sizes for impl in impls] + large


def _inputs(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, D, generator=g).to(device).requires_grad_(True)
    y = (torch.randn(n, D, generator=g) + 0.1).to(device).requires_grad_(True)
    return x, y


def _alignkit(backend: str, x: torch.Tensor, y: torch.Tensor):
    from alignkit.functional import gaussian_mmd

    def run() -> None:
        value = gaussian_mmd(x, y, SIGMA, backend=backend)
        torch.autograd.grad(value, [x, y])

    return run


def _geomloss(backend: str, x: torch.Tensor, y: torch.Tensor):
    from geomloss import SamplesLoss

    loss = SamplesLoss("gaussian", blur=SIGMA, backend=backend)

    def run() -> None:
        value = 2.0 * loss(x, y)  # geomloss returns MMD^2 / 2
        torch.autograd.grad(value, [x, y])

    return run


def test_mmd_forward_backward(benchmark, device, case: tuple[int, str]) -> None:
    n, impl = case
    # Deliberate: both are KeOps reductions, which cannot be timed where KeOps does not run (no
    # compiler, or a KeOps/CUDA pair that crashes, as on the H200 and H100 with CUDA 13.0); the reason is printed.
    if impl in ("alignkit-keops", "geomloss-online"):
        from alignkit.kernels.backends.keops import unavailable_reason

        if (reason := unavailable_reason(device.type)) is not None:
            pytest.skip(f"KeOps cannot run on {device.type} here: {reason}")
    benchmark.group = f"mmd fwd+bwd N=M={n} d={D}"
    x, y = _inputs(n, device)
    library, backend = impl.split("-")
    fn = _alignkit(backend, x, y) if library == "alignkit" else _geomloss(backend, x, y)
    rounds = 5 if n <= 1000 else 3 if n <= 4000 else 1
    measure(benchmark, fn, device, rounds=rounds, n=n, d=D, impl=impl)
