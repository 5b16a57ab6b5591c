"""Gaussian MMD^2 against geomloss, a hand-written U-statistic and scipy distances."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.distance import pdist

from alignkit.functional import gaussian_mmd, median_bandwidth, multimodal_mmd


def _samples(n: int, m: int, d: int, shift: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) * 1.3 + shift
    return x, y


def _kernel(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """k(a_i, b_j) with explicit differences (no matrix-product expansion)."""
    diff = a[:, None, :] - b[None, :, :]
    return torch.exp(-(diff**2).sum(-1) / (2 * sigma**2))


@pytest.mark.parametrize("sigma", [0.3, 1.0, 4.0])
@pytest.mark.parametrize(("n", "m", "d"), [(40, 40, 3), (37, 55, 8), (1, 20, 2)])
def test_biased_mmd_equals_twice_geomloss(sigma: float, n: int, m: int, d: int) -> None:
    from geomloss import SamplesLoss

    x, y = _samples(n, m, d)
    expected = 2.0 * SamplesLoss("gaussian", blur=sigma, backend="tensorized")(x, y)
    assert torch.allclose(gaussian_mmd(x, y, sigma), expected, rtol=1e-10, atol=1e-12)


def test_unbiased_mmd_equals_hand_written_u_statistic() -> None:
    x, y = _samples(23, 31, 4)
    sigma = 1.2
    n, m = len(x), len(y)
    k_xx, k_yy, k_xy = _kernel(x, x, sigma), _kernel(y, y, sigma), _kernel(x, y, sigma)
    u_xx = sum(k_xx[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    u_yy = sum(k_yy[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    expected = u_xx + u_yy - 2 * k_xy.mean()
    assert torch.allclose(gaussian_mmd(x, y, sigma, estimator="unbiased"), expected, rtol=1e-10)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_multi_bandwidth_is_the_sum_of_single_bandwidths(estimator: str) -> None:
    x, y = _samples(30, 25, 5)
    sigmas = [0.5, 1.0, 3.0]
    expected = sum(gaussian_mmd(x, y, s, estimator=estimator) for s in sigmas)
    assert torch.allclose(gaussian_mmd(x, y, sigmas, estimator=estimator), expected, rtol=1e-12)


def test_multi_bandwidth_equals_geomloss_sum() -> None:
    from geomloss import SamplesLoss

    x, y = _samples(30, 25, 5)
    sigmas = [0.5, 2.0]
    expected = sum(2.0 * SamplesLoss("gaussian", blur=s, backend="tensorized")(x, y) for s in sigmas)
    assert torch.allclose(gaussian_mmd(x, y, sigmas), expected, rtol=1e-10)


def test_median_bandwidth_equals_numpy_median_of_scipy_pdist() -> None:
    x, y = _samples(30, 21, 4)
    pooled = torch.cat([x, y]).numpy()
    expected = float(np.median(pdist(pooled)))
    assert math.isclose(float(median_bandwidth(x, y)), expected, rel_tol=1e-12)


def test_median_mmd_uses_the_median_bandwidth() -> None:
    x, y = _samples(30, 21, 4)
    sigma = float(median_bandwidth(x, y))
    assert torch.allclose(gaussian_mmd(x, y, "median"), gaussian_mmd(x, y, sigma), rtol=1e-12)


def test_median_bandwidth_carries_no_gradient() -> None:
    x, y = _samples(10, 10, 3)
    x.requires_grad_(True)
    assert not median_bandwidth(x, y).requires_grad


def test_median_bandwidth_subsamples_large_inputs_evenly() -> None:
    x, y = _samples(3000, 2000, 2)
    pooled = torch.cat([x, y])
    rows = torch.linspace(0, len(pooled) - 1, 2048).round().long()
    expected = float(np.median(pdist(pooled[rows].numpy())))
    assert math.isclose(float(median_bandwidth(x, y)), expected, rel_tol=1e-12)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("sigma", [1.5, [0.5, 2.0]])
@pytest.mark.parametrize("sizes", [(20, 20, 20, 20), (5, 9, 2)])
def test_multimodal_mmd_is_the_mean_over_pairs(estimator: str, sigma: float | list[float], sizes: tuple[int, ...]) -> None:
    # Three or more small sets take one pooled kernel matrix; the pairs' own sums are the oracle.
    feats = [(_samples(n, 1, 3, seed=s)[0] + 0.3 * s).requires_grad_() for s, n in enumerate(sizes)]
    pairs = list(itertools.combinations(feats, 2))
    expected = sum(gaussian_mmd(a, b, sigma, estimator=estimator) for a, b in pairs) / len(pairs)
    got = multimodal_mmd(feats, sigma, estimator=estimator)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    for g, e in zip(torch.autograd.grad(got, feats), torch.autograd.grad(expected, feats)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-15)


def test_pooled_multimodal_mmd_is_translation_invariant_far_from_the_origin_in_float32() -> None:
    feats = [_samples(30, 1, 8, seed=s)[0].float() for s in range(3)]
    near = multimodal_mmd(feats, 2.0)
    far = multimodal_mmd([f + 1e3 for f in feats], 2.0)
    assert torch.allclose(near, far, rtol=1e-4, atol=1e-6)


def test_multimodal_mmd_with_two_modalities_equals_gaussian_mmd() -> None:
    x, y = _samples(20, 30, 3)
    assert torch.allclose(multimodal_mmd([x, y], 0.7), gaussian_mmd(x, y, 0.7), rtol=1e-12)


def test_mmd_is_translation_invariant_far_from_the_origin_in_float32() -> None:
    """The centring inside keeps the matrix-product distances accurate at large offsets."""
    x, y = _samples(50, 50, 8)
    near = gaussian_mmd(x.float(), y.float(), 2.0)
    far = gaussian_mmd(x.float() + 1e3, y.float() + 1e3, 2.0)
    assert torch.allclose(near, far, rtol=1e-4, atol=1e-6)


finite_floats = st.floats(-5, 5, allow_nan=False, width=64)


@st.composite
def sample_pairs(draw: st.DrawFn, min_rows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    d = draw(st.integers(1, 4))
    n = draw(st.integers(min_rows, 12))
    m = draw(st.integers(min_rows, 12))
    x = draw(st.lists(finite_floats, min_size=n * d, max_size=n * d))
    y = draw(st.lists(finite_floats, min_size=m * d, max_size=m * d))
    return torch.tensor(x, dtype=torch.float64).view(n, d), torch.tensor(y, dtype=torch.float64).view(m, d)


@given(sample_pairs(), st.floats(0.1, 5.0))
def test_property_mmd_of_a_sample_with_itself_is_zero(pair: tuple[torch.Tensor, torch.Tensor], sigma: float) -> None:
    x, _ = pair
    assert abs(float(gaussian_mmd(x, x.clone(), sigma))) < 1e-10


@given(sample_pairs(), st.floats(0.1, 5.0))
def test_property_biased_mmd_is_non_negative(pair: tuple[torch.Tensor, torch.Tensor], sigma: float) -> None:
    x, y = pair
    assert float(gaussian_mmd(x, y, sigma)) >= -1e-12


@given(sample_pairs(min_rows=2), st.floats(0.1, 5.0), st.sampled_from(["biased", "unbiased"]))
def test_property_mmd_is_symmetric(pair: tuple[torch.Tensor, torch.Tensor], sigma: float, estimator: str) -> None:
    x, y = pair
    assert torch.allclose(gaussian_mmd(x, y, sigma, estimator=estimator), gaussian_mmd(y, x, sigma, estimator=estimator), atol=1e-12)
