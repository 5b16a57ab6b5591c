"""Decoupling loss (eq. 1) on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from alignkit.functional import decoupling_loss


def test_orthogonal_features_have_zero_loss() -> None:
    unique = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    common = torch.tensor([[[0.0, 2.0], [-3.0, 0.0]]])
    assert float(decoupling_loss(unique, common)) == pytest.approx(0.0)


def test_sequence_granularity_flattens_the_sequence() -> None:
    # flattened: u = (1, 0, 0, 1), c = (1, 0, 1, 0) -> cos = 1 / (sqrt2 sqrt2) = 0.5
    unique = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    common = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert float(decoupling_loss(unique, common, mode="signed")) == pytest.approx(0.5)
    assert float(decoupling_loss(unique, common, mode="squared")) == pytest.approx(0.25)


def test_token_granularity_averages_per_step_cosines() -> None:
    # step 1: cos = 1, step 2: cos = 0 -> mean 0.5; squared per token: (1 + 0) / 2
    unique = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    common = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert float(decoupling_loss(unique, common, granularity="token", mode="signed")) == pytest.approx(0.5)
    assert float(decoupling_loss(unique, common, granularity="token", mode="squared")) == pytest.approx(0.5)


def test_pooled_granularity_takes_the_cosine_of_time_means() -> None:
    # means: u = (0.5, 0.5), c = (1, 0) -> cos = 0.5 / (sqrt(0.5) * 1) = 1/sqrt2
    unique = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    common = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert float(decoupling_loss(unique, common, granularity="pooled", mode="signed")) == pytest.approx(2**-0.5)


def test_signed_mode_rewards_anti_alignment_and_abs_does_not() -> None:
    u = torch.tensor([[1.0, 2.0]])
    assert float(decoupling_loss(u, -u, mode="signed")) == pytest.approx(-1.0)
    assert float(decoupling_loss(u, -u, mode="abs")) == pytest.approx(1.0)
    assert float(decoupling_loss(u, -u, mode="squared")) == pytest.approx(1.0)


def test_loss_is_batch_mean_summed_over_modalities() -> None:
    # modality 0: cos = 1 and 0 -> mean 0.5; modality 1: cos = 1 for both -> 1; total 1.5
    u0, c0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    u1, c1 = torch.tensor([[0.0, 3.0], [2.0, 2.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    assert float(decoupling_loss([u0, u1], [c0, c1], mode="signed")) == pytest.approx(1.5)


@pytest.mark.parametrize("granularity", ["sequence", "token", "pooled"])
def test_padded_steps_are_ignored(granularity: str) -> None:
    unique = torch.tensor([[[1.0, 0.0], [5.0, 7.0]]])
    common = torch.tensor([[[0.0, 1.0], [5.0, 7.0]]])  # the padded step is perfectly aligned
    mask = torch.tensor([[True, False]])
    value = decoupling_loss(unique, common, granularity=granularity, masks=[mask])
    assert float(value) == pytest.approx(0.0, abs=1e-12)
