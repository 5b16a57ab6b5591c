"""The DecAlign network: shapes for M = 2, 3 and 6, ablations, alignment terms, robustness."""

from __future__ import annotations

import pytest
import torch

from alignkit_models.registry import create_model

DIMS = {2: {"a": 7, "b": 3}, 3: {"text": 768, "audio": 5, "vision": 20}, 6: {f"v{i}": 4 + i for i in range(6)}}


def _inputs(dims: dict[str, int], batch: int = 10, lengths: dict[str, int] | None = None, aligned: bool = True):
    g = torch.Generator().manual_seed(0)
    lengths = lengths or dict.fromkeys(dims, 6)
    features = {m: torch.randn(batch, lengths[m], d, generator=g) for m, d in dims.items()}
    masks = {m: torch.arange(t)[None, :] < (torch.full((batch,), t) if aligned else torch.randint(1, t + 1, (batch,), generator=g))[:, None] for m, t in lengths.items()}
    return features, masks


def _small(dims: dict[str, int], **options):
    return create_model("decalign", input_dims=dims, dim=16, n_heads=2, n_layers=1, n_components=3, **options)


@pytest.mark.parametrize("n_modalities", [2, 3, 6])
@pytest.mark.parametrize("aligned", [True, False])
def test_prediction_shapes_for_any_number_of_modalities(n_modalities: int, aligned: bool) -> None:
    dims = DIMS[n_modalities]
    lengths = {m: 4 + 2 * i for i, m in enumerate(dims)}
    features, masks = _inputs(dims, lengths=lengths, aligned=aligned)
    model = _small(dims).train()
    output = model(features, masks, torch.randn(10))
    assert output.prediction.shape == (10,)
    assert output.representation.shape == (10, model.fused_dim)
    assert {"dec", "hete", "ot", "proto", "homo", "sem", "mmd"} <= set(output.components)


def test_classification_head_gives_logits() -> None:
    dims = DIMS[6]
    features, masks = _inputs(dims)
    model = _small(dims, task="classification", n_classes=10).eval()
    assert model(features, masks).prediction.shape == (10, 10)


@pytest.mark.parametrize("cross_modal", ["pairwise", "joint"])
def test_encoder_count_per_cross_modal_mode(cross_modal: str) -> None:
    model = _small(DIMS[3], cross_modal=cross_modal)
    assert len(model.cross_modal) == (6 if cross_modal == "pairwise" else 3)


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
def test_ablation_switches_remove_their_terms(switch: dict, absent: set) -> None:
    features, masks = _inputs(DIMS[3])
    output = _small(DIMS[3], **switch).train()(features, masks, torch.randn(10))
    assert absent.isdisjoint(output.components)


def test_without_decoupling_both_streams_are_one() -> None:
    model = _small(DIMS[3], use_decoupling=False)
    assert model.common_encoder is None
    features, masks = _inputs(DIMS[3])
    unique, common = model.encode(features)
    assert all(unique[m] is common[m] for m in unique)


def test_without_transformer_the_unique_streams_are_pooled_directly() -> None:
    model = _small(DIMS[3], use_transformer=False)
    assert len(model.cross_modal) == 0 and model.fused_dim == 3 * 16 + 16


def test_contrastive_term_is_off_by_default_and_on_when_asked() -> None:
    features, masks = _inputs(DIMS[3])
    labels = torch.tensor([1.0, -1.0] * 5)
    assert "contrastive" not in _small(DIMS[3]).train()(features, masks, labels).components
    output = _small(DIMS[3], use_contrastive=True).train()(features, masks, labels)
    assert output.components["contrastive"] > 0 and "contrastive" in output.aux_losses


def test_alignment_weights_follow_alpha_and_beta() -> None:
    features, masks = _inputs(DIMS[3])
    torch.manual_seed(0)
    output = _small(DIMS[3], alpha=0.3, beta=0.7).train()(features, masks, torch.randn(10))
    c = output.components
    assert torch.allclose(output.aux_losses["alignment"], c["dec"] + 0.3 * c["hete"] + 0.7 * c["homo"], rtol=1e-5)


def test_evaluation_skips_the_alignment_terms() -> None:
    features, masks = _inputs(DIMS[3])
    output = _small(DIMS[3]).eval()(features, masks)
    assert not output.aux_losses and not output.components


def test_a_batch_smaller_than_the_prototype_count_trains_without_hete() -> None:
    features, masks = _inputs(DIMS[3], batch=2)
    output = _small(DIMS[3]).train()(features, masks, torch.randn(2))
    assert "hete" not in output.components and "homo" in output.components


def test_training_steps_lower_the_loss_on_a_fixed_batch() -> None:
    features, masks = _inputs(DIMS[3], batch=16)
    labels = torch.linspace(-2, 2, 16)
    model = _small(DIMS[3], output_dropout=0.0, res_dropout=0.0, relu_dropout=0.0, embed_dropout=0.0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.loss(model(features, masks, labels), labels).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
