"""EM for Gaussian-mixture prototypes against scikit-learn's GaussianMixture."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from alignkit.functional import fit_gmm


def _blobs(n: int = 300, d: int = 3, k: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g, dtype=torch.float64) * 4
    labels = torch.arange(n) % k
    return centers[labels] + torch.randn(n, d, generator=g, dtype=torch.float64) * (1 + labels[:, None])


def _init(x: torch.Tensor, k: int, covariance_type: str) -> dict[str, torch.Tensor]:
    d = x.shape[1]
    means = x[torch.linspace(0, len(x) - 1, k).long()] + 0.1
    weights = torch.linspace(1, 2, k, dtype=torch.float64)
    weights = weights / weights.sum()
    if covariance_type == "diag":
        covariances = torch.linspace(0.5, 2.0, k * d, dtype=torch.float64).view(k, d)
    else:
        a = torch.randn(k, d, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        covariances = a @ a.mT / d + torch.eye(d, dtype=torch.float64)
    return {"means_init": means, "weights_init": weights, "covariances_init": covariances}


def _sklearn_fit(x: torch.Tensor, k: int, covariance_type: str, n_iter: int, init: dict[str, torch.Tensor], reg_covar: float):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    covariances = init["covariances_init"].numpy()
    precisions = 1.0 / covariances if covariance_type == "diag" else np.linalg.inv(covariances)
    model = GaussianMixture(
        n_components=k,
        covariance_type=covariance_type,
        max_iter=n_iter,
        tol=0,
        reg_covar=reg_covar,
        weights_init=init["weights_init"].numpy(),
        means_init=init["means_init"].numpy(),
        precisions_init=precisions,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0 never "converges", by design
        model.fit(x.numpy())
    return model


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@pytest.mark.parametrize("n_iter", [1, 5, 30])
def test_em_matches_sklearn_gaussian_mixture(covariance_type: str, n_iter: int) -> None:
    x, k, reg = _blobs(), 3, 1e-6
    init = _init(x, k, covariance_type)
    ours = fit_gmm(x, k, covariance_type=covariance_type, n_iter=n_iter, reg_covar=reg, **init)
    ref = _sklearn_fit(x, k, covariance_type, n_iter, init, reg)
    assert np.allclose(ours.weights.numpy(), ref.weights_, rtol=1e-6, atol=0)
    assert np.allclose(ours.means.numpy(), ref.means_, rtol=1e-6, atol=1e-9)
    assert np.allclose(ours.covariances.numpy(), ref.covariances_, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_responsibilities_and_likelihood_match_sklearn(covariance_type: str) -> None:
    x, k = _blobs(seed=1), 3
    init = _init(x, k, covariance_type)
    ours = fit_gmm(x, k, covariance_type=covariance_type, n_iter=4, **init)
    ref = _sklearn_fit(x, k, covariance_type, 4, init, 1e-6)
    assert np.allclose(ours.responsibilities.numpy(), ref.predict_proba(x.numpy()), rtol=1e-6, atol=1e-9)
    assert np.isclose(float(ours.log_likelihood), ref.score(x.numpy()), rtol=1e-9)


def test_em_matches_sklearn_far_from_the_origin() -> None:
    """The internal centring keeps the matrix-product E-step exact for offset data."""
    x, k = _blobs(seed=2) + 1e4, 3
    init = _init(x, k, "diag")
    ours = fit_gmm(x, k, n_iter=5, **init)
    ref = _sklearn_fit(x, k, "diag", 5, init, 1e-6)
    assert np.allclose(ours.means.numpy(), ref.means_, rtol=1e-6)
    assert np.allclose(ours.covariances.numpy(), ref.covariances_, rtol=1e-6)


def test_batched_fit_equals_separate_fits() -> None:
    xs = torch.stack([_blobs(seed=s) for s in range(3)])
    batched = fit_gmm(xs, 3, n_iter=6, init="spaced")
    for g in range(3):
        single = fit_gmm(xs[g], 3, n_iter=6, init="spaced")
        assert torch.allclose(batched.means[g], single.means, rtol=1e-10)
        assert torch.allclose(batched.covariances[g], single.covariances, rtol=1e-10)
        assert torch.allclose(batched.responsibilities[g], single.responsibilities, atol=1e-12)


def test_kmeans_plus_plus_is_deterministic_for_a_seed() -> None:
    x = _blobs(seed=3)
    a, b = fit_gmm(x, 3, seed=7), fit_gmm(x, 3, seed=7)
    assert torch.equal(a.means, b.means)


def test_last_step_gradient_mode_gives_the_same_fit() -> None:
    x = _blobs(seed=4)
    unrolled = fit_gmm(x, 3, n_iter=5, grad="unrolled", init="spaced")
    last = fit_gmm(x, 3, n_iter=5, grad="last_step", init="spaced")
    assert torch.allclose(unrolled.means, last.means, rtol=1e-12)


def test_em_recovers_well_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    x = centers.repeat_interleave(100, 0) + 0.5 * torch.randn(300, 2, generator=g, dtype=torch.float64)
    fit = fit_gmm(x, 3, n_iter=20, covariance_type="full")
    found = fit.means[torch.cdist(centers, fit.means).argmin(1)]
    assert torch.allclose(found, centers, atol=0.2)
    assert torch.allclose(fit.weights.sort().values, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02)


@given(st.permutations(list(range(40))), st.sampled_from(["diag", "full"]))
def test_property_fit_is_invariant_to_the_order_of_samples(order: list[int], covariance_type: str) -> None:
    x = _blobs(n=40, d=2, k=2, seed=6)
    init = _init(x, 2, covariance_type)
    perm = torch.tensor(order)
    a = fit_gmm(x, 2, covariance_type=covariance_type, n_iter=5, **init)
    b = fit_gmm(x[perm], 2, covariance_type=covariance_type, n_iter=5, **init)
    assert torch.allclose(a.means, b.means, rtol=1e-9, atol=1e-10)
    assert torch.allclose(a.covariances, b.covariances, rtol=1e-9, atol=1e-10)
    assert torch.allclose(a.weights, b.weights, rtol=1e-9)
    assert torch.allclose(a.responsibilities[perm], b.responsibilities, atol=1e-10)


def test_float32_fit_far_from_the_origin_matches_float64() -> None:
    # Data offset by 1e4: without centring, float32 E[x^2] - mu^2 cancels to noise (variances of
    # order 1e8 * 6e-8 = 6), so the float32 fit would disagree with float64 by orders of magnitude.
    g = torch.Generator().manual_seed(8)
    x = torch.cat([torch.randn(30, 3, generator=g, dtype=torch.float64), torch.randn(30, 3, generator=g, dtype=torch.float64) + 4.0]) + 1e4
    init = {"means_init": x[[0, 45]]}
    wide = fit_gmm(x, 2, n_iter=5, **init)
    narrow = fit_gmm(x.float(), 2, n_iter=5, means_init=init["means_init"].float())
    torch.testing.assert_close(narrow.means.double(), wide.means, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(narrow.covariances.double(), wide.covariances, rtol=2e-2, atol=2e-3)
