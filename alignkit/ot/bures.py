"""Pairwise squared 2-Wasserstein (Bures) cost between Gaussian components (DecAlign eq. 6).

For ``N(mu_a, S_a)`` and ``N(mu_b, S_b)``::

    W2^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})

and, for diagonal covariances (variances ``v``), ``||mu_a - mu_b||^2 + ||sqrt(v_a) - sqrt(v_b)||^2``.
The cost is returned squared (POT's ``bures_wasserstein_distance`` returns ``W2``): ``W2^2`` is
smooth where ``W2`` is not (at equal Gaussians).

Options for the authors' DecAlign code, which reduces both terms by their mean over the ``d``
features (``reduction="mean"``) and computes the diagonal covariance term as
``v_a + v_b - 2 sqrt(v_a v_b + eps)`` with ``eps = 1e-8``: next to variances floored at 1e-4, that
constant changes the cost (at ``v_a = v_b = 1e-4`` the term is ``-8.3e-5`` instead of 0), so it is
an argument here rather than dropped.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from alignkit._checks import check_choice, check_covariances, check_same_kind, check_tensor, compute_dtype, full_precision
from alignkit.ot.sqrtm import sqrt_diagonal, trace_sqrtm_psd, unchecked_sqrtm_psd


def _check_component_set(means: Tensor, covariances: Tensor, side: str) -> None:
    check_tensor(means, f"means_{side}", ndim=2)
    check_tensor(covariances, f"covariances_{side}", ndim=(2, 3))
    k, d = means.shape
    expected = [(k, d), (k, d, d)]
    if tuple(covariances.shape) not in expected:
        raise ValueError(
            f"covariances_{side}: expected shape {expected[0]} (diagonal) or {expected[1]} (full) "
            f"to match means_{side} {tuple(means.shape)}, received {tuple(covariances.shape)}"
        )
    check_covariances(covariances, f"covariances_{side}", diagonal=covariances.ndim == 2)


@full_precision
def bures_wasserstein_cost(
    means_a: Tensor,
    covariances_a: Tensor,
    means_b: Tensor,
    covariances_b: Tensor,
    *,
    reduction: Literal["sum", "mean"] = "sum",
    eps: float = 0.0,
) -> Tensor:
    """Squared 2-Wasserstein distance between every component of ``a`` and every one of ``b``.

    Args:
        means_a: ``(K_a, d)``.
        covariances_a: ``(K_a, d)`` variances (diagonal) or ``(K_a, d, d)`` full, symmetric PSD.
        means_b: ``(K_b, d)``.
        covariances_b: ``(K_b, d)`` or ``(K_b, d, d)``. A diagonal set meeting a full one is
            treated as full.
        reduction: ``"sum"`` (``W2^2``) or ``"mean"`` (``W2^2 / d``, the authors' DecAlign code).
        eps: ``>= 0`` added under the square root of the diagonal cross term (module docstring);
            diagonal covariances only.

    Returns:
        ``(K_a, K_b)`` costs, ``W2^2 >= 0`` for ``eps = 0``; float64 for float64 inputs, float32 otherwise.
    """
    _check_component_set(means_a, covariances_a, "a")
    _check_component_set(means_b, covariances_b, "b")
    check_same_kind({"means_a": means_a, "covariances_a": covariances_a, "means_b": means_b, "covariances_b": covariances_b})
    if means_a.shape[1] != means_b.shape[1]:
        raise ValueError(
            f"means_b: expected feature width {means_a.shape[1]} (the width of means_a), "
            f"received shape {tuple(means_b.shape)}"
        )
    check_choice(reduction, "reduction", ["sum", "mean"])
    diagonal = covariances_a.ndim == 2 and covariances_b.ndim == 2
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps: expected a number >= 0, received {eps!r}")
    if eps > 0 and not diagonal:
        raise ValueError("eps: applies to diagonal covariances only, received a full covariance set")
    dtype = compute_dtype(means_a.dtype)
    means_a, means_b = means_a.to(dtype), means_b.to(dtype)
    covariances_a, covariances_b = covariances_a.to(dtype), covariances_b.to(dtype)
    scale = 1.0 / means_a.shape[1] if reduction == "mean" else 1.0

    mean_term = (means_a.unsqueeze(1) - means_b.unsqueeze(0)).pow(2).sum(-1)
    if diagonal and eps > 0:
        var_a, var_b = covariances_a.unsqueeze(1), covariances_b.unsqueeze(0)
        covariance_term = (var_a + var_b - 2.0 * (var_a * var_b + eps).sqrt()).sum(-1)
        return (mean_term + covariance_term) * scale
    if diagonal:
        root_a, root_b = sqrt_diagonal(covariances_a), sqrt_diagonal(covariances_b)
        return (mean_term + (root_a.unsqueeze(1) - root_b.unsqueeze(0)).pow(2).sum(-1)) * scale

    if covariances_a.ndim == 2:
        covariances_a = covariances_a.diag_embed()
    if covariances_b.ndim == 2:
        covariances_b = covariances_b.diag_embed()
    root_a = unchecked_sqrtm_psd(covariances_a).unsqueeze(1)  # (K_a, 1, d, d)
    trace_cross = trace_sqrtm_psd(root_a @ covariances_b.unsqueeze(0) @ root_a)  # (K_a, K_b)
    trace_a = covariances_a.diagonal(dim1=-2, dim2=-1).sum(-1)
    trace_b = covariances_b.diagonal(dim1=-2, dim2=-1).sum(-1)
    covariance_term = trace_a.unsqueeze(1) + trace_b.unsqueeze(0) - 2.0 * trace_cross
    # Round-off can leave -1e-16 for equal components; the cost is a squared distance.
    return (mean_term + covariance_term).clamp_min(0.0) * scale
