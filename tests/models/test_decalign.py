"""The DecAlign network: both variants, shapes for M = 2, 3 and 6, options, ablations, robustness.

Equivalence with the authors' code is in ``test_decalign_official.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alignkit_models.models.decalign import OPTIONS, VARIANTS, variant_options
from alignkit_models.registry import create_model

DIMS = {2: {"a": 7, "b": 3}, 3: {"text": 768, "audio": 5, "vision": 20}, 6: {f"v{i}": 4 + i for i in range(6)}}


def _inputs(dims: dict[str, int], batch: int = 10, lengths: dict[str, int] | None = None, aligned: bool = True):
    g = torch.Generator().manual_seed(0)
    lengths = lengths or dict.fromkeys(dims, 6)
    features = {m: torch.randn(batch, lengths[m], d, generator=g) for m, d in dims.items()}
    masks = {m: torch.arange(t)[None, :] < (torch.full((batch,), t) if aligned else torch.randint(1, t + 1, (batch,), generator=g))[:, None] for m, t in lengths.items()}
    return features, masks


def _small(dims: dict[str, int], **options):
    return create_model("decalign", input_dims=dims, **{"dim": 16, "n_heads": 2, "n_layers": 1, "n_components": 3, **options})


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n_modalities", [2, 3, 6])
@pytest.mark.parametrize("aligned", [True, False])
def test_prediction_shapes_for_any_number_of_modalities(variant: str, n_modalities: int, aligned: bool) -> None:
    dims = DIMS[n_modalities]
    lengths = {m: 4 + 2 * i for i, m in enumerate(dims)}
    features, masks = _inputs(dims, lengths=lengths, aligned=aligned)
    model = _small(dims, variant=variant).train()
    output = model(features, masks, torch.randn(10))
    assert output.prediction.shape == (10,)
    assert output.representation.shape == (10, model.fused_dim)
    assert {"dec", "hete", "ot", "proto", "homo", "sem", "mmd"} <= set(output.components)
    assert all(torch.isfinite(v) for v in output.components.values())


def test_the_official_head_reads_m_attended_and_m_common_streams() -> None:
    for n_modalities, dims in DIMS.items():
        assert _small(dims).fused_dim == 2 * n_modalities * 16
        assert _small(dims, variant="alignkit").fused_dim == n_modalities * (n_modalities - 1) * 16 + 16


def test_classification_head_gives_logits() -> None:
    dims = DIMS[6]
    features, masks = _inputs(dims)
    model = _small(dims, task="classification", n_classes=10).eval()
    assert model(features, masks).prediction.shape == (10, 10)


@pytest.mark.parametrize(("cross_modal", "count"), [("pairwise", 6), ("joint", 3)])
def test_encoder_count_per_cross_modal_mode(cross_modal: str, count: int) -> None:
    assert len(_small(DIMS[3], cross_modal=cross_modal).cross_modal) == count


def test_the_variant_sets_every_option_and_explicit_options_win() -> None:
    official, ours = variant_options("official"), variant_options("alignkit")
    assert set(official) == set(ours) == {o.name for o in OPTIONS}
    model = _small(DIMS[3], variant="alignkit", matching="index", n_layers=2)
    assert model.options["matching"] == "index" and model.options["cross_modal"] == "pairwise"
    assert model.options["n_layers"] == 2 and model.options["mmd_sigma"] == "median"
    assert _small(DIMS[3]).options["gmm_regularization"] == "clamp"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"variant": "paper"}, "variant: expected one of"),
        ({"matching": "greedy"}, "matching: expected one of"),
        ({"attn_dropout": {"speech": 0.1}}, "attn_dropout: unknown modality 'speech'"),
        ({"alpha": -1.0}, "alpha: expected a number >= 0"),
        ({"kernel_size": 2, "projection_padding": "same"}, "kernel_size: expected an integer >= 1 \\(odd"),
        ({"binary_task_weight": 0.1, "task": "classification", "n_classes": 3}, "binary_task_weight: applies to regression"),
    ],
)
def test_bad_options_are_clear_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _small(DIMS[3], **options)


def test_per_modality_attention_dropout() -> None:
    model = _small(DIMS[3], attn_dropout={"text": 0.25})
    rates = {name: encoder.layers[0].attention.dropout for name, encoder in model.cross_modal.items()}
    assert rates == {"text<-rest": 0.25, "audio<-rest": 0.0, "vision<-rest": 0.0}


def test_valid_projection_shortens_sequences_and_masks() -> None:
    dims = DIMS[3]
    features, masks = _inputs(dims, lengths=dict.fromkeys(dims, 9))
    model = _small(dims, kernel_size={"text": 5, "audio": 3}, use_masks=True)
    unique, common, cut = model.encode(features, masks)
    assert {m: u.shape[1] for m, u in unique.items()} == {"text": 5, "audio": 7, "vision": 9}
    assert {m: c.shape[1] for m, c in cut.items()} == {"text": 5, "audio": 7, "vision": 9}


def test_a_modality_already_of_width_d_is_not_projected_by_the_official_model() -> None:
    dims = {"a": 16, "b": 5}
    assert set(_small(dims).projections) == {"b"}
    assert set(_small(dims, variant="alignkit").projections) == {"a", "b"}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("switch", "absent"),
    [
        ({"use_decoupling": False}, {"dec"}),
        ({"use_hete": False}, {"hete", "ot", "proto"}),
        ({"use_homo": False}, {"homo", "sem", "mmd"}),
        ({"use_proto_ot": False}, {"hete", "ot", "proto"}),
        ({"use_sem": False}, {"sem"}),
        ({"use_mmd": False}, {"mmd"}),
    ],
)
def test_ablation_switches_remove_their_terms(variant: str, switch: dict, absent: set) -> None:
    features, masks = _inputs(DIMS[3])
    output = _small(DIMS[3], variant=variant, **switch).train()(features, masks, torch.randn(10))
    assert absent.isdisjoint(output.components)


def test_without_decoupling_both_streams_are_one() -> None:
    model = _small(DIMS[3], use_decoupling=False)
    assert model.common_encoder is None
    features, masks = _inputs(DIMS[3])
    unique, common, _ = model.encode(features, masks)
    assert all(unique[m] is common[m] for m in unique)


def test_without_transformer_the_unique_streams_are_pooled_directly() -> None:
    assert len(_small(DIMS[3], use_transformer=False).cross_modal) == 0
    assert _small(DIMS[3], use_transformer=False).fused_dim == 3 * 16 + 3 * 16
    assert _small(DIMS[3], variant="alignkit", use_transformer=False).fused_dim == 3 * 16 + 16


def test_contrastive_term_follows_its_weight() -> None:
    features, masks = _inputs(DIMS[3])
    labels = torch.tensor([1.0, -1.0] * 5)
    assert "contrastive" not in _small(DIMS[3], variant="alignkit").train()(features, masks, labels).components
    assert "contrastive" not in _small(DIMS[3], contrastive_weight=0.0).train()(features, masks, labels).components
    output = _small(DIMS[3]).train()(features, masks, labels)  # official: 0.003
    assert output.components["contrastive"] > 0
    torch.testing.assert_close(output.aux_losses["contrastive"], 0.003 * output.components["contrastive"])


def test_contrastive_classes_are_the_rounded_sentiment() -> None:
    model = _small(DIMS[3])
    labels = torch.tensor([-3.4, -2.6, -0.4, 0.0, 0.6, 1.5, 2.5, 3.9])
    assert model.contrastive_classes(labels).tolist() == [0, 0, 3, 3, 4, 5, 5, 6]  # round half to even


def test_binary_task_term_adds_a_sign_cross_entropy_on_non_zero_labels() -> None:
    model = _small(DIMS[3], binary_task_weight=0.5)
    prediction = torch.tensor([0.3, -1.2, 0.8, 0.1])
    labels = torch.tensor([1.0, -0.5, 0.0, -0.2])
    expected = F.mse_loss(prediction, labels) + 0.5 * F.binary_cross_entropy_with_logits(
        torch.tensor([0.3, -1.2, 0.1]), torch.tensor([1.0, 0.0, 0.0])
    )
    torch.testing.assert_close(model.task_loss(prediction, labels), expected)
    torch.testing.assert_close(_small(DIMS[3]).task_loss(prediction, labels), F.mse_loss(prediction, labels))


@pytest.mark.parametrize("variant", VARIANTS)
def test_alignment_weights_follow_alpha_and_beta(variant: str) -> None:
    features, masks = _inputs(DIMS[3])
    torch.manual_seed(0)
    output = _small(DIMS[3], variant=variant, alpha=0.3, beta=0.7).train()(features, masks, torch.randn(10))
    c = output.components
    assert torch.allclose(output.aux_losses["alignment"], c["dec"] + 0.3 * c["hete"] + 0.7 * c["homo"], rtol=1e-5)


def test_prediction_alone_skips_the_alignment_terms_and_labels_report_them() -> None:
    features, masks = _inputs(DIMS[3])
    model = _small(DIMS[3]).eval()
    alone = model(features, masks)
    assert not alone.aux_losses and not alone.components
    with_labels = model(features, masks, torch.randn(10))
    assert {"dec", "hete", "homo"} <= set(with_labels.components)
    torch.testing.assert_close(with_labels.prediction, alone.prediction)


def test_a_batch_smaller_than_the_prototype_count() -> None:
    features, masks = _inputs(DIMS[3], batch=2)
    official = _small(DIMS[3]).train()(features, masks, torch.randn(2))  # rows repeat, as the authors do
    assert "hete" in official.components and torch.isfinite(official.components["hete"])
    ours = _small(DIMS[3], variant="alignkit").train()(features, masks, torch.randn(2))  # k-means++ cannot: skipped
    assert "hete" not in ours.components and "homo" in ours.components


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_batch_of_one_gives_finite_gradients(variant: str) -> None:
    features, masks = _inputs(DIMS[3], batch=1)
    model = _small(DIMS[3], variant=variant).train()
    output = model(features, masks, torch.randn(1))
    model.loss(output, torch.randn(1)).total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_steps_lower_the_loss_on_a_fixed_batch(variant: str) -> None:
    features, masks = _inputs(DIMS[3], batch=16)
    labels = torch.linspace(-2, 2, 16)
    torch.manual_seed(0)
    no_dropout = dict(output_dropout=0.0, res_dropout=0.0, relu_dropout=0.0, embed_dropout=0.0, attn_dropout=0.0)
    model = _small(DIMS[3], variant=variant, **no_dropout).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.loss(model(features, masks, labels), labels).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
