"""PMR (Lv et al., CVPR 2021): shapes, masking, the hub's message exchange, determinism, options."""

from __future__ import annotations

import pytest
import torch

from alignkit_models.layers.pooling import concat_real_steps
from alignkit_models.models.pmr import PMR, MessageMerge, last_real_steps_of_segments

THREE = {"text": 12, "audio": 5, "vision": 7}
SMALL = {"dim": 8, "n_heads": 2, "n_layers": 1}
NO_DROPOUT = {"attn_dropout": 0.0, "relu_dropout": 0.0, "res_dropout": 0.0, "embed_dropout": 0.0, "out_dropout": 0.0}


def _dims(m: int) -> dict[str, int]:
    return THREE if m == 3 else {f"view{i}": 3 + i for i in range(m)}


def _batch(dims: dict[str, int], steps: dict[str, int] | int = 5, batch: int = 4, seed: int = 0):
    """Random features with random real lengths (at least 1) per modality; padded steps are 0."""
    g = torch.Generator().manual_seed(seed)
    lengths = steps if isinstance(steps, dict) else dict.fromkeys(dims, steps)
    features, masks = {}, {}
    for m, d in dims.items():
        valid = torch.randint(1, lengths[m] + 1, (batch,), generator=g)
        masks[m] = torch.arange(lengths[m])[None, :] < valid[:, None]
        features[m] = torch.randn(batch, lengths[m], d, generator=g) * masks[m][..., None]
    return features, masks


# --- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [2, 3, 6])
@pytest.mark.parametrize("hub_init", ["concat", "learned"])
def test_prediction_and_representation_shapes_for_any_number_of_modalities(m: int, hub_init: str) -> None:
    dims = _dims(m)
    features, masks = _batch(dims)
    model = PMR(dims, hub_init=hub_init, **SMALL).eval()
    output = model(features, masks)
    assert output.prediction.shape == (4,)
    assert output.representation.shape == (4, (m + 1) * 8)  # hub + every modality
    assert output.aux_losses == {} and output.components == {}
    classifier = PMR(dims, task="classification", n_classes=5, hub_init=hub_init, **SMALL).eval()
    assert classifier(features, masks).prediction.shape == (4, 5)
    assert len(model.rounds[0]["to_modality"]) == len(model.rounds[0]["to_hub"]) == m  # 2 M units per round


def test_unaligned_lengths_and_the_hub_that_concatenates_them() -> None:
    steps = {"text": 6, "audio": 11, "vision": 3}
    features, masks = _batch(THREE, steps)
    model = PMR(THREE, n_layers=2, **{k: v for k, v in SMALL.items() if k != "n_layers"}).eval()
    hub, hub_mask, streams, _ = model.streams(features, masks)
    assert hub.shape == (4, 20, 8) and hub_mask.shape == (4, 20)
    assert hub_mask.sum(1).tolist() == sum(masks[m].sum(1) for m in THREE).tolist()  # real steps first
    assert {m: tuple(s.shape) for m, s in streams.items()} == {m: (4, t, 8) for m, t in steps.items()}
    prediction = model(features, masks).prediction
    assert prediction.shape == (4,) and bool(torch.isfinite(prediction).all())
    learned = PMR(THREE, hub_init="learned", hub_length=3, **SMALL).eval()
    assert learned.streams(features, masks)[0].shape == (4, 3, 8)


def test_masks_default_to_all_steps_real() -> None:
    features, _ = _batch(THREE)
    model = PMR(THREE, **SMALL).eval()
    full = {m: torch.ones(4, 5, dtype=torch.bool) for m in THREE}
    assert torch.equal(model(features).prediction, model(features, full).prediction)


# --- padding ---------------------------------------------------------------------------------

PADDING_OPTIONS = [{}, {"kernel_size": 3}, {"hub_init": "learned", "hub_length": 4}, {"reinforce": False}, {"n_layers": 2}]
PADDING_IDS = ["concat", "kernel3", "learned", "no-reinforce", "two-rounds"]


@pytest.mark.parametrize("options", PADDING_OPTIONS, ids=PADDING_IDS)
def test_values_at_padded_steps_do_not_change_the_prediction(options: dict) -> None:
    features, masks = _batch(THREE, {"text": 6, "audio": 9, "vision": 4}, batch=6, seed=1)
    assert all(bool((~mask).any()) for mask in masks.values())  # every modality has padding
    model = PMR(THREE, **{**SMALL, **options}).eval()
    reference = model(features, masks).prediction
    g = torch.Generator().manual_seed(5)
    noisy = {m: torch.where(masks[m][..., None], x, 1e3 * torch.randn(x.shape, generator=g)) for m, x in features.items()}
    assert torch.allclose(model(noisy, masks).prediction, reference, atol=1e-5, rtol=1e-5)
    infinite = {m: torch.where(masks[m][..., None], x, torch.tensor(float("inf"))) for m, x in features.items()}
    assert torch.allclose(model(infinite, masks).prediction, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", PADDING_OPTIONS, ids=PADDING_IDS)
def test_every_padded_sample_predicts_as_its_trimmed_self(options: dict) -> None:
    # Padded values are zeroed on entry, so only this test sees a mask that is not applied.
    features, masks = _batch(THREE, {"text": 5, "audio": 7, "vision": 4}, batch=4, seed=2)
    model = PMR(THREE, **{**SMALL, **options}).eval()
    batched = model(features, masks).prediction
    for b in range(4):
        trimmed = {m: features[m][b : b + 1, : int(masks[m][b].sum())] for m in THREE}
        assert torch.allclose(batched[b], model(trimmed).prediction[0], atol=1e-5), b


@pytest.mark.parametrize("options", PADDING_OPTIONS, ids=PADDING_IDS)
def test_appending_more_padding_changes_nothing(options: dict) -> None:
    features, masks = _batch(THREE, {"text": 5, "audio": 7, "vision": 4}, batch=4, seed=4)
    model = PMR(THREE, **{**SMALL, **options}).eval()
    extra = {"text": 3, "audio": 1, "vision": 6}
    longer = {m: torch.cat([x, torch.randn(4, extra[m], x.shape[-1])], 1) for m, x in features.items()}
    longer_masks = {m: torch.cat([k, torch.zeros(4, extra[m], dtype=torch.bool)], 1) for m, k in masks.items()}
    assert torch.allclose(model(longer, longer_masks).prediction, model(features, masks).prediction, atol=1e-5)


def test_last_real_steps_of_segments_reads_each_segments_last_real_step() -> None:
    a = torch.tensor([[[1.0], [2.0], [0.0]], [[5.0], [0.0], [0.0]]])
    b = torch.tensor([[[3.0], [4.0]], [[6.0], [7.0]]])
    masks = [torch.tensor([[True, True, False], [True, False, False]]), torch.tensor([[True, True], [True, True]])]
    joint, _ = concat_real_steps([a, b], masks)
    assert last_real_steps_of_segments(joint, masks).squeeze(-1).tolist() == [[2.0, 4.0], [5.0, 7.0]]


# --- the message hub -------------------------------------------------------------------------


def _changed(features: dict[str, torch.Tensor], modality: str) -> dict[str, torch.Tensor]:
    return dict(features, **{modality: features[modality] + 1.0})


@pytest.mark.parametrize("hub_init", ["concat", "learned"])
def test_without_the_hub_to_modality_path_a_modality_never_hears_the_others(hub_init: str) -> None:
    features, masks = _batch(THREE, seed=3)
    model = PMR(THREE, reinforce=False, hub_init=hub_init, n_layers=2, dim=8, n_heads=2).eval()
    _, _, streams, _ = model.streams(features, masks)
    hub, _, changed, _ = model.streams(_changed(features, "audio"), masks)
    assert torch.equal(changed["text"], streams["text"]) and torch.equal(changed["vision"], streams["vision"])
    assert not torch.allclose(changed["audio"], streams["audio"])
    # the modality -> hub path still carries audio into the common message
    assert not torch.allclose(hub, model.streams(features, masks)[0])


@pytest.mark.parametrize(("hub_init", "n_layers"), [("concat", 1), ("learned", 2)])
def test_through_the_hub_a_change_in_one_modality_reaches_every_other_stream(hub_init: str, n_layers: int) -> None:
    # a learned hub holds no input before round 1's collection: the others hear audio from round 2
    features, masks = _batch(THREE, seed=3)
    model = PMR(THREE, hub_init=hub_init, n_layers=n_layers, dim=8, n_heads=2).eval()
    _, _, streams, _ = model.streams(features, masks)
    _, _, changed, _ = model.streams(_changed(features, "audio"), masks)
    for m in ("text", "vision"):
        difference = (changed[m] - streams[m])[masks[m]].abs().max()
        assert float(difference.detach()) > 1e-4, m


def test_a_learned_hub_reaches_the_other_modalities_only_from_the_second_round() -> None:
    features, masks = _batch(THREE, seed=3)
    model = PMR(THREE, hub_init="learned", n_layers=1, dim=8, n_heads=2).eval()
    _, _, streams, _ = model.streams(features, masks)
    _, _, changed, _ = model.streams(_changed(features, "audio"), masks)
    assert torch.equal(changed["text"], streams["text"])


def test_merge_weights_are_a_softmax_over_modalities_per_sample_and_hub_step() -> None:
    merge = MessageMerge(4, 0.0, 0.0).eval()
    messages = torch.randn(2, 5, 3, 4)
    weights = merge.weights(messages)
    assert weights.shape == (2, 5, 3)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 5))
    assert float(weights.detach().std(-1).max()) > 0.0  # not uniform
    # per sample: changing sample 1 leaves sample 0's weights alone
    other = messages.clone()
    other[1] = torch.randn(5, 3, 4)
    assert torch.equal(merge.weights(other)[0], weights[0])
    expected = (weights.unsqueeze(-1) * messages).sum(-2)
    expected = expected + merge.feedforward(merge.norm(expected))
    assert torch.allclose(merge(messages), expected, atol=1e-6)


# --- training behaviour ----------------------------------------------------------------------


def test_eval_is_deterministic_and_training_draws_dropout() -> None:
    features, masks = _batch(THREE)
    model = PMR(THREE, **SMALL, embed_dropout=0.3)
    model.eval()
    assert torch.equal(model(features, masks).prediction, model(features, masks).prediction)
    model.train()
    assert not torch.equal(model(features, masks).prediction, model(features, masks).prediction)


def test_every_parameter_gets_a_gradient() -> None:
    features, masks = _batch(THREE)
    for options in ({}, {"hub_init": "learned", "hub_length": 2}):
        model = PMR(THREE, **SMALL, **NO_DROPOUT, **options).train()
        model.loss(model(features, masks), torch.randn(4)).total.backward()
        missing = [name for name, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
        assert missing == [], missing


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": 8.0}, "dim"),
        ({"n_heads": 3}, "n_heads"),
        ({"n_heads": 0}, "n_heads"),
        ({"n_layers": 0}, "n_layers"),
        ({"memory_layers": 0}, "memory_layers"),
        ({"hub_init": "zeros"}, "hub_init"),
        ({"hub_length": 0}, "hub_length"),
        ({"reinforce": "yes"}, "reinforce"),
        ({"kernel_size": 2}, "kernel_size"),
        ({"attn_dropout": 1.0}, "attn_dropout"),
        ({"relu_dropout": -0.1}, "relu_dropout"),
        ({"res_dropout": "0.1"}, "res_dropout"),
        ({"embed_dropout": 2}, "embed_dropout"),
        ({"out_dropout": 1.5}, "out_dropout"),
        ({"task": "ranking"}, "task"),
        ({"task": "classification"}, "n_classes"),
    ],
)
def test_bad_options_raise_a_value_error_naming_the_argument(options: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}:"):
        PMR(THREE, **{"dim": 8, "n_heads": 2, **options})


def test_one_modality_is_rejected_and_wrong_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"^input_dims:"):
        PMR({"text": 4})
    model = PMR(THREE, **SMALL)
    features, masks = _batch(THREE)
    with pytest.raises(ValueError, match=r"^features"):
        model({m: x for m, x in features.items() if m != "audio"}, masks)
