"""The loss options that give the forms of the authors' DecAlign code, each against an oracle
written here from its definition (numpy / plain torch, float64)."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import scipy.stats
import torch

from alignkit import functional as F
from alignkit.ot.sinkhorn import multi_marginal_sinkhorn

# The module itself: ``alignkit.ot.sinkhorn`` as an attribute is the function of that name.
sinkhorn_module = importlib.import_module("alignkit.ot.sinkhorn")

F64 = torch.float64


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_decoupling_mean_over_modalities_is_the_sum_over_m() -> None:
    g = _rng()
    unique = [torch.randn(6, 5, 4, generator=g, dtype=F64) for _ in range(3)]
    common = [torch.randn(6, 5, 4, generator=g, dtype=F64) for _ in range(3)]
    per_modality = [
        (torch.nn.functional.cosine_similarity(u.flatten(1), c.flatten(1)) ** 2).mean() for u, c in zip(unique, common)
    ]
    torch.testing.assert_close(F.decoupling_loss(unique, common, reduction="mean"), torch.stack(per_modality).mean())
    torch.testing.assert_close(F.decoupling_loss(unique, common), torch.stack(per_modality).sum())


def test_bures_mean_reduction_and_eps_follow_the_closed_form() -> None:
    g = _rng(1)
    means_a, means_b = torch.randn(3, 5, generator=g, dtype=F64), torch.randn(4, 5, generator=g, dtype=F64)
    var_a, var_b = torch.rand(3, 5, generator=g, dtype=F64) + 1e-4, torch.rand(4, 5, generator=g, dtype=F64) + 1e-4
    a, b = var_a.numpy()[:, None], var_b.numpy()[None]
    expected = ((means_a.numpy()[:, None] - means_b.numpy()[None]) ** 2).mean(-1) + (a + b - 2 * np.sqrt(a * b + 1e-8)).mean(-1)
    ours = F.bures_wasserstein_cost(means_a, var_a, means_b, var_b, reduction="mean", eps=1e-8)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12)
    plain = F.bures_wasserstein_cost(means_a, var_a, means_b, var_b)
    torch.testing.assert_close(F.bures_wasserstein_cost(means_a, var_a, means_b, var_b, reduction="mean"), plain / 5)


def test_bures_eps_is_refused_for_full_covariances() -> None:
    eye = torch.eye(2, dtype=F64).expand(2, 2, 2)
    with pytest.raises(ValueError, match="eps: applies to diagonal covariances only"):
        F.bures_wasserstein_cost(torch.zeros(2, 2, dtype=F64), eye, torch.zeros(2, 2, dtype=F64), eye, eps=1e-8)


def _linear_sinkhorn(cost: np.ndarray, marginals: list[np.ndarray], epsilon: float, sweeps: int) -> tuple[np.ndarray, float]:
    """The linear-domain iteration with a 1e-30 kernel floor and 1e-8 denominators (M = 3)."""
    kernel = np.maximum(np.exp(-cost / epsilon), 1e-30)
    u, v, w = (np.ones(n) for n in cost.shape)
    for _ in range(sweeps):
        u = marginals[0] / (np.einsum("ijk,j,k->i", kernel, v, w) + 1e-8)
        v = marginals[1] / (np.einsum("ijk,i,k->j", kernel, u, w) + 1e-8)
        w = marginals[2] / (np.einsum("ijk,i,j->k", kernel, u, v) + 1e-8)
    plan = np.einsum("i,j,k,ijk->ijk", u, v, w, kernel)
    return plan, float((plan * cost).sum() + epsilon * (plan * (np.log(plan) - 1)).sum())


@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])  # 30: most of the kernel sits on its floor
def test_guarded_log_domain_sinkhorn_equals_the_linear_iteration(scale: float) -> None:
    g = _rng(2)
    cost = torch.rand(5, 6, 7, generator=g, dtype=F64) * scale
    marginals = [torch.softmax(torch.randn(n, generator=g, dtype=F64), 0) for n in (5, 6, 7)]
    result = multi_marginal_sinkhorn(cost, marginals, 0.1, max_iter=50, tol=0.0, grad="unrolled", kernel_floor=1e-30, scaling_guard=1e-8)
    plan, value = _linear_sinkhorn(cost.numpy(), [m.numpy() for m in marginals], 0.1, 50)
    np.testing.assert_allclose(result.plan.numpy(), plan, rtol=1e-10, atol=1e-300)
    assert result.regularized_value.item() == pytest.approx(value, rel=1e-10)
    assert result.n_iter == 50 and not result.converged


@pytest.mark.parametrize("tape_bytes", [2**26, 0])  # 0: the softmaxes are recomputed in the backward
def test_unrolled_sinkhorn_gradient_is_the_gradient_of_the_unrolled_loop(tape_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The written-out backward against autograd through the same iteration, written plainly.
    monkeypatch.setattr(sinkhorn_module, "SOFTMAX_TAPE_BYTES", tape_bytes)
    g = _rng(3)
    cost = (torch.rand(4, 5, 3, generator=g, dtype=F64) * 3).requires_grad_()
    marginals = [torch.softmax(torch.randn(n, generator=g, dtype=F64), 0).requires_grad_() for n in (4, 5, 3)]

    def plain(cost, marginals):
        log_kernel = (-cost / 0.1).clamp_min(math.log(1e-30))
        s = [torch.zeros(n, dtype=F64) for n in cost.shape]
        views = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
        for _ in range(20):
            for i in range(3):
                q = log_kernel + sum(s[j].view(views[j]) for j in range(3) if j != i)
                lse = torch.logsumexp(q, dim=[j for j in range(3) if j != i])
                s[i] = marginals[i].log() - torch.logaddexp(lse, torch.tensor(math.log(1e-8), dtype=F64))
        log_plan = log_kernel + sum(s[j].view(views[j]) for j in range(3))
        plan = log_plan.exp()
        return (plan * cost).sum() + 0.1 * (plan * (log_plan - 1)).sum()

    ours = multi_marginal_sinkhorn(cost, marginals, 0.1, max_iter=20, tol=0.0, grad="unrolled", kernel_floor=1e-30, scaling_guard=1e-8)
    expected = torch.autograd.grad(plain(cost, marginals), [cost, *marginals])
    for got, want in zip(torch.autograd.grad(ours.regularized_value, [cost, *marginals]), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _clamped_em(x: np.ndarray, k: int, steps: int, floor: float) -> dict[str, np.ndarray]:
    """Diagonal EM with evenly spaced (or repeated) starting rows, variances floored at ``floor``,
    masses at 1e-6 and weights at 1e-8 in the logarithm."""
    n, d = x.shape
    rows = np.round(np.linspace(0, n - 1, k)).astype(int) if k <= n else np.arange(k) % n
    mu, var, pi = x[rows].copy(), np.tile(np.maximum(x.var(0), floor), (k, 1)), np.full(k, 1.0 / k)

    def posterior(pi, mu, var):
        log_p = np.log(np.maximum(pi, 1e-8)) - 0.5 * (((x[:, None] - mu[None]) ** 2 / var[None]).sum(-1) + np.log(var).sum(-1) + d * np.log(2 * np.pi))
        log_p -= log_p.max(1, keepdims=True)
        p = np.exp(log_p)
        return p / p.sum(1, keepdims=True)

    for _ in range(steps):
        gamma = posterior(pi, mu, var)
        mass = np.maximum(gamma.sum(0), 1e-6)
        pi = mass / n
        mu = gamma.T @ x / mass[:, None]
        var = np.maximum(gamma.T @ x**2 / mass[:, None] - mu**2, floor)
    return {"weights": pi, "means": mu, "covariances": var, "responsibilities": posterior(pi, mu, var)}


@pytest.mark.parametrize(("n", "k"), [(40, 7), (5, 7), (1, 3)])  # fewer samples than components: rows repeat
def test_clamped_em_matches_its_definition(n: int, k: int) -> None:
    g = _rng(4)
    x = torch.randn(n, 6, generator=g, dtype=F64) * torch.tensor([1.0, 0.001, 2.0, 0.5, 0.01, 1.0], dtype=F64) + 3.0
    ours = F.fit_gmm(x, k, n_iter=5, init="spaced", reg_covar=1e-4, regularization="clamp")
    expected = _clamped_em(x.numpy(), k, 5, 1e-4)
    for name, value in expected.items():
        np.testing.assert_allclose(getattr(ours, name).numpy(), value, rtol=1e-9, atol=1e-12, err_msg=name)


def test_clamped_em_floors_a_small_variance_where_additive_regularisation_adds() -> None:
    g = _rng(7)
    x = torch.cat([torch.zeros(10, 2, dtype=F64), torch.ones(10, 2, dtype=F64)]) + 0.004 * torch.randn(20, 2, generator=g, dtype=F64)
    clamped = F.fit_gmm(x, 2, n_iter=3, init="spaced", reg_covar=1e-4, regularization="clamp")
    added = F.fit_gmm(x, 2, n_iter=3, init="spaced", reg_covar=1e-4)
    torch.testing.assert_close(clamped.covariances, torch.full((2, 2), 1e-4, dtype=F64))  # spread^2 ~ 1.6e-5 < floor
    assert bool((added.covariances > 1.05e-4).all())  # spread^2 + 1e-4


def test_clamp_regularisation_is_diagonal_only() -> None:
    with pytest.raises(ValueError, match="regularization: 'clamp' supports covariance_type='diag' only"):
        F.fit_gmm(torch.randn(10, 2), 2, covariance_type="full", regularization="clamp")


def test_kmeans_plus_plus_still_needs_as_many_samples_as_components() -> None:
    with pytest.raises(ValueError, match="n_components: expected at most the number of samples"):
        F.fit_gmm(torch.randn(3, 2), 5)


def test_calibration_mean_reduction_divides_by_the_width() -> None:
    g = _rng(5)
    features = [torch.randn(8, 4, generator=g, dtype=F64) for _ in range(3)]
    resp = [torch.softmax(torch.randn(8, 3, generator=g, dtype=F64), 1) for _ in range(3)]
    means = [torch.randn(3, 4, generator=g, dtype=F64) for _ in range(3)]
    expected = np.mean([
        (resp[i].numpy()[:, :, None] * (features[i].numpy()[:, None] - means[j].numpy()[None]) ** 2).mean(-1).sum(1).mean()
        for i in range(3) for j in range(3) if i != j
    ])
    ours = F.prototype_calibration_loss(features, resp, means, matching="index", reduction="mean")
    assert ours.item() == pytest.approx(expected, rel=1e-12)


def test_moment_matching_mean_form_against_numpy_and_scipy() -> None:
    g = _rng(6)
    features = [torch.randn(9, 4, generator=g, dtype=F64) * (1 + i) for i in range(3)]

    def stats(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centered = z - z.mean(0)
        variance = np.maximum((centered**2).mean(0), 1e-6)
        return z.mean(0), np.cov(z, rowvar=False), (centered**3).mean(0) / variance**1.5

    pairs = [(0, 1), (0, 2), (1, 2)]
    moments = [stats(f.numpy()) for f in features]
    expected = np.mean([sum(((a - b) ** 2).mean() for a, b in zip(moments[i], moments[j])) for i, j in pairs])
    ours = F.moment_matching_loss(features, reduction="mean", skewness_variance_floor=1e-6)
    assert ours.item() == pytest.approx(expected, rel=1e-12)
    # Away from the floor the floored skewness is scipy's.
    np.testing.assert_allclose(moments[0][2], scipy.stats.skew(features[0].numpy(), bias=True), rtol=1e-12)
