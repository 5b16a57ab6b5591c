"""Every registered model honours the zoo interface: shapes, masks, one step of learning."""

from __future__ import annotations

import sys

import pytest
import torch

from alignkit_models.registry import create_model, list_models

MODEL_NAMES = [info.name for info in list_models()]

# (input dims, padded lengths, task, classes): MOSI-, SIMS- and UCI-shaped inputs, kept short.
SHAPES = {
    "mosi": ({"text": 768, "audio": 5, "vision": 20}, {"text": 8, "audio": 8, "vision": 8}, "regression", None),
    "sims": ({"text": 768, "audio": 33, "vision": 709}, {"text": 7, "audio": 20, "vision": 11}, "regression", None),
    "uci": ({"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}, dict.fromkeys(["fou", "fac", "kar", "pix", "zer", "mor"], 1), "classification", 10),
}


def _batch(shape: str, aligned: bool, batch: int = 4, seed: int = 0):
    dims, lengths, task, n_classes = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(batch, lengths[m], d, generator=g) for m, d in dims.items()}
    masks = {}
    for m, t in lengths.items():
        valid = torch.full((batch,), t) if aligned else torch.randint(1, t + 1, (batch,), generator=g)
        masks[m] = torch.arange(t)[None, :] < valid[:, None]
        features[m] = features[m] * masks[m][..., None]
    labels = torch.randint(0, n_classes, (batch,), generator=g) if task == "classification" else torch.rand(batch, generator=g) * 6 - 3
    return dims, task, n_classes, features, masks, labels


def _model(name: str, shape: str):
    dims, _, task, n_classes = SHAPES[shape]
    return create_model(name, input_dims=dims, task=task, n_classes=n_classes)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("shape", "aligned"), [("mosi", True), ("mosi", False), ("sims", False), ("uci", True)])
def test_forward_shapes(name: str, shape: str, aligned: bool) -> None:
    dims, task, n_classes, features, masks, labels = _batch(shape, aligned)
    model = _model(name, shape).eval()
    output = model(features, masks)
    expected = (4,) if task == "regression" else (4, n_classes)
    assert tuple(output.prediction.shape) == expected
    assert bool(torch.isfinite(output.prediction).all())


# The authors' DecAlign pools and attends over every step, padding included; its masked form is
# an option (use_masks=True, the alignkit variant's default), and that is what is checked here.
MASKED = {"decalign": {"use_masks": True}}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padded_steps_do_not_change_the_prediction(name: str) -> None:
    _, _, _, features, masks, _ = _batch("sims", aligned=False)
    dims, _, task, n_classes = SHAPES["sims"]
    model = create_model(name, input_dims=dims, task=task, n_classes=n_classes, **MASKED.get(name, {})).eval()
    reference = model(features, masks).prediction
    noisy = {m: torch.where(masks[m][..., None], x, torch.randn_like(x) * 100) for m, x in features.items()}
    assert torch.allclose(model(noisy, masks).prediction, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", ["mosi", "uci"])
def test_one_optimizer_step_lowers_the_training_loss_on_a_fixed_batch(name: str, shape: str) -> None:
    _, _, _, features, masks, labels = _batch(shape, aligned=True, batch=8)
    model = _model(name, shape).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def training_loss() -> torch.Tensor:
        torch.manual_seed(123)  # the same dropout masks before and after the step
        return model.loss(model(features, masks, labels), labels).total

    before = training_loss()
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = training_loss()
    assert float(after) < float(before.detach())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_registry_entry_is_documented(name: str) -> None:
    info = next(i for i in list_models() if i.name == name)
    assert info.summary and info.modalities and info.fidelity in ("faithful", "adapted")
    module = sys.modules[info.cls.__module__]
    assert info.cls.__module__.startswith("alignkit_models.models.")
    assert module.__doc__ and len(module.__doc__.strip()) > 200  # cites the paper and lists departures
