"""The nn.Module wrappers, their pydantic configs, and the composed DecAlign objective."""

from __future__ import annotations

import inspect

import pytest
import torch
from pydantic import ValidationError

import alignkit
from alignkit import functional as F

CONFIG_PAIRS = [
    (alignkit.DecouplingLoss, alignkit.DecouplingLossConfig),
    (alignkit.GMMPrototypes, alignkit.GMMPrototypesConfig),
    (alignkit.PrototypeOTLoss, alignkit.PrototypeOTLossConfig),
    (alignkit.HeterogeneityLoss, alignkit.HeterogeneityLossConfig),
    (alignkit.MomentMatchingLoss, alignkit.MomentMatchingLossConfig),
    (alignkit.MMDLoss, alignkit.MMDLossConfig),
    (alignkit.HomogeneityLoss, alignkit.HomogeneityLossConfig),
    (alignkit.DecAlignLoss, alignkit.DecAlignLossConfig),
]


@pytest.mark.parametrize(("module", "config"), CONFIG_PAIRS, ids=lambda c: c.__name__)
def test_config_fields_are_the_module_options(module, config) -> None:
    parameters = set(inspect.signature(module.__init__).parameters) - {"self"}
    assert set(config.model_fields) == parameters


@pytest.mark.parametrize(("module", "config"), CONFIG_PAIRS, ids=lambda c: c.__name__)
def test_config_defaults_are_the_module_defaults(module, config) -> None:
    for name, parameter in inspect.signature(module.__init__).parameters.items():
        if name == "self" or parameter.default is inspect.Parameter.empty or parameter.default is None:
            continue
        assert config.model_fields[name].default == parameter.default, name


def test_config_rejects_unknown_and_invalid_fields_by_name() -> None:
    with pytest.raises(ValidationError, match="epsilon"):
        alignkit.PrototypeOTLossConfig(epsilon=-1.0)
    with pytest.raises(ValidationError, match="n_componets"):
        alignkit.GMMPrototypesConfig(n_componets=3)


def test_config_round_trips_through_json() -> None:
    config = alignkit.DecAlignLossConfig(n_modalities=3, heterogeneity={"prototypes": {"n_components": 5}})
    again = alignkit.DecAlignLossConfig.model_validate_json(config.model_dump_json())
    assert again == config
    assert again.build().heterogeneity.prototypes[0].n_components == 5


def _sequences(n_modalities: int = 3, batch: int = 12, steps: int = 5, dim: int = 6):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, steps, dim, generator=g, requires_grad=True) for _ in range(n_modalities)]


def test_decalign_loss_is_the_weighted_sum_of_its_components() -> None:
    unique, common = _sequences(), _sequences()
    loss = alignkit.DecAlignLoss(3, alpha=0.3, beta=0.7, heterogeneity=alignkit.HeterogeneityLoss(3, prototypes=alignkit.GMMPrototypes(3)))
    out = loss(unique, common, task_loss=torch.tensor(2.0))
    c = out.components
    expected = c["task"] + c["dec"] + 0.3 * c["hete"] + 0.7 * c["homo"]
    assert torch.allclose(out.total, expected)
    assert torch.allclose(c["hete"], c["ot"] + c["proto"])
    assert torch.allclose(c["homo"], c["sem"] + c["mmd"])


def test_decalign_loss_components_equal_the_functional_forms() -> None:
    unique, common = _sequences(), _sequences()
    loss = alignkit.DecAlignLoss(3, heterogeneity=alignkit.HeterogeneityLoss(3, prototypes=alignkit.GMMPrototypes(3)))
    out = loss(unique, common)
    pooled_common = [c.mean(1) for c in common]
    assert torch.allclose(out.components["dec"], F.decoupling_loss(unique, common))
    assert torch.allclose(out.components["sem"], F.moment_matching_loss(pooled_common))
    assert torch.allclose(out.components["mmd"], F.multimodal_mmd(pooled_common, 1.0))


@pytest.mark.parametrize(
    ("switches", "absent"),
    [({"use_decoupling": False}, {"dec"}), ({"use_hete": False}, {"hete", "ot", "proto"}), ({"use_homo": False}, {"homo", "sem", "mmd"})],
)
def test_ablation_switches_remove_their_components(switches: dict, absent: set) -> None:
    unique, common = _sequences(), _sequences()
    loss = alignkit.DecAlignLoss(3, heterogeneity=alignkit.HeterogeneityLoss(3, prototypes=alignkit.GMMPrototypes(3)), **switches)
    out = loss(unique, common)
    assert absent.isdisjoint(out.components)
    assert out.components  # the rest is still there


def test_decalign_loss_backpropagates_finite_gradients_to_every_input() -> None:
    unique, common = _sequences(), _sequences()
    loss = alignkit.DecAlignLoss(3, heterogeneity=alignkit.HeterogeneityLoss(3, prototypes=alignkit.GMMPrototypes(3)))
    loss(unique, common).total.backward()
    for x in unique + common:
        assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


def test_token_granularity_uses_only_real_steps() -> None:
    unique, common = _sequences(batch=6), _sequences(batch=6)
    masks = [torch.arange(5)[None, :] < torch.tensor([5, 4, 3, 5, 2, 1])[:, None] for _ in range(3)]
    loss = alignkit.DecAlignLoss(3, sample_granularity="token", heterogeneity=alignkit.HeterogeneityLoss(3, prototypes=alignkit.GMMPrototypes(3)))
    out = loss(unique, common, masks=masks)
    real = [c[m] for c, m in zip(common, masks)]
    assert torch.allclose(out.components["mmd"], F.multimodal_mmd(real, 1.0))


def test_gmm_prototypes_keep_running_state_and_restore_it_from_a_state_dict() -> None:
    module = alignkit.GMMPrototypes(3, momentum=0.5)
    x = torch.randn(40, 4)
    module(x)
    state = module.state_dict()
    assert set(state) == {"running_weights", "running_means", "running_covariances"}
    fresh = alignkit.GMMPrototypes(3, momentum=0.5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.running_means, module.running_means)


def test_gmm_prototypes_warm_start_from_running_means() -> None:
    module = alignkit.GMMPrototypes(3, momentum=1.0, n_iter=1)
    x = torch.randn(60, 2)
    first = module(x)
    second = module(x)
    expected = F.fit_gmm(x, 3, n_iter=1, means_init=first.means.detach(), weights_init=first.weights.detach(), covariances_init=first.covariances.detach())
    assert torch.allclose(second.means, expected.means)


def test_eval_mode_does_not_update_running_prototypes() -> None:
    module = alignkit.GMMPrototypes(3, momentum=0.5)
    module(torch.randn(30, 2))
    before = module.running_means.clone()
    module.eval()
    module(torch.randn(30, 2) + 5)
    assert torch.equal(module.running_means, before)


def test_prototype_ot_loss_reports_convergence_diagnostics() -> None:
    features = [torch.randn(30, 3) + i for i in range(3)]
    mixtures = [F.fit_gmm(f, 2) for f in features]
    out = alignkit.PrototypeOTLoss(tol=1e-6)(features, mixtures)
    assert out.diagnostics["ot_converged"] == 1.0
    assert out.diagnostics["ot_marginal_error"] < 1e-6


def test_relative_epsilon_scales_with_the_mean_cost() -> None:
    features = [torch.randn(30, 3, dtype=torch.float64) * (1 + i) for i in range(2)]
    mixtures = [F.fit_gmm(f, 2) for f in features]
    relative = alignkit.PrototypeOTLoss(epsilon=0.1, proto_weight=0.0, tol=1e-10, max_iter=10_000)(features, mixtures)
    cost = F.bures_wasserstein_cost(mixtures[0].means, mixtures[0].covariances, mixtures[1].means, mixtures[1].covariances)
    absolute = F.sinkhorn(cost, mixtures[0].weights, mixtures[1].weights, 0.1 * float(cost.mean()), tol=1e-10, max_iter=10_000)
    assert torch.allclose(relative.components["ot"], absolute.value)


def _official_transport() -> alignkit.PrototypeOTLoss:
    return alignkit.PrototypeOTLoss(
        epsilon=0.1, relative_epsilon=False, max_iter=50, tol=0.0, grad="unrolled", matching="index", objective="regularized",
        marginals="responsibilities", cost_reduction="mean", bures_eps=1e-8, kernel_floor=1e-30, scaling_guard=1e-8,
    )


@pytest.mark.parametrize("n_modalities", [3, 4])
@pytest.mark.parametrize("form", ["default", "official"])
def test_heterogeneity_loss_components_equal_the_functional_pipeline(n_modalities: int, form: str) -> None:
    g = torch.Generator().manual_seed(11)
    features = [torch.randn(12, 4, generator=g, dtype=torch.float64) + i for i in range(n_modalities)]
    official = form == "official"
    prototypes = alignkit.GMMPrototypes(3, n_iter=4, init="spaced", reg_covar=1e-4, regularization="clamp" if official else "add")
    transport = _official_transport() if official else alignkit.PrototypeOTLoss()
    out = alignkit.HeterogeneityLoss(n_modalities, prototypes=prototypes, transport=transport)(features)

    mixtures = [F.fit_gmm(f, 3, n_iter=4, init="spaced", reg_covar=1e-4, regularization="clamp" if official else "add") for f in features]
    reduction, eps = ("mean", 1e-8) if official else ("sum", 0.0)
    pairwise = {
        (i, j): F.bures_wasserstein_cost(mixtures[i].means, mixtures[i].covariances, mixtures[j].means, mixtures[j].covariances, reduction=reduction, eps=eps)
        for i in range(n_modalities) for j in range(i + 1, n_modalities)
    }
    cost = F.joint_cost_tensor(pairwise)
    if official:
        marginals = [m.responsibilities.mean(0) / m.responsibilities.mean(0).sum() for m in mixtures]
        ot = F.multi_marginal_sinkhorn(cost, marginals, 0.1, max_iter=50, tol=0.0, grad="unrolled", kernel_floor=1e-30, scaling_guard=1e-8)
        expected_ot, plan = ot.regularized_value, None
    else:
        ot = F.multi_marginal_sinkhorn(cost, [m.weights for m in mixtures], 0.1 * float(cost.mean()), max_iter=200, tol=1e-4)
        expected_ot, plan = ot.value, ot.plan
    expected_proto = F.prototype_calibration_loss(
        features, [m.responsibilities for m in mixtures], [m.means for m in mixtures],
        plan=plan, matching="index" if official else "plan", reduction=reduction,
    )
    torch.testing.assert_close(out.components["ot"], expected_ot, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.components["proto"], expected_proto, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.total, expected_ot + expected_proto, rtol=1e-10, atol=1e-12)
