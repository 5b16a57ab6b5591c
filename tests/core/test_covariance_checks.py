"""Covariances that are not symmetric positive semi-definite are refused, naming the argument."""

from __future__ import annotations

import pytest
import torch

import alignkit
from alignkit import functional as F

MEANS = torch.zeros(2, 3, dtype=torch.float64)
GOOD_FULL = torch.eye(3, dtype=torch.float64).expand(2, 3, 3).clone()


def _asymmetric() -> torch.Tensor:
    bad = GOOD_FULL.clone()
    bad[0, 0, 1] = 0.5
    return bad


def _indefinite() -> torch.Tensor:
    bad = GOOD_FULL.clone()
    bad[1] = torch.diag(torch.tensor([1.0, -0.5, 1.0], dtype=torch.float64))
    return bad


@pytest.mark.parametrize(("covariances", "message"), [
    (torch.tensor([[1.0, -0.1, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64), "expected variances >= 0"),
    (_asymmetric(), "expected symmetric covariance matrices"),
    (_indefinite(), "expected positive semi-definite covariance matrices"),
])
def test_bures_refuses_invalid_covariances(covariances: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=f"covariances_b: {message}"):
        F.bures_wasserstein_cost(MEANS, GOOD_FULL, MEANS, covariances)


def test_gmm_refuses_an_invalid_starting_covariance() -> None:
    x = torch.randn(20, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="covariances_init: expected positive definite"):
        F.fit_gmm(x, 2, covariance_type="full", means_init=x[:2], covariances_init=_indefinite())
    with pytest.raises(ValueError, match="covariances_init: expected variances > 0"):
        F.fit_gmm(x, 2, means_init=x[:2], covariances_init=-torch.ones(2, 3, dtype=torch.float64))


def test_round_off_asymmetry_and_tiny_negative_eigenvalues_are_accepted() -> None:
    nearly = GOOD_FULL + 1e-14 * torch.randn(2, 3, 3, dtype=torch.float64)
    F.bures_wasserstein_cost(MEANS, nearly, MEANS, GOOD_FULL)


def test_the_check_is_a_value_check_that_can_be_turned_off() -> None:
    with alignkit.input_checks(False):
        F.bures_wasserstein_cost(MEANS, GOOD_FULL, MEANS, _asymmetric())
