"""Sample-to-prototype calibration (DecAlign eq. 9, second term).

For modalities ``i != j``, samples ``F^i: (N_i, d)`` with responsibilities ``w^i: (N_i, K_i)``
and target prototypes ``t^{ij}: (K_i, d)`` taken from modality ``j``::

    L_proto = 1 / (M (M - 1)) sum_{i != j} 1/N_i sum_n sum_k w^i_n(k) ||F^i_n - t^{ij}_k||^2

``reduction="mean"`` divides the squared distance by ``d`` (the authors' DecAlign code).

The paper pairs component ``k`` of ``i`` with component ``k`` of ``j`` (``matching="index"``),
which is arbitrary for independently fitted mixtures. ``matching="plan"`` (default) uses the
barycentric projection of ``j``'s means through the OT plan's ``(i, j)`` marginal ``T^{ij}``:
``t^{ij}_k = sum_l T^{ij}_kl mu^j_l / sum_l T^{ij}_kl``.

The weighted sum needs no ``(N, K, d)`` differences: expanding the square gives three matrix
products, ``O(N K d)`` time and ``O(N K)`` memory, the size of the responsibilities it is given.
So ``backend="blocked"`` has nothing left to bound and is the dense form; ``"keops"`` computes
the sum as one KeOps reduction (no ``(N, K)`` temporary at all); ``"auto"`` is dense unless
``$ALIGNKIT_BACKEND`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from alignkit._checks import (
    check_choice,
    check_feature_widths,
    check_non_negative_entries,
    check_same_kind,
    check_sequence,
    check_tensor,
    compute_dtype,
    full_precision,
)
from alignkit.kernels.backends import keops
from alignkit.kernels.dispatch import Backend, resolve_rowwise_backend

Matching = Literal["plan", "index"]


def pair_plan(plan: Tensor, i: int, j: int) -> Tensor:
    """The ``(K_i, K_j)`` marginal of a multi-marginal plan on axes ``i`` and ``j``."""
    other_axes = [a for a in range(plan.ndim) if a not in (i, j)]
    pair = plan.sum(dim=other_axes) if other_axes else plan
    return pair if i < j else pair.mT


def weighted_squared_distance(features: Tensor, responsibilities: Tensor, targets: Tensor, backend: str = "dense") -> Tensor:
    """``1/N sum_n sum_k w_nk ||x_n - t_k||^2`` for ``x (..., N, d)``, ``w (..., N, K)``, ``t (..., K, d)``
    (leading dimensions broadcast; KeOps: none) -> ``(...)``; ``backend`` is a resolved name
    (``"dense"``, ``"blocked"`` or ``"keops"``)."""
    # Centering by the sample mean does not change any distance and limits cancellation.
    center = features.mean(-2, keepdim=True).detach()
    x, t = features - center, targets - center
    n_samples = features.shape[-2]
    if backend == "keops":
        return keops.weighted_squared_distance(x, responsibilities, t) / n_samples
    mass = responsibilities.sum(-2)  # (..., K)
    total = (
        ((x * x).sum(-1) * responsibilities.sum(-1)).sum(-1)
        - 2.0 * (responsibilities * (x @ t.mT)).sum((-2, -1))
        + (mass * (t * t).sum(-1)).sum(-1)
    )
    return total.clamp_min(0.0) / n_samples


@full_precision
def prototype_calibration_loss(
    features: Sequence[Tensor],
    responsibilities: Sequence[Tensor],
    means: Sequence[Tensor],
    *,
    plan: Tensor | None = None,
    matching: Matching = "plan",
    backend: Backend = "auto",
    reduction: Literal["sum", "mean"] = "sum",
) -> Tensor:
    """Average over ordered modality pairs of the sample-to-prototype calibration (eq. 9).

    Args:
        features: ``M >= 2`` tensors ``(N_i, d)``.
        responsibilities: ``M`` tensors ``(N_i, K_i)``, e.g. ``fit_gmm(...).responsibilities``.
        means: ``M`` prototype means ``(K_i, d)``.
        plan: ``(K_1, ..., K_M)`` OT plan; required for ``matching="plan"``.
        matching: ``"plan"`` (barycentric projection through the plan) or ``"index"`` (the
            paper's component-``k``-to-component-``k`` form; needs equal ``K_i``).
        backend: ``"auto"``, ``"dense"``, ``"blocked"`` (= dense) or ``"keops"`` (module docstring).
        reduction: ``"sum"`` (``||.||^2``) or ``"mean"`` (``||.||^2 / d``) over the features.

    Returns:
        0-dim tensor.
    """
    features = check_sequence(features, "features", min_len=2)
    responsibilities = check_sequence(responsibilities, "responsibilities", min_len=len(features))
    means = check_sequence(means, "means", min_len=len(features))
    check_choice(matching, "matching", ["plan", "index"])
    check_choice(reduction, "reduction", ["sum", "mean"])
    n_modalities = len(features)
    if len(responsibilities) != n_modalities or len(means) != n_modalities:
        raise ValueError(
            f"responsibilities, means: expected {n_modalities} tensors each (one per modality), "
            f"received {len(responsibilities)} and {len(means)}"
        )
    named: dict[str, Tensor] = {}
    for m in range(n_modalities):
        check_tensor(features[m], f"features[{m}]", ndim=2)
        check_tensor(responsibilities[m], f"responsibilities[{m}]", ndim=2)
        check_tensor(means[m], f"means[{m}]", ndim=2)
        n, k = features[m].shape[0], means[m].shape[0]
        if tuple(responsibilities[m].shape) != (n, k):
            raise ValueError(
                f"responsibilities[{m}]: expected shape {(n, k)} (samples x components), "
                f"received {tuple(responsibilities[m].shape)}"
            )
        named.update({f"features[{m}]": features[m], f"responsibilities[{m}]": responsibilities[m], f"means[{m}]": means[m]})
    check_same_kind(named)
    check_feature_widths({name: t for name, t in named.items() if not name.startswith("resp")})
    sizes = [mu.shape[0] for mu in means]
    if matching == "index" and len(set(sizes)) > 1:
        raise ValueError(f"means: matching='index' needs equal component counts, received {sizes}")
    if matching == "plan":
        if plan is None:
            raise ValueError("plan: expected the OT plan for matching='plan', received None")
        check_tensor(plan, "plan")
        check_non_negative_entries(plan, "plan")
        check_same_kind({"features[0]": features[0], "plan": plan}, dtype=False)  # a plan of any float dtype will do
        if tuple(plan.shape) != tuple(sizes):
            raise ValueError(f"plan: expected shape {tuple(sizes)} (components per modality), received {tuple(plan.shape)}")

    backend = resolve_rowwise_backend(backend, large=False, device_type=features[0].device.type)

    dtype = compute_dtype(features[0].dtype)
    features = [f.to(dtype) for f in features]
    responsibilities = [r.to(dtype) for r in responsibilities]
    means = [mu.to(dtype) for mu in means]
    plan = plan.to(dtype) if plan is not None else None

    if plan is None and backend != "keops" and len({(f.shape, r.shape) for f, r in zip(features, responsibilities)}) == 1:
        # Every ordered pair at once: values[i, j] matches modality i's samples to modality j's
        # prototypes (the loop below costs more in per-operation overhead than in arithmetic).
        targets = torch.stack(means).unsqueeze(0)  # (1, M, K, d): targets[i, j] = means[j]
        values = weighted_squared_distance(torch.stack(features).unsqueeze(1), torch.stack(responsibilities).unsqueeze(1), targets)
        total = (values * ~torch.eye(n_modalities, dtype=torch.bool, device=values.device)).sum()
    else:
        total = features[0].new_zeros(())
        for i in range(n_modalities):
            for j in range(n_modalities):
                if i == j:
                    continue
                if plan is None:
                    targets = means[j]
                else:
                    coupling = pair_plan(plan, i, j)
                    row_mass = coupling.sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
                    targets = (coupling / row_mass) @ means[j]
                total = total + weighted_squared_distance(features[i], responsibilities[i], targets, backend)
    width = features[0].shape[1] if reduction == "mean" else 1
    return total / (n_modalities * (n_modalities - 1) * width)
