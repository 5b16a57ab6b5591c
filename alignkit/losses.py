"""Thin ``nn.Module`` wrappers around :mod:`alignkit.functional`, composed into ``DecAlignLoss``.

Each module holds options (and, for :class:`GMMPrototypes`, running state) and calls the pure
functions; the composite losses return a :class:`LossOutput` with every component for logging::

    DecAlignLoss = task + DecouplingLoss + alpha * HeterogeneityLoss + beta * HomogeneityLoss   (eq. 13)
    HeterogeneityLoss = GMMPrototypes per modality -> PrototypeOTLoss (L_OT + L_proto)          (eq. 9)
    HomogeneityLoss = MomentMatchingLoss (L_sem) + MMDLoss (L_MMD)                              (eqs. 10-11)

Every module takes ``sync_dist``: under ``torch.distributed`` with more than one process
(``None``, the default) or always (``True``) it first gathers its sample sets from every process,
so the loss is that of the global batch, gradients included (:mod:`alignkit.distributed`);
``False`` keeps per-process statistics.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from alignkit._checks import check_choice, check_count, check_non_negative, check_positive, check_sequence
from alignkit.decoupling import Granularity, Mode, Reduction, decoupling_loss, masked_mean
from alignkit.distributed import gather_samples, gathered_scope, sync_active
from alignkit.kernels.dispatch import BACKENDS, Backend
from alignkit.kernels.mmd import Bandwidth, Estimator, multimodal_mmd
from alignkit.moments import moment_matching_loss
from alignkit.ot.bures import bures_wasserstein_cost
from alignkit.ot.sinkhorn import MAX_COST_ELEMENTS, GradMode, joint_cost_tensor, multi_marginal_sinkhorn
from alignkit.prototypes.calibration import Matching, prototype_calibration_loss
from alignkit.prototypes.gmm import CovarianceType, GaussianMixture, GMMGrad, InitMethod, Regularization, fit_gmm

SampleGranularity = Literal["pooled", "token"]
OTObjective = Literal["transport", "regularized"]
OTMarginals = Literal["weights", "responsibilities"]


@dataclass
class LossOutput:
    """A composite loss: ``total`` to back-propagate, ``components`` (0-dim tensors) to log,
    ``diagnostics`` (Python numbers, e.g. OT convergence) to inspect."""

    total: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)
    diagnostics: dict[str, float] = field(default_factory=dict)


def _gather_all(xs: Sequence[Tensor | None] | Tensor, name: str) -> list[Tensor | None]:
    """Each tensor of a per-modality sequence gathered over the processes (``None`` stays)."""
    xs = [xs] if isinstance(xs, Tensor) else list(xs)
    return [None if x is None else gather_samples(x, f"{name}[{i}]") for i, x in enumerate(xs)]


class DecouplingLoss(nn.Module):
    """Module form of :func:`alignkit.functional.decoupling_loss` (eq. 1)."""

    def __init__(
        self, *, mode: Mode = "squared", granularity: Granularity = "sequence", reduction: Reduction = "sum", sync_dist: bool | None = None
    ) -> None:
        super().__init__()
        self.sync_dist = sync_dist
        self.mode = check_choice(mode, "mode", ["squared", "abs", "signed"])
        self.granularity = check_choice(granularity, "granularity", ["sequence", "token", "pooled"])
        self.reduction = check_choice(reduction, "reduction", ["sum", "mean"])

    def forward(
        self,
        unique: Tensor | Sequence[Tensor],
        common: Tensor | Sequence[Tensor],
        masks: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        if sync_active(self.sync_dist):
            with gathered_scope():
                gathered_masks = None if masks is None else _gather_all(masks, "masks")
                return self(_gather_all(unique, "unique"), _gather_all(common, "common"), gathered_masks)
        return decoupling_loss(
            unique, common, mode=self.mode, granularity=self.granularity, masks=masks, reduction=self.reduction
        )


class GMMPrototypes(nn.Module):
    """Gaussian-mixture prototypes of one modality (eqs. 2-4), fitted on every batch.

    With ``momentum`` set, the module keeps running prototypes (an exponential moving average of
    the fitted weights, means and covariances, updated in training mode). Each fit then starts
    from them instead of from k-means++: component ``k`` keeps its meaning from batch to batch,
    and a few EM steps suffice even on small batches. The returned mixture is always the one
    fitted to the current batch, so gradients reach the features. The other options are those of
    :func:`alignkit.functional.fit_gmm` (``backend`` chooses how the E-step is computed).
    """

    def __init__(
        self,
        n_components: int = 8,
        *,
        covariance_type: CovarianceType = "diag",
        n_iter: int = 10,
        init: InitMethod = "kmeans++",
        reg_covar: float = 1e-6,
        seed: int | None = 0,
        grad: GMMGrad = "unrolled",
        momentum: float | None = None,
        backend: Backend = "auto",
        regularization: Regularization = "add",
        sync_dist: bool | None = None,
    ) -> None:
        super().__init__()
        self.sync_dist = sync_dist
        if momentum is not None and not (isinstance(momentum, (int, float)) and 0.0 < momentum <= 1.0):
            raise ValueError(f"momentum: expected a value in (0, 1] or None, received {momentum!r}")
        self.n_components = check_count(n_components, "n_components")
        self.covariance_type = check_choice(covariance_type, "covariance_type", ["diag", "full"])
        self.n_iter = check_count(n_iter, "n_iter")
        self.init = check_choice(init, "init", ["kmeans++", "spaced"])
        self.reg_covar = check_positive(reg_covar, "reg_covar")
        self.seed = seed
        self.grad = check_choice(grad, "grad", ["unrolled", "last_step"])
        self.momentum = momentum
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.regularization = check_choice(regularization, "regularization", ["add", "clamp"])
        self.running_weights: Tensor | None
        self.running_means: Tensor | None
        self.running_covariances: Tensor | None
        for name in ("running_weights", "running_means", "running_covariances"):
            self.register_buffer(name, None)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Running prototypes are created lazily (their width is known at the first batch);
        # materialise them before loading a checkpoint that has them.
        for name in ("running_weights", "running_means", "running_covariances"):
            if prefix + name in state_dict and getattr(self, name) is None:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> GaussianMixture:
        """Fit to ``x: (N, d)``; returns the batch mixture (weights ``(K,)``, means ``(K, d)``, ...)."""
        if sync_active(self.sync_dist):
            with gathered_scope():
                return self(gather_samples(x, "x"))
        warm = self.momentum is not None and self.running_means is not None
        mixture = fit_gmm(
            x,
            self.n_components,
            covariance_type=self.covariance_type,
            n_iter=self.n_iter,
            init=self.init,
            means_init=self.running_means if warm else None,
            weights_init=self.running_weights if warm else None,
            covariances_init=self.running_covariances if warm else None,
            reg_covar=self.reg_covar,
            seed=self.seed,
            grad=self.grad,
            backend=self.backend,
            regularization=self.regularization,
        )
        if self.momentum is not None and self.training:
            self._update_running(mixture)
        return mixture

    @torch.no_grad()
    def _update_running(self, mixture: GaussianMixture) -> None:
        fitted = {
            "running_weights": mixture.weights,
            "running_means": mixture.means,
            "running_covariances": mixture.covariances,
        }
        for name, value in fitted.items():
            current = getattr(self, name)
            value = value.detach()
            if current is None or current.shape != value.shape:
                setattr(self, name, value.clone())
            else:
                current.lerp_(value.to(current.dtype), self.momentum)


class PrototypeOTLoss(nn.Module):
    """Prototype-guided multi-marginal OT plus calibration, ``L_OT + L_proto`` (eq. 9).

    The joint cost sums pairwise Bures costs ``W2^2`` between the modalities' components (eqs.
    5-6); the marginals are the mixture weights (eq. 8). With ``relative_epsilon`` (default) the
    entropic ``epsilon`` is multiplied by the mean joint cost (without gradient), so one setting
    works whatever the scale of the features. ``backend`` is that of the calibration distances
    (:func:`alignkit.functional.prototype_calibration_loss`).

    Options that give the authors' DecAlign code: ``objective="regularized"`` (``L_OT`` is the
    entropic objective ``<P, C> + epsilon sum P (log P - 1)`` rather than ``<P, C>``),
    ``marginals="responsibilities"`` (``nu_i`` is the mean responsibility of each component over
    the batch, renormalised, rather than the mixture weight), ``cost_reduction="mean"`` (Bures and
    calibration distances divided by ``d``), ``bures_eps=1e-8``, absolute ``epsilon=0.1``,
    ``max_iter=50, tol=0`` (a fixed number of sweeps), ``kernel_floor=1e-30, scaling_guard=1e-8``,
    ``grad="unrolled"`` and ``matching="index"``.
    """

    def __init__(
        self,
        *,
        epsilon: float = 0.1,
        relative_epsilon: bool = True,
        max_iter: int = 200,
        tol: float = 1e-4,
        grad: GradMode = "envelope",
        matching: Matching = "plan",
        ot_weight: float = 1.0,
        proto_weight: float = 1.0,
        max_elements: int = MAX_COST_ELEMENTS,
        backend: Backend = "auto",
        objective: OTObjective = "transport",
        marginals: OTMarginals = "weights",
        cost_reduction: Reduction = "sum",
        bures_eps: float = 0.0,
        kernel_floor: float = 0.0,
        scaling_guard: float = 0.0,
        sync_dist: bool | None = None,
    ) -> None:
        super().__init__()
        self.sync_dist = sync_dist
        self.epsilon = check_positive(epsilon, "epsilon")
        self.relative_epsilon = relative_epsilon
        self.max_iter = check_count(max_iter, "max_iter")
        self.tol = check_non_negative(tol, "tol")
        self.grad = check_choice(grad, "grad", ["envelope", "unrolled"])
        self.matching = check_choice(matching, "matching", ["plan", "index"])
        self.ot_weight = check_non_negative(ot_weight, "ot_weight")
        self.proto_weight = check_non_negative(proto_weight, "proto_weight")
        self.max_elements = check_count(max_elements, "max_elements")
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.objective = check_choice(objective, "objective", ["transport", "regularized"])
        self.marginals = check_choice(marginals, "marginals", ["weights", "responsibilities"])
        self.cost_reduction = check_choice(cost_reduction, "cost_reduction", ["sum", "mean"])
        self.bures_eps = check_non_negative(bures_eps, "bures_eps")
        self.kernel_floor = check_non_negative(kernel_floor, "kernel_floor")
        self.scaling_guard = check_non_negative(scaling_guard, "scaling_guard")

    def forward(self, features: Sequence[Tensor], mixtures: Sequence[GaussianMixture]) -> LossOutput:
        """``features``: ``M`` tensors ``(N_i, d)``; ``mixtures``: their fitted mixtures.

        Under ``sync_dist`` the features are gathered, so the mixtures must be those of the
        gathered features (e.g. from :class:`GMMPrototypes` with ``sync_dist`` too)."""
        features = check_sequence(features, "features", min_len=2)
        if len(mixtures) != len(features):
            raise ValueError(f"mixtures: expected {len(features)} (one per modality), received {len(mixtures)}")
        if sync_active(self.sync_dist):
            with gathered_scope():
                return self(_gather_all(features, "features"), mixtures)
        for i, (x, mixture) in enumerate(zip(features, mixtures)):
            if mixture.responsibilities.shape[-2] != x.shape[0]:
                raise ValueError(
                    f"mixtures[{i}]: its responsibilities cover {mixture.responsibilities.shape[-2]} samples, features[{i}] has {x.shape[0]}"
                )
        pairwise = pairwise_bures_costs(mixtures, reduction=self.cost_reduction, eps=self.bures_eps)
        cost = joint_cost_tensor(pairwise, max_elements=self.max_elements)
        epsilon = self.epsilon * float(cost.detach().mean().clamp_min(1e-12)) if self.relative_epsilon else self.epsilon
        result = multi_marginal_sinkhorn(
            cost,
            [transport_marginal(mixture, self.marginals) for mixture in mixtures],
            epsilon,
            max_iter=self.max_iter,
            tol=self.tol,
            grad=self.grad,
            max_elements=self.max_elements,
            kernel_floor=self.kernel_floor,
            scaling_guard=self.scaling_guard,
        )
        ot = result.regularized_value if self.objective == "regularized" else result.value
        components = {"ot": ot}
        total = self.ot_weight * ot
        if self.proto_weight > 0:
            # Mixtures fitted on half-precision features are float32: meet them in their dtype.
            proto = prototype_calibration_loss(
                [f.to(mixtures[0].means.dtype) for f in features],
                [mixture.responsibilities for mixture in mixtures],
                [mixture.means for mixture in mixtures],
                plan=result.plan.detach() if self.matching == "plan" else None,
                matching=self.matching,
                backend=self.backend,
                reduction=self.cost_reduction,
            )
            components["proto"] = proto
            total = total + self.proto_weight * proto
        diagnostics = {
            "ot_n_iter": float(result.n_iter),
            "ot_converged": float(result.converged),
            "ot_marginal_error": result.marginal_error,
        }
        return LossOutput(total, components, diagnostics)


def transport_marginal(mixture: GaussianMixture, kind: OTMarginals) -> Tensor:
    """The OT marginal of one mixture: its weights, or its mean responsibility per component
    renormalised to sum to 1 (the authors' DecAlign code; ``1e-8`` guards an all-zero sum)."""
    if kind == "weights":
        return mixture.weights
    mean_responsibility = mixture.responsibilities.mean(-2)
    return mean_responsibility / mean_responsibility.sum(-1, keepdim=True).clamp_min(1e-8)


def pairwise_bures_costs(
    mixtures: Sequence[GaussianMixture], *, reduction: Reduction = "sum", eps: float = 0.0
) -> dict[tuple[int, int], Tensor]:
    """``{(i, j): W2^2 between the components of mixtures i and j}`` for every pair ``i < j``.

    One call on all components stacked (``sum K_i`` of them) replaces ``M (M - 1) / 2`` small
    calls; the within-modality blocks it also computes are cheap next to the call overhead saved.
    ``reduction`` and ``eps`` are those of :func:`alignkit.functional.bures_wasserstein_cost`.
    """
    full = any(m.covariances.ndim == 3 for m in mixtures)
    covariances = [m.covariances.diag_embed() if full and m.covariances.ndim == 2 else m.covariances for m in mixtures]
    means = torch.cat([m.means for m in mixtures])
    stacked = torch.cat(covariances)
    cost = bures_wasserstein_cost(means, stacked, means, stacked, reduction=reduction, eps=eps)
    bounds = [0, *itertools.accumulate(m.means.shape[0] for m in mixtures)]
    return {
        (i, j): cost[bounds[i] : bounds[i + 1], bounds[j] : bounds[j + 1]]
        for i, j in itertools.combinations(range(len(mixtures)), 2)
    }


class HeterogeneityLoss(nn.Module):
    """``L_hete``: one :class:`GMMPrototypes` per modality, then :class:`PrototypeOTLoss` (eqs. 2-9).

    Args:
        n_modalities: ``M >= 2``; each modality gets its own copy of ``prototypes`` (own state).
        prototypes: template prototype module (default ``GMMPrototypes()``).
        transport: OT + calibration module (default ``PrototypeOTLoss()``).
        sync_dist: gather the features over the processes first (``None``: when more than one runs).
    """

    def __init__(
        self,
        n_modalities: int,
        *,
        prototypes: GMMPrototypes | None = None,
        transport: PrototypeOTLoss | None = None,
        sync_dist: bool | None = None,
    ) -> None:
        super().__init__()
        self.sync_dist = sync_dist
        if n_modalities < 2:
            raise ValueError(f"n_modalities: expected at least 2, received {n_modalities}")
        template = prototypes if prototypes is not None else GMMPrototypes()
        self.prototypes = nn.ModuleList(copy.deepcopy(template) for _ in range(n_modalities))
        self.transport = transport if transport is not None else PrototypeOTLoss()

    def forward(self, features: Sequence[Tensor]) -> LossOutput:
        """``features``: ``M`` tensors ``(N_i, d)`` of modality-unique features."""
        features = check_sequence(features, "features", min_len=2)
        if len(features) != len(self.prototypes):
            raise ValueError(f"features: expected {len(self.prototypes)} tensors (n_modalities), received {len(features)}")
        if sync_active(self.sync_dist):
            with gathered_scope():
                return self(_gather_all(features, "features"))
        mixtures = self._fit_together(features) or [module(f) for module, f in zip(self.prototypes, features)]
        return self.transport(features, mixtures)

    def _fit_together(self, features: Sequence[Tensor]) -> list[GaussianMixture] | None:
        """All modalities' mixtures from one batched :func:`fit_gmm` call (``M`` times fewer, larger
        operations), when that gives each modality's own fit: same options, no running state,
        a deterministic start, and sample sets of one shape. Otherwise None."""
        first = self.prototypes[0]
        options = [(p.n_components, p.covariance_type, p.n_iter, p.init, p.reg_covar, p.grad, p.backend, p.regularization, p.momentum) for p in self.prototypes]
        if first.momentum is not None or first.init != "spaced" or len(set(options)) > 1:
            return None
        if len({(f.shape, f.dtype, f.device) for f in features}) > 1 or features[0].ndim != 2:
            return None
        batch = fit_gmm(
            torch.stack(list(features)),
            first.n_components,
            covariance_type=first.covariance_type,
            n_iter=first.n_iter,
            init="spaced",
            reg_covar=first.reg_covar,
            grad=first.grad,
            backend=first.backend,
            regularization=first.regularization,
        )
        return [
            GaussianMixture(batch.weights[g], batch.means[g], batch.covariances[g], batch.responsibilities[g], batch.log_likelihood[g], batch.covariance_type)
            for g in range(len(features))
        ]


class MomentMatchingLoss(nn.Module):
    """Module form of :func:`alignkit.functional.moment_matching_loss` (``L_sem``, eq. 10)."""

    def __init__(
        self,
        *,
        mean_weight: float = 1.0,
        covariance_weight: float = 1.0,
        skewness_weight: float = 1.0,
        reduction: Reduction = "sum",
        skewness_variance_floor: float | None = None,
        sync_dist: bool | None = None,
    ) -> None:
        super().__init__()
        self.sync_dist = sync_dist
        self.mean_weight = check_non_negative(mean_weight, "mean_weight")
        self.covariance_weight = check_non_negative(covariance_weight, "covariance_weight")
        self.skewness_weight = check_non_negative(skewness_weight, "skewness_weight")
        self.reduction = check_choice(reduction, "reduction", ["sum", "mean"])
        self.skewness_variance_floor = None if skewness_variance_floor is None else check_positive(skewness_variance_floor, "skewness_variance_floor")

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if sync_active(self.sync_dist):
            with gathered_scope():
                return self(_gather_all(check_sequence(features, "features"), "features"))
        return moment_matching_loss(
            features,
            mean_weight=self.mean_weight,
            covariance_weight=self.covariance_weight,
            skewness_weight=self.skewness_weight,
            reduction=self.reduction,
            skewness_variance_floor=self.skewness_variance_floor,
        )


class MMDLoss(nn.Module):
    """Module form of :func:`alignkit.functional.multimodal_mmd` (``L_MMD``, eqs. 11-12)."""

    def __init__(
        self, *, sigma: Bandwidth = 1.0, estimator: Estimator = "biased", backend: Backend = "auto", sync_dist: bool | None = None
    ) -> None:
        super().__init__()
        self.sync_dist = sync_dist
        if isinstance(sigma, str):
            check_choice(sigma, "sigma", ["median"])
        elif isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
            check_positive(sigma, "sigma")
        else:
            if not sigma:
                raise ValueError(f"sigma: expected a positive number, a non-empty sequence or 'median', received {sigma!r}")
            for value in sigma:
                check_positive(value, "sigma")
        self.sigma = sigma
        self.estimator = check_choice(estimator, "estimator", ["biased", "unbiased"])
        self.backend = check_choice(backend, "backend", BACKENDS)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """``features``: ``M >= 2`` tensors ``(N_i, d)``."""
        if sync_active(self.sync_dist):
            with gathered_scope():
                return self(_gather_all(check_sequence(features, "features"), "features"))
        return multimodal_mmd(features, self.sigma, estimator=self.estimator, backend=self.backend)


class HomogeneityLoss(nn.Module):
    """``L_homo = L_sem + L_MMD`` on modality-common features (eqs. 10-12); either part can be off."""

    def __init__(
        self,
        *,
        moments: MomentMatchingLoss | None = None,
        mmd: MMDLoss | None = None,
        use_sem: bool = True,
        use_mmd: bool = True,
        sync_dist: bool | None = None,
    ) -> None:
        super().__init__()
        self.sync_dist = sync_dist
        self.moments = moments if moments is not None else MomentMatchingLoss()
        self.mmd = mmd if mmd is not None else MMDLoss()
        self.use_sem = use_sem
        self.use_mmd = use_mmd

    def forward(self, features: Sequence[Tensor]) -> LossOutput:
        if sync_active(self.sync_dist):
            with gathered_scope():
                return self(_gather_all(check_sequence(features, "features"), "features"))
        components: dict[str, Tensor] = {}
        if self.use_sem:
            components["sem"] = self.moments(features)
        if self.use_mmd:
            components["mmd"] = self.mmd(features)
        total = sum(components.values()) if components else features[0].new_zeros((), dtype=torch.float32)
        return LossOutput(total, components)  # type: ignore[arg-type]


def sample_sets(
    features: Sequence[Tensor], masks: Sequence[Tensor | None] | None, granularity: SampleGranularity
) -> list[Tensor]:
    """Turn per-modality sequences ``(B, T, d)`` into sample sets ``(N, d)``.

    ``"pooled"``: one sample per sequence (mean over real steps), ``N = B``.
    ``"token"``: every real (unpadded) step is a sample, ``N = sum of lengths``.
    2-D inputs ``(B, d)`` are already sample sets.
    """
    masks = [None] * len(features) if masks is None else list(masks)
    samples = []
    for x, mask in zip(features, masks):
        if x.ndim == 2:
            samples.append(x)
        elif granularity == "pooled":
            samples.append(masked_mean(x, mask))
        else:
            samples.append(x.reshape(-1, x.shape[-1]) if mask is None else x[mask])
    return samples


class DecAlignLoss(nn.Module):
    """The DecAlign objective without the task term's model: ``L_task + L_dec + alpha L_hete + beta L_homo`` (eq. 13).

    Args:
        n_modalities: ``M >= 2``.
        alpha, beta: weights of ``L_hete`` and ``L_homo`` (paper: 0.05 each).
        decoupling, heterogeneity, homogeneity: the three parts (defaults: default modules).
        use_decoupling, use_hete, use_homo: switches for the paper's ablations (table 3);
            the finer switches (OT, calibration, Sem, MMD) live in the parts.
        sample_granularity: how sequences become sample sets for the prototype and moment
            losses: ``"pooled"`` (one per sequence) or ``"token"`` (every real step).
        sync_dist: gather the inputs over the processes first (``None``: when more than one
            runs), so that every part is the loss of the global batch.
    """

    def __init__(
        self,
        n_modalities: int,
        *,
        alpha: float = 0.05,
        beta: float = 0.05,
        decoupling: DecouplingLoss | None = None,
        heterogeneity: HeterogeneityLoss | None = None,
        homogeneity: HomogeneityLoss | None = None,
        use_decoupling: bool = True,
        use_hete: bool = True,
        use_homo: bool = True,
        sample_granularity: SampleGranularity = "pooled",
        sync_dist: bool | None = None,
    ) -> None:
        super().__init__()
        self.sync_dist = sync_dist
        self.n_modalities = check_count(n_modalities, "n_modalities", minimum=2)
        self.alpha = check_non_negative(alpha, "alpha")
        self.beta = check_non_negative(beta, "beta")
        self.decoupling = decoupling if decoupling is not None else DecouplingLoss()
        self.heterogeneity = heterogeneity if heterogeneity is not None else HeterogeneityLoss(n_modalities)
        self.homogeneity = homogeneity if homogeneity is not None else HomogeneityLoss()
        self.use_decoupling = use_decoupling
        self.use_hete = use_hete
        self.use_homo = use_homo
        self.sample_granularity = check_choice(sample_granularity, "sample_granularity", ["pooled", "token"])

    def forward(
        self,
        unique: Sequence[Tensor],
        common: Sequence[Tensor],
        *,
        masks: Sequence[Tensor | None] | None = None,
        task_loss: Tensor | None = None,
        skip: Collection[str] = (),
        homogeneity_features: Sequence[Tensor] | None = None,
    ) -> LossOutput:
        """``unique``, ``common``: ``M`` tensors ``(B, T_m, d)`` or ``(B, d)``; ``masks``: ``(B, T_m)`` bool.

        ``skip`` names parts (``"dec"``, ``"hete"``, ``"homo"``) to leave out of this call only,
        e.g. ``{"hete"}`` for a batch with fewer samples than prototypes.
        ``homogeneity_features``: ``M`` sample sets ``(N_m, d')`` for ``L_homo`` in place of the
        common features' (e.g. the pooled common features after a per-modality encoder, as the
        authors' DecAlign code has).
        """
        unique = check_sequence(unique, "unique", min_len=2)
        common = check_sequence(common, "common", min_len=2)
        if sync_active(self.sync_dist):
            # The task loss stays this process's own: DDP's gradient averaging makes it global.
            with gathered_scope():
                return self(
                    _gather_all(unique, "unique"),
                    _gather_all(common, "common"),
                    masks=None if masks is None else _gather_all(masks, "masks"),
                    task_loss=task_loss,
                    skip=skip,
                    homogeneity_features=None if homogeneity_features is None else _gather_all(homogeneity_features, "homogeneity_features"),
                )
        components: dict[str, Tensor] = {}
        diagnostics: dict[str, float] = {}
        total = unique[0].new_zeros((), dtype=torch.float64 if unique[0].dtype == torch.float64 else torch.float32)
        if task_loss is not None:
            components["task"] = task_loss
            total = total + task_loss
        if self.use_decoupling and "dec" not in skip:
            components["dec"] = self.decoupling(unique, common, masks)
            total = total + components["dec"]
        if self.use_hete and "hete" not in skip:
            hete = self.heterogeneity(sample_sets(unique, masks, self.sample_granularity))
            components["hete"] = hete.total
            components.update(hete.components)
            diagnostics.update(hete.diagnostics)
            total = total + self.alpha * hete.total
        if self.use_homo and "homo" not in skip:
            homo_inputs = homogeneity_features if homogeneity_features is not None else sample_sets(common, masks, self.sample_granularity)
            homo = self.homogeneity(homo_inputs)
            components["homo"] = homo.total
            components.update(homo.components)
            total = total + self.beta * homo.total
        return LossOutput(total, components, diagnostics)
