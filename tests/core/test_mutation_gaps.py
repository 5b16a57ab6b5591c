"""Values the mutation run (mutmut, see pyproject.toml) found unchecked: each test kills a
surviving mutant of the loss modules that changed a result no other test looked at."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from alignkit.decoupling import masked_mean
from alignkit.functional import (
    decoupling_loss,
    fit_gmm,
    multi_marginal_sinkhorn,
    sinkhorn,
)
from alignkit.moments import (
    feature_moments,
    floored_skewness,
    moment_matching_loss,
    skewness,
)
from alignkit.prototypes.calibration import weighted_squared_distance
from alignkit.prototypes.gmm import _kmeans_plus_plus_rows


def test_masked_mean_averages_the_real_steps_only() -> None:
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    torch.testing.assert_close(masked_mean(x, None), x.mean(1))


def test_two_samples_give_the_unbiased_covariance() -> None:
    x = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(feature_moments(x).covariance, torch.from_numpy(np.cov(x.numpy(), rowvar=False)))


def test_the_skewness_floor_applies_below_it() -> None:
    x = torch.tensor([[0.0], [0.0], [0.003]], dtype=torch.float64)  # variance 2e-6, skewed
    centered = x - x.mean(0)
    m3 = centered.pow(3).mean(0)
    torch.testing.assert_close(floored_skewness(x, 1e-4), m3 / 1e-4**1.5)
    # Through the loss: two sets that differ only in skewness, skewness term only.
    y = torch.zeros(3, 1, dtype=torch.float64)
    loss = moment_matching_loss([x, y], mean_weight=0.0, covariance_weight=0.0, skewness_variance_floor=1e-4)
    torch.testing.assert_close(loss, (m3 / 1e-4**1.5).pow(2).sum() / 2)


def test_calibration_distance_is_zero_on_the_targets() -> None:
    targets = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    features = targets[[0, 1, 1]]
    responsibilities = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert float(weighted_squared_distance(features, responsibilities, targets)) == pytest.approx(0.0, abs=1e-6)
    moved = features + torch.tensor([0.1, 0.0])
    assert float(weighted_squared_distance(moved, responsibilities, targets)) == pytest.approx(0.01, rel=1e-4)


def _third_centres(column: Tensor, first: float, second: float) -> Tensor:
    """Values of the third k-means++ centre over 400 seeded 1-D mixtures of ``column``, among
    those whose first two centres were ``first`` and ``second``."""
    x = column.view(1, -1, 1).expand(400, -1, -1).contiguous()
    rows = _kmeans_plus_plus_rows(x, 3, seed=0)
    usual = (column[rows[:, 0]] == first) & (column[rows[:, 1]] == second)
    assert int(usual.sum()) > 320
    return column[rows[usual, 2]]


def test_kmeans_plus_plus_samples_each_next_centre_in_proportion_to_squared_distance() -> None:
    """D^2 sampling: each next centre with probability proportional to its squared distance to
    the nearest centre chosen so far (D sampling gives other shares)."""
    # 500 points at 0 and one each at 1, 2, 100: after 0 and 100 the third is 2 with
    # probability 4 / 5 (distances to the first centre; D sampling: 2 / 3).
    near_first = torch.tensor([0.0] * 500 + [1.0, 2.0, 100.0], dtype=torch.float64)
    assert abs(float((_third_centres(near_first, 0.0, 100.0) == 2.0).double().mean()) - 0.8) < 0.06
    # 500 at 0, 50 at 100, one each at 99 and 97: after 0 and 100 the third is 97 with
    # probability 9 / 10 (distances to the second centre; D sampling: 3 / 4).
    near_second = torch.tensor([0.0] * 500 + [100.0] * 50 + [99.0, 97.0], dtype=torch.float64)
    assert abs(float((_third_centres(near_second, 0.0, 100.0) == 97.0).double().mean()) - 0.9) < 0.06
    # Through the public fit: the same seed gives the same k-means++ start.
    x = near_first.view(1, -1, 1).expand(3, -1, -1)
    torch.testing.assert_close(fit_gmm(x, 3, seed=5, n_iter=1).means, fit_gmm(x, 3, seed=5, n_iter=1).means)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_em_starts_every_component_at_the_datas_own_covariance(covariance_type: str) -> None:
    """The default starting covariances are the data's (population) covariance plus reg_covar for
    every component: passing exactly that must give the same one-step fit."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    means = x[[0, 50, 100]]
    reg = 1e-3
    data = np.cov(x.numpy(), rowvar=False, bias=True)
    start = torch.from_numpy(np.diag(data) + reg if covariance_type == "diag" else data + reg * np.eye(3))
    start = start.unsqueeze(0).expand(3, *start.shape)
    default = fit_gmm(x, 3, covariance_type=covariance_type, n_iter=1, means_init=means, reg_covar=reg)
    explicit = fit_gmm(x, 3, covariance_type=covariance_type, n_iter=1, means_init=means, reg_covar=reg, covariances_init=start)
    torch.testing.assert_close(default.means, explicit.means, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(default.covariances, explicit.covariances, rtol=1e-12, atol=1e-12)


def test_sinkhorn_default_epsilon_is_pots_reg_one_tenth() -> None:
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(5, 6, generator=g, dtype=torch.float64)
    a, b = torch.full((5,), 1 / 5, dtype=torch.float64), torch.full((6,), 1 / 6, dtype=torch.float64)
    expected = torch.from_numpy(ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), 0.1, method="sinkhorn_log", numItermax=100_000, stopThr=1e-14))
    torch.testing.assert_close(sinkhorn(cost, a, b, tol=1e-12, max_iter=100_000).plan, expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(multi_marginal_sinkhorn(cost, [a, b], tol=1e-12, max_iter=100_000).plan, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_marginal_masses_may_differ_by_round_off_but_not_more(dtype: torch.dtype) -> None:
    """Masses equal to a relative 1e-5 (float32: 10 eps = 1.2e-6 is smaller) are accepted; a
    relative 5e-5 is refused."""
    cost = torch.rand(4, 4, generator=torch.Generator().manual_seed(1)).to(dtype)
    a = torch.full((4,), 0.25, dtype=dtype)
    sinkhorn(cost, a, a * (1 + 5e-6))
    with pytest.raises(ValueError, match="^marginals: expected positive and equal total masses"):
        sinkhorn(cost, a, a * (1 + 5e-5))


@pytest.mark.parametrize(("mode", "phi"), [("squared", np.square), ("abs", np.abs), ("signed", lambda c: c)])
def test_token_granularity_applies_the_mode_to_each_real_step(mode: str, phi) -> None:
    """``granularity="token"``: mean over samples of the mean over real steps of phi(cos)."""
    g = torch.Generator().manual_seed(2)
    unique, common = torch.randn(2, 3, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    u, c = unique.numpy(), common.numpy()
    cos = (u * c).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(c, axis=-1)
    expected = np.mean([phi(cos[0]).mean(), phi(cos[1, :2]).mean()])
    value = decoupling_loss([unique], [common], mode=mode, granularity="token", masks=[mask])
    assert float(value) == pytest.approx(expected, rel=1e-12)


def test_the_round_off_threshold_of_skewness_is_per_column() -> None:
    """A small-scale column beside a large-scale one keeps its own skewness (a threshold taken
    over all columns would call its spread round-off and return 0)."""
    from scipy.stats import skew

    g = torch.Generator().manual_seed(4)
    base = -torch.rand(500, 2, generator=g, dtype=torch.float64).log()  # exponential: skewness about 2
    x = (base * torch.tensor([3e4, 1e-3], dtype=torch.float64)).to(torch.float32)
    torch.testing.assert_close(skewness(x).double(), torch.from_numpy(skew(x.double().numpy(), axis=0)), rtol=1e-3, atol=0.0)


def test_trace_of_the_root_is_per_matrix_with_its_gradient_for_a_batch() -> None:
    """``trace_sqrtm_psd`` on a batch (as the full-covariance Bures costs call it for K x K pairs):
    one trace per matrix, and the gradient of each, d Tr(A^{1/2}) / dA = A^{-1/2} / 2, per matrix."""
    from scipy.linalg import sqrtm

    from alignkit.ot.sqrtm import trace_sqrtm_psd

    g = torch.Generator().manual_seed(6)
    factors = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    matrices = (factors @ factors.mT + 0.5 * torch.eye(4, dtype=torch.float64)).requires_grad_(True)
    traces = trace_sqrtm_psd(matrices)
    roots = [np.real(sqrtm(a)) for a in matrices.detach().numpy()]
    torch.testing.assert_close(traces, torch.tensor([np.trace(r) for r in roots], dtype=torch.float64))
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)  # distinct weights keep the matrices apart
    (gradient,) = torch.autograd.grad((traces * weights).sum(), matrices)
    expected = torch.stack([w * 0.5 * torch.from_numpy(np.linalg.inv(r)) for w, r in zip(weights, roots)])
    torch.testing.assert_close(gradient, expected, rtol=1e-8, atol=1e-10)
