"""Degenerate but legal inputs give finite values and finite gradients.

Equal Gaussians, repeated eigenvalues, singular covariances, constant features, identical
samples, one-sample modalities and zero marginal weights are all reached in training (a collapsed
component, a padded modality, an empty batch slot). Where the mathematics is undefined (unbiased
MMD or a covariance from one sample) the functions refuse with a ``ValueError`` instead.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor

from alignkit import GaussianMixture
from alignkit.functional import (
    bures_wasserstein_cost,
    decoupling_loss,
    feature_moments,
    fit_gmm,
    gaussian_mmd,
    moment_matching_loss,
    multi_marginal_sinkhorn,
    multimodal_mmd,
    sinkhorn,
    sqrtm_psd,
)

F64 = torch.float64
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
LOSS_SCALE = 2.0**16
"""``torch.amp.GradScaler``'s initial scale: a loss term may be multiplied by this before backward."""


def naming(argument: str) -> str:
    return rf"^{re.escape(argument)}(?![\w\[])"


def leaf(t: Tensor) -> Tensor:
    return t.detach().clone().requires_grad_(True)


def assert_finite_with_finite_gradients(output: Tensor, *inputs: Tensor, loss_scale: float = 1.0) -> None:
    """``output`` is finite, and so is the gradient of ``loss_scale * output.sum()`` for every input."""
    assert torch.isfinite(output).all(), output
    gradients = torch.autograd.grad(loss_scale * output.sum(), inputs)
    for index, gradient in enumerate(gradients):
        assert torch.isfinite(gradient).all(), f"gradient of input {index}: {gradient}"


def _gmm_objective(mixture: GaussianMixture) -> Tensor:
    return (
        mixture.means.sum()
        + mixture.covariances.sum()
        + mixture.weights.sum()
        + mixture.responsibilities.sum()
        + mixture.log_likelihood.sum()
    )


def _with_constant_column(n: int = 12, d: int = 3, dtype: torch.dtype = F64) -> Tensor:
    x = torch.randn(n, d, dtype=dtype)
    x[:, 1] = 0.7
    return x


# --------------------------------------------------------------------------- Bures: equal Gaussians


def _equal_gaussian_covariances(kind: str, dtype: torch.dtype) -> Tensor:
    if kind == "diag_random":
        return torch.rand(2, 3, dtype=dtype) + 0.5
    if kind == "diag_repeated":
        return torch.full((2, 3), 2.0, dtype=dtype)
    if kind == "full_random":
        a = torch.randn(2, 3, 3, dtype=dtype)
        return a @ a.mT + torch.eye(3, dtype=dtype)
    return 2.0 * torch.eye(3, dtype=dtype).expand(2, 3, 3).clone()  # full_repeated: 2 I


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["diag_random", "diag_repeated", "full_random", "full_repeated"])
def test_bures_cost_between_equal_gaussians_is_zero_with_finite_gradients(kind: str, dtype: torch.dtype) -> None:
    means = torch.randn(2, 3, dtype=dtype)
    covariances = _equal_gaussian_covariances(kind, dtype)
    inputs = [leaf(means), leaf(covariances), leaf(means), leaf(covariances)]
    cost = bures_wasserstein_cost(*inputs)
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(cost.diagonal(), torch.zeros(2, dtype=dtype), atol=atol, rtol=0)
    assert_finite_with_finite_gradients(cost, *inputs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bures_cost_with_a_zero_variance_is_finite_with_finite_gradients(dtype: torch.dtype) -> None:
    variances_a = torch.rand(2, 3, dtype=dtype) + 0.5
    variances_a[0, 1] = 0.0
    means_b, variances_b = torch.randn(3, 3, dtype=dtype), torch.rand(3, 3, dtype=dtype) + 0.5
    inputs = [leaf(torch.randn(2, 3, dtype=dtype)), leaf(variances_a), leaf(means_b), leaf(variances_b)]
    assert_finite_with_finite_gradients(bures_wasserstein_cost(*inputs), *inputs)


def test_bures_cost_between_zero_variance_components_is_zero_with_finite_gradients() -> None:
    # Two collapsed components (all variances 0) at the same place.
    means = torch.randn(1, 3, dtype=F64)
    inputs = [leaf(means), leaf(torch.zeros(1, 3, dtype=F64)), leaf(means), leaf(torch.zeros(1, 3, dtype=F64))]
    cost = bures_wasserstein_cost(*inputs)
    torch.testing.assert_close(cost, torch.zeros(1, 1, dtype=F64), atol=1e-12, rtol=0)
    assert_finite_with_finite_gradients(cost, *inputs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_bures_cost_from_a_collapsed_component_has_finite_gradients_under_a_loss_scale(
    covariance_type: str, dtype: torch.dtype
) -> None:
    # Component a has zero covariance (a point mass); b is a unit Gaussian elsewhere.
    covariances_a = torch.zeros(1, 3, dtype=dtype) if covariance_type == "diag" else torch.zeros(1, 3, 3, dtype=dtype)
    covariances_b = torch.ones(1, 3, dtype=dtype) if covariance_type == "diag" else torch.eye(3, dtype=dtype)[None]
    means_a, means_b = torch.zeros(1, 3, dtype=dtype), torch.ones(1, 3, dtype=dtype)
    inputs = [leaf(means_a), leaf(covariances_a), leaf(means_b), leaf(covariances_b)]
    cost = bures_wasserstein_cost(*inputs)
    torch.testing.assert_close(cost, torch.full((1, 1), 6.0, dtype=dtype))  # |mu|^2 = 3, Tr(I) = 3
    assert_finite_with_finite_gradients(cost, *inputs, loss_scale=LOSS_SCALE)


# --------------------------------------------------------------------------- sqrtm


@pytest.mark.parametrize("dtype", DTYPES)
def test_sqrtm_psd_of_twice_identity_has_the_exact_gradient(dtype: torch.dtype) -> None:
    # All eigenvalues equal: eigh's own backward is NaN here. d tr(A^{1/2}) / dA = A^{-1/2} / 2.
    matrix = leaf(2.0 * torch.eye(3, dtype=dtype))
    root = sqrtm_psd(matrix)
    torch.testing.assert_close(root, math.sqrt(2.0) * torch.eye(3, dtype=dtype))
    (gradient,) = torch.autograd.grad(root.diagonal().sum(), matrix)
    torch.testing.assert_close(gradient, torch.eye(3, dtype=dtype) / (2.0 * math.sqrt(2.0)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sqrtm_psd_of_a_rank_one_matrix_is_accurate_with_finite_gradient_under_a_loss_scale(dtype: torch.dtype) -> None:
    v = torch.tensor([1.0, 2.0, -1.0], dtype=dtype)
    matrix = leaf(torch.outer(v, v))  # eigenvalues 6, 0, 0
    root = sqrtm_psd(matrix)
    # eigh returns the zero eigenvalues as round-off of size d * eps * 6, of either sign; a positive
    # one becomes its square root, sqrt(d * eps * 6) (2.5e-8 in float64 seen on an Intel CPU with
    # torch 2.13, exactly 0 on an AMD one). A root off by 0.1 % fails it.
    atol = (3 * torch.finfo(dtype).eps * 6.0) ** 0.5
    torch.testing.assert_close(root, torch.outer(v, v) / v.norm(), atol=atol, rtol=0)
    assert_finite_with_finite_gradients(root, matrix, loss_scale=LOSS_SCALE)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sqrtm_psd_of_the_zero_matrix_is_zero_with_finite_gradient_under_a_loss_scale(dtype: torch.dtype) -> None:
    matrix = leaf(torch.zeros(3, 3, dtype=dtype))
    root = sqrtm_psd(matrix)
    torch.testing.assert_close(root, torch.zeros(3, 3, dtype=dtype))
    assert_finite_with_finite_gradients(root, matrix, loss_scale=LOSS_SCALE)


# --------------------------------------------------------------------------- constant features


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_fit_gmm_with_a_constant_feature_is_finite_with_finite_gradients(covariance_type: str) -> None:
    x = leaf(_with_constant_column())
    mixture = fit_gmm(x, 2, covariance_type=covariance_type, n_iter=5)
    assert_finite_with_finite_gradients(_gmm_objective(mixture), x)


def test_skewness_of_a_constant_feature_is_zero() -> None:
    moments = feature_moments(_with_constant_column())
    assert moments.skewness[1] == 0.0
    assert torch.isfinite(moments.skewness).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_moment_matching_loss_with_a_constant_feature_is_finite_with_finite_gradients(dtype: torch.dtype) -> None:
    features = [leaf(_with_constant_column(12, dtype=dtype)), leaf(torch.randn(10, 3, dtype=dtype))]
    assert_finite_with_finite_gradients(moment_matching_loss(features), *features)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_gaussian_mmd_with_a_constant_feature_is_finite_with_finite_gradients(estimator: str) -> None:
    x, y = leaf(_with_constant_column()), leaf(_with_constant_column(9))
    assert_finite_with_finite_gradients(gaussian_mmd(x, y, "median", estimator=estimator), x, y)


# --------------------------------------------------------------------------- identical inputs


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_mmd_of_a_sample_with_itself_is_zero_with_finite_gradients(dtype: torch.dtype) -> None:
    samples = torch.randn(8, 3, dtype=dtype)
    x, y = leaf(samples), leaf(samples)
    value = gaussian_mmd(x, y, 1.0)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(value, torch.zeros((), dtype=dtype), atol=atol, rtol=0)
    assert_finite_with_finite_gradients(value, x, y)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_gaussian_mmd_of_one_tensor_passed_twice_has_finite_gradient(estimator: str) -> None:
    x = leaf(torch.randn(8, 3, dtype=F64))
    assert_finite_with_finite_gradients(gaussian_mmd(x, x, "median", estimator=estimator), x)


@pytest.mark.parametrize("mode", ["squared", "abs", "signed"])
@pytest.mark.parametrize("granularity", ["sequence", "token", "pooled"])
def test_decoupling_loss_of_identical_unique_and_common_is_one_with_finite_gradients(
    mode: str, granularity: str
) -> None:
    features = torch.randn(4, 5, 3, dtype=F64)
    unique, common = leaf(features), leaf(features)
    value = decoupling_loss(unique, common, mode=mode, granularity=granularity)
    torch.testing.assert_close(value, torch.ones((), dtype=F64))
    assert_finite_with_finite_gradients(value, unique, common)


@pytest.mark.parametrize("mode", ["squared", "abs", "signed"])
@pytest.mark.parametrize("zero", ["unique", "common", "both"])
def test_decoupling_loss_of_an_all_zero_vector_is_cosine_zero_with_finite_gradients(mode: str, zero: str) -> None:
    unique, common = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    if zero in ("unique", "both"):
        unique[0] = 0.0
    if zero in ("common", "both"):
        common[0] = 0.0
    reference = decoupling_loss(unique[1:], common[1:], mode=mode) * 2.0 / 3.0  # sample 0 contributes cos = 0
    unique, common = leaf(unique), leaf(common)
    value = decoupling_loss(unique, common, mode=mode)
    torch.testing.assert_close(value, reference)
    assert_finite_with_finite_gradients(value, unique, common)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_fit_gmm_kmeans_plus_plus_on_identical_rows_is_finite_with_finite_gradients(covariance_type: str) -> None:
    x = leaf(torch.tensor([[0.5, -1.0, 2.0]], dtype=F64).expand(8, 3))
    mixture = fit_gmm(x, 3, covariance_type=covariance_type, init="kmeans++", n_iter=4)
    torch.testing.assert_close(mixture.means, x.detach()[:3])
    assert_finite_with_finite_gradients(_gmm_objective(mixture), x)


# --------------------------------------------------------------------------- one-sample modalities


@pytest.mark.parametrize("dtype", DTYPES)
def test_biased_gaussian_mmd_between_single_samples_is_two_minus_twice_the_kernel(dtype: torch.dtype) -> None:
    x, y = leaf(torch.tensor([[0.0, 1.0]], dtype=dtype)), leaf(torch.tensor([[1.0, 1.0]], dtype=dtype))
    value = gaussian_mmd(x, y, 1.0, estimator="biased")
    torch.testing.assert_close(value, torch.tensor(2.0 - 2.0 * math.exp(-0.5), dtype=dtype))
    assert_finite_with_finite_gradients(value, x, y)


def test_biased_multimodal_mmd_with_one_sample_modalities_is_finite_with_finite_gradients() -> None:
    features = [leaf(torch.randn(n, 3, dtype=F64)) for n in (1, 1, 5)]
    assert_finite_with_finite_gradients(multimodal_mmd(features, 1.0), *features)


def test_moment_matching_loss_without_covariance_accepts_one_sample_modalities() -> None:
    a, b = torch.randn(1, 3, dtype=F64), torch.randn(1, 3, dtype=F64)
    features = [leaf(a), leaf(b)]
    value = moment_matching_loss(features, covariance_weight=0.0)
    # One sample: the means are the samples, the skewness is 0; 1/(M(M-1)) = 1/2.
    torch.testing.assert_close(value, (a - b).pow(2).sum() / 2.0)
    assert_finite_with_finite_gradients(value, *features)


@pytest.mark.parametrize("granularity", ["sequence", "token", "pooled"])
def test_decoupling_loss_with_a_batch_of_one_is_finite_with_finite_gradients(granularity: str) -> None:
    unique, common = leaf(torch.randn(1, 4, 3, dtype=F64)), leaf(torch.randn(1, 4, 3, dtype=F64))
    assert_finite_with_finite_gradients(decoupling_loss(unique, common, granularity=granularity), unique, common)


@pytest.mark.parametrize(("n", "m", "argument"), [(1, 5, "x"), (5, 1, "y")])
def test_unbiased_gaussian_mmd_refuses_a_single_sample(n: int, m: int, argument: str) -> None:
    with pytest.raises(ValueError, match=naming(argument)):
        gaussian_mmd(torch.randn(n, 3, dtype=F64), torch.randn(m, 3, dtype=F64), estimator="unbiased")


def test_unbiased_multimodal_mmd_refuses_a_single_sample_modality() -> None:
    features = [torch.randn(5, 3, dtype=F64), torch.randn(1, 3, dtype=F64)]
    with pytest.raises(ValueError, match=naming("features[1]")):
        multimodal_mmd(features, estimator="unbiased")


def test_feature_moments_refuses_a_single_sample() -> None:
    with pytest.raises(ValueError, match=naming("x")):
        feature_moments(torch.randn(1, 3, dtype=F64))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_moment_matching_loss_gives_a_single_sample_zero_covariance(reduction: str) -> None:
    single = torch.randn(1, 3, dtype=F64, requires_grad=True)
    other = torch.randn(4, 3, dtype=F64)
    loss = moment_matching_loss([single, other], mean_weight=0.0, skewness_weight=0.0, reduction=reduction)
    centered = other - other.mean(0)
    other_covariance = centered.T @ centered / 3
    expected = other_covariance.pow(2).sum() / 2 if reduction == "sum" else other_covariance.pow(2).mean()
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(moment_matching_loss([single, other], reduction=reduction, skewness_variance_floor=1e-6), single)
    assert torch.isfinite(grad).all()


# --------------------------------------------------------------------------- zero marginal weights


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grad", ["envelope", "unrolled"])
def test_sinkhorn_with_a_zero_marginal_weight_gives_a_zero_plan_row(grad: str, dtype: torch.dtype) -> None:
    cost = leaf(torch.rand(4, 3, dtype=dtype))
    a = leaf(torch.tensor([0.5, 0.0, 0.25, 0.25], dtype=dtype))
    b = leaf(torch.full((3,), 1.0 / 3.0, dtype=dtype))
    result = sinkhorn(cost, a, b, 0.5, grad=grad, tol=1e-5)
    assert result.converged
    assert torch.isfinite(result.plan).all()
    torch.testing.assert_close(result.plan[1], torch.zeros(3, dtype=dtype), atol=1e-20, rtol=0)
    assert all(torch.isfinite(f).all() for f in result.potentials)
    assert_finite_with_finite_gradients(result.value, cost, a, b)


@pytest.mark.parametrize("grad", ["envelope", "unrolled"])
def test_multi_marginal_sinkhorn_with_a_zero_marginal_weight_gives_a_zero_plan_slice(grad: str) -> None:
    cost = leaf(torch.rand(3, 2, 4, dtype=F64))
    marginals = [
        leaf(torch.tensor([0.5, 0.5, 0.0], dtype=F64)),
        leaf(torch.tensor([0.5, 0.5], dtype=F64)),
        leaf(torch.tensor([0.25, 0.0, 0.5, 0.25], dtype=F64)),
    ]
    result = multi_marginal_sinkhorn(cost, marginals, 0.5, grad=grad, tol=1e-8)
    assert result.converged
    torch.testing.assert_close(result.plan[2], torch.zeros(2, 4, dtype=F64), atol=1e-20, rtol=0)
    torch.testing.assert_close(result.plan[:, :, 1], torch.zeros(3, 2, dtype=F64), atol=1e-20, rtol=0)
    assert_finite_with_finite_gradients(result.value, cost, *marginals)
