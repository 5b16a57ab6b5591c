"""Precision contract: half-precision inputs are computed in float32, float64 stays float64.

* float16 / bfloat16 inputs give finite float32 results within 1e-6 of the float32 result on the
  *same* values (the half input cast up): the internals run in float32, so only the order of
  float32 operations may differ. (A copy of the MMD computing in half precision differs by
  ~1e-3 and fails; at the earlier 1e-2 tolerance it passed 6 of 8 cases.)
* Results are float32 for half and float32 inputs, float64 for float64 inputs, 0-dim for the
  losses, and on the device of the input.
* Every function disables autocast internally: under ``torch.autocast("cpu", dtype=torch.bfloat16)``
  a float32 input gives the same float32 result as outside autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from alignkit.functional import (
    bures_wasserstein_cost,
    decoupling_loss,
    fit_gmm,
    gaussian_mmd,
    joint_cost_tensor,
    moment_matching_loss,
    multi_marginal_sinkhorn,
    multimodal_mmd,
    prototype_calibration_loss,
    sinkhorn,
    sqrtm_psd,
)

HALF_DTYPES = [pytest.param(torch.float16, id="float16"), pytest.param(torch.bfloat16, id="bfloat16")]


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(1)


def _spd(k: int, d: int, g: torch.Generator) -> Tensor:
    a = torch.randn(k, d, d, generator=g)
    return a @ a.mT / d + torch.eye(d)


def _clusters(g: torch.Generator) -> Tensor:
    return torch.cat([torch.randn(20, 2, generator=g), torch.randn(20, 2, generator=g) + 3.0])


@dataclass(frozen=True)
class Case:
    """A public function on float32 inputs; ``inputs`` are cast to the dtype under test."""

    inputs: Callable[[torch.Generator], list[Tensor]]
    compute: Callable[..., Tensor]
    is_loss: bool = True
    """A 0-dim loss (else a tensor-valued result such as a cost matrix or a matrix root)."""


CASES: dict[str, Case] = {
    "decoupling_loss": Case(
        lambda g: [torch.randn(4, 6, 8, generator=g), torch.randn(4, 6, 8, generator=g)],
        lambda u, c: decoupling_loss(u, c, granularity="token"),
    ),
    "fit_gmm_log_likelihood": Case(
        lambda g: [_clusters(g)],
        lambda x: fit_gmm(x, 2, n_iter=5, reg_covar=1e-3).log_likelihood,
    ),
    "fit_gmm_means": Case(
        lambda g: [_clusters(g)],
        lambda x: fit_gmm(x, 2, covariance_type="full", n_iter=5, reg_covar=1e-3).means,
        is_loss=False,
    ),
    "bures_wasserstein_cost_diag": Case(
        lambda g: [
            torch.randn(2, 4, generator=g),
            torch.rand(2, 4, generator=g) + 0.5,
            torch.randn(3, 4, generator=g),
            torch.rand(3, 4, generator=g) + 0.5,
        ],
        bures_wasserstein_cost,
        is_loss=False,
    ),
    "bures_wasserstein_cost_full": Case(
        lambda g: [torch.randn(2, 4, generator=g), _spd(2, 4, g), torch.randn(3, 4, generator=g), _spd(3, 4, g)],
        bures_wasserstein_cost,
        is_loss=False,
    ),
    "sqrtm_psd": Case(lambda g: [_spd(2, 4, g)], sqrtm_psd, is_loss=False),
    "sinkhorn_value": Case(
        # Power-of-two sizes: the uniform weights are exact in every dtype.
        lambda g: [torch.rand(4, 8, generator=g), torch.full((4,), 0.25), torch.full((8,), 0.125)],
        lambda cost, a, b: sinkhorn(cost, a, b, 0.1, tol=1e-5).value,
    ),
    "multi_marginal_sinkhorn_value": Case(
        lambda g: [torch.rand(2, 4, 8, generator=g), *(torch.full((n,), 1.0 / n) for n in (2, 4, 8))],
        lambda cost, *marginals: multi_marginal_sinkhorn(cost, list(marginals), 0.1, tol=1e-5).value,
    ),
    "prototype_calibration_loss": Case(
        lambda g: [
            torch.randn(10, 4, generator=g),
            torch.randn(12, 4, generator=g) + 1.0,
            torch.randn(10, 2, generator=g).softmax(-1),
            torch.randn(12, 3, generator=g).softmax(-1),
            torch.randn(2, 4, generator=g),
            torch.randn(3, 4, generator=g) + 1.0,
            torch.full((2, 3), 1.0 / 6.0),
        ],
        lambda f0, f1, r0, r1, m0, m1, plan: prototype_calibration_loss([f0, f1], [r0, r1], [m0, m1], plan=plan),
    ),
    "moment_matching_loss": Case(
        lambda g: [torch.randn(16, 4, generator=g), torch.randn(20, 4, generator=g) * 1.5 + 0.5],
        lambda a, b: moment_matching_loss([a, b]),
    ),
    "gaussian_mmd_biased": Case(
        lambda g: [torch.randn(16, 4, generator=g), torch.randn(20, 4, generator=g) + 0.5],
        lambda x, y: gaussian_mmd(x, y, 2.0, estimator="biased"),
    ),
    "gaussian_mmd_unbiased": Case(
        lambda g: [torch.randn(16, 4, generator=g), torch.randn(20, 4, generator=g) + 0.5],
        lambda x, y: gaussian_mmd(x, y, 2.0, estimator="unbiased"),
    ),
    "gaussian_mmd_median": Case(
        lambda g: [torch.randn(16, 4, generator=g), torch.randn(20, 4, generator=g) + 0.5],
        lambda x, y: gaussian_mmd(x, y, "median"),
    ),
    "multimodal_mmd": Case(
        lambda g: [
            torch.randn(16, 4, generator=g),
            torch.randn(20, 4, generator=g) + 0.5,
            torch.randn(8, 4, generator=g),
        ],
        lambda *features: multimodal_mmd(list(features), [1.0, 2.0]),
    ),
}

LOSSES = {name: case for name, case in CASES.items() if case.is_loss}


def _cases(cases: dict[str, Case]) -> list[object]:
    return [pytest.param(case, id=name) for name, case in cases.items()]


# --------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("case", _cases(CASES))
def test_half_precision_input_matches_float32_on_the_same_values(case: Case, dtype: torch.dtype) -> None:
    half_inputs = [t.to(dtype) for t in case.inputs(_generator())]
    reference = case.compute(*(t.to(torch.float32) for t in half_inputs))
    result = case.compute(*half_inputs)
    assert result.dtype == torch.float32
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_sinkhorn_accepts_half_precision_uniform_marginals_equal_up_to_rounding(dtype: torch.dtype) -> None:
    # 1/3 is not representable: three rounded weights sum to 1 only up to the dtype's precision
    # (0.99976 in float16, 1.0020 in bfloat16) while four weights 1/4 sum to 1 exactly. That
    # rounding must not count as "unequal total masses".
    cost = torch.rand(3, 4, generator=_generator())
    a, b = torch.full((3,), 1.0 / 3.0), torch.full((4,), 1.0 / 4.0)
    reference = sinkhorn(cost, a, b, 0.1).value
    result = sinkhorn(cost.to(dtype), a.to(dtype), b.to(dtype), 0.1).value
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, reference, rtol=1e-2, atol=1e-3)


# --------------------------------------------------------------------------- result dtype, shape, device


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        pytest.param(torch.float16, torch.float32, id="float16"),
        pytest.param(torch.bfloat16, torch.float32, id="bfloat16"),
        pytest.param(torch.float32, torch.float32, id="float32"),
        pytest.param(torch.float64, torch.float64, id="float64"),
    ],
)
@pytest.mark.parametrize("case", _cases(CASES))
def test_result_dtype_is_float64_for_float64_and_float32_otherwise(
    case: Case, dtype: torch.dtype, expected: torch.dtype
) -> None:
    inputs = [t.to(dtype) for t in case.inputs(_generator())]
    assert case.compute(*inputs).dtype == expected


@pytest.mark.parametrize("case", _cases(LOSSES))
def test_loss_is_a_zero_dim_tensor_on_the_input_device(case: Case) -> None:
    inputs = case.inputs(_generator())
    result = case.compute(*inputs)
    assert result.shape == ()
    assert result.device == inputs[0].device


def test_joint_cost_tensor_is_on_the_device_and_dtype_of_its_inputs() -> None:
    costs = {(0, 1): torch.rand(2, 3), (0, 2): torch.rand(2, 4), (1, 2): torch.rand(3, 4)}
    costs = {pair: cost.to(torch.float64) for pair, cost in costs.items()}
    joint = joint_cost_tensor(costs)
    assert joint.dtype == torch.float64
    assert joint.device == costs[0, 1].device


# --------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("case", _cases(CASES))
def test_float32_result_is_unchanged_under_bfloat16_autocast(case: Case) -> None:
    inputs = case.inputs(_generator())
    expected = case.compute(*inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = case.compute(*inputs)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-7)


def test_joint_cost_tensor_is_unchanged_under_bfloat16_autocast() -> None:
    costs = {(0, 1): torch.rand(2, 3), (0, 2): torch.rand(2, 4), (1, 2): torch.rand(3, 4)}
    expected = joint_cost_tensor(costs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = joint_cost_tensor(costs)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=0.0)
