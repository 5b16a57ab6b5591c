"""Bures (Gaussian W2^2) costs and the PSD square root against POT, scipy and closed forms."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.linalg import sqrtm as scipy_sqrtm

from alignkit.functional import bures_wasserstein_cost, sqrtm_psd


def _random_spd(k: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
    return a @ a.mT / d + 0.1 * torch.eye(d, dtype=torch.float64)


def _components(k: int, d: int, seed: int, diag: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 100)
    means = torch.randn(k, d, generator=g, dtype=torch.float64)
    if diag:
        return means, torch.rand(k, d, generator=g, dtype=torch.float64) + 0.05
    return means, _random_spd(k, d, seed)


@pytest.fixture(autouse=True)
def _pot_warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=UserWarning)
        yield


@pytest.mark.parametrize(("k_a", "k_b", "d"), [(3, 4, 2), (5, 2, 6), (1, 1, 3)])
def test_full_bures_matches_pot_squared(k_a: int, k_b: int, d: int) -> None:
    import ot

    ma, ca = _components(k_a, d, 0, diag=False)
    mb, cb = _components(k_b, d, 1, diag=False)
    expected = ot.gaussian.bures_wasserstein_distance(ma, mb, ca, cb) ** 2
    assert torch.allclose(bures_wasserstein_cost(ma, ca, mb, cb), expected, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize(("k_a", "k_b", "d"), [(3, 4, 2), (6, 5, 7)])
def test_diag_bures_matches_pot_squared(k_a: int, k_b: int, d: int) -> None:
    import ot

    ma, va = _components(k_a, d, 2, diag=True)
    mb, vb = _components(k_b, d, 3, diag=True)
    expected = ot.gaussian.bures_wasserstein_distance(ma, mb, va.diag_embed(), vb.diag_embed()) ** 2
    assert torch.allclose(bures_wasserstein_cost(ma, va, mb, vb), expected, rtol=1e-6, atol=1e-10)


def test_pairwise_bures_matches_pot_gmm_dist_bures_squared() -> None:
    import ot

    ma, ca = _components(4, 3, 4, diag=False)
    mb, cb = _components(3, 3, 5, diag=False)
    expected = ot.gmm.dist_bures_squared(ma, mb, ca, cb)
    assert torch.allclose(bures_wasserstein_cost(ma, ca, mb, cb), expected, rtol=1e-6, atol=1e-10)


def test_diag_against_full_uses_the_full_formula() -> None:
    ma, va = _components(3, 4, 6, diag=True)
    mb, cb = _components(2, 4, 7, diag=False)
    mixed = bures_wasserstein_cost(ma, va, mb, cb)
    full = bures_wasserstein_cost(ma, va.diag_embed(), mb, cb)
    assert torch.allclose(mixed, full, rtol=1e-12)


def test_diag_bures_equals_full_bures_on_diagonal_matrices() -> None:
    ma, va = _components(3, 4, 8, diag=True)
    mb, vb = _components(5, 4, 9, diag=True)
    assert torch.allclose(
        bures_wasserstein_cost(ma, va, mb, vb),
        bures_wasserstein_cost(ma, va.diag_embed(), mb, vb.diag_embed()),
        rtol=1e-10,
    )


def test_commuting_covariances_have_the_closed_form() -> None:
    """For S_a = a I, S_b = b I: W2^2 = |mu_a - mu_b|^2 + d (sqrt a - sqrt b)^2."""
    d = 5
    ma, mb = torch.zeros(1, d, dtype=torch.float64), torch.ones(1, d, dtype=torch.float64)
    ca, cb = 4.0 * torch.eye(d, dtype=torch.float64)[None], 9.0 * torch.eye(d, dtype=torch.float64)[None]
    expected = d * 1.0 + d * (2.0 - 3.0) ** 2
    assert torch.allclose(bures_wasserstein_cost(ma, ca, mb, cb), torch.tensor([[expected]], dtype=torch.float64))


def test_sqrtm_psd_matches_scipy() -> None:
    a = _random_spd(1, 6, 10)[0]
    expected = torch.from_numpy(np.real(scipy_sqrtm(a.numpy())))
    assert torch.allclose(sqrtm_psd(a), expected, rtol=1e-8, atol=1e-10)


def test_sqrtm_psd_squares_back_batched() -> None:
    a = _random_spd(7, 4, 11)
    root = sqrtm_psd(a)
    assert torch.allclose(root @ root, a, atol=1e-10)


def test_sqrtm_psd_gradient_matches_autograd_through_eigh_at_distinct_eigenvalues() -> None:
    a = _random_spd(1, 5, 12)[0].requires_grad_(True)
    g = torch.randn(5, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad((sqrtm_psd(a) * g).sum(), a)
    a2 = a.detach().clone().requires_grad_(True)
    s, u = torch.linalg.eigh(0.5 * (a2 + a2.mT))
    reference = (u * s.sqrt()) @ u.mT
    (expected,) = torch.autograd.grad((reference * g).sum(), a2)
    assert torch.allclose(ours, expected, rtol=1e-7, atol=1e-9)


@st.composite
def gaussians(draw: st.DrawFn, k: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    means = draw(st.lists(st.floats(-3, 3), min_size=k * d, max_size=k * d))
    factors = draw(st.lists(st.floats(-2, 2), min_size=k * d * d, max_size=k * d * d))
    a = torch.tensor(factors, dtype=torch.float64).view(k, d, d)
    cov = a @ a.mT + 0.05 * torch.eye(d, dtype=torch.float64)
    return torch.tensor(means, dtype=torch.float64).view(k, d), cov


@given(gaussians(3, 3))
def test_property_bures_of_a_gaussian_with_itself_is_zero(g: tuple[torch.Tensor, torch.Tensor]) -> None:
    means, cov = g
    assert torch.allclose(bures_wasserstein_cost(means, cov, means, cov).diagonal(), torch.zeros(3, dtype=torch.float64), atol=1e-8)


@given(gaussians(2, 3), gaussians(3, 3))
def test_property_bures_is_symmetric(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert torch.allclose(bures_wasserstein_cost(*a, *b), bures_wasserstein_cost(*b, *a).T, rtol=1e-7, atol=1e-8)


@given(gaussians(1, 3), gaussians(1, 3), gaussians(1, 3))
def test_property_w2_satisfies_the_triangle_inequality(a, b, c) -> None:
    w = lambda p, q: float(bures_wasserstein_cost(*p, *q)[0, 0]) ** 0.5  # noqa: E731
    assert w(a, c) <= w(a, b) + w(b, c) + 1e-6
