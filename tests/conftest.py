"""Shared test set-up: deterministic torch, a hypothesis profile sized for CI, KeOps' build folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
# Ten times the examples, still reproducible: pytest --hypothesis-profile=deep.
settings.register_profile(
    "deep", max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# KeOps compiles each formula once (~10 s); pin its cache inside the checkout so runs reuse it.
KEOPS_BUILD = Path(__file__).resolve().parent.parent / ".keops_build"
try:
    from alignkit.kernels.backends.keops import set_build_folder

    set_build_folder(KEOPS_BUILD)
except ImportError:  # no pykeops
    pass


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
