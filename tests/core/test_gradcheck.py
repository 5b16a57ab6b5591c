"""Every functional loss passes ``torch.autograd.gradcheck`` in float64.

Inputs are small, random and away from the non-smooth points of each loss (``|cos| = 0``,
clamps at 0). Covariance matrices are built inside the checked function as ``A A^T + I`` from a
free parameter ``A``, so that the finite-difference perturbations keep them SPD.

gradcheck's defaults (``eps=1e-6``, ``atol=1e-5``, ``rtol=1e-3``) are used everywhere.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.autograd import gradcheck

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

F64 = torch.float64

# Sinkhorn settings under which the solver converges to round-off: the converged value is then a
# smooth function of the cost, and finite differences of it are meaningful.
EPSILON = 0.5
TIGHT = {"tol": 1e-12, "check_every": 1, "max_iter": 5000}


def _param(*shape: int, scale: float = 1.0, offset: float = 0.0) -> Tensor:
    return (torch.randn(*shape, dtype=F64) * scale + offset).requires_grad_(True)


def _spd(a: Tensor) -> Tensor:
    """``A A^T + I``: symmetric positive definite for any ``A (..., d, d)``."""
    return a @ a.mT + torch.eye(a.shape[-1], dtype=a.dtype)


def _variances(a: Tensor) -> Tensor:
    """``a^2 + 1``: positive variances for any ``a``."""
    return a * a + 1.0


def _histogram(n: int) -> Tensor:
    weights = torch.rand(n, dtype=F64) + 0.5
    return weights / weights.sum()


# --------------------------------------------------------------------------- decoupling (eq. 1)


@pytest.mark.parametrize("granularity", ["sequence", "token", "pooled"])
@pytest.mark.parametrize("mode", ["squared", "abs", "signed"])
def test_decoupling_loss_gradcheck_with_masks(mode: str, granularity: str) -> None:
    # Modality 0: a padded sequence (B, T, d) with a mask; modality 1: pooled (B, d), no mask.
    u0, c0 = _param(3, 4, 2), _param(3, 4, 2)
    u1, c1 = _param(3, 5), _param(3, 5)
    mask0 = torch.tensor([[True, True, True, True], [True, True, False, False], [True, False, True, False]])

    def loss(u0: Tensor, c0: Tensor, u1: Tensor, c1: Tensor) -> Tensor:
        return decoupling_loss([u0, u1], [c0, c1], mode=mode, granularity=granularity, masks=[mask0, None])

    assert gradcheck(loss, (u0, c0, u1, c1))


@pytest.mark.parametrize("granularity", ["sequence", "token", "pooled"])
def test_decoupling_loss_gradcheck_without_masks(granularity: str) -> None:
    u, c = _param(3, 4, 2), _param(3, 4, 2)
    assert gradcheck(lambda u, c: decoupling_loss(u, c, granularity=granularity), (u, c))


# --------------------------------------------------------------------------- MMD (eqs. 11-12)


@pytest.mark.parametrize("sigma", [1.0, [0.5, 2.0]], ids=["one_bandwidth", "bandwidth_list"])
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_gaussian_mmd_gradcheck(estimator: str, sigma: float | list[float]) -> None:
    x, y = _param(5, 3), _param(4, 3, offset=0.5)
    assert gradcheck(lambda x, y: gaussian_mmd(x, y, sigma, estimator=estimator), (x, y))


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_multimodal_mmd_gradcheck(estimator: str) -> None:
    features = (_param(5, 3), _param(4, 3, offset=0.5), _param(3, 3, scale=1.5))
    assert gradcheck(lambda *f: multimodal_mmd(list(f), 1.5, estimator=estimator), features)


# --------------------------------------------------------------------------- moments (eq. 10)


def test_moment_matching_loss_gradcheck() -> None:
    # Well-conditioned samples: every dimension has a clear spread, so skewness is smooth.
    features = (_param(6, 3), _param(7, 3, scale=1.5, offset=0.3), _param(5, 3, scale=0.8))
    assert gradcheck(lambda *f: moment_matching_loss(list(f)), features)


# --------------------------------------------------------------------------- Bures and sqrtm (eq. 6)


def test_bures_wasserstein_cost_gradcheck_diagonal() -> None:
    means_a, root_a = _param(2, 3), _param(2, 3)
    means_b, root_b = _param(3, 3), _param(3, 3)

    def cost(means_a: Tensor, root_a: Tensor, means_b: Tensor, root_b: Tensor) -> Tensor:
        return bures_wasserstein_cost(means_a, _variances(root_a), means_b, _variances(root_b))

    assert gradcheck(cost, (means_a, root_a, means_b, root_b))


def test_bures_wasserstein_cost_gradcheck_full() -> None:
    means_a, factor_a = _param(2, 3), _param(2, 3, 3)
    means_b, factor_b = _param(3, 3), _param(3, 3, 3)

    def cost(means_a: Tensor, factor_a: Tensor, means_b: Tensor, factor_b: Tensor) -> Tensor:
        return bures_wasserstein_cost(means_a, _spd(factor_a), means_b, _spd(factor_b))

    assert gradcheck(cost, (means_a, factor_a, means_b, factor_b))


def test_bures_wasserstein_cost_gradcheck_diagonal_against_full() -> None:
    means_a, root_a = _param(2, 3), _param(2, 3)
    means_b, factor_b = _param(2, 3), _param(2, 3, 3)

    def cost(means_a: Tensor, root_a: Tensor, means_b: Tensor, factor_b: Tensor) -> Tensor:
        return bures_wasserstein_cost(means_a, _variances(root_a), means_b, _spd(factor_b))

    assert gradcheck(cost, (means_a, root_a, means_b, factor_b))


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4)], ids=["single", "batched"])
def test_sqrtm_psd_gradcheck(shape: tuple[int, ...]) -> None:
    factor = _param(*shape)
    assert gradcheck(lambda a: sqrtm_psd(_spd(a)), (factor,))


# --------------------------------------------------------------------------- joint cost (eq. 5)


def test_joint_cost_tensor_gradcheck() -> None:
    c01, c02, c12 = _param(2, 3), _param(2, 4), _param(3, 4)

    def joint(c01: Tensor, c02: Tensor, c12: Tensor) -> Tensor:
        return joint_cost_tensor({(0, 1): c01, (0, 2): c02, (1, 2): c12})

    assert gradcheck(joint, (c01, c02, c12))


# --------------------------------------------------------------------------- Sinkhorn (eqs. 7-8)


def test_sinkhorn_unrolled_gradcheck_of_value() -> None:
    cost = torch.rand(4, 3, dtype=F64).requires_grad_(True)
    a, b = _histogram(4), _histogram(3)

    def value(cost: Tensor) -> Tensor:
        result = sinkhorn(cost, a, b, EPSILON, grad="unrolled", **TIGHT)
        assert result.converged
        return result.value

    assert gradcheck(value, (cost,))


def test_multi_marginal_sinkhorn_unrolled_gradcheck_of_value() -> None:
    cost = torch.rand(3, 2, 4, dtype=F64).requires_grad_(True)
    marginals = [_histogram(3), _histogram(2), _histogram(4)]

    def value(cost: Tensor) -> Tensor:
        result = multi_marginal_sinkhorn(cost, marginals, EPSILON, grad="unrolled", **TIGHT)
        assert result.converged
        return result.value

    assert gradcheck(value, (cost,))


def test_sinkhorn_envelope_gradient_of_regularized_value_matches_finite_differences() -> None:
    # Envelope theorem: d OT_eps / dC = P*. The backward of regularized_value returns P*; the
    # finite differences of the converged regularized value must agree.
    cost = torch.rand(4, 3, dtype=F64).requires_grad_(True)
    a, b = _histogram(4), _histogram(3)

    def regularized(cost: Tensor) -> Tensor:
        result = sinkhorn(cost, a, b, EPSILON, grad="envelope", **TIGHT)
        assert result.converged
        return result.regularized_value

    assert gradcheck(regularized, (cost,))


def test_multi_marginal_sinkhorn_envelope_gradient_of_regularized_value_matches_finite_differences() -> None:
    cost = torch.rand(3, 2, 4, dtype=F64).requires_grad_(True)
    marginals = [_histogram(3), _histogram(2), _histogram(4)]

    def regularized(cost: Tensor) -> Tensor:
        result = multi_marginal_sinkhorn(cost, marginals, EPSILON, grad="envelope", **TIGHT)
        assert result.converged
        return result.regularized_value

    assert gradcheck(regularized, (cost,))


def test_multi_marginal_sinkhorn_envelope_gradient_of_regularized_value_is_the_plan() -> None:
    cost = torch.rand(3, 2, 4, dtype=F64).requires_grad_(True)
    marginals = [_histogram(3), _histogram(2), _histogram(4)]
    result = multi_marginal_sinkhorn(cost, marginals, EPSILON, grad="envelope", **TIGHT)
    (gradient,) = torch.autograd.grad(result.regularized_value, cost)
    torch.testing.assert_close(gradient, result.plan, rtol=1e-12, atol=1e-15)


def test_sinkhorn_envelope_gradient_of_value_is_the_detached_plan() -> None:
    # By design value = <stop_grad(P*), C>: its gradient is P*, not the derivative of <P*(C), C>.
    cost = torch.rand(4, 3, dtype=F64).requires_grad_(True)
    result = sinkhorn(cost, _histogram(4), _histogram(3), EPSILON, grad="envelope", **TIGHT)
    (gradient,) = torch.autograd.grad(result.value, cost)
    assert not result.plan.requires_grad
    torch.testing.assert_close(gradient, result.plan, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- calibration (eq. 9)


def _calibration_inputs() -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
    features = [_param(5, 3), _param(4, 3, offset=0.5)]
    responsibilities = [torch.randn(5, 2, dtype=F64).softmax(-1), torch.randn(4, 2, dtype=F64).softmax(-1)]
    means = [_param(2, 3), _param(2, 3, offset=0.5)]
    plan = torch.rand(2, 2, dtype=F64) + 0.1
    return features, responsibilities, means, plan / plan.sum()


@pytest.mark.parametrize("matching", ["index", "plan"])
def test_prototype_calibration_loss_gradcheck_wrt_features_and_means(matching: str) -> None:
    features, responsibilities, means, plan = _calibration_inputs()

    def loss(f0: Tensor, f1: Tensor, m0: Tensor, m1: Tensor) -> Tensor:
        return prototype_calibration_loss(
            [f0, f1], responsibilities, [m0, m1], plan=plan if matching == "plan" else None, matching=matching
        )

    assert gradcheck(loss, (*features, *means))


def test_prototype_calibration_loss_gradcheck_wrt_responsibilities_and_plan() -> None:
    features, responsibilities, means, plan = _calibration_inputs()
    inputs = (*(r.requires_grad_(True) for r in responsibilities), plan.requires_grad_(True))

    def loss(r0: Tensor, r1: Tensor, plan: Tensor) -> Tensor:
        return prototype_calibration_loss(features, [r0, r1], means, plan=plan, matching="plan")

    assert gradcheck(loss, inputs)


# --------------------------------------------------------------------------- GMM (eqs. 2-4)


def _gmm_data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(5, 2, generator=g, dtype=F64), torch.randn(5, 2, generator=g, dtype=F64) + 2.0])
    means_init = torch.tensor([[0.0, 0.0], [2.0, 2.0]], dtype=F64)
    return x.requires_grad_(True), means_init


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_fit_gmm_unrolled_gradcheck_with_means_init(covariance_type: str) -> None:
    # Only the means are given: weights start uniform and covariances start at the data's own
    # covariance, which is a smooth function of x and belongs to the differentiated function.
    x, means_init = _gmm_data()

    def objective(x: Tensor) -> Tensor:
        mixture = fit_gmm(
            x, 2, covariance_type=covariance_type, n_iter=3, means_init=means_init, reg_covar=1e-3, grad="unrolled"
        )
        return mixture.means.sum() + mixture.log_likelihood

    assert gradcheck(objective, (x,))


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_fit_gmm_unrolled_gradcheck_with_every_initial_parameter_given(covariance_type: str) -> None:
    x, means_init = _gmm_data()
    weights_init = torch.tensor([0.4, 0.6], dtype=F64)
    covariances_init = (
        torch.ones(2, 2, dtype=F64) if covariance_type == "diag" else torch.eye(2, dtype=F64).expand(2, 2, 2).clone()
    )

    def objective(x: Tensor) -> Tensor:
        mixture = fit_gmm(
            x,
            2,
            covariance_type=covariance_type,
            n_iter=3,
            means_init=means_init,
            weights_init=weights_init,
            covariances_init=covariances_init,
            reg_covar=1e-3,
            grad="unrolled",
        )
        return mixture.means.sum() + mixture.log_likelihood

    assert gradcheck(objective, (x,))


def test_fit_gmm_unrolled_gradcheck_of_covariances_and_weights() -> None:
    x, means_init = _gmm_data()
    covariances_init = torch.eye(2, dtype=F64).expand(2, 2, 2).clone()

    def objective(x: Tensor) -> tuple[Tensor, Tensor]:
        mixture = fit_gmm(
            x, 2, covariance_type="full", n_iter=2, means_init=means_init, covariances_init=covariances_init,
            reg_covar=1e-3,
        )
        return mixture.covariances, mixture.weights

    assert gradcheck(objective, (x,))



# --------------------------------------------------------------------------- gradients w.r.t. the marginals


def _simplex(logits: Tensor) -> Tensor:
    return torch.softmax(logits, 0)


@pytest.mark.parametrize("grad", ["unrolled", "envelope"])
def test_multi_marginal_sinkhorn_gradient_wrt_marginals_matches_finite_differences(grad: str) -> None:
    # Marginals are parametrised on the simplex so that the perturbed ones keep equal masses.
    cost = torch.rand(3, 2, 4, dtype=F64)
    logits = [_param(3), _param(2), _param(4)]

    def regularized(*logits: Tensor) -> Tensor:
        result = multi_marginal_sinkhorn(cost, [_simplex(z) for z in logits], EPSILON, grad=grad, **TIGHT)
        assert result.converged
        return result.regularized_value

    assert gradcheck(regularized, tuple(logits))


def test_guarded_fixed_sweep_sinkhorn_gradcheck_wrt_cost_and_marginals() -> None:
    # The authors' form: 50 sweeps, kernel floor and scaling guard, gradients through every sweep.
    cost = (torch.rand(3, 2, 4, dtype=F64) * 2).requires_grad_(True)
    logits = [_param(3), _param(2), _param(4)]

    def regularized(cost: Tensor, *logits: Tensor) -> Tensor:
        marginals = [_simplex(z) for z in logits]
        return multi_marginal_sinkhorn(cost, marginals, 0.1, max_iter=50, tol=0.0, grad="unrolled", kernel_floor=1e-30, scaling_guard=1e-8).regularized_value

    assert gradcheck(regularized, (cost, *logits))


# --------------------------------------------------------------------------- repeated eigenvalues


def test_sqrtm_psd_gradcheck_at_repeated_eigenvalues() -> None:
    # 2I (all eigenvalues equal) is where autograd through eigh returns NaN.
    matrix = (2.0 * torch.eye(3, dtype=F64)).requires_grad_(True)
    assert gradcheck(lambda m: sqrtm_psd(0.5 * (m + m.mT)), (matrix,))


def test_bures_wasserstein_cost_gradcheck_at_repeated_eigenvalues() -> None:
    means_a, means_b = _param(2, 3), _param(2, 3)
    cov_a = (2.0 * torch.eye(3, dtype=F64)).expand(2, 3, 3).clone().requires_grad_(True)
    cov_b = (2.0 * torch.eye(3, dtype=F64)).expand(2, 3, 3).clone().requires_grad_(True)

    def cost(means_a: Tensor, cov_a: Tensor, means_b: Tensor, cov_b: Tensor) -> Tensor:
        return bures_wasserstein_cost(means_a, 0.5 * (cov_a + cov_a.mT), means_b, 0.5 * (cov_b + cov_b.mT))

    assert gradcheck(cost, (means_a, cov_a, means_b, cov_b))
