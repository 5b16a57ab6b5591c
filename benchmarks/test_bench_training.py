"""One training epoch of DecAlign, both variants, with the MOSI preset on MOSI-sized synthetic data.

1,284 training samples, batch 32, aligned length 50, dims 768 / 5 / 20 (the real MOSI sizes),
through the real trainer's epoch loop with the preset's protocol (the authors': the incomplete
last batch kept). ``official-variant-epoch`` is the default model (the authors' network and
objective, their MOSI configuration); ``alignkit-variant-epoch`` is ``variant="alignkit"`` with
the same widths, heads, layers and K. ``extra_info`` holds a per-step breakdown: network forward,
each loss, backward, optimizer (means over the epoch's steps, measured in a separate instrumented
pass). The comparison with the authors' own code needs their code:
``python benchmarks/official_decalign.py train ...`` (see benchmarks/README.md).
"""

from __future__ import annotations

import resource
import time

import torch
from conftest import measure
from torch.utils.data import DataLoader

VARIANT_OPTIONS = {
    "official-variant-epoch": {},
    # The alignkit variant at the preset's widths; its own loss defaults (alpha = beta = 0.05, no contrastive term).
    "alignkit-variant-epoch": {"variant": "alignkit", "dim": 64, "n_heads": 8, "n_layers": 5, "kernel_size": 1, "n_components": 7},
}


def cases(full: bool) -> list[str]:
    return list(VARIANT_OPTIONS)


def _setup(n_train: int, case: str, device: torch.device | str = "cpu"):
    from alignkit_models.data.base import SplitDataset, collate
    from alignkit_models.data.mmsa import mmsa_dataset
    from alignkit_models.data.synthetic import make_synthetic_mmsa
    from alignkit_models.training.config import build_config
    from alignkit_models.training.trainer import build_model, parameter_groups, training_adam

    data = mmsa_dataset(make_synthetic_mmsa("mosi", sizes=(n_train, 8, 8), seed=0), name="synthetic-mosi")
    config = build_config("decalign", "synthetic-mosi", progress=False)
    if VARIANT_OPTIONS[case]:
        config = config.model_copy(update={"model_options": VARIANT_OPTIONS[case]})
    torch.manual_seed(0)
    model = build_model(config, data).to(device)
    protocol = config.protocol
    optimizer = training_adam(parameter_groups(model, protocol.text_encoder_lr), lr=protocol.lr, weight_decay=protocol.weight_decay, device=torch.device(device))
    loader = DataLoader(
        SplitDataset(data.train, model.modalities), batch_size=protocol.batch_size, shuffle=True, collate_fn=collate,
        generator=torch.Generator().manual_seed(0), drop_last=protocol.drop_last,
    )
    return model, optimizer, loader, config


def step_breakdown(model, optimizer, loader) -> dict[str, float]:
    """Mean milliseconds per step of each phase, timed around the network's own parts."""
    from alignkit.decoupling import masked_mean
    from alignkit.losses import sample_sets
    from alignkit_models.layers.contrastive import supervised_contrastive_loss
    from alignkit_models.training.trainer import to_device

    phases: dict[str, float] = {}
    device = next(model.parameters()).device
    alignment = model.alignment

    def timed(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        if device.type == "cuda":  # time the GPU work, not its launch
            torch.cuda.synchronize(device)
        phases[name] = phases.get(name, 0.0) + (time.perf_counter() - start) * 1e3
        return result

    def head(fused):
        return model.head_output(model.head(model.output_dropout(fused)))

    def heterogeneity(u, m):
        return alignment.heterogeneity(sample_sets(u, m, "pooled"))

    def contrastive_loss(fused, labels):
        return supervised_contrastive_loss(fused, model.contrastive_classes(labels), model.contrastive_temperature)

    def backward(total):
        optimizer.zero_grad(set_to_none=True)
        total.backward()

    model.train()
    steps = 0
    for batch in loader:
        batch = to_device(batch, device)
        features, labels = batch["features"], batch["labels"]
        masks = model.check_inputs(features, batch["masks"])
        unique, common, masks = timed("network: projections + encoders", model.encode, features, masks)
        used = dict(masks) if model.use_masks else dict.fromkeys(model.modalities)
        fused = timed("network: cross-modal transformers + fusion", model.fuse, unique, common, used)
        prediction = timed("network: head", head, fused)
        task = timed("loss: task", model.task_loss, prediction, labels)
        order = model.modalities
        u, c, m = [unique[k] for k in order], [common[k] for k in order], [used[k] for k in order]
        dec = timed("loss: decoupling", alignment.decoupling, u, c, m)
        hete = timed("loss: heterogeneity (GMM + OT + calibration)", heterogeneity, u, m)
        if model.distribution_encoders:
            homo_inputs = [model.distribution_encoders[k](masked_mean(common[k], used[k])) for k in order]
        else:
            homo_inputs = sample_sets(c, m, "pooled")
        homo = timed("loss: homogeneity (moments + MMD)", alignment.homogeneity, homo_inputs)
        total = task + dec + alignment.alpha * hete.total + alignment.beta * homo.total
        if model.contrastive_weight > 0:
            contrastive = timed("loss: contrastive", contrastive_loss, fused, labels)
            total = total + model.contrastive_weight * contrastive
        timed("backward", backward, total)
        timed("optimizer", optimizer.step)
        steps += 1
    return {k: round(v / steps, 2) for k, v in phases.items()}


def test_training_epoch(benchmark, device, case: str) -> None:
    from alignkit_models.training.trainer import _train_epoch

    n_train = 1284 if benchmark.enabled else 64  # the smoke run checks that the epoch runs
    benchmark.group = f"DecAlign training epoch, MOSI preset, {n_train} samples"
    model, optimizer, loader, config = _setup(n_train, case, device)

    def run() -> None:
        _train_epoch(model, loader, optimizer, config.protocol.grad_clip, device, 1, progress=False)

    benchmark.extra_info["step_breakdown_ms"] = step_breakdown(model, optimizer, loader)
    measure(benchmark, run, device, rounds=2, impl=case.removesuffix("-epoch"), n_train=n_train, batch_size=config.protocol.batch_size)
    benchmark.extra_info["process_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 3)  # ru_maxrss: KiB on Linux


def test_training_epoch_cuda_graphs(benchmark, device) -> None:
    """The official-variant epoch with every step replayed from a CUDA graph (``--cuda-graphs``);
    compare with ``official-variant-epoch`` of the same run. The memory probe's call is the epoch
    that warms up and captures; the timed epochs replay."""
    import pytest

    if device.type != "cuda":
        # Deliberate: graph capture exists only on CUDA; the CPU run checks the step's capturability
        # in tests/models/test_cuda_graph_step.py instead, and run_gpu.sh runs this case on a GPU.
        pytest.skip("CUDA graphs need a CUDA device (run with --device cuda)")
    from alignkit_models.training.graphs import GraphedTrainStep, graph_ready_adam
    from alignkit_models.training.trainer import (
        _train_epoch,
        autocast,
        parameter_groups,
    )

    n_train = 1284 if benchmark.enabled else 64
    benchmark.group = f"DecAlign training epoch, MOSI preset, {n_train} samples"
    model, _, loader, config = _setup(n_train, "official-variant-epoch", device)
    protocol = config.protocol
    optimizer = graph_ready_adam(parameter_groups(model, protocol.text_encoder_lr), lr=protocol.lr, weight_decay=protocol.weight_decay, device=device)
    step = GraphedTrainStep(model, optimizer, protocol.grad_clip, lambda: autocast(device, "fp32", cache_enabled=False), warmup_steps=1)

    def run() -> None:
        _train_epoch(model, loader, optimizer, protocol.grad_clip, device, 1, progress=False, graphed_step=step)

    measure(benchmark, run, device, rounds=3, impl="official-variant-cuda-graphs", n_train=n_train, batch_size=protocol.batch_size)
