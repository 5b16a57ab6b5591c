"""No model of the zoo is stuck at chance: each learns two small, clearly learnable tasks.

Every registered model trains briefly (Adam, the trainer's gradient clipping, a plain loop of
``loss(...).total.backward()`` steps) on synthetic text/audio/vision sequences and must then
beat the trivial predictor on held-out samples by a wide margin:

- classification: 4 classes, each class a fixed random prototype per modality, repeated at every
  step under Gaussian noise (the class is visible in every modality); oracle: chance, 1/4.
  Accuracy must reach ``MIN_ACCURACY`` (0.8);
- regression (MOSI-like): a latent ``z ~ N(0, I_2)`` seen by every modality through a fixed
  random projection plus noise, label ``y = 2.5 tanh(z_0 + z_1 / 2)`` in MOSI's ``[-3, 3]``;
  oracle: the mean predictor (the training labels' mean). The test MAE must be at most
  ``MAX_MAE_RATIO`` (0.7) times the mean predictor's.

A model whose prediction ignores its input, or that does not train, sits at chance and fails
both. Widths are shrunk (``SMALL_OPTIONS``) so that the whole file runs in a few minutes on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from alignkit_models.models.base import MultimodalModel
from alignkit_models.registry import create_model, list_models
from alignkit_models.training.config import ProtocolConfig
from alignkit_models.training.trainer import training_adam

MODEL_NAMES = [info.name for info in list_models()]

INPUT_DIMS = {"text": 16, "audio": 6, "vision": 10}
N_STEPS = 4
N_CLASSES = 4
TRAIN_SIZE, TEST_SIZE, BATCH_SIZE = 256, 128, 32
EPOCHS = 8
LEARNING_RATE = 2e-3
# The trainer's default clipping; CGGM's balance coefficients can explode without it (its docstring).
GRAD_CLIP = ProtocolConfig().grad_clip
MIN_ACCURACY = 0.8  # chance is 1 / N_CLASSES = 0.25
MAX_MAE_RATIO = 0.7  # test MAE over the mean predictor's

# Widths 16-32, one layer (and one memory layer: ~40 % less of DMD's and MulT's time), lengths matching
# N_STEPS; a model missing here runs with its defaults.
SMALL_OPTIONS: dict[str, dict[str, Any]] = {
    "aobert": {"dim": 32, "n_heads": 2, "n_layers": 1},
    "cenet": {"dim": 32, "n_heads": 2, "n_layers": 1},
    "cggm": {"dim": 16, "n_heads": 2, "n_layers": 1, "classifier_layers": 1},
    "cubemlp": {"channels": 16, "time_len": N_STEPS, "blocks": ((N_STEPS, 16), (2, 16))},
    "decalign": {"dim": 16, "n_heads": 2, "n_layers": 1, "n_components": 3},
    "dmd": {"dim": 16, "n_heads": 2, "n_layers": 1, "memory_layers": 1, "homo_code_dim": 8, "hetero_code_dim": 8},
    "early_fusion": {"hidden_dim": 32},
    "fdmer": {"hidden_dim": 32, "rnn_dim": 16},
    "late_fusion": {"hidden_dim": 16, "fusion_dim": 32},
    "lmf": {"hidden_dim": 16},
    "misa": {"hidden_dim": 32, "rnn_dim": 16},
    "mult": {"dim": 16, "n_heads": 2, "n_layers": 1, "memory_layers": 1},
    "pmr": {"dim": 16, "n_heads": 2, "n_layers": 1},
    "self_mm": {"rnn_dim": 16, "feature_dim": 16, "fusion_dim": 32, "head_dim": 16},
    "tfn": {"hidden_dim": 16, "post_fusion_dim": 32},
}

_TASK_SEED = 1234  # prototypes and projections: one fixed task, shared by the train and test splits
_TRAIN_SEED, _TEST_SEED = 1, 2


@dataclass
class Split:
    """``features[m]``: ``(N, N_STEPS, d_m)``; ``masks[m]``: ``(N, N_STEPS)`` all True; ``labels``: ``(N,)``."""

    features: dict[str, Tensor]
    masks: dict[str, Tensor]
    labels: Tensor

    def batch(self, index: Tensor) -> Split:
        return Split({m: x[index] for m, x in self.features.items()}, {m: x[index] for m, x in self.masks.items()}, self.labels[index])


def _full_masks(n: int) -> dict[str, Tensor]:
    return {m: torch.ones(n, N_STEPS, dtype=torch.bool) for m in INPUT_DIMS}


def classification_split(n: int, seed: int, noise: float = 1.0) -> Split:
    """Class ``y`` uniform over ``N_CLASSES``; ``x_m[n, t] = prototype_m[y_n] + noise * eps``."""
    task = torch.Generator().manual_seed(_TASK_SEED)
    prototypes = {m: torch.randn(N_CLASSES, d, generator=task) for m, d in INPUT_DIMS.items()}
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, N_CLASSES, (n,), generator=g)
    features = {m: prototypes[m][labels][:, None, :] + noise * torch.randn(n, N_STEPS, d, generator=g) for m, d in INPUT_DIMS.items()}
    return Split(features, _full_masks(n), labels)


def regression_split(n: int, seed: int, noise: float = 0.5) -> Split:
    """Latent ``z ~ N(0, I_2)``; ``x_m[n, t] = z_n A_m + noise * eps``; ``y = 2.5 tanh(z_0 + z_1 / 2)``."""
    task = torch.Generator().manual_seed(_TASK_SEED)
    projections = {m: torch.randn(2, d, generator=task) / math.sqrt(2) for m, d in INPUT_DIMS.items()}
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 2, generator=g)
    labels = 2.5 * torch.tanh(latent[:, 0] + 0.5 * latent[:, 1])
    features = {m: (latent @ projections[m])[:, None, :] + noise * torch.randn(n, N_STEPS, d, generator=g) for m, d in INPUT_DIMS.items()}
    return Split(features, _full_masks(n), labels)


def build(name: str, task: str) -> MultimodalModel:
    n_classes = N_CLASSES if task == "classification" else None
    return create_model(name, input_dims=INPUT_DIMS, task=task, n_classes=n_classes, **SMALL_OPTIONS.get(name, {}))


def train(model: MultimodalModel, split: Split, lr: float = LEARNING_RATE) -> None:
    """``EPOCHS`` shuffled passes of full batches: zero_grad, ``loss(...).total.backward()``, clip,
    step of the trainer's Adam (fused: the per-tensor loop of plain Adam was a third of DMD's step)."""
    optimizer = training_adam([{"params": list(model.parameters())}], lr=lr, weight_decay=0.0, device=torch.device("cpu"))
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(EPOCHS):
        permutation = torch.randperm(len(split.labels), generator=order)
        for start in range(0, len(permutation) - BATCH_SIZE + 1, BATCH_SIZE):
            batch = split.batch(permutation[start : start + BATCH_SIZE])
            optimizer.zero_grad(set_to_none=True)
            model.loss(model(batch.features, batch.masks, batch.labels), batch.labels).total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()


@torch.no_grad()
def predict(model: MultimodalModel, split: Split) -> Tensor:
    return model.eval()(split.features, split.masks).prediction


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_classification_accuracy_is_far_above_chance(name: str) -> None:
    model = build(name, "classification")
    train(model, classification_split(TRAIN_SIZE, _TRAIN_SEED))
    test = classification_split(TEST_SIZE, _TEST_SEED)
    accuracy = float((predict(model, test).argmax(-1) == test.labels).float().mean())
    assert accuracy >= MIN_ACCURACY, f"{name}: test accuracy {accuracy:.3f} < {MIN_ACCURACY} (chance {1 / N_CLASSES:.2f})"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_regression_mae_beats_the_mean_predictor(name: str) -> None:
    model = build(name, "regression")
    training = regression_split(TRAIN_SIZE, _TRAIN_SEED)
    train(model, training)
    test = regression_split(TEST_SIZE, _TEST_SEED)
    mae = float((predict(model, test) - test.labels).abs().mean())
    mean_predictor_mae = float((training.labels.mean() - test.labels).abs().mean())
    assert mae <= MAX_MAE_RATIO * mean_predictor_mae, (
        f"{name}: test MAE {mae:.3f} > {MAX_MAE_RATIO} x the mean predictor's {mean_predictor_mae:.3f} "
        f"(ratio {mae / mean_predictor_mae:.3f})"
    )


def test_small_options_name_registered_models() -> None:
    assert set(SMALL_OPTIONS) <= set(MODEL_NAMES)
