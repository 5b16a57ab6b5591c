"""Prototype calibration (eq. 9, second term) against a brute-force double loop."""

from __future__ import annotations

import pytest
import torch

from alignkit.functional import multi_marginal_sinkhorn, prototype_calibration_loss


def _brute_force(features, responsibilities, targets_for) -> torch.Tensor:
    m = len(features)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(m):
        for j in range(m):
            if i == j:
                continue
            targets = targets_for(i, j)
            x, w = features[i], responsibilities[i]
            pair = sum(w[n, k] * ((x[n] - targets[k]) ** 2).sum() for n in range(len(x)) for k in range(len(targets)))
            total = total + pair / len(x)
    return total / (m * (m - 1))


def _setup(sizes=(3, 3, 3), n=(7, 5, 6), d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(n_i, d, generator=g, dtype=torch.float64) for n_i in n]
    responsibilities = [torch.softmax(torch.randn(n_i, k, generator=g, dtype=torch.float64), -1) for n_i, k in zip(n, sizes)]
    means = [torch.randn(k, d, generator=g, dtype=torch.float64) for k in sizes]
    return features, responsibilities, means


@pytest.mark.parametrize("n", [(7, 5, 6), (6, 6, 6)])  # equal counts: every pair in one batched pass
def test_index_matching_equals_the_papers_double_sum(n: tuple[int, ...]) -> None:
    features, responsibilities, means = _setup(n=n)
    inputs = [t.requires_grad_() for t in (*features, *responsibilities, *means)]
    expected = _brute_force(features, responsibilities, lambda i, j: means[j])
    value = prototype_calibration_loss(features, responsibilities, means, matching="index")
    assert torch.allclose(value, expected, rtol=1e-12)
    for got, want in zip(torch.autograd.grad(value, inputs), torch.autograd.grad(expected, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_plan_matching_uses_barycentric_projection_of_the_pair_marginal() -> None:
    sizes = (2, 3, 4)
    features, responsibilities, means = _setup(sizes=sizes)
    cost = torch.rand(sizes, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    marginals = [torch.full((k,), 1.0 / k, dtype=torch.float64) for k in sizes]
    plan = multi_marginal_sinkhorn(cost, marginals, 0.5, tol=1e-12, max_iter=10_000).plan

    def targets_for(i: int, j: int) -> torch.Tensor:
        other = [a for a in range(3) if a not in (i, j)]
        coupling = plan.sum(dim=other)
        coupling = coupling if i < j else coupling.T
        return torch.stack([sum(coupling[k, l] * means[j][l] for l in range(sizes[j])) / coupling[k].sum() for k in range(sizes[i])])

    expected = _brute_force(features, responsibilities, targets_for)
    value = prototype_calibration_loss(features, responsibilities, means, plan=plan)
    assert torch.allclose(value, expected, rtol=1e-12)


def test_identity_plan_matching_equals_index_matching() -> None:
    features, responsibilities, means = _setup(sizes=(3, 3), n=(6, 6))
    plan = torch.eye(3, dtype=torch.float64) / 3
    assert torch.allclose(
        prototype_calibration_loss(features, responsibilities, means, plan=plan),
        prototype_calibration_loss(features, responsibilities, means, matching="index"),
        rtol=1e-12,
    )
