"""The trainer: one protocol for every model of the zoo.

For each seed: Adam (weight decay), gradient clipping, ReduceLROnPlateau on the validation
metric, early stopping on it, the best-on-validation checkpoint (``best.pt``) and the last one
(``last.pt``, with optimizer, scheduler, RNG and data-order state so that ``resume`` continues
bit-for-bit), then test metrics of the best checkpoint. Across seeds: mean and std per metric,
written as ``results.json`` and ``results.csv`` in the run folder::

    <output_dir>/<run_name>/config.json
    <output_dir>/<run_name>/seed-<s>/{last.pt, best.pt, history.json, metrics.json}
    <output_dir>/<run_name>/results.{json,csv}

Under ``torchrun --nproc_per_node=N`` every process trains a DistributedDataParallel copy on its
slice of each global batch of ``protocol.batch_size`` (:mod:`alignkit_models.training.distributed`);
rank zero alone writes the run folder and shows progress.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from alignkit_models.data.base import MultimodalDataset, MultimodalSplit, SplitDataset, collate, ordered_batches
from alignkit_models.data.catalog import dataset_info, load_dataset
from alignkit_models.data.preprocess import standardize_features
from alignkit_models.metrics import MINIMISED, PRIMARY_METRIC, compute_metrics
from alignkit_models.models.base import MultimodalModel
from alignkit_models.registry import create_model
from alignkit_models.training.checkpoint import atomic_write_text, load_checkpoint, read_json, save_checkpoint
from alignkit_models.training.config import ProtocolConfig, TrainConfig, validate_config
from alignkit_models.training.graphs import GraphedTrainStep, device_learning_rates, graph_ready_adam
from alignkit_models.training.distributed import (
    GlobalBatchSampler,
    all_gather_objects,
    barrier,
    broadcast,
    init_from_environment,
    is_main,
    local_batch_size,
    rank,
    world_size,
)


@dataclass
class SeedResult:
    seed: int
    best_epoch: int
    epochs_run: int
    valid: dict[str, float]
    test: dict[str, float]
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: TrainConfig, dataset: MultimodalDataset) -> MultimodalModel:
    return create_model(
        config.model,
        input_dims=dataset.input_dims,
        task=dataset.task,
        n_classes=dataset.n_classes,
        regression_loss=config.protocol.regression_loss,
        **config.model_options,
    )


def prepare_dataset(config: TrainConfig, path: str | Path | None = None) -> MultimodalDataset:
    """The data set of ``config`` (from ``path``, default ``config.data``) with its preprocessing;
    token ids for the text when the model has a BERT text encoder."""
    text = "tokens" if config.model_options.get("text_encoder") else "features"
    dataset = load_dataset(config.dataset, path if path is not None else config.data, text=text)
    if config.preprocessing.standardize:
        standardize_features(dataset, config.preprocessing.standardize, tuple(config.preprocessing.clip_percentiles))
    return dataset


def load_trained(checkpoint_path: str | Path, data: str | Path | None = None) -> tuple[TrainConfig, MultimodalDataset, MultimodalModel]:
    """The config, data set and trained model (on the CPU, in eval mode) of a saved checkpoint.
    ``data``: the MMSA pickle, when it is not where the run found it."""
    checkpoint = load_checkpoint(checkpoint_path)
    config = validate_config(checkpoint["config"])
    dataset = prepare_dataset(config, data)
    model = build_model(config, dataset)
    model.load_state_dict(checkpoint["model_state"])
    return config, dataset, model.eval()


def set_threads(threads: int | None) -> None:
    """Intra-op CPU threads for this process; None keeps torch's default (``$OMP_NUM_THREADS``,
    else the physical cores). Several runs side by side each need fewer: two processes with two
    threads each on two cores ran 5-25x slower than one."""
    if threads is not None:
        torch.set_num_threads(threads)


def selection_rule(config: TrainConfig) -> tuple[str, str]:
    """The validation metric that selects checkpoints, and ``"min"`` or ``"max"``."""
    kind = dataset_info(config.dataset).metrics
    metric = config.protocol.selection_metric or PRIMARY_METRIC[kind][0]
    return metric, "min" if metric in MINIMISED else "max"


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        "features": {m: x.to(device, non_blocking=True) for m, x in batch["features"].items()},
        "masks": {m: x.to(device, non_blocking=True) for m, x in batch["masks"].items()},
        "labels": batch["labels"].to(device, non_blocking=True),
    }


@dataclass
class SplitPredictions:
    """What :func:`predict` returns for a split.

    Attributes:
        predictions: ``(N,)`` for regression, ``(N, n_classes)`` logits for classification.
        labels: ``(N,)``.
        loss: the mean over batches of the task loss (each batch counts once, as in the
            authors' DecAlign and MMSA trainers).
        components: with ``components=True``, the mean over batches of each unweighted loss
            component the model reports in evaluation mode given the labels (DecAlign's
            alignment terms); else empty.
    """

    predictions: torch.Tensor
    labels: torch.Tensor
    loss: float
    components: dict[str, float]


@torch.no_grad()
def predict(
    model: MultimodalModel,
    split: MultimodalSplit,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    *,
    components: bool = False,
) -> SplitPredictions:
    """Predictions of a whole split in eval mode (see :class:`SplitPredictions`)."""
    model.eval()
    loader = ordered_batches(split, model.modalities, batch_size)
    predictions, labels, losses = [], [], []
    sums: dict[str, torch.Tensor] = {}  # on the device: no host sync per batch for logging
    # Passing labels makes DecAlign compute its alignment terms, and k-means++ starts draw random
    # numbers: fork the generators so that logging them leaves the training run unchanged.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=components):
        for batch in loader:
            batch = to_device(batch, device)
            with autocast(device, precision):
                output = model(batch["features"], batch["masks"], batch["labels"] if components else None)
            prediction = output.prediction
            losses.append(float(model.task_loss(prediction.float(), batch["labels"])))
            for key, value in output.components.items():
                sums[key] = sums[key] + value.detach().double() if key in sums else value.detach().double()
            predictions.append(prediction.float().cpu())
            labels.append(batch["labels"].cpu())
    return SplitPredictions(torch.cat(predictions), torch.cat(labels), float(np.mean(losses)), {k: float(v) / len(losses) for k, v in sums.items()})


def evaluate(model: MultimodalModel, split: MultimodalSplit, metrics: str, batch_size: int, device: torch.device, precision: str = "fp32") -> dict[str, float]:
    """The data set's metrics on ``split`` plus ``loss``, the validation task loss."""
    return metrics_of(predict(model, split, batch_size, device, precision), metrics)


def metrics_of(result: SplitPredictions, metrics: str) -> dict[str, float]:
    """The metrics of family ``metrics`` for ``result``, plus its task ``loss``."""
    return {**compute_metrics(metrics, result.predictions, result.labels), "loss": result.loss}


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if mode == "min" else value > best


def _rng_state(loader_generator: torch.Generator) -> dict[str, Any]:
    """Every RNG's state as tensors and plain data, so checkpoints load with ``weights_only=True``."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
        "loader": loader_generator.get_state(),
    }


def _restore_rng(state: dict[str, Any], loader_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate(state["python"])
    loader_generator.set_state(state["loader"])


def train_seed(
    config: TrainConfig,
    dataset: MultimodalDataset,
    seed: int,
    seed_dir: Path,
    *,
    resume: bool = False,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> SeedResult:
    """Train one seed to early stopping (or ``max_epochs``) and test its best checkpoint.

    With ``resume`` and a ``last.pt`` in ``seed_dir``, training continues after the last
    finished epoch with every state restored, giving the same result as an uninterrupted run.
    ``on_epoch(epoch, record)`` is called after each epoch (used by tests to interrupt a run).
    """
    started = time.perf_counter()
    main = is_main()
    if main:
        seed_dir.mkdir(parents=True, exist_ok=True)
    protocol = config.protocol
    device = init_from_environment(config.device)
    metric_kind = dataset_info(config.dataset).metrics
    primary, mode = selection_rule(config)

    seed_everything(seed)
    model = build_model(config, dataset).to(device)
    network: torch.nn.Module = model
    if world_size() > 1:
        # Same initial weights everywhere (DDP also broadcasts them); independent dropout per process.
        torch.manual_seed(seed + 7919 * rank())
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    if protocol.cuda_graphs:
        check_graphable(protocol, device)
        optimizer = graph_ready_adam(parameter_groups(model, protocol.text_encoder_lr), lr=protocol.lr, weight_decay=protocol.weight_decay, device=device)
    else:
        optimizer = training_adam(parameter_groups(model, protocol.text_encoder_lr), lr=protocol.lr, weight_decay=protocol.weight_decay, device=device)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=protocol.lr_factor, patience=protocol.lr_patience)
    scaler = torch.amp.GradScaler(device.type, enabled=protocol.precision == "fp16")
    loader_generator = torch.Generator().manual_seed(seed)
    if protocol.compile:
        network = torch.compile(network)
    local_batch_size(protocol.batch_size)  # the processes must divide the global batch
    sampler = GlobalBatchSampler(
        len(dataset.train),
        protocol.batch_size,
        # By default the incomplete last batch is dropped (the order is reshuffled every epoch):
        # batch statistics (BatchNorm in TFN/LMF, DecAlign's prototypes, moments and MMD) want
        # full batches. The authors' DecAlign trainer keeps it (protocol.drop_last=false).
        drop_last=protocol.drop_last and len(dataset.train) > protocol.batch_size,
        generator=loader_generator,
    )
    loader = DataLoader(SplitDataset(dataset.train, model.modalities), batch_sampler=sampler, generator=loader_generator, collate_fn=collate)

    state = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "history": []}
    last_path = seed_dir / "last.pt"
    if resume and last_path.exists():
        checkpoint = load_checkpoint(last_path)
        model.load_state_dict(checkpoint["model_state"])
        kernels = [{key: group[key] for key in ("foreach", "fused")} for group in optimizer.param_groups]
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        for group, kernel in zip(optimizer.param_groups, kernels):
            group.update(kernel)  # the saved numbers, this version's update kernel (older checkpoints say foreach)
        if protocol.cuda_graphs:
            device_learning_rates(optimizer, device)
        scheduler.load_state_dict(checkpoint["scheduler_state"])
        if checkpoint.get("scaler_state"):
            scaler.load_state_dict(checkpoint["scaler_state"])
        states = checkpoint.get("rng_by_rank") or [checkpoint["rng"]]  # "rng": checkpoints of one process
        _restore_rng(states[rank()] if rank() < len(states) else states[0], loader_generator)
        state = checkpoint["trainer_state"]

    graphed_step = (
        GraphedTrainStep(model, optimizer, protocol.grad_clip, lambda: autocast(device, protocol.precision, cache_enabled=False))
        if protocol.cuda_graphs
        else None
    )
    stopped = state["bad_epochs"] >= protocol.early_stopping_patience
    for epoch in range(state["epoch"] + 1, protocol.max_epochs + 1):
        if stopped:
            break
        epoch_started = time.perf_counter()
        train_record = _train_epoch(model, loader, optimizer, protocol.grad_clip, device, epoch, config.progress and main, protocol.precision, scaler, network=network, graphed_step=graphed_step)
        train_seconds = time.perf_counter() - epoch_started
        validation = predict(model, dataset.valid, protocol.batch_size, device, protocol.precision, components=True)
        valid = metrics_of(validation, metric_kind)
        scheduler.step(valid[primary])
        record = {
            "epoch": epoch,
            "train": train_record,
            "valid": valid,
            "valid_components": validation.components,
            "lr": float(optimizer.param_groups[-1]["lr"]),
            "train_seconds": round(train_seconds, 3),
            "valid_seconds": round(time.perf_counter() - epoch_started - train_seconds, 3),
        }
        state["history"].append(record)
        state["epoch"] = epoch
        improved = _is_better(valid[primary], state["best"], mode)
        if improved:
            state.update(best=valid[primary], best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        rng_by_rank = all_gather_objects(_rng_state(loader_generator))  # every process's, to resume each exactly
        if main:
            if improved:
                save_checkpoint(seed_dir / "best.pt", {"config": config.model_dump(), "model_state": model.state_dict(), "epoch": epoch, "valid": valid, "seed": seed})
            save_checkpoint(
                last_path,
                {
                    "config": config.model_dump(),
                    "model_state": model.state_dict(),
                    "optimizer_state": optimizer.state_dict(),
                    "scheduler_state": scheduler.state_dict(),
                    "scaler_state": scaler.state_dict(),
                    "rng_by_rank": rng_by_rank,
                    "trainer_state": state,
                    "seed": seed,
                },
            )
        barrier()
        if config.progress and main:
            tqdm.write(f"seed {seed} epoch {epoch:3d}  loss {train_record['loss']:.4f}  valid {primary} {valid[primary]:.4f}  (best {state['best']:.4f} @ {state['best_epoch']})")
        if on_epoch is not None:
            on_epoch(epoch, record)
        stopped = state["bad_epochs"] >= protocol.early_stopping_patience

    best = load_checkpoint(seed_dir / "best.pt")
    model.load_state_dict(best["model_state"])
    test = evaluate(model, dataset.test, metric_kind, protocol.batch_size, device, protocol.precision)
    result = SeedResult(seed, best["epoch"], state["epoch"], best["valid"], test, time.perf_counter() - started)
    if main:
        atomic_write_text(seed_dir / "history.json", json.dumps(state["history"], indent=1))
        atomic_write_text(seed_dir / "metrics.json", json.dumps(result.__dict__, indent=1))
    barrier()
    return result


def parameter_groups(model: MultimodalModel, text_encoder_lr: float | None) -> list[dict[str, Any]]:
    """One optimizer group, or two when a BERT text encoder has its own learning rate."""
    encoder = getattr(model, "text_encoder", None)
    if encoder is None or text_encoder_lr is None:
        return [{"params": list(model.parameters())}]
    encoder_ids = {id(p) for p in encoder.parameters()}
    return [
        {"params": [p for p in model.parameters() if id(p) in encoder_ids], "lr": text_encoder_lr},
        {"params": [p for p in model.parameters() if id(p) not in encoder_ids]},
    ]


def training_adam(groups: list[dict[str, Any]], *, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """The trainer's Adam: torch's fused kernel on CPUs and CUDA devices (one pass over all
    parameter tensors; 3 ms against 9 ms per DecAlign MOSI step for ``foreach`` on a 2-core
    CPU), ``foreach`` elsewhere. Same update rule; the kernels round differently (~1e-7)."""
    if device.type in ("cpu", "cuda"):
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, foreach=True)


PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str, *, cache_enabled: bool = True) -> torch.autocast:
    """Mixed precision for the network (``bf16`` / ``fp16``); the alignment losses compute in
    float32 inside whatever the context (they disable autocast themselves). ``cache_enabled=False``
    inside CUDA-graph capture, whose memory the cache of cast weights must not outlive."""
    return torch.autocast(device.type, dtype=PRECISIONS[precision] or torch.float32, enabled=precision != "fp32", cache_enabled=cache_enabled)


def check_graphable(protocol: ProtocolConfig, device: torch.device) -> None:
    """``protocol.cuda_graphs`` needs one CUDA process without loss scaling or ``torch.compile``."""
    if device.type != "cuda":
        raise ValueError(f"protocol.cuda_graphs: needs a CUDA device, received {device}")
    if world_size() > 1:
        raise ValueError("protocol.cuda_graphs: runs in one process; under torchrun leave it off")
    if protocol.precision == "fp16":
        raise ValueError("protocol.cuda_graphs: fp16 loss scaling checks for overflow on the host every step; use bf16 or fp32")
    if protocol.compile:
        raise ValueError("protocol.cuda_graphs: choose it or protocol.compile, not both")


def _train_epoch(
    model: MultimodalModel,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    grad_clip: float | None,
    device: torch.device,
    epoch: int,
    progress: bool,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    network: torch.nn.Module | None = None,
    graphed_step: GraphedTrainStep | None = None,
) -> dict[str, float]:
    """One pass over the training data; returns mean loss and mean of each component.
    ``scaler``: loss scaling for ``fp16`` (a disabled scaler, or None, does nothing).
    ``network``: what runs the forward pass, e.g. ``model`` wrapped in DistributedDataParallel
    (default: ``model``). ``graphed_step``: run each step through it (CUDA graphs) instead."""
    network = network if network is not None else model
    model.train()
    if graphed_step is not None:
        return _train_epoch_graphed(graphed_step, loader, device, epoch, progress)
    sums: dict[str, float] = {}
    steps = 0
    scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, dynamic_ncols=True)
    for batch in bar:
        batch = to_device(batch, device)
        with autocast(device, precision):
            output = network(batch["features"], batch["masks"], batch["labels"])
            loss = model.loss(output, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss.total).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        # One host sync per step for logging: the running means shown by the progress bar.
        values = {"loss": float(loss.total.detach()), **{k: float(v.detach()) for k, v in loss.components.items()}}
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        steps += 1
        bar.set_postfix({k: f"{v / steps:.3g}" for k, v in sums.items()}, refresh=False)
    if world_size() > 1 and sums:
        # Each process logged its own shard's task loss: record the mean over the processes.
        totals = torch.tensor(list(sums.values()), dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        sums = dict(zip(sums, (totals / world_size()).tolist()))
    return {k: v / max(steps, 1) for k, v in sums.items()}


def _train_epoch_graphed(step: GraphedTrainStep, loader: DataLoader, device: torch.device, epoch: int, progress: bool) -> dict[str, float]:
    """:func:`_train_epoch` through a :class:`GraphedTrainStep`: the running sums stay on the device
    and the progress bar reads them every 25 steps (each read is a host sync)."""
    sums: torch.Tensor | None = None
    steps = 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, dynamic_ncols=True)
    for batch in bar:
        values = step(to_device(batch, device)).double()
        sums = values if sums is None else sums + values
        steps += 1
        if progress and steps % 25 == 0:
            names = ["loss", *(step.component_names or [])]
            bar.set_postfix({k: f"{v / steps:.3g}" for k, v in zip(names, sums.tolist())}, refresh=False)
    if sums is None:
        return {}
    return dict(zip(["loss", *(step.component_names or [])], (sums / steps).tolist()))


def summarize(results: list[SeedResult]) -> dict[str, dict[str, float]]:
    """Mean and (population) std over seeds of every test metric."""
    keys = results[0].test.keys()
    summary = {}
    for key in keys:
        values = np.array([r.test[key] for r in results], dtype=float)
        summary[key] = {"mean": float(values.mean()), "std": float(values.std())}
    return summary


def run_dir_for(config: TrainConfig) -> Path:
    """A fresh folder ``<output_dir>/<run_name>``; ``-2``, ``-3``... when the name is taken."""
    base = Path(config.output_dir) / (config.run_name or f"{config.model}-{config.dataset}")
    candidate, counter = base, 1
    while candidate.exists():
        counter += 1
        candidate = base.with_name(f"{base.name}-{counter}")
    return candidate


def run_experiment(
    config: TrainConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    dataset: MultimodalDataset | None = None,
) -> dict[str, Any]:
    """Train every seed of ``config`` and write the summary; returns the results dict.

    ``resume`` continues the run in ``run_dir``: finished seeds are read back, the interrupted
    seed continues from its ``last.pt`` (a damaged ``metrics.json`` is rebuilt from the seed's
    checkpoints). The run folder is created only once the data have loaded and the model has
    been built, so a run that fails before training leaves none.
    """
    set_threads(config.threads)
    init_from_environment(config.device)
    config = config.model_copy(update={"world_size": world_size()})
    dataset = dataset if dataset is not None else prepare_dataset(config)
    build_model(config, dataset)  # options that fail, fail before any file is written
    local_batch_size(config.protocol.batch_size)
    run_dir = broadcast(run_dir if run_dir is not None else run_dir_for(config) if is_main() else None)
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", config.model_dump_json(indent=1))
    barrier()
    results = []
    for seed in config.seeds:
        seed_dir = run_dir / f"seed-{seed}"
        finished = _finished_seed(seed_dir) if resume else None
        if finished is not None:
            results.append(finished)
            continue
        if resume and (seed_dir / "last.pt").exists() and is_main():
            epoch = load_checkpoint(seed_dir / "last.pt")["trainer_state"]["epoch"]
            tqdm.write(f"resuming {seed} at epoch {epoch + 1}")
        results.append(train_seed(config, dataset, seed, seed_dir, resume=resume))
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "seeds": config.seeds,
        "test": summarize(results),
        "per_seed": [r.__dict__ for r in results],
    }
    if is_main():
        atomic_write_text(run_dir / "results.json", json.dumps(summary, indent=1))
        write_results_csv(run_dir / "results.csv", results, summary["test"])
    barrier()
    summary["run_dir"] = str(run_dir)
    return summary


def _finished_seed(seed_dir: Path) -> SeedResult | None:
    """The result of a finished seed, or None when it has to (re)run: no ``metrics.json``, or
    one that was torn (then the seed is finished again from its checkpoints, losing nothing)."""
    path = seed_dir / "metrics.json"
    if not path.exists():
        return None
    try:
        return SeedResult(**read_json(path, "metrics"))
    except (ValueError, TypeError) as error:
        tqdm.write(f"{error}; finishing seed {seed_dir.name} again from its checkpoints")
        return None


def write_results_csv(path: Path, results: list[SeedResult], summary: dict[str, dict[str, float]]) -> None:
    keys = list(summary)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["seed", "best_epoch", *keys])
    for r in results:
        writer.writerow([r.seed, r.best_epoch, *(f"{r.test[k]:.6f}" for k in keys)])
    writer.writerow(["mean", "", *(f"{summary[k]['mean']:.6f}" for k in keys)])
    writer.writerow(["std", "", *(f"{summary[k]['std']:.6f}" for k in keys)])
    atomic_write_text(path, buffer.getvalue())
