"""Values the mutation run (mutmut, see pyproject.toml) found unchecked: each test kills a
surviving mutant of the loss modules that changed a result no other test looked at."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignkit.decoupling import masked_mean
from alignkit.moments import feature_moments, floored_skewness, moment_matching_loss
from alignkit.prototypes.calibration import weighted_squared_distance


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
