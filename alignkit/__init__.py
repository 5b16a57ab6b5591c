"""alignkit: multimodal alignment losses (DecAlign) as oracle-checked PyTorch functions and modules.

Functional API: :mod:`alignkit.functional`. Modules and their pydantic configs are importable
from here.
"""

__version__ = "0.1.0"

from alignkit._checks import input_checks
from alignkit.config import (
    DecAlignLossConfig,
    DecouplingLossConfig,
    GMMPrototypesConfig,
    HeterogeneityLossConfig,
    HomogeneityLossConfig,
    MMDLossConfig,
    MomentMatchingLossConfig,
    PrototypeOTLossConfig,
)
from alignkit.losses import (
    DecAlignLoss,
    DecouplingLoss,
    GMMPrototypes,
    HeterogeneityLoss,
    HomogeneityLoss,
    LossOutput,
    MMDLoss,
    MomentMatchingLoss,
    PrototypeOTLoss,
)
from alignkit.ot.result import OTResult
from alignkit.prototypes.gmm import GaussianMixture

__all__ = [
    "DecAlignLoss",
    "DecAlignLossConfig",
    "DecouplingLoss",
    "DecouplingLossConfig",
    "GMMPrototypes",
    "GMMPrototypesConfig",
    "GaussianMixture",
    "HeterogeneityLoss",
    "HeterogeneityLossConfig",
    "HomogeneityLoss",
    "HomogeneityLossConfig",
    "LossOutput",
    "MMDLoss",
    "MMDLossConfig",
    "MomentMatchingLoss",
    "MomentMatchingLossConfig",
    "OTResult",
    "PrototypeOTLoss",
    "PrototypeOTLossConfig",
    "__version__",
    "input_checks",
]
