"""Entropic OT: two marginals against POT and geomloss; multi-marginal OT for M = 3..5, K = 4..16."""

from __future__ import annotations

import itertools

import torch
from conftest import measure

RELATIVE_EPSILON = 0.05  # epsilon = 0.05 x the mean cost (~0.4 here)


def cases(full: bool) -> list[tuple]:
    two = [("two", n, impl) for n in ([100, 1000] if full else [100]) for impl in ("alignkit", "pot", "geomloss")]
    multi = [("multi", m, k) for m in ((3, 4, 5) if full else (3,)) for k in ((4, 8, 16) if full else (8,)) if k**m <= 2**20]
    return two + multi


def _points(n: int, device: torch.device, seed: int) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)


def _two_marginal(n: int, impl: str, device: torch.device):
    """Uniform weights, cost |x - y|^2 / 2 (geomloss' p = 2 cost), epsilon = blur^2."""
    x, y = _points(n, device, 0), _points(n, device, 1) + 0.5
    a = torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    cost = 0.5 * torch.cdist(x, y) ** 2
    epsilon = RELATIVE_EPSILON * float(cost.mean())
    if impl == "alignkit":
        from alignkit.functional import sinkhorn

        return lambda: sinkhorn(cost, a, a, epsilon, tol=1e-6, max_iter=10_000).value
    if impl == "pot":
        import ot

        return lambda: ot.sinkhorn2(a, a, cost, epsilon, method="sinkhorn_log", stopThr=1e-6, numItermax=10_000)
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=epsilon**0.5, scaling=0.95, debias=False, backend="tensorized")
    return lambda: loss(x, y)


def _multi_marginal(m: int, k: int, device: torch.device):
    """M random mixtures' costs, converged (float32, like training) to tol 1e-6, or 1e-5 above
    10^5 entries, where float32 sums cannot certify 1e-6."""
    from alignkit.functional import joint_cost_tensor, multi_marginal_sinkhorn

    g = torch.Generator().manual_seed(m * 100 + k)
    means = [torch.randn(k, 4, generator=g).to(device) for _ in range(m)]
    pairwise = {(i, j): torch.cdist(means[i], means[j]) ** 2 for i, j in itertools.combinations(range(m), 2)}
    cost = joint_cost_tensor(pairwise)
    weights = [torch.full((k,), 1.0 / k, device=device) for _ in range(m)]
    epsilon = 0.1 * float(cost.mean())

    tol = 1e-6 if cost.numel() <= 100_000 else 1e-5

    def run() -> None:
        result = multi_marginal_sinkhorn(cost, weights, epsilon, tol=tol, max_iter=10_000)
        assert result.converged

    return run


def test_entropic_ot(benchmark, device, case: tuple) -> None:
    kind, size, variant = case
    if kind == "two":
        benchmark.group = f"entropic OT, two marginals n=m={size}, float64"
        measure(benchmark, _two_marginal(size, variant, device), device, rounds=5 if size <= 100 else 2, n=size, impl=variant)
    else:
        benchmark.group = f"multi-marginal OT M={size} K={variant}"
        rounds = 100 if variant**size <= 4096 else 3
        measure(benchmark, _multi_marginal(size, variant, device), device, rounds=rounds, M=size, K=variant, impl="alignkit")
