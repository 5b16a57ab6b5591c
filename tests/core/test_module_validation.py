"""Every loss module refuses at construction what its pydantic config refuses."""

from __future__ import annotations

import pydantic
import pytest

import alignkit
from alignkit import config as configs

BAD = [
    ("DecouplingLoss", {"mode": "cosine"}), ("DecouplingLoss", {"granularity": "frame"}), ("DecouplingLoss", {"reduction": "max"}),
    ("GMMPrototypes", {"n_components": 0}), ("GMMPrototypes", {"n_iter": 0}), ("GMMPrototypes", {"reg_covar": 0.0}),
    ("GMMPrototypes", {"momentum": 0.0}), ("GMMPrototypes", {"momentum": 1.5}), ("GMMPrototypes", {"covariance_type": "tied"}),
    ("GMMPrototypes", {"init": "random"}), ("GMMPrototypes", {"grad": "none"}), ("GMMPrototypes", {"backend": "gpu"}),
    ("GMMPrototypes", {"regularization": "both"}),
    ("PrototypeOTLoss", {"epsilon": 0.0}), ("PrototypeOTLoss", {"epsilon": -1.0}), ("PrototypeOTLoss", {"max_iter": 0}),
    ("PrototypeOTLoss", {"tol": -1.0}), ("PrototypeOTLoss", {"ot_weight": -1.0}), ("PrototypeOTLoss", {"proto_weight": -1.0}),
    ("PrototypeOTLoss", {"bures_eps": -1.0}), ("PrototypeOTLoss", {"kernel_floor": -1.0}), ("PrototypeOTLoss", {"scaling_guard": -1.0}),
    ("PrototypeOTLoss", {"matching": "greedy"}), ("PrototypeOTLoss", {"objective": "dual"}), ("PrototypeOTLoss", {"marginals": "uniform"}),
    ("PrototypeOTLoss", {"cost_reduction": "max"}), ("PrototypeOTLoss", {"max_elements": 0}), ("PrototypeOTLoss", {"grad": "none"}),
    ("MomentMatchingLoss", {"mean_weight": -1.0}), ("MomentMatchingLoss", {"covariance_weight": -1.0}),
    ("MomentMatchingLoss", {"skewness_weight": -1.0}), ("MomentMatchingLoss", {"reduction": "max"}),
    ("MomentMatchingLoss", {"skewness_variance_floor": 0.0}),
    ("MMDLoss", {"sigma": -1.0}), ("MMDLoss", {"sigma": 0.0}), ("MMDLoss", {"sigma": []}), ("MMDLoss", {"sigma": [1.0, -2.0]}),
    ("MMDLoss", {"sigma": "mean"}), ("MMDLoss", {"estimator": "exact"}), ("MMDLoss", {"backend": "gpu"}),
    ("DecAlignLoss", {"n_modalities": 1}), ("DecAlignLoss", {"n_modalities": 3, "alpha": -1.0}),
    ("DecAlignLoss", {"n_modalities": 3, "beta": -0.5}), ("DecAlignLoss", {"n_modalities": 3, "sample_granularity": "frame"}),
]


@pytest.mark.parametrize(("name", "options"), BAD, ids=[f"{n}-{'-'.join(o)}" for n, o in BAD])
def test_a_module_refuses_at_construction_what_its_config_refuses(name: str, options: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        getattr(configs, f"{name}Config")(**options)
    argument = next(k for k in options if k != "n_modalities" or len(options) == 1)
    with pytest.raises(ValueError, match=argument):
        module = getattr(alignkit, name)
        module(options.pop("n_modalities"), **options) if "n_modalities" in options else module(**options)
