"""Pydantic configs for the loss modules: validated options for files and the command line.

Each ``<Name>Config`` has exactly the keyword options of ``<Name>`` (a test keeps them in step)
and ``build()`` returns the module. Composite configs nest the configs of their parts::

    DecAlignLossConfig(n_modalities=3, heterogeneity={"prototypes": {"n_components": 7}}).build()
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from alignkit.losses import (
    DecAlignLoss,
    DecouplingLoss,
    GMMPrototypes,
    HeterogeneityLoss,
    HomogeneityLoss,
    MMDLoss,
    MomentMatchingLoss,
    PrototypeOTLoss,
)
from alignkit.ot.sinkhorn import MAX_COST_ELEMENTS


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DecouplingLossConfig(_Config):
    mode: Literal["squared", "abs", "signed"] = "squared"
    granularity: Literal["sequence", "token", "pooled"] = "sequence"
    reduction: Literal["sum", "mean"] = "sum"
    sync_dist: bool | None = None

    def build(self) -> DecouplingLoss:
        return DecouplingLoss(**self.model_dump())


class GMMPrototypesConfig(_Config):
    n_components: PositiveInt = 8
    covariance_type: Literal["diag", "full"] = "diag"
    n_iter: PositiveInt = 10
    init: Literal["kmeans++", "spaced"] = "kmeans++"
    reg_covar: PositiveFloat = 1e-6
    seed: int | None = 0
    grad: Literal["unrolled", "last_step"] = "unrolled"
    momentum: float | None = Field(default=None, gt=0.0, le=1.0)
    backend: Literal["auto", "dense", "blocked", "keops"] = "auto"
    regularization: Literal["add", "clamp"] = "add"
    sync_dist: bool | None = None

    def build(self) -> GMMPrototypes:
        return GMMPrototypes(**self.model_dump())


class PrototypeOTLossConfig(_Config):
    epsilon: PositiveFloat = 0.1
    relative_epsilon: bool = True
    max_iter: PositiveInt = 200
    tol: float = Field(default=1e-4, ge=0.0)
    grad: Literal["envelope", "unrolled"] = "envelope"
    matching: Literal["plan", "index"] = "plan"
    ot_weight: float = Field(default=1.0, ge=0.0)
    proto_weight: float = Field(default=1.0, ge=0.0)
    max_elements: PositiveInt = MAX_COST_ELEMENTS
    backend: Literal["auto", "dense", "blocked", "keops"] = "auto"
    objective: Literal["transport", "regularized"] = "transport"
    marginals: Literal["weights", "responsibilities"] = "weights"
    cost_reduction: Literal["sum", "mean"] = "sum"
    bures_eps: float = Field(default=0.0, ge=0.0)
    kernel_floor: float = Field(default=0.0, ge=0.0)
    scaling_guard: float = Field(default=0.0, ge=0.0)
    sync_dist: bool | None = None

    def build(self) -> PrototypeOTLoss:
        return PrototypeOTLoss(**self.model_dump())


class HeterogeneityLossConfig(_Config):
    n_modalities: int | None = Field(default=None, ge=2)
    prototypes: GMMPrototypesConfig = GMMPrototypesConfig()
    transport: PrototypeOTLossConfig = PrototypeOTLossConfig()
    sync_dist: bool | None = None

    def build(self, n_modalities: int | None = None) -> HeterogeneityLoss:
        """``n_modalities`` comes from this config or, inside a parent config, from the parent."""
        count = self.n_modalities if self.n_modalities is not None else n_modalities
        if count is None or (n_modalities is not None and count != n_modalities):
            raise ValueError(f"n_modalities: expected one value >= 2, received {self.n_modalities} and {n_modalities}")
        return HeterogeneityLoss(count, prototypes=self.prototypes.build(), transport=self.transport.build(), sync_dist=self.sync_dist)


class MomentMatchingLossConfig(_Config):
    mean_weight: float = Field(default=1.0, ge=0.0)
    covariance_weight: float = Field(default=1.0, ge=0.0)
    skewness_weight: float = Field(default=1.0, ge=0.0)
    reduction: Literal["sum", "mean"] = "sum"
    skewness_variance_floor: PositiveFloat | None = None
    sync_dist: bool | None = None

    def build(self) -> MomentMatchingLoss:
        return MomentMatchingLoss(**self.model_dump())


class MMDLossConfig(_Config):
    sigma: Union[PositiveFloat, Annotated[list[PositiveFloat], Field(min_length=1)], Literal["median"]] = 1.0
    estimator: Literal["biased", "unbiased"] = "biased"
    backend: Literal["auto", "dense", "blocked", "keops"] = "auto"
    sync_dist: bool | None = None

    def build(self) -> MMDLoss:
        return MMDLoss(**self.model_dump())


class HomogeneityLossConfig(_Config):
    moments: MomentMatchingLossConfig = MomentMatchingLossConfig()
    mmd: MMDLossConfig = MMDLossConfig()
    use_sem: bool = True
    use_mmd: bool = True
    sync_dist: bool | None = None

    def build(self) -> HomogeneityLoss:
        return HomogeneityLoss(moments=self.moments.build(), mmd=self.mmd.build(), use_sem=self.use_sem, use_mmd=self.use_mmd, sync_dist=self.sync_dist)


class DecAlignLossConfig(_Config):
    n_modalities: int = Field(ge=2)
    alpha: float = Field(default=0.05, ge=0.0)
    beta: float = Field(default=0.05, ge=0.0)
    decoupling: DecouplingLossConfig = DecouplingLossConfig()
    heterogeneity: HeterogeneityLossConfig = HeterogeneityLossConfig()
    homogeneity: HomogeneityLossConfig = HomogeneityLossConfig()
    use_decoupling: bool = True
    use_hete: bool = True
    use_homo: bool = True
    sample_granularity: Literal["pooled", "token"] = "pooled"
    sync_dist: bool | None = None

    def build(self) -> DecAlignLoss:
        return DecAlignLoss(
            self.n_modalities,
            alpha=self.alpha,
            beta=self.beta,
            decoupling=self.decoupling.build(),
            heterogeneity=self.heterogeneity.build(self.n_modalities),
            homogeneity=self.homogeneity.build(),
            use_decoupling=self.use_decoupling,
            use_hete=self.use_hete,
            use_homo=self.use_homo,
            sample_granularity=self.sample_granularity,
            sync_dist=self.sync_dist,
        )
