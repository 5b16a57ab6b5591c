"""Entropic OT: two marginals against POT and geomloss, like for like; multi-marginal OT for M = 3..5, K = 4..16.

Two marginals, float64, n = m in {100, 1000}. Every solver gets the same cost matrix
``C = |x - y|^2 / 2`` (``n x n``), the same uniform weights, the same epsilon (0.05 x the mean
cost) and the same stopping rule: a fixed number of iterations, ``ITERATIONS[n]``, no tolerance.

* alignkit: ``sinkhorn(C, a, b, epsilon, tol=0, max_iter=n_iter)``: ``n_iter`` log-domain
  sweeps (each updates both potentials), one marginal-error evaluation at the end.
* POT: ``ot.sinkhorn(a, b, C, epsilon, method="sinkhorn_log", stopThr=0, numItermax=n_iter)``:
  ``n_iter`` iterations of the same two updates (``stopThr=0`` never stops it early). POT also
  evaluates its marginal error every 10 iterations; no option turns that off, so it is part of
  its time.
* geomloss: ``geomloss.ot.solve(C, reg=epsilon, a=a, b=b, max_iter=n_iter)``: ``n_iter``
  iterations of its symmetric Sinkhorn, epsilon annealed geometrically from ``max C - min C`` down
  to epsilon over them (its one method in 0.3.1), plus an initialisation and a final extrapolation
  (two log-sum-exp passes each). It is handed the cost matrix, not the points.

``ITERATIONS[n]`` is about what alignkit needs for tol 1e-6 on its L1 marginal error on these
problems (450 sweeps at n = 100, 80 at n = 1000; POT's own criterion, the L2 error of one
marginal, stops it at 330 and 70), rounded up. Each timed call returns the plan. An untimed check
call of each solver (also a warm-up) counts its iterations (asserted equal to ``n_iter``) and
records in ``extra_info``: ``value_error``, ``|<P, C> - <P*, C>| / <P*, C>`` for its plan ``P``
against ``P*`` from :func:`reference_plan` (an independent float64 log-domain Sinkhorn in numpy,
run until the L1 marginal error is below 1e-12), and ``marginal_error``,
``||P 1 - a||_1 + ||P^T 1 - b||_1``.

Multi-marginal OT: alignkit alone (no peer solves it), converged to tol 1e-6. The headline case
M = 3, K = 8 (DecAlign's three modalities, K = 8 prototypes) is timed over ``HEADLINE_ROUNDS``
rounds: the call is ~130 small tensor operations, overhead-bound and noisy, so its median needs
many rounds.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
from conftest import count_calls, measure

RELATIVE_EPSILON = 0.05  # epsilon = 0.05 x the mean cost (~0.45 here)
ITERATIONS = {100: 500, 1000: 100}
TWO_MARGINAL_IMPLS = ("alignkit", "pot", "geomloss")
# Tolerances of the value check, set from what it must catch: a solver given another problem.
# Measured on these problems: epsilon 1% off moves the value by 1.4e-3 or more, the cost without its
# 1/2 by 6e-2. At ITERATIONS, alignkit's and POT's alternating sweeps are within 1.1e-7 / 2.6e-8
# (n = 100) and 8.6e-8 / 4.2e-8 (n = 1000) of the reference, geomloss' annealed symmetric
# iterations within 6.7e-5 and 4.9e-4. A different iteration count is caught by the count itself.
VALUE_TOLERANCE = {"alignkit": 1e-5, "pot": 1e-5, "geomloss": 1e-3}
HEADLINE = (3, 8)  # (M, K)
HEADLINE_ROUNDS = 200  # at least 100 (benchmarks/README.md)


def cases(full: bool) -> list[tuple]:
    two = [("two", n, impl) for n in ([100, 1000] if full else [100]) for impl in TWO_MARGINAL_IMPLS]
    multi = [("multi", m, k) for m in ((3, 4, 5) if full else (3,)) for k in ((4, 8, 16) if full else (8,)) if k**m <= 2**20]
    return two + multi


def _points(n: int, device: torch.device, seed: int) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)


def _problem(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Uniform weights, cost ``|x - y|^2 / 2``, epsilon = 0.05 x the mean cost."""
    x, y = _points(n, device, 0), _points(n, device, 1) + 0.5
    a = torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    cost = 0.5 * torch.cdist(x, y) ** 2
    return cost, a, RELATIVE_EPSILON * float(cost.mean())


def reference_plan(cost: np.ndarray, a: np.ndarray, b: np.ndarray, epsilon: float, tol: float = 1e-12) -> np.ndarray:
    """Log-domain Sinkhorn in float64 numpy, alternating updates until the L1 error of the first
    marginal (the second is exact after each sweep) is below ``tol``."""

    def logsumexp(m: np.ndarray, axis: int) -> np.ndarray:
        top = m.max(axis=axis, keepdims=True)
        return (np.log(np.exp(m - top).sum(axis=axis, keepdims=True)) + top).squeeze(axis)

    f, g = np.zeros(len(a)), np.zeros(len(b))
    for sweep in range(1, 100_001):
        f = epsilon * (np.log(a) - logsumexp((g[None, :] - cost) / epsilon, 1))
        g = epsilon * (np.log(b) - logsumexp((f[:, None] - cost) / epsilon, 0))
        if sweep % 10 == 0:
            plan = np.exp((f[:, None] + g[None, :] - cost) / epsilon)
            if np.abs(plan.sum(1) - a).sum() < tol:
                return plan
    raise RuntimeError(f"reference Sinkhorn: no convergence to {tol} in 100,000 sweeps")


@functools.cache
def _reference_value(n: int) -> float:
    cost, a, epsilon = _problem(n, torch.device("cpu"))
    plan = reference_plan(cost.numpy(), a.numpy(), a.numpy(), epsilon)
    return float((plan * cost.numpy()).sum())


def _two_marginal(n: int, impl: str, device: torch.device):
    """The timed call: ``ITERATIONS[n]`` iterations of ``impl`` on the common problem -> the plan."""
    cost, a, epsilon = _problem(n, device)
    n_iter = ITERATIONS[n]
    if impl == "alignkit":
        from alignkit.functional import sinkhorn

        return lambda: sinkhorn(cost, a, a, epsilon, tol=0, max_iter=n_iter).plan
    if impl == "pot":
        import ot

        return lambda: ot.sinkhorn(a, a, cost, epsilon, method="sinkhorn_log", stopThr=0, numItermax=n_iter, warn=False)
    import geomloss.ot

    return lambda: geomloss.ot.solve(cost, reg=epsilon, a=a, b=a, max_iter=n_iter).plan


def _counted_iterations(impl: str, fn) -> tuple[torch.Tensor, int]:
    """Run ``fn`` once, counting its ``n x n`` log-sum-exp passes, and turn them into iterations."""
    if impl == "alignkit":
        from alignkit.ot.sinkhorn import _ArrayOps

        with count_calls(_ArrayOps, "logsumexp") as counts:
            plan = fn()
        return plan, (counts["logsumexp"] - 1) // 2  # two per sweep, one for the final marginal error
    if impl == "pot":
        from ot.backend import TorchBackend

        with count_calls(TorchBackend, "logsumexp") as counts:
            plan = fn()
        return plan, counts["logsumexp"] // 2  # two per iteration
    from geomloss.ot._implementations import matrix

    with count_calls(matrix, "softmin_dense") as counts:
        plan = fn()
    return plan, counts["softmin_dense"] // 2 - 2  # two per iteration, two to start, two to extrapolate


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

    def run():
        result = multi_marginal_sinkhorn(cost, weights, epsilon, tol=tol, max_iter=10_000)
        assert result.converged
        return result

    return run, tol


def test_entropic_ot(benchmark, device, case: tuple) -> None:
    kind, size, variant = case
    if kind == "two":
        n, impl = size, variant
        benchmark.group = f"entropic OT, two marginals n=m={n}, float64, {ITERATIONS[n]} iterations"
        fn = _two_marginal(n, impl, device)
        plan, iterations = _counted_iterations(impl, fn)  # the check call runs the very function that is timed
        assert iterations == ITERATIONS[n], f"{impl}: {iterations} iterations, expected {ITERATIONS[n]}"
        cost, a, epsilon = _problem(n, device)
        reference = _reference_value(n)
        value_error = abs(float((plan * cost).sum()) - reference) / reference
        marginal_error = float((plan.sum(1) - a).abs().sum() + (plan.sum(0) - a).abs().sum())
        assert value_error <= VALUE_TOLERANCE[impl], f"{impl}: value error {value_error:.2e} (tolerance {VALUE_TOLERANCE[impl]})"
        measure(
            benchmark, fn, device, rounds=5 if n <= 100 else 2, n=n, impl=impl, iterations=iterations,
            epsilon=epsilon, stopping="fixed iteration count", value_error=value_error, marginal_error=marginal_error,
        )
    else:
        m, k = size, variant
        benchmark.group = f"multi-marginal OT M={m} K={k}"
        fn, tol = _multi_marginal(m, k, device)
        result = fn()
        headline = (m, k) == HEADLINE
        rounds = HEADLINE_ROUNDS if headline else 100 if k**m <= 4096 else 3
        assert not headline or rounds >= 100, f"the headline M={m} K={k} needs at least 100 rounds, has {rounds}"
        measure(
            benchmark, fn, device, rounds=rounds, M=m, K=k, impl="alignkit", headline=headline, tol=tol,
            sweeps=result.n_iter, marginal_error=float(result.marginal_error),
        )
