"""The GMM E-/M-step and the calibration distances: every backend equals dense in value and
gradient; the blocked GMM never forms a full-covariance temporary for more than one block."""

from __future__ import annotations

import warnings

import pytest
import torch

import alignkit
from alignkit.functional import fit_gmm, prototype_calibration_loss
from alignkit.kernels import dispatch
from alignkit.kernels.backends import keops
from alignkit.prototypes import gmm

KEOPS_REASON = keops.unavailable_reason()
# Deliberate: skips only where no C++ compiler (or no pykeops) exists, with that reason printed;
# CI installs the keops extra on a machine with g++, so these tests run there.
needs_keops = pytest.mark.skipif(KEOPS_REASON is not None, reason=f"KeOps cannot run here: {KEOPS_REASON}")
FIELDS = ("weights", "means", "covariances", "responsibilities", "log_likelihood")


def _clusters(groups: int, n: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(n + d)
    centers = 3.0 * torch.randn(groups, 3, d, generator=g, dtype=dtype)
    labels = torch.randint(0, 3, (groups, n), generator=g)
    x = torch.gather(centers, 1, labels[..., None].expand(groups, n, d)) + torch.randn(groups, n, d, generator=g, dtype=dtype)
    return x.requires_grad_(True)


def _fit(x: torch.Tensor, covariance_type: str, backend: str, grad: str = "unrolled"):
    mixture = fit_gmm(x, 3, covariance_type=covariance_type, n_iter=4, init="spaced", backend=backend, grad=grad)
    # A scalar that depends on every output, for the gradient comparison.
    objective = mixture.log_likelihood.sum() + mixture.means.square().sum() + mixture.covariances.sum()
    (gradient,) = torch.autograd.grad(objective, x)
    return mixture, gradient


def _assert_mixtures_agree(a, b, ga, gb, rtol: float, atol: float) -> None:
    for name in FIELDS:
        assert torch.allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=atol), name
    assert torch.allclose(ga, gb, rtol=rtol, atol=atol)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 37 rows: several blocks and a ragged last one for every input below."""
    monkeypatch.setattr(gmm, "ROWS", 37)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@pytest.mark.parametrize("grad", ["unrolled", "last_step"])
def test_blocked_gmm_equals_dense(covariance_type: str, grad: str, small_blocks: None) -> None:
    x = _clusters(2, 150, 5, torch.float64)
    dense = _fit(x, covariance_type, "dense", grad)
    blocked = _fit(x, covariance_type, "blocked", grad)
    _assert_mixtures_agree(*dense[:1], *blocked[:1], dense[1], blocked[1], rtol=1e-10, atol=1e-12)


def test_blocked_gmm_equals_dense_to_float32_round_off(small_blocks: None) -> None:
    """In float32 the blocked sums run in another order; the difference to dense must be no larger
    than float32 round-off itself, measured as dense float32 against dense float64."""
    x = _clusters(1, 200, 8, torch.float32)[0]
    dense, dense_grad = _fit(x, "full", "dense")
    blocked, blocked_grad = _fit(x, "full", "blocked")
    exact, exact_grad = _fit(x.detach().double().requires_grad_(True), "full", "dense")
    pairs = [(getattr(dense, n), getattr(blocked, n), getattr(exact, n)) for n in FIELDS] + [(dense_grad, blocked_grad, exact_grad)]
    for reference, got, exact_value in pairs:
        round_off = (reference.double() - exact_value).abs().max()
        assert (got - reference).abs().max() <= 2.0 * round_off + 1e-6 * reference.abs().max()


def test_blocked_gmm_keeps_one_block_of_full_temporaries(small_blocks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward and backward (recomputation) only ever see blocks of at most ROWS samples."""
    seen: list[int] = []
    for name in ("_log_gaussian_full", "_scatter_about_means"):
        original = getattr(gmm, name)

        def recording(x, *rest, _original=original):
            seen.append(x.shape[-2])
            return _original(x, *rest)

        monkeypatch.setattr(gmm, name, recording)
    x = _clusters(1, 150, 4, torch.float64)[0]
    _fit(x, "full", "blocked")
    assert seen and max(seen) <= 37
    assert len(seen) > 2 * (150 // 37)  # forward blocks and their recomputation in backward


@needs_keops
def test_keops_gmm_equals_dense() -> None:
    x = _clusters(2, 150, 5, torch.float64)
    dense = _fit(x, "diag", "dense")
    result = _fit(x, "diag", "keops")
    _assert_mixtures_agree(dense[0], result[0], dense[1], result[1], rtol=1e-9, atol=1e-11)


@needs_keops
def test_keops_gmm_equals_dense_in_float32() -> None:
    x = _clusters(1, 300, 5, torch.float32)[0].detach()
    dense = fit_gmm(x, 3, n_iter=4, init="spaced", backend="dense")
    result = fit_gmm(x, 3, n_iter=4, init="spaced", backend="keops")
    for name in FIELDS:
        assert torch.allclose(getattr(dense, name), getattr(result, name), rtol=1e-3, atol=1e-4), name


def test_keops_gmm_with_full_covariances_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="backend: 'keops' supports covariance_type='diag'"):
        fit_gmm(torch.randn(20, 3), 2, covariance_type="full", backend="keops")


def test_gmm_auto_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    chosen: list[str] = []
    original = gmm._e_step
    monkeypatch.setattr(gmm, "_e_step", lambda *args: chosen.append(args[6]) or original(*args))  # args[6]: backend
    x = torch.randn(64, 4, dtype=torch.float64)
    fit_gmm(x, 2, covariance_type="full", n_iter=1)
    monkeypatch.setattr(gmm, "DENSE_MAX_ELEMENTS", 64 * 2 * 4 - 1)
    fit_gmm(x, 2, covariance_type="full", n_iter=1)
    fit_gmm(x, 2, covariance_type="diag", n_iter=1)  # no large temporary: dense whatever the size
    assert chosen == ["dense"] * 2 + ["blocked"] * 2 + ["dense"] * 2


def test_environment_keops_request_for_full_covariances_keeps_the_auto_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "keops")
    assert dispatch.resolve_rowwise_backend("auto", large=True, device_type="cpu", keops_supported=False) == "blocked"
    monkeypatch.setenv(dispatch.ENV_VAR, "blocked")
    assert dispatch.resolve_rowwise_backend("auto", large=False, device_type="cpu") == "blocked"
    assert dispatch.resolve_rowwise_backend("dense", large=True, device_type="cpu") == "dense"


def test_environment_keops_request_without_keops_warns_once_and_uses_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "keops")
    monkeypatch.setattr(keops, "unavailable_reason", lambda device_type="cpu": "no C++ compiler (g++) on PATH")
    monkeypatch.setattr(dispatch, "_KEOPS_FAILED", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = dispatch.resolve_rowwise_backend("auto", large=False, device_type="cpu")
        second = dispatch.resolve_rowwise_backend("auto", large=True, device_type="cpu")
    assert (first, second) == ("dense", "blocked")
    assert len([w for w in caught if "falls back" in str(w.message)]) == 1


def _calibration_inputs(dtype: torch.dtype, counts: tuple[int, ...]):
    g = torch.Generator().manual_seed(3)
    sizes = (40, 57, 33)
    features = [(torch.randn(n, 6, generator=g, dtype=dtype) + i).requires_grad_(True) for i, n in enumerate(sizes)]
    responsibilities = [torch.softmax(torch.randn(n, k, generator=g, dtype=dtype), -1).requires_grad_(True) for n, k in zip(sizes, counts)]
    means = [torch.randn(k, 6, generator=g, dtype=dtype).requires_grad_(True) for k in counts]
    plan = torch.rand(*counts, generator=g, dtype=dtype)
    return features, responsibilities, means, plan / plan.sum()


def _calibration(backend: str, dtype: torch.dtype, gradients: bool, counts: tuple[int, ...]):
    features, responsibilities, means, plan = _calibration_inputs(dtype, counts)
    value = prototype_calibration_loss(features, responsibilities, means, plan=plan, backend=backend)
    return (value.detach(), *torch.autograd.grad(value, [*features, *responsibilities, *means])) if gradients else (value.detach(),)


@pytest.mark.parametrize(
    ("backend", "dtype", "rtol"),
    [
        ("blocked", torch.float64, 1e-12),
        pytest.param("keops", torch.float64, 1e-10, marks=needs_keops),
        pytest.param("keops", torch.float32, 1e-5, marks=needs_keops),
    ],
)
def test_calibration_backends_equal_dense(backend: str, dtype: torch.dtype, rtol: float) -> None:
    # KeOps compiles a formula set (~12 s a formula on a 2-core CPU) for each count, dtype and
    # gradient: it gets one count, and float32 the value only. The blocked path compiles nothing
    # and also gets unequal counts.
    gradients = dtype == torch.float64
    counts = (3, 2, 3) if backend == "blocked" else (3, 3, 3)
    reference = _calibration("dense", dtype, gradients, counts)
    result = _calibration(backend, dtype, gradients, counts)
    for expected, got in zip(reference, result):
        assert torch.allclose(got, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def test_modules_and_configs_pass_the_backend_on() -> None:
    prototypes = alignkit.GMMPrototypesConfig(backend="blocked").build()
    transport = alignkit.PrototypeOTLossConfig(backend="dense").build()
    assert (prototypes.backend, transport.backend) == ("blocked", "dense")
    x = torch.randn(30, 4)
    assert torch.allclose(prototypes(x).means, alignkit.GMMPrototypes(backend="dense")(x).means, atol=1e-6)
    with pytest.raises(ValueError, match="backend"):
        alignkit.PrototypeOTLoss(backend="fastest")
