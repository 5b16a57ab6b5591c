"""Method-specific behaviour of the attention / subspace baselines: MulT, MISA, Self-MM, DMD, CENet, CGGM."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit_models.layers.pooling import concat_real_steps, last_real_step
from alignkit_models.models.cenet import CENet, TextQueriedAttention
from alignkit_models.models.cggm import CGGM, balance_coefficients
from alignkit_models.models.dmd import DMD, GraphDistillation, favoured_edges, margin_loss
from alignkit_models.models.misa import MISA, central_moment_discrepancy, difference_loss
from alignkit_models.models.mult import MulT
from alignkit_models.models.self_mm import (
    FUSION,
    ClassCentres,
    SelfMM,
    UnimodalLabelGenerator,
    relative_shift,
    unimodal_labels,
)
from alignkit_models.registry import list_models

DIMS = {"text": 12, "audio": 5, "vision": 7}
SIX = {f"view{i}": 3 + i for i in range(6)}
NO_DROPOUT = {"attn_dropout": 0.0, "relu_dropout": 0.0, "res_dropout": 0.0, "embed_dropout": 0.0, "out_dropout": 0.0}


def _batch(dims: dict[str, int], batch: int = 6, steps: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(batch, steps, d, generator=g) for m, d in dims.items()}
    lengths = {m: torch.randint(1, steps + 1, (batch,), generator=g) for m in dims}
    masks = {m: torch.arange(steps)[None, :] < lengths[m][:, None] for m in dims}
    labels = torch.tensor([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0][:batch])
    return features, masks, labels


# --- shared readouts -------------------------------------------------------------------------


def test_last_real_step_reads_the_last_unpadded_step_not_index_minus_one() -> None:
    x = torch.arange(8.0).view(2, 4, 1)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    assert last_real_step(x, mask).flatten().tolist() == [1.0, 7.0]


def test_concat_real_steps_puts_each_samples_real_steps_first_in_modality_order() -> None:
    a = torch.tensor([[1.0, 2.0, 0.0]]).unsqueeze(-1)
    b = torch.tensor([[3.0, 0.0]]).unsqueeze(-1)
    joined, mask = concat_real_steps([a, b], [torch.tensor([[True, True, False]]), torch.tensor([[True, False]])])
    assert joined[0, :3, 0].tolist() == [1.0, 2.0, 3.0]
    assert mask.tolist() == [[True, True, True, False, False]]


# --- MulT ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dims", "pairs"), [(DIMS, 6), (SIX, 30)])
def test_mult_builds_one_crossmodal_transformer_per_ordered_pair_and_one_memory_per_target(dims, pairs) -> None:
    model = MulT(dims, dim=8, n_heads=2, n_layers=1)
    assert len(model.crossmodal.cross) == pairs == len(dims) * (len(dims) - 1)
    assert set(model.crossmodal.memory) == set(dims)
    assert len(model.crossmodal.memory["text" if "text" in dims else "view0"].layers) == 3  # max(D, 3)


def test_mult_fuses_the_last_steps_of_all_targets() -> None:
    features, masks, _ = _batch(DIMS)
    output = MulT(DIMS, dim=8, n_heads=2, n_layers=1).eval()(features, masks)
    assert output.representation.shape == (6, 3 * 2 * 8)  # M targets x (M - 1) d


# --- MISA ------------------------------------------------------------------------------------


def test_cmd_matches_a_hand_computed_case_with_unsquared_norms() -> None:
    x = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    y = torch.ones(2, 2)
    # means (1, 2) vs (1, 1); central moments of x: c2 = (1, 4), c3 = 0, c4 = (1, 16), c5 = 0; of y: 0
    expected = 1.0 + math.sqrt(17.0) + math.sqrt(257.0)
    assert float(central_moment_discrepancy(x, y, 5)) == pytest.approx(expected, rel=1e-6)
    assert float(central_moment_discrepancy(x, y, 1)) == pytest.approx(1.0)


def test_cmd_is_zero_for_identical_sets_with_a_finite_gradient() -> None:
    x = torch.rand(1, 3, requires_grad=True)
    loss = central_moment_discrepancy(x, x.detach().clone())
    loss.backward()
    assert float(loss.detach()) == 0.0 and bool(torch.isfinite(x.grad).all())


def test_misa_difference_loss_is_the_mean_squared_cross_correlation_of_centred_unit_rows() -> None:
    a = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    # unit rows already centred: A^T B = [[0, 2], [0, 0]] -> mean of squares 4 / 4
    assert float(difference_loss(a, b)) == pytest.approx(1.0, rel=1e-5)
    assert float(difference_loss(a, torch.ones(2, 2))) == 0.0  # a constant batch has no centred direction


def test_misa_auxiliary_terms_exist_in_training_only_and_are_weighted() -> None:
    features, masks, labels = _batch(DIMS)
    model = MISA(DIMS, hidden_dim=16, rnn_dim=8, sim_weight=0.5, diff_weight=0.3, recon_weight=2.0)
    output = model.train()(features, masks, labels)
    assert set(output.components) == {"sim", "diff", "recon"}
    for name, weight in {"sim": 0.5, "diff": 0.3, "recon": 2.0}.items():
        assert torch.allclose(output.aux_losses[name], weight * output.components[name])
    evaluation = model.eval()(features, masks, labels)
    assert evaluation.aux_losses == {} and evaluation.components == {}


def test_misa_fuses_two_subspace_vectors_per_modality() -> None:
    features, masks, _ = _batch(SIX)
    output = MISA(SIX, hidden_dim=16, rnn_dim=8).eval()(features, masks)
    assert output.representation.shape == (6, 2 * len(SIX) * 16)


# --- Self-MM ---------------------------------------------------------------------------------


def test_self_mm_relative_shift_and_generated_label_on_a_hand_case() -> None:
    delta = relative_shift(torch.zeros(1, 2), torch.tensor([1.0, 0.0]), torch.tensor([-3.0, 0.0]))
    assert float(delta) == pytest.approx((3.0 - 1.0) / 1.0)
    # alpha = 2 / 1: y_s = 0.5 * 2 * 1 + 0.5 * (1 + 2 - 1) = 2
    label = unimodal_labels(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([1.0]), bound=3.0)
    assert float(label) == pytest.approx(2.0)
    assert float(unimodal_labels(torch.tensor([9.0]), torch.tensor([1.0]), torch.tensor([1.0]), bound=3.0)) == 3.0


def test_self_mm_unimodal_label_equals_the_fused_label_when_the_head_sits_where_the_fusion_sits() -> None:
    y = torch.tensor([-1.5, 0.7, 2.0])
    delta = torch.tensor([-0.4, 0.3, 0.9])
    assert torch.allclose(unimodal_labels(delta, delta, y, bound=3.0), y)


def test_self_mm_unimodal_label_moves_with_the_heads_distance_to_the_class_centres() -> None:
    y = torch.tensor([1.0])
    closer_to_positive = unimodal_labels(torch.tensor([0.8]), torch.tensor([0.5]), y, bound=3.0)
    closer_to_negative = unimodal_labels(torch.tensor([0.2]), torch.tensor([0.5]), y, bound=3.0)
    assert float(closer_to_negative) < float(y) < float(closer_to_positive)


def test_self_mm_class_centres_use_momentum_and_exclude_zero_labels() -> None:
    centres = ClassCentres(1, momentum=0.9)
    centres.update(torch.tensor([[2.0], [4.0], [100.0], [-1.0]]), torch.tensor([1.0, 2.0, 0.0, -1.0]))
    assert centres.positive.tolist() == [3.0] and centres.negative.tolist() == [-1.0]  # first batch: set
    centres.update(torch.tensor([[13.0], [-11.0]]), torch.tensor([0.5, -0.5]))
    assert centres.positive.item() == pytest.approx(0.9 * 3.0 + 0.1 * 13.0)
    assert centres.negative.item() == pytest.approx(0.9 * -1.0 + 0.1 * -11.0)


def test_self_mm_label_generator_returns_the_fused_labels_during_warm_up_then_generates() -> None:
    generator = UnimodalLabelGenerator({FUSION: 2, "audio": 2}, momentum=0.5, bound=3.0, warmup_updates=2)
    y = torch.tensor([1.0, -1.0])
    features = {FUSION: torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), "audio": torch.tensor([[0.0, 1.0], [0.0, -1.0]])}
    generator.update(features, y)
    assert torch.equal(generator.generate(features, y)["audio"], y)
    generator.update(features, y)
    probe = {FUSION: torch.tensor([[0.5, 0.0]]), "audio": torch.tensor([[0.0, 0.9]])}
    # fusion: delta = (1.5 - 0.5) / 0.5 = 2; audio: d_pos = 0.1, d_neg = 1.9 -> delta = 18; alpha = 9
    expected = min(0.5 * 9.0 * 1.0 + 0.5 * (1.0 + 18.0 - 2.0), 3.0)
    assert generator.generate(probe, torch.tensor([1.0]))["audio"].item() == pytest.approx(expected)


def test_self_mm_unimodal_losses_are_zero_before_label_generation_and_positive_after() -> None:
    features, masks, labels = _batch(DIMS)
    model = SelfMM(DIMS, rnn_dim=8, feature_dim=8, fusion_dim=16, head_dim=8, label_warmup=2).train()
    first = model(features, masks, labels)  # warm-up: unimodal labels = y, weights tanh(0) = 0
    assert float(first.aux_losses["unimodal"].detach()) == 0.0
    second = model(features, masks, labels)  # the second update ends the warm-up of 2
    assert float(second.aux_losses["unimodal"].detach()) > 0.0
    assert {f"unimodal_{m}" for m in DIMS} == set(second.components)
    assert model.eval()(features, masks, labels).aux_losses == {}


def test_self_mm_classification_trains_unimodal_heads_on_the_true_class() -> None:
    features, masks, _ = _batch(DIMS)
    model = SelfMM(DIMS, task="classification", n_classes=3, rnn_dim=8, feature_dim=8, fusion_dim=16, head_dim=8)
    output = model.train()(features, masks, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert float(output.aux_losses["unimodal"].detach()) > 0.0
    assert int(model.label_generator.updates) == 0  # ULGM is not used for classes


# --- DMD -------------------------------------------------------------------------------------


def _small_dmd(dims: dict[str, int], **options) -> DMD:
    return DMD(dims, dim=8, n_heads=2, n_layers=1, homo_code_dim=4, hetero_code_dim=4, **options)


def test_dmd_training_output_carries_every_loss_component_and_eval_output_none() -> None:
    features, masks, labels = _batch(DIMS)
    model = _small_dmd(DIMS).train()
    output = model(features, masks, labels)
    assert set(output.components) == {
        "aux_task", "gd_homo_logit", "gd_homo_reg", "gd_hetero_logit", "gd_hetero_repr", "gd_hetero_reg",
        "recon", "cycle", "margin", "ort",
    }  # fmt: skip
    assert set(output.aux_losses) == {"aux_task", "graph_distillation", "decoupling"}
    c = output.components
    expected = 0.1 * (c["cycle"] + c["recon"] + 0.1 * (c["margin"] + c["ort"]))
    assert torch.allclose(output.aux_losses["decoupling"], expected)
    assert model.eval()(features, masks, labels).components == {}


def test_dmd_margin_loss_on_a_hand_case() -> None:
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0.0, 0.0, 1.0])
    margins = 0.15 * (labels[:, None] - labels[None, :]).abs()
    # triples (a, p, n): (0, 1, 2): relu(0.15 - 0 + 1) = 1.15; (1, 0, 2): relu(0.15 - 0 + 0) = 0.15
    assert float(margin_loss(codes, labels, margins)) == pytest.approx((1.15 + 0.15) / 2)


def test_dmd_graph_distillation_has_one_edge_per_ordered_pair_and_a_text_teacher_prior() -> None:
    mods = tuple(DIMS)
    unit = GraphDistillation(mods, 1, 4, 2, 0.125, favoured_edges(mods, heterogeneous=True))
    assert len(unit.edges) == 6
    prior = dict(zip(unit.edges, unit.prior.tolist()))
    assert prior[("audio", "text")] == prior[("vision", "text")] == prior[("audio", "vision")]
    assert prior[("audio", "text")] > prior[("text", "audio")]
    assert sum(prior.values()) == pytest.approx(1.0)
    six = tuple(SIX)
    assert len(GraphDistillation(six, 1, 4, 2, 0.125, favoured_edges(six, heterogeneous=True)).edges) == 30


def test_dmd_graph_distillation_moves_students_towards_detached_teachers() -> None:
    unit = GraphDistillation(("a", "b"), 1, 2, 2, 0.125, set())
    unit.edge_weights = lambda logits, reprs: torch.zeros(4, 2)  # weights = prior = (1/2, 1/2)
    logits = {m: torch.randn(4, 1, requires_grad=True) for m in "ab"}
    terms = unit(logits, {m: torch.randn(4, 2) for m in "ab"})
    (grad_a,) = torch.autograd.grad(terms["logit"], logits["a"])
    # a is the student of edge (a, b) only: its teacher role in (b, a) sends no gradient
    expected = 0.5 * torch.sign(logits["a"] - logits["b"]).detach() / 4
    assert torch.allclose(grad_a, expected)


# --- CENet -----------------------------------------------------------------------------------


def test_cenet_centres_on_text_or_else_the_first_modality() -> None:
    assert CENet(DIMS, dim=8, n_heads=2).centre == "text"
    model = CENet(SIX, dim=8, n_heads=2)
    assert model.centre == "view0" and set(model.enhancement.attentions) == set(SIX) - {"view0"}


def test_cenet_attention_ignores_padded_steps_of_the_other_modality() -> None:
    attention = TextQueriedAttention(4)
    text, other = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[True, True, False, False, False]] * 2)
    assert torch.allclose(attention(text, other, mask), attention(text, other[:, :2], mask[:, :2]), atol=1e-6)


def test_cenet_prediction_depends_on_the_non_text_modalities() -> None:
    features, masks, _ = _batch(DIMS)
    model = CENet(DIMS, dim=8, n_heads=2).eval()
    changed = dict(features, audio=features["audio"] + 1.0)
    assert not torch.allclose(model(features, masks).prediction, model(changed, masks).prediction)


# --- CGGM ------------------------------------------------------------------------------------


def test_cggm_balance_coefficients_favour_the_modality_that_improved_less() -> None:
    b = balance_coefficients(torch.tensor([0.5, 0.25]), torch.zeros(2))
    assert b.tolist() == pytest.approx([1 / 3, 2 / 3])  # (S - Delta_i) / S with S = 0.75
    assert balance_coefficients(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])).tolist() == [1.0, 1.0]


def _small_cggm(**options) -> CGGM:
    return CGGM(DIMS, dim=8, n_heads=2, n_layers=3, classifier_layers=1, **NO_DROPOUT, **options)


def test_cggm_modulation_scales_the_gradient_of_each_unimodal_branch_by_rho_times_its_coefficient() -> None:
    features, masks, labels = _batch(DIMS)
    model = _small_cggm(rho=1.3).train()

    def encoder_gradients(with_labels: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        model.zero_grad()
        model.previous_accuracy.zero_()
        output = model(features, masks, labels if with_labels else None)
        model.task_loss(output.prediction, labels).backward()  # the task gradient only, both times
        branch = {m: [*model.projections[m].parameters(), *model.encoders[m].parameters()] for m in DIMS}
        grads = {m: torch.cat([p.grad.flatten() for p in branch[m]]) for m in DIMS}
        return grads, output.components

    modulated, components = encoder_gradients(with_labels=True)
    plain, _ = encoder_gradients(with_labels=False)  # no labels: no classifiers, no hooks
    for m in DIMS:
        scale = 1.3 * float(components[f"balance_{m}"])
        assert torch.allclose(modulated[m], scale * plain[m], atol=1e-6, rtol=1e-4)
    assert any(abs(1.3 * float(components[f"balance_{m}"]) - 1.0) > 1e-3 for m in DIMS)


def test_cggm_classifiers_read_detached_encoder_outputs() -> None:
    features, masks, labels = _batch(DIMS)
    model = _small_cggm().train()
    output = model(features, masks, labels)
    output.aux_losses["classifiers"].backward()
    assert all(p.grad is None for p in model.encoders.parameters())
    assert all(p.grad is not None for p in model.classifiers.parameters())


@pytest.mark.parametrize("direction", ["gradient", "weight"])
def test_cggm_direction_term_has_value_zero_and_the_gradient_of_lambda_l_gm(direction: str) -> None:
    features, masks, labels = _batch(DIMS)
    model = _small_cggm(direction=direction, direction_weight=0.2).train()
    output = model(features, masks, labels)
    assert float(output.aux_losses["direction"].detach()) == 0.0
    params = [model.head.out.weight] if direction == "weight" else list(model.head.proj1.parameters())
    via_aux = torch.autograd.grad(output.aux_losses["direction"], params, retain_graph=True)
    direct = torch.autograd.grad(0.2 * output.components["direction"], params)
    for a, d in zip(via_aux, direct):
        assert torch.allclose(a, d) and float(d.abs().sum()) > 0.0


def test_cggm_direction_loss_in_weight_mode_is_the_codes_formula() -> None:
    features, masks, labels = _batch(DIMS)
    model = _small_cggm(direction="weight").train()
    output = model(features, masks, labels)
    fusion = model.head.out.weight.flatten()
    expected = torch.stack(
        [
            output.components[f"balance_{m}"].abs()
            - output.components[f"balance_{m}"]
            * torch.nn.functional.cosine_similarity(model.classifiers[m].out.weight.flatten(), fusion, dim=0)
            for m in DIMS
        ]
    ).mean()
    assert torch.allclose(output.components["direction"], expected, atol=1e-6)


def test_cggm_accuracy_memory_advances_only_in_forwards_that_will_be_backpropagated() -> None:
    features, masks, labels = _batch(DIMS)
    model = _small_cggm().train()
    with torch.no_grad():
        model(features, masks, labels)
    assert model.previous_accuracy.tolist() == [0.0, 0.0, 0.0]
    output = model(features, masks, labels)
    assert model.previous_accuracy.tolist() == [float(output.components[f"accuracy_{m}"]) for m in DIMS]
    assert model.eval()(features, masks, labels).components == {}


# --- registry --------------------------------------------------------------------------------


def test_models_needing_a_fine_tuned_language_model_are_registered_as_adapted() -> None:
    fidelity = {info.name: info.fidelity for info in list_models()}
    assert {m: fidelity[m] for m in ("misa", "self_mm", "dmd", "cenet")} == dict.fromkeys(
        ("misa", "self_mm", "dmd", "cenet"), "adapted"
    )
    assert fidelity["mult"] == fidelity["cggm"] == "faithful"


def test_dmd_margin_loss_equals_the_explicit_triple_sum() -> None:
    g = torch.Generator().manual_seed(3)
    codes = torch.randn(24, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (24,), generator=g)
    margins = torch.rand(24, 24, generator=g, dtype=torch.float64) * 0.5
    from alignkit.decoupling import cosine_similarity

    cos = cosine_similarity(codes.unsqueeze(1), codes.unsqueeze(0))
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(24, dtype=torch.bool)
    triples = positive.unsqueeze(2) & ~same.unsqueeze(1)
    explicit = (torch.relu(margins.unsqueeze(1) - cos.unsqueeze(2) + cos.unsqueeze(1)) * triples).sum() / triples.sum()
    fast = margin_loss(codes, labels, margins)
    assert torch.allclose(fast, explicit, rtol=1e-12)
    (grad_fast,) = torch.autograd.grad(fast, codes)
    (grad_explicit,) = torch.autograd.grad(explicit, codes)
    assert torch.allclose(grad_fast, grad_explicit, rtol=1e-9, atol=1e-12)
