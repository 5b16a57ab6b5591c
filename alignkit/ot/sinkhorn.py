"""Entropic multi-marginal optimal transport by log-domain Sinkhorn (DecAlign eqs. 5, 7, 8).

Given a cost tensor ``C`` of shape ``(K_1, ..., K_M)`` and marginals ``nu_i`` (``(K_i,)``, equal
total mass), solve::

    min_P  <P, C> + epsilon * sum_k P(k) (log P(k) - 1)   s.t.  P summed over all axes but i = nu_i.

The optimum has the form ``P = exp((f_1 (+) ... (+) f_M - C) / epsilon)`` with one dual potential
per marginal. Sinkhorn updates each potential in turn so that its marginal holds exactly::

    f_i <- f_i + epsilon * (log nu_i - logsumexp_{all axes but i} log P)

which for ``M = 2`` is ordinary log-domain Sinkhorn (POT ``ot.sinkhorn(method="sinkhorn_log")``).
Everything stays in the log domain, so small ``epsilon`` never underflows.

Gradients: ``grad="envelope"`` (default) runs the iterations without autograd and returns
``value = <P*, C>`` with ``P*`` detached, so ``d value / d C = P*`` and ``d value / d nu_i = f_i``
(the envelope theorem applied to the regularised objective, as in geomloss); memory stays that of
one cost tensor. ``grad="unrolled"`` back-propagates through every iteration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from alignkit._checks import (
    check_choice,
    check_positive,
    check_same_kind,
    check_sequence,
    check_tensor,
    compute_dtype,
    full_precision,
    values_checked,
)
from alignkit.ot.result import OTResult

GradMode = Literal["envelope", "unrolled"]

MAX_COST_ELEMENTS = 2**25
"""Default memory guard: the largest joint cost tensor (``prod K_i``) a solver accepts (128 MB in float32)."""


def check_cost_size(shape: Sequence[int], max_elements: int) -> None:
    """Refuse a joint cost tensor with more than ``max_elements`` entries."""
    n_elements = math.prod(shape)
    if n_elements > max_elements:
        raise ValueError(
            f"cost: expected at most max_elements={max_elements} entries in the joint cost tensor, "
            f"received shape {tuple(shape)} ({n_elements} entries); use fewer components or "
            f"modalities, or raise max_elements"
        )


@full_precision
def joint_cost_tensor(
    pairwise_costs: Mapping[tuple[int, int], Tensor],
    *,
    max_elements: int = MAX_COST_ELEMENTS,
) -> Tensor:
    """Joint cost ``C(k_1, ..., k_M) = sum_{i<j} C_ij(k_i, k_j)`` (paper eq. 5).

    Args:
        pairwise_costs: ``{(i, j): C_ij}`` for every pair ``0 <= i < j < M``, each ``(K_i, K_j)``.
        max_elements: memory guard on ``prod K_i``.

    Returns:
        ``(K_1, ..., K_M)`` tensor.
    """
    if not pairwise_costs:
        raise ValueError("pairwise_costs: expected costs for every pair (i, j), i < j, received none")
    n_modalities = 1 + max(j for _, j in pairwise_costs)
    expected_pairs = {(i, j) for i in range(n_modalities) for j in range(i + 1, n_modalities)}
    if set(pairwise_costs) != expected_pairs:
        raise ValueError(
            f"pairwise_costs: expected keys {sorted(expected_pairs)}, received {sorted(pairwise_costs)}"
        )
    sizes: list[int | None] = [None] * n_modalities
    for (i, j), cost in pairwise_costs.items():
        check_tensor(cost, f"pairwise_costs[{i}, {j}]", ndim=2)
        for axis, size in ((i, cost.shape[0]), (j, cost.shape[1])):
            if sizes[axis] not in (None, size):
                raise ValueError(
                    f"pairwise_costs[{i}, {j}]: expected {sizes[axis]} components for modality {axis}, "
                    f"received shape {tuple(cost.shape)}"
                )
            sizes[axis] = size
    check_same_kind({f"pairwise_costs[{i}, {j}]": c for (i, j), c in pairwise_costs.items()})
    check_cost_size([s for s in sizes if s is not None], max_elements)

    total: Tensor | None = None
    for (i, j), cost in sorted(pairwise_costs.items()):
        view = [1] * n_modalities
        view[i], view[j] = cost.shape
        term = cost.to(compute_dtype(cost.dtype)).reshape(view)
        total = term if total is None else total + term
    assert total is not None
    return total.expand(*[s for s in sizes if s is not None]).contiguous()


def _log_marginal(log_plan: Tensor, axis: int) -> Tensor:
    """``log`` of the plan summed over every axis but ``axis``: ``(K_axis,)``."""
    other_axes = [a for a in range(log_plan.ndim) if a != axis]
    return torch.logsumexp(log_plan, dim=other_axes) if other_axes else log_plan


def _axis_shape(size: int, axis: int, ndim: int) -> list[int]:
    view = [1] * ndim
    view[axis] = size
    return view


def _log_plan(cost: Tensor, potentials: Sequence[Tensor], epsilon: float) -> Tensor:
    """``(sum_i f_i - C) / epsilon`` from scratch (no accumulated round-off)."""
    log_plan = -cost / epsilon
    for axis, f in enumerate(potentials):
        log_plan = log_plan + (f / epsilon).view(_axis_shape(f.shape[0], axis, cost.ndim))
    return log_plan


def _marginal_error(log_plan: Tensor, marginals: Sequence[Tensor]) -> Tensor:
    errors = [(_log_marginal(log_plan, i).exp() - nu).abs().sum() for i, nu in enumerate(marginals)]
    return torch.stack(errors).max()


def _sinkhorn_iterations(
    cost: Tensor,
    log_marginals: Sequence[Tensor],
    marginals: Sequence[Tensor],
    epsilon: float,
    max_iter: int,
    tol: float,
    check_every: int,
) -> tuple[list[Tensor], int, bool, float]:
    """Cyclic potential updates; returns potentials, sweeps done, converged flag, final error.

    Potentials are kept in units of ``epsilon`` inside the loop (two fewer operations per
    update), and without autograd the plan is updated in place: small problems are bound by
    per-operation overhead, not arithmetic.
    """
    n_axes = cost.ndim
    shapes = [_axis_shape(log_nu.shape[0], axis, n_axes) for axis, log_nu in enumerate(log_marginals)]
    other_axes = [[a for a in range(n_axes) if a != axis] for axis in range(n_axes)]
    in_place = not torch.is_grad_enabled()  # envelope mode; unrolled keeps every step for autograd
    scaled = [torch.zeros_like(log_nu) for log_nu in log_marginals]
    log_plan = -cost / epsilon
    error = math.inf
    marginals = [nu.detach() for nu in marginals]
    for sweep in range(1, max_iter + 1):
        for axis, log_nu in enumerate(log_marginals):
            step = log_nu - torch.logsumexp(log_plan, dim=other_axes[axis])
            if in_place:
                scaled[axis].add_(step)
                log_plan.add_(step.view(shapes[axis]))
            else:
                scaled[axis] = scaled[axis] + step
                log_plan = log_plan + step.view(shapes[axis])
        if sweep % check_every == 0 or sweep == max_iter:
            # The last axis was just matched exactly; one host sync per check, not per sweep.
            error = float(_marginal_error(log_plan.detach(), marginals[:-1]))
            if error < tol:
                return [epsilon * g for g in scaled], sweep, True, error
    return [epsilon * g for g in scaled], max_iter, False, error


def _check_marginals(marginals: Sequence[Tensor], cost: Tensor) -> list[Tensor]:
    for i, nu in enumerate(marginals):
        check_tensor(nu, f"marginals[{i}]", ndim=1)
        if nu.shape[0] != cost.shape[i]:
            raise ValueError(
                f"marginals[{i}]: expected shape ({cost.shape[i]},) to match cost axis {i}, "
                f"received {tuple(nu.shape)}"
            )
    check_same_kind({"cost": cost, **{f"marginals[{i}]": nu for i, nu in enumerate(marginals)}})
    if not values_checked():
        return list(marginals)
    detached = [nu.detach().to(torch.float64) for nu in marginals]
    for i, nu in enumerate(detached):
        if bool((nu < 0).any()):
            raise ValueError(f"marginals[{i}]: expected non-negative weights, received a negative entry")
    masses = torch.stack([nu.sum() for nu in detached])
    # Equal up to the input's precision: 1/3 + 1/3 + 1/3 is 0.99976 in float16.
    tolerance = max(1e-5, 10 * torch.finfo(marginals[0].dtype).eps)
    if bool((masses <= 0).any()) or float((masses - masses[0]).abs().max()) > tolerance * float(masses[0]):
        raise ValueError(f"marginals: expected positive and equal total masses, received {masses.tolist()}")
    return list(marginals)


@full_precision
def multi_marginal_sinkhorn(
    cost: Tensor,
    marginals: Sequence[Tensor],
    epsilon: float = 0.1,
    *,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
    grad: GradMode = "envelope",
    max_elements: int = MAX_COST_ELEMENTS,
) -> OTResult:
    """Entropic OT between ``M >= 2`` marginals on a joint cost tensor (paper eqs. 7-8).

    Args:
        cost: ``(K_1, ..., K_M)`` joint cost, e.g. from :func:`joint_cost_tensor`.
        marginals: ``M`` non-negative weight vectors ``(K_i,)`` with equal total mass
            (zero entries allowed: their plan slices are zero).
        epsilon: entropic regularisation ``> 0``, in the units of ``cost``.
        max_iter: maximum number of sweeps (each sweep updates all ``M`` potentials).
        tol: stop once ``max_i ||marginal_i(P) - nu_i||_1 < tol``.
        check_every: sweeps between convergence checks (each check is one host sync).
        grad: ``"envelope"`` or ``"unrolled"`` (see the module docstring).
        max_elements: memory guard on ``prod K_i``; larger problems raise ``ValueError``.

    Returns:
        :class:`OTResult`. ``converged`` is ``False`` (never an exception) when ``max_iter``
        was reached first; ``marginal_error`` says by how much.
    """
    check_tensor(cost, "cost")
    marginals = check_sequence(marginals, "marginals", min_len=2)
    if cost.ndim != len(marginals):
        raise ValueError(
            f"cost: expected a {len(marginals)}-D tensor (one axis per marginal), "
            f"received shape {tuple(cost.shape)}"
        )
    check_cost_size(cost.shape, max_elements)
    marginals = _check_marginals(marginals, cost)
    epsilon = check_positive(epsilon, "epsilon")
    check_positive(tol, "tol")
    check_choice(grad, "grad", ["envelope", "unrolled"])
    if max_iter < 1 or check_every < 1:
        raise ValueError(f"max_iter, check_every: expected integers >= 1, received {max_iter}, {check_every}")

    dtype = compute_dtype(cost.dtype)
    cost = cost.to(dtype)
    # Masses equal up to input precision are made exactly equal, or no plan could meet them all.
    # The factor is detached so that the gradient wrt each marginal stays its own potential.
    total = marginals[0].detach().to(dtype).sum()
    marginals = [nu.to(dtype) * (total / nu.detach().to(dtype).sum()) for nu in marginals]
    tiny = torch.finfo(dtype).tiny
    log_marginals = [nu.clamp_min(tiny).log() for nu in marginals]

    if grad == "unrolled":
        potentials, n_iter, converged, error = _sinkhorn_iterations(
            cost, log_marginals, marginals, epsilon, max_iter, tol, check_every
        )
        log_plan = _log_plan(cost, potentials, epsilon)
        plan = log_plan.exp()
        value = (plan * cost).sum()
        regularized = value + epsilon * (plan * (log_plan - 1.0)).sum()
        return OTResult(plan, value, regularized, tuple(potentials), n_iter, converged, error)

    with torch.no_grad():
        potentials, n_iter, converged, error = _sinkhorn_iterations(
            cost.detach(), [lm.detach() for lm in log_marginals], [nu.detach() for nu in marginals],
            epsilon, max_iter, tol, check_every,
        )
        log_plan = _log_plan(cost.detach(), potentials, epsilon)
        plan = log_plan.exp()
        entropy_term = epsilon * (plan * (log_plan - 1.0)).sum()
    # Envelope theorem: gradient P* for the cost and f_i for each marginal; the marginal terms
    # are zero in value (f_i . nu_i - f_i . stop_grad(nu_i)).
    value = (plan * cost).sum()
    marginal_terms = sum((f * (nu - nu.detach())).sum() for f, nu in zip(potentials, marginals))
    value = value + marginal_terms
    regularized = value + entropy_term
    return OTResult(plan, value, regularized, tuple(potentials), n_iter, converged, error)


def sinkhorn(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    epsilon: float = 0.1,
    *,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
    grad: GradMode = "envelope",
) -> OTResult:
    """Entropic OT between two histograms: :func:`multi_marginal_sinkhorn` with ``M = 2``.

    Args:
        cost: ``(n, m)``.
        a: ``(n,)`` and b: ``(m,)`` non-negative weights of equal mass.
        epsilon, max_iter, tol, check_every, grad: as in :func:`multi_marginal_sinkhorn`.

    Returns:
        :class:`OTResult` with an ``(n, m)`` plan, equal to POT's
        ``ot.sinkhorn(a, b, cost, epsilon, method="sinkhorn_log")`` at convergence.
    """
    check_tensor(cost, "cost", ndim=2)
    check_tensor(a, "a", ndim=1)
    check_tensor(b, "b", ndim=1)
    check_same_kind({"cost": cost, "a": a, "b": b})
    for name, weights, axis in (("a", a, 0), ("b", b, 1)):
        if weights.shape[0] != cost.shape[axis]:
            raise ValueError(f"{name}: expected shape ({cost.shape[axis]},) to match cost axis {axis}, received {tuple(weights.shape)}")
    return multi_marginal_sinkhorn(
        cost, [a, b], epsilon, max_iter=max_iter, tol=tol, check_every=check_every, grad=grad
    )
