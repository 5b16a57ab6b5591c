"""Pairwise Bures (Gaussian W2^2) costs, full covariances, forward + backward, against POT.

Training always differentiates the costs, so both sides are timed forward + backward, never the
forward alone (alignkit's forward without autograd takes eigenvalues only, a path training never
uses): the ``(K, K)`` costs, then the gradients of ``sum(plan * costs)`` (a fixed random plan)
with respect to both sets of means and covariances.

* alignkit: ``bures_wasserstein_cost(means_a, cov_a, means_b, cov_b)`` (``W2^2``).
* POT: ``ot.gmm.dist_bures_squared(means_a, means_b, cov_a, cov_b)`` (``W2^2``, the same
  quantity; ``ot.gaussian.bures_wasserstein_distance`` returns ``W2``, whose square root is not
  differentiable at equal Gaussians) on the same torch tensors: POT's torch backend, whose matrix
  square root (``nx.sqrtm``) has a closed-form backward, so autograd runs through it.

Same inputs (float32, as in training), same upstream gradient. An untimed check call of each side
(also a warm-up) records the agreement with the other side in ``extra_info``: the largest relative
difference of the costs (``value_max_rel_diff``) and of the four gradients (``grad_max_rel_diff``),
each relative to the largest magnitude of the peer's tensor.
"""

from __future__ import annotations

import torch
from conftest import measure

# Tolerances set from what the checks must catch (measured on these inputs, every K and d):
# round-off between the two sides in float32 is at most 3.2e-7 (costs) and 1.2e-6 (gradients);
# each side is about 3e-7 / 6e-6 from float64. Different quantities (W2 instead of W2^2, the
# "mean" reduction, no mean term) or a swapped pair differ by 0.28 or more; covariances shifted by
# 1e-3 I by 8.8e-5 (costs) and 6.4e-3 (gradients), by 1e-4 I by 8.7e-6 and 6.5e-4. So 1e-5 on
# the costs and 1e-4 on the gradients: 30x and 80x above round-off, and a 1e-4 I shift is caught.
VALUE_TOLERANCE = 1e-5
GRAD_TOLERANCE = 1e-4
IMPLS = ("alignkit", "pot")


def cases(full: bool) -> list[tuple[int, int, str]]:
    grid = [(k, d) for k in (8, 32) for d in (16, 64)] if full else [(8, 16)]
    return [(k, d, impl) for k, d in grid for impl in IMPLS]


def _inputs(k: int, d: int, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(k + d)
    means_a, means_b = torch.randn(k, d, generator=g), torch.randn(k, d, generator=g)
    factors = torch.randn(2, k, d, d, generator=g)
    cov_a, cov_b = (f @ f.mT / d + 0.1 * torch.eye(d) for f in factors)
    plan = torch.rand(k, k, generator=g)
    inputs = [t.to(device).requires_grad_(True) for t in (means_a, cov_a, means_b, cov_b)]
    return inputs, (plan / plan.sum()).to(device)


def _cost_fn(impl: str):
    if impl == "alignkit":
        from alignkit.functional import bures_wasserstein_cost

        return lambda means_a, cov_a, means_b, cov_b: bures_wasserstein_cost(means_a, cov_a, means_b, cov_b)
    import ot

    return lambda means_a, cov_a, means_b, cov_b: ot.gmm.dist_bures_squared(means_a, means_b, cov_a, cov_b)


def _forward_backward(impl: str, inputs: list[torch.Tensor], plan: torch.Tensor):
    """The timed call: costs, then the gradients of ``sum(plan * costs)`` wrt all four inputs."""
    cost_fn = _cost_fn(impl)

    def run() -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        costs = cost_fn(*inputs)
        grads = torch.autograd.grad((plan * costs).sum(), inputs)
        return costs, grads

    return run


def _max_rel_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.detach().double(), y.detach().double()
    return float((x - y).abs().max() / y.abs().max())


def test_pairwise_bures_full(benchmark, device, case: tuple[int, int, str]) -> None:
    k, d, impl = case
    benchmark.group = f"pairwise Bures full K={k} d={d}, fwd+bwd, float32"
    inputs, plan = _inputs(k, d, device)
    fn = _forward_backward(impl, inputs, plan)
    peer = next(other for other in IMPLS if other != impl)
    costs, grads = fn()  # the check call runs the very function that is timed
    peer_costs, peer_grads = _forward_backward(peer, inputs, plan)()
    for name, grad_set in ((impl, grads), (peer, peer_grads)):
        assert len(grad_set) == 4 and all(g is not None and g.shape == t.shape and bool(g.abs().max() > 0) for g, t in zip(grad_set, inputs)), (
            f"{name}: no backward (gradients missing or zero)"
        )
    value_diff = _max_rel_diff(costs, peer_costs)
    grad_diff = max(_max_rel_diff(g, h) for g, h in zip(grads, peer_grads))
    assert value_diff <= VALUE_TOLERANCE and grad_diff <= GRAD_TOLERANCE, (
        f"{impl} vs {peer}: costs differ by {value_diff:.2e}, gradients by {grad_diff:.2e} (relative)"
    )
    measure(
        benchmark, fn, device, rounds=10, K=k, d=d, impl=impl, dtype="float32", peer=peer,
        value_max_rel_diff=value_diff, grad_max_rel_diff=grad_diff,
    )
