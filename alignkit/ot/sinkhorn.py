"""Entropic multi-marginal optimal transport by log-domain Sinkhorn (DecAlign eqs. 5, 7, 8).

Given a cost tensor ``C`` of shape ``(K_1, ..., K_M)`` and marginals ``nu_i`` (``(K_i,)``, equal
total mass), solve::

    min_P  <P, C> + epsilon * sum_k P(k) (log P(k) - 1)   s.t.  P summed over all axes but i = nu_i.

The optimum has the form ``P = exp((f_1 (+) ... (+) f_M - C) / epsilon)`` with one dual potential
per marginal. Sinkhorn updates each potential in turn so that its marginal holds exactly::

    f_i <- f_i + epsilon * (log nu_i - logsumexp_{all axes but i} log P)

which for ``M = 2`` is ordinary log-domain Sinkhorn (POT ``ot.sinkhorn(method="sinkhorn_log")``).
Everything stays in the log domain, so small ``epsilon`` never underflows.

The authors' DecAlign code runs this iteration in the linear domain (``u_i = nu_i / (K . prod_{j!=i}
u_j)``, ``K = exp(-C / epsilon)``) with two guards: the kernel is floored at ``1e-30`` and ``1e-8``
is added to each denominator. ``kernel_floor`` and ``scaling_guard`` apply the same guards here,
in the log domain (``log K = max(-C / epsilon, log kernel_floor)`` and ``log u_i = log nu_i -
logaddexp(logsumexp(...), log scaling_guard)``): the same numbers where the linear form is
representable, and no underflow where it is not. ``tol=0`` runs exactly ``max_iter`` sweeps, as
that code does.

Gradients: ``grad="envelope"`` (default) runs the iterations without autograd and returns
``value = <P*, C>`` with ``P*`` detached, so ``d value / d C = P*`` and ``d value / d nu_i = f_i``
(the envelope theorem applied to the regularised objective, as in geomloss); memory stays that of
one cost tensor. ``grad="unrolled"`` back-propagates through every iteration: the exact gradient
of the iterate after the sweeps done, whether or not they converged. Its backward pass is written
out (:class:`_UnrolledSinkhorn`): it replays the updates in reverse from what the forward pass
kept of each (its softmax, or for large problems only its potential), in a few operations per
update instead of the dozens autograd records, which matters because the loop is bound by
per-operation overhead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
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

SOFTMAX_TAPE_BYTES = 2**26
"""Most memory the unrolled solver's forward pass spends on what spares its backward pass the
exponentials (``max_iter * M * prod K_i`` entries); larger problems recompute them instead."""


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


def _axis_shape(size: int, axis: int, ndim: int) -> list[int]:
    view = [1] * ndim
    view[axis] = size
    return view


def _log_kernel(cost: Tensor, epsilon: float, kernel_floor: float) -> Tensor:
    """``log K = -C / epsilon``, floored at ``log kernel_floor`` when that is positive."""
    log_kernel = -cost / epsilon
    return log_kernel.clamp_min(math.log(kernel_floor)) if kernel_floor > 0 else log_kernel


def _log_plan(log_kernel: Tensor, potentials: Sequence[Tensor], epsilon: float) -> Tensor:
    """``log K + sum_i f_i / epsilon`` from scratch (no accumulated round-off)."""
    log_plan = log_kernel
    for axis, f in enumerate(potentials):
        log_plan = log_plan + (f / epsilon).view(_axis_shape(f.shape[0], axis, log_kernel.ndim))
    return log_plan


class _ArrayOps:
    """The handful of array operations the Sinkhorn loops use, on numpy for CPU tensors and on
    torch otherwise. The loops run thousands of operations on arrays of a few hundred entries,
    so they are bound by per-call overhead: about a microsecond in numpy against several in
    torch on a CPU (a whole unrolled DecAlign solve: 4 ms instead of 14). Values are the same
    to float round-off."""

    def __init__(self, like: Tensor) -> None:
        self.numpy = like.device.type == "cpu"
        self.dtype, self.device = like.dtype, like.device

    def array(self, x: Tensor) -> Any:
        return x.detach().numpy() if self.numpy else x.detach()

    def tensor(self, x: Any) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)) if self.numpy else x

    def copy(self, x: Any) -> Any:
        return x.copy() if self.numpy else x.clone()

    def zeros(self, n: int) -> Any:
        return np.zeros(n, dtype=torch.empty((), dtype=self.dtype).numpy().dtype) if self.numpy else torch.zeros(n, dtype=self.dtype, device=self.device)

    def sum(self, x: Any, axes: Sequence[int], keepdim: bool = False) -> Any:
        return x.sum(axis=tuple(axes), keepdims=keepdim) if self.numpy else x.sum(dim=list(axes), keepdim=keepdim)

    def logsumexp(self, x: Any, axes: Sequence[int]) -> Any:
        if not self.numpy:
            return torch.logsumexp(x, dim=list(axes))
        top = x.max(axis=tuple(axes), keepdims=True)
        return np.log(np.exp(x - top).sum(axis=tuple(axes))) + top.reshape(-1)

    def logsumexp_parts(self, x: Any, axes: Sequence[int]) -> tuple[Any, Any, Any]:
        """``logsumexp`` over ``axes`` (flat) with its parts: ``e = exp(x - max)`` (``x``'s shape)
        and its sums ``z`` (flat), so that ``softmax = e / z``."""
        top = x.max(axis=tuple(axes), keepdims=True) if self.numpy else x.amax(dim=list(axes), keepdim=True)
        parts = self.exp(x - top)
        total = self.sum(parts, axes, keepdim=True)
        lse = (np.log(total) if self.numpy else total.log()) + top
        return lse.reshape(-1), parts, total.reshape(-1)

    def logaddexp(self, x: Any, y: float) -> Any:
        # new_full fills on the device; new_tensor would copy from the host (not capturable in a CUDA graph).
        return np.logaddexp(x, y) if self.numpy else torch.logaddexp(x, x.new_full((), y))

    def exp(self, x: Any) -> Any:
        return np.exp(x) if self.numpy else x.exp()

    def sigmoid(self, x: Any) -> Any:
        return 0.5 * (1.0 + np.tanh(0.5 * x)) if self.numpy else torch.sigmoid(x)


def _sinkhorn_iterations(
    log_kernel: Tensor,
    log_marginals: Sequence[Tensor],
    marginals: Sequence[Tensor],
    epsilon: float,
    max_iter: int,
    tol: float,
    check_every: int,
    scaling_guard: float = 0.0,
    history: list[Any] | None = None,
    keep_softmax: bool = False,
) -> tuple[list[Tensor], int, bool, float]:
    """Cyclic potential updates, without autograd; returns potentials, sweeps done, converged
    flag, final error. ``history`` (if given) receives, per update, ``(potential, parts, sums,
    guarded_lse)`` (arrays of :class:`_ArrayOps`): the potential it sets and, with
    ``keep_softmax``, what the backward of :class:`_UnrolledSinkhorn` needs of it (else None):
    the parts of the softmax over the other axes (:meth:`_ArrayOps.logsumexp_parts`) and, with
    a scaling guard, the logsumexp the guard meets.

    Potentials are kept in units of ``epsilon`` inside the loop, and the plan is updated in
    place. ``tol=0`` skips the convergence checks.
    """
    ops = _ArrayOps(log_kernel)
    n_axes = log_kernel.ndim
    shapes = [_axis_shape(log_nu.shape[0], axis, n_axes) for axis, log_nu in enumerate(log_marginals)]
    other_axes = [[a for a in range(n_axes) if a != axis] for axis in range(n_axes)]
    lambdas = [ops.array(log_nu) for log_nu in log_marginals]
    targets = [ops.array(nu) for nu in marginals[:-1]]
    scaled = [ops.zeros(log_nu.shape[0]) for log_nu in log_marginals]
    log_plan = ops.copy(ops.array(log_kernel))
    log_guard = math.log(scaling_guard) if scaling_guard > 0 else None
    error, sweeps, converged = math.inf, max_iter, False
    for sweep in range(1, max_iter + 1):
        for axis, lam in enumerate(lambdas):
            parts = sums = own = None
            if keep_softmax:
                lse, parts, sums = ops.logsumexp_parts(log_plan, other_axes[axis])
            else:
                lse = ops.logsumexp(log_plan, other_axes[axis])
            if log_guard is None:
                new = lam - lse + scaled[axis]
            else:
                # (lse - s_i): log of (K . prod_{j != i} u_j), the marginal without this axis' own scaling.
                own = lse - scaled[axis]
                new = lam - ops.logaddexp(own, log_guard)
            log_plan += (new - scaled[axis]).reshape(shapes[axis])
            scaled[axis] = new
            if history is not None:
                history.append((new, parts, sums, own if keep_softmax else None))
        if (tol > 0 and sweep % check_every == 0) or sweep == max_iter:
            # The last axis was just matched exactly; one host sync per check, not per sweep.
            residuals = [abs(ops.exp(ops.logsumexp(log_plan, other_axes[i])) - nu).sum() for i, nu in enumerate(targets)]
            if tol == 0 and not ops.numpy:
                # Reported, never tested: it stays on the device, so a run of fixed length has
                # no host sync at all (CUDA graphs can capture it).
                error = torch.stack(residuals).max()
                continue
            error = max(float(r) for r in residuals)
            if error < tol:
                sweeps, converged = sweep, True
                break
    return [epsilon * ops.tensor(g) for g in scaled], sweeps, converged, error


class _UnrolledSinkhorn(torch.autograd.Function):
    """The cyclic updates of :func:`_sinkhorn_iterations` as one autograd node.

    Update ``t`` sets, for axis ``i = t mod M``, ``s_i = lambda_i - lse_i`` with
    ``lse_i = logsumexp_{axes != i}(L + sum_{j != i} s_j)`` (``logaddexp(lse_i, log guard)`` with a
    scaling guard), where ``L`` is the log-kernel and ``lambda_i`` the log-marginal. Backward, for
    the adjoint ``a`` of that ``s_i``: ``lambda_i`` gets ``a``; ``Q = L + sum_{j != i} s_j`` gets
    ``-a w * softmax_{axes != i}(Q)`` (``w = sigmoid(lse_i - log guard)``, 1 without guard), which
    flows into ``L`` and, summed over the other axes, into each ``s_j`` of the update that set it.

    The forward pass keeps each update's softmax (as the parts its logsumexp computed) when they fit
    in :data:`SOFTMAX_TAPE_BYTES` (DecAlign's 7 x 7 x 7 cost and 50 sweeps: 0.2 MB in float32), so
    that the backward pass needs no exponential; beyond that it keeps the potentials only and
    recomputes the softmaxes from them.
    """

    @staticmethod
    def forward(ctx, log_kernel: Tensor, run: dict, *log_marginals: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        history: list[Any] = []
        tape_bytes = run["max_iter"] * log_kernel.ndim * log_kernel.numel() * log_kernel.element_size()
        scaled, n_iter, converged, error = _sinkhorn_iterations(
            log_kernel, log_marginals, run["marginals"], 1.0, run["max_iter"], run["tol"], run["check_every"],
            run["scaling_guard"], history=history, keep_softmax=tape_bytes <= SOFTMAX_TAPE_BYTES,
        )
        run.update(n_iter=n_iter, converged=converged, error=error)
        ctx.save_for_backward(log_kernel)
        ctx.history = history  # arrays, not tensors: nothing here is modified in place later
        ctx.log_guard = math.log(run["scaling_guard"]) if run["scaling_guard"] > 0 else None
        return tuple(scaled)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (log_kernel,) = ctx.saved_tensors
        ops = _ArrayOps(log_kernel)
        history = ctx.history
        kernel = ops.array(log_kernel)
        n_axes = kernel.ndim
        shapes = [_axis_shape(kernel.shape[i], i, n_axes) for i in range(n_axes)]
        adjoint = [ops.zeros(kernel.shape[i]) if g is None else ops.copy(ops.array(g)) for i, g in enumerate(grads)]
        kernel_adjoint = kernel * 0
        marginal_adjoint = [a * 0 for a in adjoint]
        for t in range(len(history) - 1, -1, -1):
            axis = t % n_axes
            a, adjoint[axis] = adjoint[axis], adjoint[axis] * 0
            marginal_adjoint[axis] = marginal_adjoint[axis] + a
            others = [j for j in range(n_axes) if j != axis]
            _, parts, sums, lse = history[t]
            if parts is None:  # not kept: from the other potentials as they were at update t
                q = kernel
                for j in others:
                    set_at = t - (axis - j) % n_axes  # the latest earlier update of axis j
                    if set_at >= 0:
                        q = q + history[set_at][0].reshape(shapes[j])
                lse, parts, sums = ops.logsumexp_parts(q, others)
            # softmax = parts / sums: the division is done on the vector.
            weight = -a / sums if ctx.log_guard is None else -a * ops.sigmoid(lse - ctx.log_guard) / sums
            q_adjoint = parts * weight.reshape(shapes[axis])
            kernel_adjoint += q_adjoint
            # Summed over this update's axis first, so that each sum below reduces a K_i times smaller array.
            reduced = ops.sum(q_adjoint, [axis], keepdim=True)
            for j in others:
                adjoint[j] = adjoint[j] + ops.sum(reduced, [k for k in range(n_axes) if k != j])
        return (ops.tensor(kernel_adjoint), None, *(ops.tensor(m) for m in marginal_adjoint))


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
    kernel_floor: float = 0.0,
    scaling_guard: float = 0.0,
) -> OTResult:
    """Entropic OT between ``M >= 2`` marginals on a joint cost tensor (paper eqs. 7-8).

    Args:
        cost: ``(K_1, ..., K_M)`` joint cost, e.g. from :func:`joint_cost_tensor`.
        marginals: ``M`` non-negative weight vectors ``(K_i,)`` with equal total mass
            (zero entries allowed: their plan slices are zero).
        epsilon: entropic regularisation ``> 0``, in the units of ``cost``.
        max_iter: maximum number of sweeps (each sweep updates all ``M`` potentials).
        tol: stop once ``max_i ||marginal_i(P) - nu_i||_1 < tol``; ``0`` runs exactly
            ``max_iter`` sweeps without checking (``converged`` is then False).
        check_every: sweeps between convergence checks (each check is one host sync).
        grad: ``"envelope"`` or ``"unrolled"`` (see the module docstring).
        max_elements: memory guard on ``prod K_i``; larger problems raise ``ValueError``.
        kernel_floor, scaling_guard: ``>= 0``, the guards of the authors' linear-domain
            iteration (module docstring; they use ``1e-30`` and ``1e-8``); 0 turns each off.

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
    for name, value in (("tol", tol), ("kernel_floor", kernel_floor), ("scaling_guard", scaling_guard)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number >= 0, received {value!r}")
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
        log_kernel = _log_kernel(cost, epsilon, kernel_floor)
        run = {"marginals": [nu.detach() for nu in marginals], "max_iter": max_iter, "tol": tol, "check_every": check_every, "scaling_guard": scaling_guard}
        scaled = _UnrolledSinkhorn.apply(log_kernel, run, *log_marginals)
        potentials = [epsilon * g for g in scaled]
        n_iter, converged, error = run["n_iter"], run["converged"], run["error"]
        log_plan = _log_plan(log_kernel, potentials, epsilon)
        plan = log_plan.exp()
        value = (plan * cost).sum()
        regularized = value + epsilon * (plan * (log_plan - 1.0)).sum()
        return OTResult(plan, value, regularized, tuple(potentials), n_iter, converged, error)

    with torch.no_grad():
        log_kernel = _log_kernel(cost.detach(), epsilon, kernel_floor)
        potentials, n_iter, converged, error = _sinkhorn_iterations(
            log_kernel, [lm.detach() for lm in log_marginals], [nu.detach() for nu in marginals],
            epsilon, max_iter, tol, check_every, scaling_guard,
        )
        log_plan = _log_plan(log_kernel, potentials, epsilon)
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
