"""Pairwise Bures (Gaussian W2^2) costs, full covariances, against POT's dist_bures_squared."""

from __future__ import annotations

import torch
from conftest import measure


def cases(full: bool) -> list[tuple[int, int, str]]:
    grid = [(k, d) for k in (8, 32) for d in (16, 64)] if full else [(8, 16)]
    return [(k, d, impl) for k, d in grid for impl in ("alignkit", "pot")]


def test_pairwise_bures_full(benchmark, device, case: tuple[int, int, str]) -> None:
    k, d, impl = case
    benchmark.group = f"pairwise Bures full K={k} d={d}"
    g = torch.Generator().manual_seed(k + d)
    means_a, means_b = torch.randn(k, d, generator=g).to(device), torch.randn(k, d, generator=g).to(device)
    factors = torch.randn(2, k, d, d, generator=g).to(device)
    cov_a, cov_b = (f @ f.mT / d + 0.1 * torch.eye(d, device=device) for f in factors)
    if impl == "alignkit":
        from alignkit.functional import bures_wasserstein_cost

        fn = lambda: bures_wasserstein_cost(means_a, cov_a, means_b, cov_b)  # noqa: E731
    else:
        import ot

        fn = lambda: ot.gmm.dist_bures_squared(means_a, means_b, cov_a, cov_b)  # noqa: E731
    measure(benchmark, fn, device, rounds=10, K=k, d=d, impl=impl)
