"""Typed result of the entropic OT solvers."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class OTResult:
    """What an entropic OT solve produced.

    Attributes:
        plan: optimal plan, shape ``(K_1, ..., K_M)`` (``(n, m)`` for two marginals). Detached
            under ``grad="envelope"``.
        value: transport cost ``<plan, cost>`` (0-dim); the term DecAlign minimises (eq. 9).
        regularized_value: ``<plan, cost> + epsilon * sum plan (log plan - 1)`` (0-dim).
        potentials: one dual potential ``f_i`` of shape ``(K_i,)`` per marginal, with
            ``plan = exp((sum_i f_i - cost) / epsilon)``.
        n_iter: Sinkhorn sweeps performed (one sweep updates every potential once).
        converged: whether the marginal error fell below ``tol`` within ``max_iter`` sweeps.
        marginal_error: ``max_i || plan summed over all axes but i  -  nu_i ||_1`` at the end;
            with ``tol=0`` (no stopping rule) on torch tensors, a 0-dim tensor, so that reading
            it is left to the caller (it costs a host sync).
    """

    plan: Tensor
    value: Tensor
    regularized_value: Tensor
    potentials: tuple[Tensor, ...]
    n_iter: int
    converged: bool
    marginal_error: float | Tensor
