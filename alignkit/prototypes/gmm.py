"""Differentiable Gaussian-mixture prototypes by EM (DecAlign eqs. 2-4).

Each EM step is the one scikit-learn's ``GaussianMixture`` runs, in torch and batched:

* E-step: ``log w_nk = log pi_k + log N(x_n; mu_k, S_k) - logsumexp_j(...)`` (eq. 3-4, log domain).
* M-step: ``N_k = sum_n w_nk + 10 eps``, ``pi_k = N_k / sum_j N_j``, ``mu_k = sum_n w_nk x_n / N_k``,
  ``S_k = sum_n w_nk (x_n - mu_k)(x_n - mu_k)^T / N_k + reg_covar I`` (diagonal: variances only).

Started from the same parameters, ``n_iter`` steps here equal scikit-learn with ``max_iter=n_iter,
tol=0``. The data are centred first (EM is translation-equivariant) so that the matrix-product
forms of the E- and M-steps stay accurate in float32. ``reg_covar`` keeps zero-variance features
and duplicate rows finite.

``regularization="clamp"`` (diagonal covariances) is the EM of the authors' DecAlign code instead:
variances are floored at ``reg_covar`` rather than increased by it (``S_k = max(var_k, reg_covar)``,
also for the starting variances), ``N_k = max(sum_n w_nk, 1e-6)`` and ``pi_k = N_k / N``, and the
E-step takes ``log max(pi_k, 1e-8)``. The floors change values only where a variance or a
component's mass is that small, but there they do, so they are kept as the authors wrote them.

Backends (``backend=``): ``"dense"`` forms each step's temporaries whole; the full-covariance
E- and M-steps need ``(N, K d)`` and ``(K, N, d)`` of them. ``"blocked"`` runs both steps over
blocks of :data:`ROWS` samples and recomputes a block in backward instead of keeping it, so
memory is ``O(N K)`` (the responsibilities) plus one block. ``"keops"`` computes the diagonal
E-step's log-densities as a KeOps reduction (diagonal covariances only). ``"auto"`` is dense,
or blocked when a full-covariance temporary would exceed :data:`DENSE_MAX_ELEMENTS`
(:func:`alignkit.kernels.dispatch.resolve_rowwise_backend`).

Gradients: ``grad="unrolled"`` back-propagates through every EM step; ``grad="last_step"`` runs
``n_iter - 1`` steps without autograd and differentiates only the last step and the final E-step,
which is much cheaper and, near a fixed point of EM, nearly the same gradient.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from alignkit._checks import (
    check_choice,
    check_covariances,
    check_non_negative_entries,
    check_positive,
    check_representable,
    check_tensor,
    compute_dtype,
    full_precision,
)
from alignkit.kernels.backends import keops
from alignkit.kernels.dispatch import Backend, resolve_rowwise_backend

CovarianceType = Literal["diag", "full"]
InitMethod = Literal["kmeans++", "spaced"]
GMMGrad = Literal["unrolled", "last_step"]
Regularization = Literal["add", "clamp"]

ROWS = 4096
"""Samples per block of the blocked backend (read at call time, so tests can shrink it)."""
DENSE_MAX_ELEMENTS = 2**25
"""Largest full-covariance temporary (``G N K d`` elements, 128 MB in float32) ``auto`` forms whole."""
CLAMP_MIN_COUNT = 1e-6
"""``regularization="clamp"``: floor of a component's responsibility mass ``N_k``."""
CLAMP_MIN_WEIGHT = 1e-8
"""``regularization="clamp"``: floor of ``pi_k`` inside the E-step's logarithm."""


@dataclass(frozen=True)
class GaussianMixture:
    """A fitted mixture. Leading ``...`` is empty for one ``(N, d)`` input, ``(G,)`` for a batch.

    Attributes:
        weights: ``(..., K)`` mixture coefficients ``pi_k``, summing to 1.
        means: ``(..., K, d)``.
        covariances: ``(..., K, d)`` variances (``"diag"``) or ``(..., K, d, d)`` (``"full"``).
        responsibilities: ``(..., N, K)`` posteriors ``w_n(k)`` (eq. 3) under the returned parameters.
        log_likelihood: ``(...)`` mean log-likelihood per sample under the returned parameters.
        covariance_type: ``"diag"`` or ``"full"``.
    """

    weights: Tensor
    means: Tensor
    covariances: Tensor
    responsibilities: Tensor
    log_likelihood: Tensor
    covariance_type: str


def _log_gaussian_diag(x: Tensor, x_sq: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """``log N(x_n; mu_k, diag(v_k))``: ``x, x_sq = x * x (G, N, d)``, ``means, variances (G, K, d)`` -> ``(G, N, K)``."""
    precisions = 1.0 / variances
    quadratic = (
        x_sq @ precisions.mT
        - 2.0 * x @ (means * precisions).mT
        + (means * means * precisions).sum(-1).unsqueeze(-2)
    ).clamp_min(0.0)
    log_det = variances.log().sum(-1).unsqueeze(-2)
    return -0.5 * (x.shape[-1] * math.log(2.0 * math.pi) + log_det + quadratic)


def _log_gaussian_full(x: Tensor, means: Tensor, covariances: Tensor) -> Tensor:
    """``log N(x_n; mu_k, S_k)``: ``x (G, N, d)``, ``means (G, K, d)``, ``covariances (G, K, d, d)``."""
    cholesky = torch.linalg.cholesky(covariances)  # (G, K, d, d), S = L L^T
    # |L^{-1}(x - mu)|^2 with the inverse factor applied by one matrix product per component
    # (as scikit-learn does); inverting K small triangular factors is cheap, N solves are not.
    batch, n_samples, dim = x.shape
    n_components = means.shape[1]
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    inverse_factor = torch.linalg.solve_triangular(cholesky, eye, upper=False).mT  # (G, K, d, d) = L^{-T}
    # All components in one product: x @ [A_1 ... A_K] - [mu_1 A_1 ... mu_K A_K], (G, N, K d).
    stacked = inverse_factor.permute(0, 2, 1, 3).reshape(batch, dim, n_components * dim)
    shift = (means.unsqueeze(-2) @ inverse_factor).reshape(batch, 1, n_components * dim)
    projected = torch.baddbmm(-shift, x, stacked)
    # In place when nothing needs its gradient: one fewer (N, K d) buffer per E-step.
    projected = projected.square() if projected.requires_grad else projected.square_()
    quadratic = projected.view(batch, n_samples, n_components, dim).sum(-1)  # (G, N, K)
    log_det = 2.0 * cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (G, K)
    return -0.5 * (dim * math.log(2.0 * math.pi) + log_det.unsqueeze(-2) + quadratic)


def _over_row_blocks(fn, rowwise: tuple[Tensor, ...], shared: tuple[Tensor, ...], blocked: bool, combine: str) -> Tensor:
    """``fn(*row_block, *shared)`` over blocks of :data:`ROWS` samples (dim ``-2``), concatenated
    (``combine="cat"``) or summed (``"sum"``). With autograd on, each block is recomputed in
    backward rather than kept, so only one block's temporaries exist at a time."""
    n_rows = rowwise[0].shape[-2]
    if not blocked or n_rows <= ROWS:
        return fn(*rowwise, *shared)
    parts = []
    for start in range(0, n_rows, ROWS):
        block = tuple(t[..., start : start + ROWS, :] for t in rowwise)
        if torch.is_grad_enabled():
            parts.append(checkpoint(fn, *block, *shared, use_reentrant=False))
        else:
            parts.append(fn(*block, *shared))
    return torch.cat(parts, dim=-2) if combine == "cat" else torch.stack(parts).sum(0)


def _e_step(
    x: Tensor,
    x_sq: Tensor,
    weights: Tensor,
    means: Tensor,
    covariances: Tensor,
    covariance_type: str,
    backend: str,
    regularization: str = "add",
) -> tuple[Tensor, Tensor]:
    """Log responsibilities ``(G, N, K)`` and mean log-likelihood ``(G,)``; ``x_sq = x * x``."""
    if backend == "keops":
        log_density = keops.diag_gaussian_log_density(x, means, covariances)
    elif covariance_type == "diag":
        log_density = _over_row_blocks(_log_gaussian_diag, (x, x_sq), (means, covariances), backend == "blocked", "cat")
    else:
        log_density = _over_row_blocks(_log_gaussian_full, (x,), (means, covariances), backend == "blocked", "cat")
    log_weights = (weights.clamp_min(CLAMP_MIN_WEIGHT) if regularization == "clamp" else weights).log()
    log_joint = log_density + log_weights.unsqueeze(-2)
    log_norm = torch.logsumexp(log_joint, dim=-1, keepdim=True)
    return log_joint - log_norm, log_norm.squeeze(-1).mean(-1)


def _scatter_about_means(x: Tensor, resp: Tensor, means: Tensor) -> Tensor:
    """``sum_n w_nk (x_n - mu_k)(x_n - mu_k)^T``, ``(G, K, d, d)``, centred per component for accuracy."""
    centered = x.unsqueeze(1) - means.unsqueeze(2)  # (G, K, N, d)
    return (centered * resp.mT.unsqueeze(-1)).mT @ centered


def _m_step(
    x: Tensor,
    x_sq: Tensor,
    log_resp: Tensor,
    covariance_type: str,
    reg_covar: float,
    backend: str,
    regularization: str = "add",
) -> tuple[Tensor, Tensor, Tensor]:
    """Weights ``(G, K)``, means ``(G, K, d)``, covariances from responsibilities (scikit-learn's
    M-step, or the authors' DecAlign M-step for ``regularization="clamp"``)."""
    resp = log_resp.exp()
    if regularization == "clamp":
        counts = resp.sum(-2).clamp_min(CLAMP_MIN_COUNT)  # (G, K)
        weights = counts / x.shape[-2]
    else:
        counts = resp.sum(-2) + 10.0 * torch.finfo(resp.dtype).eps  # (G, K)
        weights = counts / counts.sum(-1, keepdim=True)
    means = resp.mT @ x / counts.unsqueeze(-1)
    if covariance_type == "diag":
        second_moment = resp.mT @ x_sq / counts.unsqueeze(-1)
        variances = second_moment - means * means
        covariances = variances.clamp_min(reg_covar) if regularization == "clamp" else variances.clamp_min(0.0) + reg_covar
    else:
        scatter = _over_row_blocks(_scatter_about_means, (x, resp), (means,), backend == "blocked", "sum")
        covariances = scatter / counts[..., None, None]
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        covariances = covariances + reg_covar * eye
    return weights, means, covariances


def _kmeans_plus_plus_rows(x: Tensor, n_components: int, seed: int | None) -> Tensor:
    """k-means++ seeding (D^2 sampling), batched over ``G``: ``x (G, N, d)`` -> row indices ``(G, K)``.

    Sampling runs on the CPU with its own generator so that a seed gives the same centres on
    every device. Duplicate rows make all distances zero; sampling is then uniform.
    """
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    batch, n_samples, _ = x.shape
    batch_rows = torch.arange(batch, device=x.device)
    chosen = [torch.randint(n_samples, (batch,), generator=generator).to(x.device)]
    closest = (x - x[batch_rows, chosen[0]].unsqueeze(1)).pow(2).sum(-1)  # (G, N)
    for _ in range(1, n_components):
        total = closest.sum(-1, keepdim=True)
        probs = torch.where(total > 0, closest / total.clamp_min(torch.finfo(x.dtype).tiny), 1.0 / n_samples)
        chosen.append(torch.multinomial(probs.double().cpu(), 1, generator=generator).squeeze(-1).to(x.device))
        closest = torch.minimum(closest, (x - x[batch_rows, chosen[-1]].unsqueeze(1)).pow(2).sum(-1))
    return torch.stack(chosen, dim=1)


def _initial_means(x: Tensor, n_components: int, init: str, seed: int | None) -> Tensor:
    """Starting means: rows of ``x`` chosen without gradient, gathered with it (so that the
    fit stays a differentiable function of every sample)."""
    with torch.no_grad():
        if init == "kmeans++":
            rows = _kmeans_plus_plus_rows(x, n_components, seed)
        else:
            n_samples = x.shape[-2]
            if n_components <= n_samples:
                spaced = torch.linspace(0, n_samples - 1, n_components, device=x.device).round().long()
            else:  # fewer samples than components: the rows in turn, as the authors' code does
                spaced = torch.arange(n_components, device=x.device) % n_samples
            rows = spaced.expand(x.shape[0], -1)
    return torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _initial_covariances(x: Tensor, n_components: int, covariance_type: str, reg_covar: float, regularization: str) -> Tensor:
    """Every component starts with the data's own (co)variance."""
    centered = x - x.mean(-2, keepdim=True)
    if covariance_type == "diag":
        variances = centered.pow(2).mean(-2)
        cov = variances.clamp_min(reg_covar) if regularization == "clamp" else variances + reg_covar  # (G, d)
        return cov.unsqueeze(1).expand(-1, n_components, -1)
    cov = centered.mT @ centered / x.shape[-2]
    cov = cov + reg_covar * torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    return cov.unsqueeze(1).expand(-1, n_components, -1, -1)


def _batched_init(value: Tensor | None, name: str, shape: tuple[int, ...], batch: int, x: Tensor) -> Tensor | None:
    """Validate a user-given initial parameter and broadcast it to the batch."""
    if value is None:
        return None
    check_tensor(value, name)
    if tuple(value.shape) == shape:
        value = value.unsqueeze(0)
    if tuple(value.shape) != (batch, *shape):
        raise ValueError(f"{name}: expected shape {shape} or {(batch, *shape)}, received {tuple(value.shape)}")
    if value.device != x.device:
        raise ValueError(f"{name}: expected device {x.device} (the device of x), received {value.device}")
    return value.to(x.dtype).expand(batch, *shape)


@full_precision
def fit_gmm(
    x: Tensor,
    n_components: int,
    *,
    covariance_type: CovarianceType = "diag",
    n_iter: int = 10,
    init: InitMethod = "kmeans++",
    means_init: Tensor | None = None,
    weights_init: Tensor | None = None,
    covariances_init: Tensor | None = None,
    reg_covar: float = 1e-6,
    seed: int | None = 0,
    grad: GMMGrad = "unrolled",
    backend: Backend = "auto",
    regularization: Regularization = "add",
) -> GaussianMixture:
    """Fit a Gaussian mixture to samples by ``n_iter`` EM steps (paper eqs. 2-4).

    Args:
        x: ``(N, d)`` samples, or ``(G, N, d)`` for ``G`` independent mixtures fitted at once.
        n_components: ``K``; at most ``N`` when k-means++ chooses the starting means.
        covariance_type: ``"diag"`` (variances ``(K, d)``) or ``"full"`` (``(K, d, d)``).
        n_iter: EM steps (``>= 1``); a final E-step then gives responsibilities and likelihood.
        init: ``"kmeans++"`` (D^2 sampling with ``seed``) or ``"spaced"`` (``K`` evenly spaced rows,
            ``round(linspace(0, N - 1, K))``; when ``K > N`` the rows ``0, 1, ..., N - 1, 0, 1, ...``).
            Ignored when ``means_init`` is given.
        means_init: ``(K, d)`` or ``(G, K, d)`` starting means.
        weights_init: ``(K,)`` or ``(G, K)`` starting weights (default uniform).
        covariances_init: starting covariances, shaped like the result's (default: the data's
            covariance for every component).
        reg_covar: added to every variance / the diagonal, ``> 0``; with
            ``regularization="clamp"`` the floor of every variance instead.
        seed: seed of the k-means++ sampler; ``None`` draws a fresh seed.
        grad: ``"unrolled"`` or ``"last_step"`` (see the module docstring).
        backend: ``"auto"``, ``"dense"``, ``"blocked"`` or ``"keops"`` (diagonal covariances
            only); see the module docstring. All give the same EM to float round-off.
        regularization: ``"add"`` (scikit-learn's) or ``"clamp"`` (the authors' DecAlign EM,
            diagonal covariances only); see the module docstring.

    Returns:
        :class:`GaussianMixture`, float64 for float64 input, float32 otherwise.
    """
    check_tensor(x, "x", ndim=(2, 3))
    check_choice(covariance_type, "covariance_type", ["diag", "full"])
    check_choice(init, "init", ["kmeans++", "spaced"])
    check_choice(grad, "grad", ["unrolled", "last_step"])
    check_choice(regularization, "regularization", ["add", "clamp"])
    check_positive(reg_covar, "reg_covar")
    if regularization == "clamp" and covariance_type != "diag":
        raise ValueError("regularization: 'clamp' supports covariance_type='diag' only, received covariance_type='full'")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter: expected an integer >= 1, received {n_iter!r}")
    n_samples, n_features = x.shape[-2], x.shape[-1]
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components: expected an integer >= 1, received {n_components!r}")
    if n_components > n_samples and init == "kmeans++" and means_init is None:
        raise ValueError(
            f"n_components: expected at most the number of samples ({n_samples}) for init='kmeans++', "
            f"received {n_components}"
        )

    if backend == "keops" and covariance_type != "diag":
        raise ValueError("backend: 'keops' supports covariance_type='diag' only, received covariance_type='full'")
    batch_size = x.shape[0] if x.ndim == 3 else 1
    backend = resolve_rowwise_backend(
        backend,
        large=covariance_type == "full" and batch_size * n_samples * n_components * n_features > DENSE_MAX_ELEMENTS,
        device_type=x.device.type,
        keops_supported=covariance_type == "diag",
    )

    single = x.ndim == 2
    dtype = compute_dtype(x.dtype)
    xb = (x.unsqueeze(0) if single else x).to(dtype)
    batch = xb.shape[0]
    cov_shape = (n_components, n_features) if covariance_type == "diag" else (n_components, n_features, n_features)
    means0 = _batched_init(means_init, "means_init", (n_components, n_features), batch, xb)
    weights0 = _batched_init(weights_init, "weights_init", (n_components,), batch, xb)
    if weights0 is not None:
        check_non_negative_entries(weights0, "weights_init", positive_sum=True)
    covariances0 = _batched_init(covariances_init, "covariances_init", cov_shape, batch, xb)
    if covariances0 is not None:
        check_covariances(covariances0, "covariances_init", diagonal=covariance_type == "diag", strict=True)

    # EM is translation-equivariant: fit centred data, shift the means back at the end.
    center = xb.mean(-2, keepdim=True).detach()
    xc = xb - center
    check_representable([xc.square().sum(-1).amax()], "x", xc.dtype)  # k-means++ draws from squared distances
    means = _initial_means(xc, n_components, init, seed) if means0 is None else means0 - center
    weights = weights0 if weights0 is not None else xc.new_full((batch, n_components), 1.0 / n_components)
    covariances = (
        covariances0 if covariances0 is not None
        else _initial_covariances(xc, n_components, covariance_type, reg_covar, regularization)
    )

    # Made after the starting parameters on purpose: autograd sums the gradients reaching xc in
    # the order their nodes were created, and moving this line changes training runs by rounding.
    xc_sq = xc * xc  # shared by every diagonal E- and M-step
    for step in range(n_iter):
        differentiable = grad == "unrolled" or step == n_iter - 1
        with contextlib.nullcontext() if differentiable else torch.no_grad():
            log_resp, _ = _e_step(xc, xc_sq, weights, means, covariances, covariance_type, backend, regularization)
            weights, means, covariances = _m_step(xc, xc_sq, log_resp, covariance_type, reg_covar, backend, regularization)
    log_resp, log_likelihood = _e_step(xc, xc_sq, weights, means, covariances, covariance_type, backend, regularization)

    means = means + center
    check_representable([means, covariances, log_likelihood], "x", xc.dtype)
    result = (weights, means, covariances, log_resp.exp(), log_likelihood)
    if single:
        result = tuple(t.squeeze(0) for t in result)
    return GaussianMixture(*result, covariance_type=covariance_type)
