"""Bad inputs give a ``ValueError`` whose message starts with the name of the offending argument.

Every public function validates its tensors the same way (``alignkit._checks``): the message is
``"<argument>: expected ..., received ..."``. Each test below is one kind of mistake, applied in
turn to every tensor argument of every public function that takes such an argument.

Mixed devices are tested against CUDA when it is available, otherwise against the ``meta``
device (a second device that exists on every machine).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from alignkit.functional import (
    bures_wasserstein_cost,
    decoupling_loss,
    feature_moments,
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
OTHER_DEVICE = "cuda" if torch.cuda.is_available() else "meta"

Corrupt = Callable[[Tensor], Tensor]


def naming(argument: str) -> str:
    """Regex: the message starts with ``argument`` (not a longer name such as ``x_scale`` or ``x[0]``)."""
    return rf"^{re.escape(argument)}(?![\w\[])"


# --------------------------------------------------------------------------- valid inputs


def _samples(n: int = 10, d: int = 3) -> Tensor:
    return torch.randn(n, d, dtype=F64)


def _histogram(n: int) -> Tensor:
    return torch.full((n,), 1.0 / n, dtype=F64)


def _spd(k: int, d: int) -> Tensor:
    a = torch.randn(k, d, d, dtype=F64)
    return a @ a.mT + torch.eye(d, dtype=F64)


def _gaussian_mmd(target: str, corrupt: Corrupt) -> object:
    args = {"x": _samples(), "y": _samples(8)}
    args[target] = corrupt(args[target])
    return gaussian_mmd(args["x"], args["y"], 1.0)


def _on_features(function: Callable[[list[Tensor]], object]) -> Callable[[str, Corrupt], object]:
    """Call ``function`` on three modalities ``features[0..2]``, the ``target`` one corrupted."""

    def call(target: str, corrupt: Corrupt) -> object:
        features = {f"features[{m}]": _samples(10 - m) for m in range(3)}
        features[target] = corrupt(features[target])
        return function(list(features.values()))

    return call


def _decoupling(target: str, corrupt: Corrupt) -> object:
    args = {
        "unique[0]": torch.randn(4, 5, 3, dtype=F64),
        "common[0]": torch.randn(4, 5, 3, dtype=F64),
        "unique[1]": torch.randn(4, 6, dtype=F64),
        "common[1]": torch.randn(4, 6, dtype=F64),
    }
    args[target] = corrupt(args[target])
    return decoupling_loss([args["unique[0]"], args["unique[1]"]], [args["common[0]"], args["common[1]"]])


def _bures(covariance: str) -> Callable[[str, Corrupt], object]:
    def call(target: str, corrupt: Corrupt) -> object:
        covariances_a = torch.rand(2, 3, dtype=F64) + 0.5 if covariance == "diag" else _spd(2, 3)
        covariances_b = torch.rand(4, 3, dtype=F64) + 0.5 if covariance == "diag" else _spd(4, 3)
        args = {
            "means_a": _samples(2),
            "covariances_a": covariances_a,
            "means_b": _samples(4),
            "covariances_b": covariances_b,
        }
        args[target] = corrupt(args[target])
        return bures_wasserstein_cost(**args)

    return call


def _sqrtm(target: str, corrupt: Corrupt) -> object:
    return sqrtm_psd(corrupt(_spd(1, 3)[0]))


def _joint_cost(target: str, corrupt: Corrupt) -> object:
    costs = _pairwise_costs(2, 3, 4)
    key = {"pairwise_costs[0, 1]": (0, 1), "pairwise_costs[0, 2]": (0, 2), "pairwise_costs[1, 2]": (1, 2)}[target]
    costs[key] = corrupt(costs[key])
    return joint_cost_tensor(costs)


def _pairwise_costs(*sizes: int) -> dict[tuple[int, int], Tensor]:
    return {(i, j): torch.rand(sizes[i], sizes[j], dtype=F64) for i, j in itertools.combinations(range(len(sizes)), 2)}


def _sinkhorn(target: str, corrupt: Corrupt) -> object:
    args = {"cost": torch.rand(4, 3, dtype=F64), "a": _histogram(4), "b": _histogram(3)}
    args[target] = corrupt(args[target])
    return sinkhorn(args["cost"], args["a"], args["b"], 0.5)


def _multi_marginal(target: str, corrupt: Corrupt) -> object:
    args = {
        "cost": torch.rand(2, 3, 4, dtype=F64),
        "marginals[0]": _histogram(2),
        "marginals[1]": _histogram(3),
        "marginals[2]": _histogram(4),
    }
    args[target] = corrupt(args[target])
    return multi_marginal_sinkhorn(args["cost"], [args[f"marginals[{i}]"] for i in range(3)], 0.5)


def _calibration(target: str, corrupt: Corrupt) -> object:
    plan = torch.rand(2, 3, dtype=F64) + 0.1
    args = {
        "features[0]": _samples(5),
        "features[1]": _samples(6),
        "responsibilities[0]": torch.randn(5, 2, dtype=F64).softmax(-1),
        "responsibilities[1]": torch.randn(6, 3, dtype=F64).softmax(-1),
        "means[0]": _samples(2),
        "means[1]": _samples(3),
        "plan": plan / plan.sum(),
    }
    args[target] = corrupt(args[target])
    return prototype_calibration_loss(
        [args["features[0]"], args["features[1]"]],
        [args["responsibilities[0]"], args["responsibilities[1]"]],
        [args["means[0]"], args["means[1]"]],
        plan=args["plan"],
    )


def _fit_gmm(target: str, corrupt: Corrupt) -> object:
    args = {
        "x": _samples(12),
        "means_init": _samples(2),
        "weights_init": _histogram(2),
        "covariances_init": torch.ones(2, 3, dtype=F64),
    }
    args[target] = corrupt(args[target])
    x = args.pop("x")
    return fit_gmm(x, 2, n_iter=2, **args)


@dataclass(frozen=True)
class Slot:
    """One tensor argument of one public function."""

    function: str
    argument: str
    call: Callable[[str, Corrupt], object]
    reference: bool = False
    """The first tensor of its call: mixed device/dtype errors name the *other* tensor."""
    takes_a_batch: bool = False
    """An extra leading dimension is valid (a batch, or (B, d) -> (B, T, d)), not a rank error."""
    cast_on_purpose: bool = False
    """Converted to the compute dtype instead of checked: fit_gmm's ``*_init`` (running prototypes
    kept in float32 start fits on half inputs) and the calibration ``plan`` (a float32 OT result
    used with half features). Devices are still checked for these."""

    def __call__(self, corrupt: Corrupt) -> object:
        return self.call(self.argument, corrupt)

    @property
    def id(self) -> str:
        return f"{self.function}-{self.argument}"


SLOTS = [
    Slot("gaussian_mmd", "x", _gaussian_mmd, reference=True),
    Slot("gaussian_mmd", "y", _gaussian_mmd),
    *(
        Slot(name, arg, _on_features(function), reference=arg == "features[0]")
        for name, function in [("multimodal_mmd", multimodal_mmd), ("moment_matching_loss", moment_matching_loss)]
        for arg in ("features[0]", "features[2]")
    ),
    Slot("feature_moments", "x", lambda arg, corrupt: feature_moments(corrupt(_samples())), reference=True),
    *(
        Slot("decoupling_loss", arg, _decoupling, reference=arg == "unique[0]", takes_a_batch=arg.endswith("[1]"))
        for arg in ("unique[0]", "common[0]", "unique[1]", "common[1]")
    ),
    *(
        Slot(f"bures_wasserstein_cost_{cov}", arg, _bures(cov), reference=arg == "means_a")
        for cov in ("diag", "full")
        for arg in ("means_a", "covariances_a", "means_b", "covariances_b")
    ),
    Slot("sqrtm_psd", "matrix", _sqrtm, reference=True, takes_a_batch=True),
    *(
        Slot("joint_cost_tensor", arg, _joint_cost, reference=arg == "pairwise_costs[0, 1]")
        for arg in ("pairwise_costs[0, 1]", "pairwise_costs[1, 2]")
    ),
    *(Slot("sinkhorn", arg, _sinkhorn, reference=arg == "cost") for arg in ("cost", "a", "b")),
    *(
        Slot("multi_marginal_sinkhorn", arg, _multi_marginal, reference=arg == "cost")
        for arg in ("cost", "marginals[0]", "marginals[2]")
    ),
    *(
        Slot(
            "prototype_calibration_loss", arg, _calibration,
            reference=arg == "features[0]", cast_on_purpose=arg == "plan"
        )
        for arg in ("features[0]", "features[1]", "responsibilities[1]", "means[0]", "means[1]", "plan")
    ),
    Slot("fit_gmm", "x", _fit_gmm, reference=True, takes_a_batch=True),
    *(
        Slot("fit_gmm", arg, _fit_gmm, takes_a_batch=True, cast_on_purpose=True)
        for arg in ("means_init", "weights_init", "covariances_init")
    ),
]


def _slots(keep: Callable[[Slot], bool] = lambda slot: True) -> list[object]:
    return [pytest.param(slot, id=slot.id) for slot in SLOTS if keep(slot)]


def _with_value(value: float) -> Corrupt:
    def corrupt(t: Tensor) -> Tensor:
        out = t.clone()
        out.view(-1)[-1] = value
        return out

    return corrupt


# --------------------------------------------------------------------------- non-finite and empty


@pytest.mark.parametrize("slot", _slots())
def test_nan_input_is_rejected_naming_the_argument(slot: Slot) -> None:
    with pytest.raises(ValueError, match=naming(slot.argument)):
        slot(_with_value(math.nan))


@pytest.mark.parametrize("slot", _slots())
def test_inf_input_is_rejected_naming_the_argument(slot: Slot) -> None:
    with pytest.raises(ValueError, match=naming(slot.argument)):
        slot(_with_value(math.inf))


@pytest.mark.parametrize("slot", _slots())
def test_empty_input_is_rejected_naming_the_argument(slot: Slot) -> None:
    with pytest.raises(ValueError, match=naming(slot.argument)):
        slot(lambda t: t[:0])


# --------------------------------------------------------------------------- rank


@pytest.mark.parametrize("slot", _slots(lambda slot: not slot.takes_a_batch))
def test_input_with_an_extra_dimension_is_rejected_naming_the_argument(slot: Slot) -> None:
    # e.g. gaussian_mmd with a 3-D x.
    with pytest.raises(ValueError, match=naming(slot.argument)):
        slot(lambda t: t.unsqueeze(0).expand(2, *t.shape))


@pytest.mark.parametrize("slot", _slots())
def test_input_with_a_missing_dimension_is_rejected_naming_the_argument(slot: Slot) -> None:
    # (N, d) -> (N * d,); a 1-D weight vector -> a 0-dim scalar.
    with pytest.raises(ValueError, match=naming(slot.argument)):
        slot(lambda t: t.reshape(-1) if t.ndim >= 2 else t[0])


@pytest.mark.parametrize("slot", _slots())
def test_zero_dim_input_is_rejected_naming_the_argument(slot: Slot) -> None:
    with pytest.raises(ValueError, match=naming(slot.argument)):
        slot(lambda t: t.sum())


# --------------------------------------------------------------------------- mixed dtypes and devices


@pytest.mark.parametrize("slot", _slots(lambda slot: not slot.reference and not slot.cast_on_purpose))
def test_mixed_dtypes_are_rejected_naming_the_argument(slot: Slot) -> None:
    # Every other tensor of the call is float64.
    with pytest.raises(ValueError, match=naming(slot.argument)):
        slot(lambda t: t.to(torch.float32))


@pytest.mark.parametrize("slot", _slots(lambda slot: not slot.reference))
def test_mixed_devices_are_rejected_naming_the_argument(slot: Slot) -> None:
    # Every other tensor of the call is on the CPU.
    with pytest.raises(ValueError, match=naming(slot.argument)):
        slot(lambda t: t.to(OTHER_DEVICE))


# --------------------------------------------------------------------------- feature widths


WIDTH_MISMATCHES = {
    "gaussian_mmd": ("y", lambda: gaussian_mmd(_samples(10, 3), _samples(10, 4))),
    "multimodal_mmd": ("features[1]", lambda: multimodal_mmd([_samples(10, 3), _samples(10, 4)])),
    "moment_matching_loss": ("features[1]", lambda: moment_matching_loss([_samples(10, 3), _samples(10, 4)])),
    "decoupling_loss": ("common[0]", lambda: decoupling_loss(_samples(10, 3), _samples(10, 4))),
    "bures_wasserstein_cost": (
        "means_b",
        lambda: bures_wasserstein_cost(
            _samples(2, 3), torch.ones(2, 3, dtype=F64), _samples(2, 4), torch.ones(2, 4, dtype=F64)
        ),
    ),
    "prototype_calibration_loss": (
        "means[1]",
        lambda: prototype_calibration_loss(
            [_samples(5, 3), _samples(6, 3)],
            [torch.full((5, 2), 0.5, dtype=F64), torch.full((6, 2), 0.5, dtype=F64)],
            [_samples(2, 3), _samples(2, 4)],
            matching="index",
        ),
    ),
    "fit_gmm": ("means_init", lambda: fit_gmm(_samples(10, 3), 2, means_init=_samples(2, 4))),
}


@pytest.mark.parametrize("case", WIDTH_MISMATCHES.values(), ids=WIDTH_MISMATCHES.keys())
def test_mismatched_feature_widths_are_rejected_naming_the_argument(case: tuple[str, Callable[[], object]]) -> None:
    argument, call = case
    with pytest.raises(ValueError, match=naming(argument)):
        call()


# --------------------------------------------------------------------------- scalar options


MMD_FUNCTIONS = {
    "gaussian_mmd": lambda sigma: gaussian_mmd(_samples(), _samples(8), sigma),
    "multimodal_mmd": lambda sigma: multimodal_mmd([_samples(), _samples(8)], sigma),
}
SINKHORN_FUNCTIONS = {
    "sinkhorn": lambda epsilon: sinkhorn(torch.rand(4, 3, dtype=F64), _histogram(4), _histogram(3), epsilon),
    "multi_marginal_sinkhorn": lambda epsilon: multi_marginal_sinkhorn(
        torch.rand(2, 3, 4, dtype=F64), [_histogram(2), _histogram(3), _histogram(4)], epsilon
    ),
}


@pytest.mark.parametrize("sigma", [0.0, -1.0, [1.0, 0.0]], ids=["zero", "negative", "zero_in_list"])
@pytest.mark.parametrize("function", MMD_FUNCTIONS.values(), ids=MMD_FUNCTIONS.keys())
def test_non_positive_sigma_is_rejected(function: Callable[[object], object], sigma: object) -> None:
    with pytest.raises(ValueError, match=naming("sigma")):
        function(sigma)


@pytest.mark.parametrize("sigma", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("function", MMD_FUNCTIONS.values(), ids=MMD_FUNCTIONS.keys())
def test_non_finite_sigma_is_rejected(function: Callable[[object], object], sigma: float) -> None:
    with pytest.raises(ValueError, match=naming("sigma")):
        function(sigma)


@pytest.mark.parametrize("epsilon", [0.0, -0.1], ids=["zero", "negative"])
@pytest.mark.parametrize("function", SINKHORN_FUNCTIONS.values(), ids=SINKHORN_FUNCTIONS.keys())
def test_non_positive_epsilon_is_rejected(function: Callable[[float], object], epsilon: float) -> None:
    with pytest.raises(ValueError, match=naming("epsilon")):
        function(epsilon)


@pytest.mark.parametrize("epsilon", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("function", SINKHORN_FUNCTIONS.values(), ids=SINKHORN_FUNCTIONS.keys())
def test_non_finite_epsilon_is_rejected(function: Callable[[float], object], epsilon: float) -> None:
    with pytest.raises(ValueError, match=naming("epsilon")):
        function(epsilon)


@pytest.mark.parametrize("shape", [(5, 3), (2, 5, 3)], ids=["single", "batched"])
def test_more_components_than_samples_is_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=naming("n_components")):
        fit_gmm(torch.randn(*shape, dtype=F64), 6)


# --------------------------------------------------------------------------- memory guard


def test_multi_marginal_sinkhorn_refuses_a_cost_tensor_above_max_elements() -> None:
    cost = torch.rand(4, 5, 6, dtype=F64)  # 120 entries
    marginals = [_histogram(4), _histogram(5), _histogram(6)]
    with pytest.raises(ValueError, match="max_elements"):
        multi_marginal_sinkhorn(cost, marginals, 0.5, max_elements=119)


def test_joint_cost_tensor_refuses_a_joint_tensor_above_max_elements() -> None:
    costs = _pairwise_costs(4, 5, 6)
    with pytest.raises(ValueError, match="max_elements"):
        joint_cost_tensor(costs, max_elements=119)


def test_memory_guard_accepts_a_cost_tensor_of_exactly_max_elements() -> None:
    costs = _pairwise_costs(4, 5, 6)
    cost = joint_cost_tensor(costs, max_elements=120)
    result = multi_marginal_sinkhorn(cost, [_histogram(4), _histogram(5), _histogram(6)], 0.5, max_elements=120)
    assert result.plan.shape == (4, 5, 6)
