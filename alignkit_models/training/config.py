"""Run configuration: a per-data-set preset, overridden by a file and by ``--set key=value``.

Precedence (later wins): preset ``presets/<dataset>.yaml`` < ``--config FILE`` < ``--set`` <
explicit flags (``--seeds``, ``--epochs``). A bad value fails with one line naming the field.
"""

from __future__ import annotations

import inspect
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, ValidationError

from alignkit_models.data.catalog import dataset_info
from alignkit_models.metrics import metric_keys
from alignkit_models.registry import list_models

DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)


class ConfigError(ValueError):
    """A configuration problem, reported to users as one line."""


class ProtocolConfig(BaseModel):
    """The training protocol shared by every model on a data set (the paper's optimizer set-up).

    ``selection_metric`` is the validation metric for early stopping, the learning-rate schedule
    and the best checkpoint: a metric key of the data set (e.g. ``mae``, ``acc2_nonzero``,
    ``f1``, ``waf1``) or ``loss`` (the mean over validation batches of the task loss); None is
    the data set's default. ``loss``, ``mae`` are minimised, every other metric maximised.
    ``text_encoder_lr`` is the learning rate of a fine-tuned BERT text encoder (default ``lr``).
    ``drop_last`` drops the incomplete last training batch of each epoch. ``precision``: ``bf16``
    or ``fp16`` run the network under autocast (``fp16`` with loss scaling); the alignment losses
    always compute in float32. ``compile``: the training forward pass runs through
    ``torch.compile`` (inductor); evaluation stays eager. ``cuda_graphs``: the whole training
    step (forward, losses, backward, update) is captured once per batch shape and replayed from a
    CUDA graph (one CUDA process; fp32 or bf16; see :mod:`alignkit_models.training.graphs`).
    """

    model_config = ConfigDict(extra="forbid")

    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-4
    text_encoder_lr: PositiveFloat | None = None
    weight_decay: NonNegativeFloat = 0.005
    grad_clip: PositiveFloat | None = 0.6
    max_epochs: PositiveInt = 40
    lr_factor: float = Field(default=0.1, gt=0.0, lt=1.0)
    lr_patience: int = Field(default=4, ge=0)
    early_stopping_patience: PositiveInt = 8
    regression_loss: Literal["mse", "l1"] = "mse"
    selection_metric: str | None = None
    drop_last: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    cuda_graphs: bool = False


class PreprocessingConfig(BaseModel):
    """Feature preprocessing applied once after loading (the authors' MOSEI / CH-SIMS set-up):
    the ``standardize`` modalities are clipped to the training split's ``clip_percentiles``
    (per feature, over samples and steps) and standardised with its mean and std."""

    model_config = ConfigDict(extra="forbid")

    standardize: list[str] = Field(default_factory=list)
    clip_percentiles: tuple[float, float] = (0.5, 99.5)


class TrainConfig(BaseModel):
    """Everything a run needs; saved with every checkpoint so that a run can be resumed or evaluated."""

    model_config = ConfigDict(extra="forbid")

    model: str
    dataset: str
    data: str | None = None
    seeds: list[int] = Field(default_factory=lambda: list(DEFAULT_SEEDS), min_length=1)
    protocol: ProtocolConfig = ProtocolConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    model_options: dict[str, Any] = Field(default_factory=dict)
    device: str = "cpu"
    threads: PositiveInt | None = None
    output_dir: str = "runs"
    run_name: str | None = None
    progress: bool = True
    world_size: PositiveInt = 1  # processes that trained the run (set by the trainer; torchrun)
    # "model": the model's own reference protocol where the preset has one (``model_protocols``);
    # "shared": the data set's one protocol for every model (controlled comparisons).
    protocol_source: Literal["model", "shared"] = "model"


def load_preset(dataset: str) -> dict[str, Any]:
    """The preset of a data set as a plain dict: ``protocol`` (shared), per-model ``model_options``
    and ``model_protocols`` (each model's reference settings, laid over ``protocol``)."""
    dataset_info(dataset)  # a clear error for an unknown data set
    text = resources.files("alignkit_models.presets").joinpath(f"{dataset}.yaml").read_text()
    return yaml.safe_load(text) or {}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file holding any subset of :class:`TrainConfig` fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file not found: {path}")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping of fields in {path}, received {type(data).__name__}")
    return data


def apply_override(config: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` (the value parsed as YAML: numbers, lists, booleans)."""
    if "=" not in assignment:
        raise ConfigError(f"--set: expected key=value, received {assignment!r}")
    key, raw = assignment.split("=", 1)
    *parents, leaf = key.strip().split(".")
    target = config
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a group of fields")
    target[leaf] = yaml.safe_load(raw)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def build_config(
    model: str,
    dataset: str,
    *,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    **explicit: Any,
) -> TrainConfig:
    """Preset < file < ``--set`` overrides < explicit keyword values (None means "not given").

    The preset's protocol is the data set's shared one, with the model's own reference settings
    (``model_protocols``) laid over it unless ``protocol_source`` is ``"shared"``.
    """
    preset = load_preset(dataset)
    user: dict[str, Any] = {}
    if config_file is not None:
        user = _deep_merge(user, read_config_file(config_file))
    for assignment in overrides or []:
        apply_override(user, assignment)
    for key, value in explicit.items():
        if value is None:
            continue
        if key in ("max_epochs", "precision", "compile", "cuda_graphs"):
            user.setdefault("protocol", {})[key] = value
        else:
            user[key] = value
    protocol = preset.get("protocol", {})
    if user.get("protocol_source", "model") == "model":
        protocol = _deep_merge(protocol, preset.get("model_protocols", {}).get(model, {}))
    # The preset lists options per model; keep only this model's.
    raw: dict[str, Any] = {
        "model": model,
        "dataset": dataset,
        "protocol": protocol,
        "preprocessing": preset.get("preprocessing", {}),
        "model_options": preset.get("model_options", {}).get(model, {}),
    }
    raw = _deep_merge(raw, user)
    return validate_config(raw)


def validate_config(raw: dict[str, Any]) -> TrainConfig:
    """Validate a raw config, turning every problem into one :class:`ConfigError` line."""
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        received = first.get("input")
        raise ConfigError(f"{field}: {first['msg']} (received {received!r})") from None
    check_model_options(config.model, config.model_options)
    info = dataset_info(config.dataset)
    selection = config.protocol.selection_metric
    if selection is not None and selection != "loss" and selection not in metric_keys(info.metrics):
        raise ConfigError(
            f"protocol.selection_metric: expected 'loss' or a metric of {config.dataset!r} "
            f"({', '.join(metric_keys(info.metrics))}), received {selection!r}"
        )
    return config


def check_model_options(model: str, options: dict[str, Any]) -> None:
    """Unknown model names or options fail here, before any data is loaded."""
    models = {info.name: info.cls for info in list_models()}
    if model not in models:
        raise ConfigError(f"model: expected one of {sorted(models)}, received {model!r}")
    accepted = set(inspect.signature(models[model].__init__).parameters) - {"self", "input_dims", "task", "n_classes", "regression_loss"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"model_options.{unknown[0]}: not an option of {model!r} (options: {', '.join(sorted(accepted))})")
