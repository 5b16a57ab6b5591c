"""CGGM against the authors' released code (zrguo/CGGM, NeurIPS 2024): same weights, same numbers.

The oracle is the authors' own code, imported from a checkout named by the environment variable
``ALIGNKIT_CGGM_REFERENCE``; without it every test here is skipped. To run them::

    git clone https://github.com/zrguo/CGGM /tmp/cggm-ref        # written against commit 21e428c
    ALIGNKIT_CGGM_REFERENCE=/tmp/cggm-ref CI=true python -m pytest -q tests/models/test_cggm_reference.py

Their modules import numpy, scikit-learn (the training loop's batch accuracy) and einops (used
only by their segmentation loss; when einops is not installed, a stand-in whose ``rearrange``
raises takes its place while their modules are imported). Nothing of their code is copied here:
the tests build their ``MSAModel`` and ``ClassifierGuided`` and run their ``train_model`` loop.

Sizes: MOSI's input widths (text 768, audio 5, vision 20), unequal lengths, zero-padded samples
(their code has no masks), a small width (d 10, 5 heads, 4 encoder layers, 2 fusion layers, 2
classifier layers) and random weights everywhere, biases and LayerNorms included.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from alignkit_models.layers.transformer import fairseq_positions
from alignkit_models.models.cggm import CGGM
from alignkit_models.models.cggm_reference import (
    REFERENCE_OPTIONS,
    convert_reference_state_dict,
    from_reference_state_dict,
    infer_options,
)

WIDTHS = {"text": 768, "audio": 5, "vision": 20}
STEPS = {"text": 6, "audio": 7, "vision": 5}
DIM, HEADS, LAYERS, CLASSIFIER_LAYERS = 10, 5, 4, 2
BATCH = 8  # their loop wraps the model in DataParallel above 10 samples
MOSI_DROPOUTS = {"relu_dropout": 0.15, "embed_dropout": 0.2, "res_dropout": 0.1, "out_dropout": 0.1, "attn_dropout": 0.15}
NO_DROPOUT = dict.fromkeys(MOSI_DROPOUTS, 0.0)
_THEIR_PACKAGES = ("models", "modules", "src")
# Their position helper resizes an ``out=`` tensor as it grows, which torch reports each time.
pytestmark = pytest.mark.filterwarnings("ignore:The number of elements in the out tensor:UserWarning")


def _einops_stand_in() -> types.ModuleType:
    module = types.ModuleType("einops")

    def rearrange(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("einops stand-in: only CGGM's segmentation loss calls rearrange; install einops to use it")

    module.rearrange = rearrange  # type: ignore[attr-defined]
    return module


@pytest.fixture(scope="module")
def reference() -> types.SimpleNamespace:
    """Their ``models.msamodel``, ``src.msatrain`` and ``src.eval_metrics``, imported from the checkout.

    Their top-level package names (``models``, ``src``...) are generic, so they are imported with
    the checkout first on ``sys.path`` and removed from ``sys.modules`` afterwards.
    """
    root = os.environ.get("ALIGNKIT_CGGM_REFERENCE")
    if not root or not (Path(root) / "models" / "msamodel.py").is_file():
        # Deliberate: the reference is a third-party checkout we do not ship; the skip says how to get it.
        pytest.skip(
            "CGGM's released code not found: git clone https://github.com/zrguo/CGGM and set "
            "ALIGNKIT_CGGM_REFERENCE to the checkout"
        )
    pytest.importorskip("sklearn", reason="CGGM's released code needs scikit-learn")
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] in _THEIR_PACKAGES}
    for name in saved:
        del sys.modules[name]
    stand_in = importlib.util.find_spec("einops") is None
    if stand_in:
        sys.modules["einops"] = _einops_stand_in()
    sys.path.insert(0, root)
    try:
        loaded = types.SimpleNamespace(
            msamodel=importlib.import_module("models.msamodel"),
            positions=importlib.import_module("modules.position_embedding"),
            msatrain=importlib.import_module("src.msatrain"),
            metrics=importlib.import_module("src.eval_metrics"),
        )
    finally:
        sys.path.remove(root)
        for name in [name for name in sys.modules if name.split(".")[0] in _THEIR_PACKAGES]:
            del sys.modules[name]
        sys.modules.update(saved)
        if stand_in:
            del sys.modules["einops"]
    assert Path(loaded.msamodel.__file__).resolve().is_relative_to(Path(root).resolve())
    return loaded


def _randomize(module: nn.Module, seed: int) -> None:
    """Every parameter drawn anew (their init leaves biases 0 and LayerNorms 1, which would hide
    a dropped bias or a swapped norm)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


def _their_model(reference: types.SimpleNamespace, output_dim: int, dropouts: dict[str, float], seed: int = 0) -> nn.Module:
    model = reference.msamodel.MSAModel(
        output_dim, tuple(WIDTHS.values()), DIM, HEADS, LAYERS,
        dropouts["relu_dropout"], dropouts["embed_dropout"], dropouts["res_dropout"], dropouts["out_dropout"], dropouts["attn_dropout"],
    )
    _randomize(model, seed)
    with torch.no_grad():
        # Padded audio steps (zeros) then project to exactly 0 in channel 0, which fairseq's
        # position table reads as padding: the quirk is exercised.
        model.proj[1].bias[0] = 0.0
    return model


def _their_classifiers(reference: types.SimpleNamespace, output_dim: int, dropouts: dict[str, float], seed: int = 1) -> nn.Module:
    classifiers = reference.msamodel.ClassifierGuided(
        output_dim, len(WIDTHS), DIM, HEADS, CLASSIFIER_LAYERS,
        dropouts["relu_dropout"], dropouts["embed_dropout"], dropouts["res_dropout"], dropouts["attn_dropout"],
    )
    _randomize(classifiers, seed)
    return classifiers


def _batch(seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """Features zero-padded at the end, their masks, and sentiment labels in [-3, 3]."""
    g = torch.Generator().manual_seed(seed)
    features, masks = {}, {}
    for m, width in WIDTHS.items():
        lengths = torch.randint(1, STEPS[m] + 1, (BATCH,), generator=g)
        lengths[0] = STEPS[m]
        masks[m] = torch.arange(STEPS[m])[None, :] < lengths[:, None]
        features[m] = torch.randn(BATCH, STEPS[m], width, generator=g) * masks[m].unsqueeze(-1)
    labels = 6 * torch.rand(BATCH, generator=g) - 3
    return features, masks, labels


def _their_inputs(features: dict[str, Tensor]) -> list[Tensor]:
    return [features[m].clone() for m in WIDTHS]  # their forward overwrites the list's items


def _cloned(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in state.items()}


# --- predictions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 9, 40])
def test_fairseq_positions_equal_sinusoidal_positional_embedding(reference: types.SimpleNamespace, dim: int) -> None:
    x = torch.randn(3, 7, dim)
    x[0, 0, 0] = x[1, 4, 0] = 0.0  # read as padding by fairseq: no position
    expected = reference.positions.SinusoidalPositionalEmbedding(dim)(x[:, :, 0])
    torch.testing.assert_close(fairseq_positions(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("output_dim", [1, 4], ids=["regression", "classification"])
def test_predictions_equal_msamodel(reference: types.SimpleNamespace, output_dim: int) -> None:
    theirs = _their_model(reference, output_dim, MOSI_DROPOUTS).eval()
    ours = from_reference_state_dict(theirs.state_dict(), n_heads=HEADS).eval()
    for seed in (0, 1):
        features, masks, _ = _batch(seed)
        with torch.no_grad():
            expected, _ = theirs(_their_inputs(features))
            output = ours(features, masks)
        expected = expected.squeeze(-1) if output_dim == 1 else expected
        torch.testing.assert_close(output.prediction, expected, rtol=1e-5, atol=1e-5)


def test_guidance_classifiers_equal_classifier_guided(reference: types.SimpleNamespace) -> None:
    theirs, classifiers = _their_model(reference, 1, MOSI_DROPOUTS).eval(), _their_classifiers(reference, 1, MOSI_DROPOUTS).eval()
    ours = from_reference_state_dict(theirs.state_dict(), classifiers.state_dict(), n_heads=HEADS).eval()
    features, _, _ = _batch(0)
    with torch.no_grad():
        _, encoded = theirs(_their_inputs(features))  # (T, B, d) each, what their classifiers read
        expected = classifiers(encoded)
        for i, m in enumerate(WIDTHS):
            x = encoded[i].transpose(0, 1)
            _, logits = ours.classifiers[m](x, torch.ones(x.shape[:2], dtype=torch.bool))
            torch.testing.assert_close(logits, expected[i], rtol=1e-5, atol=1e-5, msg=m)


def test_batch_accuracies_equal_train_eval_senti(reference: types.SimpleNamespace) -> None:
    theirs, classifiers = _their_model(reference, 1, NO_DROPOUT), _their_classifiers(reference, 1, NO_DROPOUT)
    ours = from_reference_state_dict(theirs.state_dict(), classifiers.state_dict(), n_heads=HEADS, **NO_DROPOUT).train()
    features, masks, labels = _batch(0)
    _, encoded = theirs.train()(_their_inputs(features))
    expected = classifiers.train()(encoded)
    components = ours(features, masks, labels).components
    for i, m in enumerate(WIDTHS):
        assert float(components[f"accuracy_{m}"]) == pytest.approx(reference.metrics.train_eval_senti(expected[i], labels))


# --- training ------------------------------------------------------------------------------------


class _RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps, at every step, each parameter's gradient by name."""

    def __init__(self, named_parameters: Iterable[tuple[str, nn.Parameter]], lr: float) -> None:
        named = list(named_parameters)
        super().__init__([p for _, p in named], lr=lr)
        self.named = named
        self.gradients: list[dict[str, Tensor]] = []

    def step(self, closure: Any = None) -> Any:
        self.gradients.append({name: p.grad.clone() for name, p in self.named if p.grad is not None})
        return super().step(closure)


def test_two_training_steps_give_the_gradients_of_the_reference_loop(reference: types.SimpleNamespace) -> None:
    """Their ``train_model`` (one epoch of two batches, SGD, clipping disabled) against
    ``model.loss(...).total.backward()``: step 1 checks the classifiers' gradients and the
    magnitude modulation from accuracy gains over 0; step 2 the accuracy memory and the
    one-step-late direction term, which only their fusion output layer receives."""
    lr = 0.1
    theirs, classifiers = _their_model(reference, 1, NO_DROPOUT), _their_classifiers(reference, 1, NO_DROPOUT)
    ours = from_reference_state_dict(_cloned(theirs.state_dict()), _cloned(classifiers.state_dict()), n_heads=HEADS, **NO_DROPOUT)
    batches = [_batch(seed) for seed in (2, 3)]

    settings = {
        "model": theirs,
        "classifier": classifiers,
        "optimizer": _RecordingSGD(theirs.named_parameters(), lr),
        "cls_optimizer": _RecordingSGD(classifiers.named_parameters(), lr),
        "criterion": nn.L1Loss(),
    }
    settings["scheduler"] = torch.optim.lr_scheduler.ReduceLROnPlateau(settings["optimizer"], patience=10, factor=0.1)
    hyp = types.SimpleNamespace(
        num_mod=3, dataset="mosi", modulation="cggm", rou=REFERENCE_OPTIONS["rho"], lamda=REFERENCE_OPTIONS["direction_weight"],
        clip=1e9, num_epochs=1, batch_size=BATCH, n_train=2 * BATCH, n_valid=BATCH, n_test=BATCH, use_cuda=False,
    )

    def loader(items: list[tuple[dict[str, Tensor], dict[str, Tensor], Tensor]]) -> list[dict[str, Tensor]]:
        return [{**{m: f[m].clone() for m in WIDTHS}, "labels": y.view(-1, 1, 1)} for f, _, y in items]  # MOSI's (B, 1, 1)

    reference.msatrain.train_model(settings, hyp, loader(batches), loader([_batch(4)]), loader([_batch(5)]))

    optimizer = _RecordingSGD(ours.named_parameters(), lr)
    scales = []
    for features, masks, labels in batches:
        ours.train()
        optimizer.zero_grad()
        output = ours(features, masks, labels)
        ours.loss(output, labels).total.backward()
        optimizer.step()
        scales.append([REFERENCE_OPTIONS["rho"] * float(output.components[f"balance_{m}"]) for m in WIDTHS])

    for step in range(2):
        expected = convert_reference_state_dict(
            settings["optimizer"].gradients[step], ours, settings["cls_optimizer"].gradients[step]
        )
        received = optimizer.gradients[step]
        assert set(received) == set(expected) == {name for name, _ in ours.named_parameters()}
        for name, gradient in expected.items():
            torch.testing.assert_close(received[name], gradient, rtol=1e-5, atol=1e-6, msg=f"step {step + 1}: {name}")
    # The comparison means something: modulation far from 1 at both steps, a direction term at step 2.
    assert all(any(abs(s - 1.0) > 0.05 for s in step_scales) and max(map(abs, step_scales)) < 10 for step_scales in scales)
    assert float(ours.pending_direction_gradient.abs().sum()) > 0.0


# --- converter -----------------------------------------------------------------------------------


def test_shapes_are_read_from_the_state_dicts(reference: types.SimpleNamespace) -> None:
    theirs, classifiers = _their_model(reference, 1, MOSI_DROPOUTS), _their_classifiers(reference, 1, MOSI_DROPOUTS)
    assert infer_options(theirs.state_dict(), classifiers.state_dict()) == {
        "input_dims": WIDTHS, "dim": DIM, "n_layers": LAYERS, "fusion_layers": LAYERS - 2, "classifier_layers": CLASSIFIER_LAYERS,
    }
    prefixed = {f"module.{key}": value for key, value in theirs.state_dict().items()}
    model = from_reference_state_dict(prefixed, n_heads=HEADS)
    assert isinstance(model, CGGM) and model.padding == "included" and not model.modulate_projections


def test_unknown_and_missing_keys_are_named(reference: types.SimpleNamespace) -> None:
    state = _their_model(reference, 1, MOSI_DROPOUTS).state_dict()
    with pytest.raises(ValueError, match=r"encoders\.0\.layers\.0\.extra"):
        from_reference_state_dict({**state, "encoders.0.layers.0.extra": torch.zeros(1)}, n_heads=HEADS)
    with pytest.raises(ValueError, match=r"fusion\.norm\.weight"):
        from_reference_state_dict({k: v for k, v in state.items() if k != "fusion.layer_norm.weight"}, n_heads=HEADS)
    with pytest.raises(ValueError, match="classifier_state_dict.*'bone'"):
        from_reference_state_dict(state, {"bone": torch.zeros(1)}, n_heads=HEADS)
    with pytest.raises(ValueError, match="dim"):
        from_reference_state_dict(state, n_heads=HEADS, dim=DIM + 2)


def test_the_one_step_late_direction_needs_weight_mode() -> None:
    with pytest.raises(ValueError, match="direction_step"):
        CGGM(WIDTHS, direction="gradient", direction_step="next")


def test_weight_mode_sends_the_direction_gradient_to_the_fusion_output_layer_only() -> None:
    """The code's ``cls_optimizer.zero_grad()`` discards the classifiers' share of ``L_gm``'s gradient."""
    model = CGGM(WIDTHS, dim=DIM, n_heads=HEADS, n_layers=3, classifier_layers=1, direction="weight", **NO_DROPOUT).train()
    features, masks, labels = _batch(0)
    output = model(features, masks, labels)
    outputs = [model.head.out.weight, *(classifier.out.weight for classifier in model.classifiers.values())]
    fusion, *classifiers = torch.autograd.grad(output.aux_losses["direction"], outputs, allow_unused=True)
    assert float(fusion.abs().sum()) > 0.0 and all(g is None for g in classifiers)
