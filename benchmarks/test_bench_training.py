"""One training epoch of DecAlign with the MOSI preset on a MOSI-sized synthetic set.

1,284 training samples, batch 32, aligned length 50, dims 768 / 5 / 20 (the real MOSI sizes),
through the real trainer's epoch loop. Targets on the 2-core CPU: at most 10 s, peak RSS under
1.5 GB. ``extra_info`` also holds a per-step breakdown: network forward, each loss, backward,
optimizer (means over the epoch's steps, measured in a separate instrumented pass).

The issue that set the 10 s target scaled it against "a reference implementation of the same
network" (~20 s where it was measured, ~35 % dropout random numbers and ~10 % unrolled EM/Sinkhorn
backward). ``reference-config-epoch`` rebuilds that reference from the same code, so the ratio is
measured on whatever machine runs this file: MulT's attention-weight dropout 0.1, ``nn.Dropout``
instead of :class:`FastDropout`, and gradients unrolled through every EM and Sinkhorn iteration.
It runs after the preset in the same process, so its ``process_peak_rss_bytes`` is the larger of
the two; ``peak_extra_bytes`` is its own.
"""

from __future__ import annotations

import resource
import time

import torch
from conftest import measure
from torch.utils.data import DataLoader


def cases(full: bool) -> list[str]:
    return ["mosi-preset-epoch", "reference-config-epoch"]


def reference_configuration(model) -> None:
    """Turn the preset's DecAlign into the issue's reference configuration, in place."""
    from alignkit import GMMPrototypes
    from alignkit_models.layers.dropout import FastDropout
    from alignkit_models.layers.transformer import _Attention

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, FastDropout):
                setattr(module, name, torch.nn.Dropout(0.1))
        if isinstance(module, _Attention):
            module.dropout = 0.1
    for prototypes in model.alignment.heterogeneity.prototypes:
        prototypes.grad = "unrolled"
    model.alignment.heterogeneity.transport.grad = "unrolled"
    # A setting that lands on the wrong object changes nothing silently: check each one took.
    assert not any(isinstance(m, FastDropout) for m in model.modules())
    assert all(isinstance(p, GMMPrototypes) and p.grad == "unrolled" for p in model.alignment.heterogeneity.prototypes)
    assert all(m.dropout == 0.1 for m in model.modules() if isinstance(m, _Attention))


def _setup(n_train: int, reference: bool = False):
    from alignkit_models.data.base import SplitDataset, collate
    from alignkit_models.data.mmsa import mmsa_dataset
    from alignkit_models.data.synthetic import make_synthetic_mmsa
    from alignkit_models.training.config import build_config
    from alignkit_models.training.trainer import build_model

    data = mmsa_dataset(make_synthetic_mmsa("mosi", sizes=(n_train, 8, 8), seed=0), name="synthetic-mosi")
    config = build_config("decalign", "synthetic-mosi", progress=False)
    torch.manual_seed(0)
    model = build_model(config, data)
    if reference:
        reference_configuration(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.protocol.lr, weight_decay=config.protocol.weight_decay, foreach=True)
    loader = DataLoader(SplitDataset(data.train, model.modalities), batch_size=32, shuffle=True, collate_fn=collate, generator=torch.Generator().manual_seed(0), drop_last=True)
    return model, optimizer, loader, config


def step_breakdown(model, optimizer, loader) -> dict[str, float]:
    """Mean milliseconds per step of each phase, timed around the network's own parts."""
    from alignkit.losses import sample_sets
    from alignkit_models.training.trainer import to_device

    phases: dict[str, float] = {}

    device = next(model.parameters()).device

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":  # time the GPU work, not its launch
            torch.cuda.synchronize(device)
        phases[name] = phases.get(name, 0.0) + (time.perf_counter() - start) * 1e3
        return result

    model.train()
    steps = 0
    for batch in loader:
        batch = to_device(batch, device)
        features, masks, labels = batch["features"], batch["masks"], batch["labels"]
        full_masks = model.check_inputs(features, masks)
        unique, common = timed("network: encoders", lambda: model.encode(features))
        fused = timed("network: cross-modal transformers + fusion", lambda: model.fuse(unique, common, full_masks))
        prediction = timed("network: head", lambda: model.head_output(model.head(model.output_dropout(fused))))
        task = timed("loss: task", lambda: model.task_loss(prediction, labels))
        order = model.modalities
        u, c, m = [unique[k] for k in order], [common[k] for k in order], [full_masks[k] for k in order]
        alignment = model.alignment
        dec = timed("loss: decoupling", lambda: alignment.decoupling(u, c, m))
        hete = timed("loss: heterogeneity (GMM + OT + calibration)", lambda: alignment.heterogeneity(sample_sets(u, m, alignment.sample_granularity)))
        homo = timed("loss: homogeneity (moments + MMD)", lambda: alignment.homogeneity(sample_sets(c, m, alignment.sample_granularity)))
        total = task + dec + alignment.alpha * hete.total + alignment.beta * homo.total
        timed("backward", lambda: (optimizer.zero_grad(set_to_none=True), total.backward()))
        timed("optimizer", optimizer.step)
        steps += 1
    return {k: round(v / steps, 2) for k, v in phases.items()}


def test_training_epoch(benchmark, device, case: str) -> None:
    from alignkit_models.training.trainer import _train_epoch

    n_train = 1284 if benchmark.enabled else 64  # the smoke run checks that the epoch runs
    benchmark.group = f"DecAlign training epoch, MOSI preset, {n_train} samples"
    reference = case == "reference-config-epoch"
    model, optimizer, loader, config = _setup(n_train, reference=reference)
    model.to(device)
    run = lambda: _train_epoch(model, loader, optimizer, config.protocol.grad_clip, device, 1, progress=False)  # noqa: E731
    benchmark.extra_info["step_breakdown_ms"] = step_breakdown(model, optimizer, loader)
    measure(benchmark, run, device, rounds=2, impl="reference configuration" if reference else "decalign", n_train=n_train, batch_size=32)
    benchmark.extra_info["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
