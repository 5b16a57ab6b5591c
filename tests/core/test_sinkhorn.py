"""Entropic (multi-marginal) Sinkhorn against POT and an exact linear program."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linprog

from alignkit.functional import joint_cost_tensor, multi_marginal_sinkhorn, sinkhorn


def _histogram(k: int, seed: int) -> torch.Tensor:
    w = torch.rand(k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.2
    return w / w.sum()


def _cost(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2.0


def _marginal(plan: torch.Tensor, axis: int) -> torch.Tensor:
    return plan.sum(dim=[a for a in range(plan.ndim) if a != axis])


@pytest.mark.parametrize(("n", "m", "epsilon"), [(5, 7, 0.1), (8, 8, 0.05), (3, 9, 1.0)])
def test_sinkhorn_plan_equals_pot_sinkhorn_log(n: int, m: int, epsilon: float) -> None:
    import ot

    cost, a, b = _cost((n, m), 0), _histogram(n, 1), _histogram(m, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = ot.sinkhorn(a, b, cost, epsilon, method="sinkhorn_log", numItermax=100_000, stopThr=1e-14)
    result = sinkhorn(cost, a, b, epsilon, max_iter=100_000, tol=1e-13)
    assert result.converged
    assert torch.allclose(result.plan, expected, atol=1e-8, rtol=0)


def test_two_marginal_multi_marginal_equals_pot_sinkhorn_log() -> None:
    import ot

    cost, a, b = _cost((6, 4), 3), _histogram(6, 4), _histogram(4, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = ot.sinkhorn(a, b, cost, 0.2, method="sinkhorn_log", numItermax=100_000, stopThr=1e-14)
    result = multi_marginal_sinkhorn(cost, [a, b], 0.2, max_iter=100_000, tol=1e-13)
    assert torch.allclose(result.plan, expected, atol=1e-8, rtol=0)


def _exact_multi_marginal_cost(cost: torch.Tensor, marginals: list[torch.Tensor]) -> float:
    """min <P, C> over plans with the given marginals, by scipy's linprog (HiGHS)."""
    shape = cost.shape
    rows, rhs = [], []
    for axis, nu in enumerate(marginals):
        for k in range(shape[axis]):
            mask = np.zeros(shape)
            index = [slice(None)] * len(shape)
            index[axis] = k
            mask[tuple(index)] = 1.0
            rows.append(mask.ravel())
            rhs.append(float(nu[k]))
    solution = linprog(cost.numpy().ravel(), A_eq=np.array(rows), b_eq=np.array(rhs), bounds=(0, None), method="highs")
    assert solution.status == 0
    return float(solution.fun)


@pytest.mark.parametrize(("shape", "seed"), [((3, 4, 3), 0), ((4, 4, 4), 1), ((3, 3, 4, 3), 2), ((4, 4, 4, 4), 3)])
def test_multi_marginal_meets_marginals_and_is_within_one_percent_of_linprog(shape: tuple[int, ...], seed: int) -> None:
    cost = _cost(shape, seed)
    marginals = [_histogram(k, seed * 10 + i) for i, k in enumerate(shape)]
    exact = _exact_multi_marginal_cost(cost, marginals)
    tol = 1e-9
    result = multi_marginal_sinkhorn(cost, marginals, epsilon=2e-3, max_iter=200_000, tol=tol)
    assert result.converged
    for axis, nu in enumerate(marginals):
        assert float((_marginal(result.plan, axis) - nu).abs().sum()) < tol
    assert exact <= float(result.value) <= 1.01 * exact


def test_result_reports_convergence_and_iterations() -> None:
    cost, a, b = _cost((5, 5), 7), _histogram(5, 8), _histogram(5, 9)
    result = sinkhorn(cost, a, b, 0.5, tol=1e-8, check_every=5)
    assert result.converged
    assert result.marginal_error < 1e-8
    assert result.n_iter % 5 == 0 and result.n_iter > 0


def test_result_says_not_converged_when_max_iter_is_too_small() -> None:
    cost, a, b = _cost((6, 6), 10), _histogram(6, 11), _histogram(6, 12)
    result = sinkhorn(cost, a, b, 0.01, max_iter=3, tol=1e-12)
    assert not result.converged
    assert result.n_iter == 3
    assert result.marginal_error > 1e-12


def test_potentials_reconstruct_the_plan() -> None:
    cost = _cost((3, 4, 5), 13)
    marginals = [_histogram(k, 20 + i) for i, k in enumerate(cost.shape)]
    result = multi_marginal_sinkhorn(cost, marginals, 0.3, tol=1e-10, max_iter=10_000)
    f0, f1, f2 = result.potentials
    rebuilt = torch.exp((f0[:, None, None] + f1[None, :, None] + f2[None, None, :] - cost) / 0.3)
    assert torch.allclose(rebuilt, result.plan, atol=1e-14)


def test_regularized_value_is_cost_plus_entropy_term() -> None:
    cost, a, b = _cost((4, 6), 14), _histogram(4, 15), _histogram(6, 16)
    result = sinkhorn(cost, a, b, 0.4, tol=1e-10, max_iter=10_000)
    plan = result.plan
    expected = (plan * cost).sum() + 0.4 * (plan * (plan.log() - 1)).sum()
    assert torch.allclose(result.regularized_value, expected, rtol=1e-10)
    assert torch.allclose(result.value, (plan * cost).sum(), rtol=1e-12)


def test_envelope_gradient_of_value_is_the_plan() -> None:
    cost = _cost((4, 5), 17).requires_grad_(True)
    a, b = _histogram(4, 18), _histogram(5, 19)
    result = sinkhorn(cost, a, b, 0.3, tol=1e-12, max_iter=10_000, grad="envelope")
    (grad,) = torch.autograd.grad(result.value, cost)
    assert torch.allclose(grad, result.plan, atol=1e-14)
    assert not result.plan.requires_grad


def test_envelope_and_unrolled_agree_on_the_regularized_gradient() -> None:
    """At convergence both give d OT_eps / dC = P* (the envelope theorem)."""
    a, b = _histogram(4, 21), _histogram(5, 22)
    grads = []
    for mode in ("envelope", "unrolled"):
        cost = _cost((4, 5), 20).requires_grad_(True)
        result = sinkhorn(cost, a, b, 0.5, tol=1e-13, max_iter=20_000, grad=mode)
        grads.append(torch.autograd.grad(result.regularized_value, cost)[0])
    assert torch.allclose(grads[0], grads[1], atol=1e-8)


def test_envelope_gradient_wrt_marginals_is_the_potential() -> None:
    cost = _cost((3, 4), 23)
    a = _histogram(3, 24).requires_grad_(True)
    b = _histogram(4, 25)
    result = sinkhorn(cost, a, b, 0.5, tol=1e-12, max_iter=10_000)
    (grad,) = torch.autograd.grad(result.value, a)
    assert torch.allclose(grad, result.potentials[0], atol=1e-14)


def test_joint_cost_tensor_sums_pairwise_costs() -> None:
    sizes = (2, 3, 4)
    pairwise = {(i, j): _cost((sizes[i], sizes[j]), 10 * i + j) for i, j in itertools.combinations(range(3), 2)}
    joint = joint_cost_tensor(pairwise)
    for k0, k1, k2 in itertools.product(*(range(s) for s in sizes)):
        expected = pairwise[0, 1][k0, k1] + pairwise[0, 2][k0, k2] + pairwise[1, 2][k1, k2]
        assert torch.isclose(joint[k0, k1, k2], expected, rtol=1e-15)


def test_joint_cost_tensor_needs_every_pair() -> None:
    with pytest.raises(ValueError, match="pairwise_costs"):
        joint_cost_tensor({(0, 1): _cost((2, 2), 0), (1, 2): _cost((2, 2), 1)})


@st.composite
def problems(draw: st.DrawFn) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    n_marginals = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=n_marginals, max_size=n_marginals)))
    size = int(np.prod(shape))
    cost = torch.tensor(draw(st.lists(st.floats(0, 5), min_size=size, max_size=size)), dtype=torch.float64).view(shape)
    marginals = []
    for k in shape:
        w = torch.tensor(draw(st.lists(st.floats(0.05, 1.0), min_size=k, max_size=k)), dtype=torch.float64)
        marginals.append(w / w.sum())
    return cost, marginals, draw(st.floats(0.05, 2.0))


@given(problems())
def test_property_plans_are_non_negative_with_the_right_marginals(problem) -> None:
    cost, marginals, epsilon = problem
    result = multi_marginal_sinkhorn(cost, marginals, epsilon, max_iter=20_000, tol=1e-9)
    assert result.converged
    assert bool((result.plan >= 0).all())
    for axis, nu in enumerate(marginals):
        assert torch.allclose(_marginal(result.plan, axis), nu, atol=1e-8)
