"""Moment matching (L_sem) against numpy and scipy.stats."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import skew

from alignkit.functional import feature_moments, moment_matching_loss


def _features(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).exp() + seed  # skewed on purpose


def test_mean_equals_numpy_mean() -> None:
    x = _features(50, 4, 0)
    assert np.allclose(feature_moments(x).mean.numpy(), np.mean(x.numpy(), axis=0), rtol=1e-12)


def test_covariance_equals_numpy_unbiased_covariance() -> None:
    x = _features(50, 4, 1)
    assert np.allclose(feature_moments(x).covariance.numpy(), np.cov(x.numpy(), rowvar=False), rtol=1e-12)


def test_skewness_equals_scipy_biased_skew() -> None:
    x = _features(50, 4, 2)
    assert np.allclose(feature_moments(x).skewness.numpy(), skew(x.numpy(), axis=0, bias=True), rtol=1e-10)


@pytest.mark.parametrize("sizes", [(30, 35, 40), (30, 30, 30, 30)])  # equal sizes: moments of all modalities at once
def test_loss_is_the_paper_formula_with_numpy_scipy_moments(sizes: tuple[int, ...]) -> None:
    feats = [_features(n, 3, i) for i, n in enumerate(sizes)]
    expected = 0.0
    for a, b in itertools.combinations([f.numpy() for f in feats], 2):
        expected += np.sum((a.mean(0) - b.mean(0)) ** 2)
        expected += np.sum((np.cov(a, rowvar=False) - np.cov(b, rowvar=False)) ** 2)
        expected += np.sum((skew(a, bias=True) - skew(b, bias=True)) ** 2)
    expected /= len(sizes) * (len(sizes) - 1)  # 1 / (M (M - 1))
    assert np.isclose(float(moment_matching_loss(feats)), expected, rtol=1e-10)


@pytest.mark.parametrize(("weights", "terms"), [((1, 0, 0), "mean"), ((0, 1, 0), "cov"), ((0, 0, 1), "skew"), ((2, 0.5, 3), "all")])
def test_weights_select_and_scale_the_moments(weights: tuple[float, float, float], terms: str) -> None:
    a, b = _features(40, 3, 3).numpy(), _features(40, 3, 4).numpy()
    parts = {
        "mean": np.sum((a.mean(0) - b.mean(0)) ** 2),
        "cov": np.sum((np.cov(a, rowvar=False) - np.cov(b, rowvar=False)) ** 2),
        "skew": np.sum((skew(a, bias=True) - skew(b, bias=True)) ** 2),
    }
    expected = (weights[0] * parts["mean"] + weights[1] * parts["cov"] + weights[2] * parts["skew"]) / 2
    value = moment_matching_loss(
        [torch.from_numpy(a), torch.from_numpy(b)],
        mean_weight=weights[0], covariance_weight=weights[1], skewness_weight=weights[2],
    )
    assert np.isclose(float(value), expected, rtol=1e-10)


def test_identical_modalities_have_zero_loss() -> None:
    x = _features(20, 3, 5)
    assert float(moment_matching_loss([x, x.clone(), x.clone()])) == pytest.approx(0.0, abs=1e-20)
