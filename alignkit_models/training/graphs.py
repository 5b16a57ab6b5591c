"""The whole training step replayed from a CUDA graph: one launch instead of thousands.

A DecAlign step on a GPU is a few thousand small kernels (fifteen transformer layers, GMM EM,
Sinkhorn sweeps, moments, MMD, their backward, Adam); on an H200 the step is bound by their
launches, not by the arithmetic. :class:`GraphedTrainStep` records the step once per batch shape
(forward, losses, backward, gradient clipping, optimizer update) and replays it, so that values
are those of the eager step: the same kernels run in the same order on the same memory.

What capture requires, and how the step meets it:

- no host synchronisation inside the step: the value checks of :mod:`alignkit` (NaN/Inf, signs)
  are switched off while it runs (the data were checked when they were loaded), the losses use
  fixed iteration counts, and every statistic stays on the device;
- static memory: inputs are copied into buffers the graph reads; gradients live in buffers the
  graph zeroes and fills; losses come out in tensors the graph writes;
- an optimizer that keeps its learning rate and step count on the device (``Adam(capturable=True)``
  with tensor learning rates, see :func:`graph_ready_adam`), so that the learning-rate schedule
  reaches the replayed update;
- a few eager steps of each new shape first (on a side stream, as capture wants, so that libraries
  finish their lazy set-up): these are ordinary training steps, nothing is wasted.

Shapes come and go with the data (the incomplete last batch of an epoch): each shape gets its own
graph after ``warmup_steps`` eager steps of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from alignkit._checks import input_checks
from alignkit_models.models.base import MultimodalModel

Batch = dict[str, Any]


def graph_ready_adam(params: Iterable[Any], *, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """``Adam`` whose learning rate (one tensor per group) and step counts live on ``device``, so
    that a captured update reads the current values at every replay."""
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True, capturable=True)
    device_learning_rates(optimizer, device)
    return optimizer


def device_learning_rates(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Turn every group's ``lr`` into a 0-dim float32 tensor on ``device`` (again after
    ``load_state_dict``, which brings back whatever the checkpoint held)."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


class GraphedTrainStep:
    """One training step, ``step(batch) -> (B_loss_values,)``, captured in a CUDA graph per batch shape.

    Args:
        model: the zoo model (on a CUDA device).
        optimizer: built with :func:`graph_ready_adam`.
        grad_clip: max gradient norm, or None.
        autocast: a factory of the autocast context of the run's precision (``bf16`` or ``fp32``).
        warmup_steps: eager steps of each new shape before it is captured (at least 1).

    Calling it with a batch on the model's device runs the step and returns a 1-D float32 tensor
    on the device: the total loss followed by :attr:`component_names` (read it when convenient:
    reading it synchronises).
    """

    def __init__(self, model: MultimodalModel, optimizer: torch.optim.Optimizer, grad_clip: float | None, autocast: Any, *, warmup_steps: int = 2) -> None:
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"cuda_graphs: needs the model on a CUDA device, received {device}")
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps: expected an integer >= 1, received {warmup_steps}")
        if not all(group.get("capturable") and isinstance(group["lr"], Tensor) for group in optimizer.param_groups):
            raise ValueError("optimizer: expected Adam(capturable=True) with tensor learning rates (see graph_ready_adam)")
        self.model = model
        self.optimizer = optimizer
        self.grad_clip = grad_clip
        self.autocast = autocast
        self.warmup_steps = warmup_steps
        self.component_names: list[str] | None = None
        self._seen: dict[tuple, int] = {}
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Batch, Tensor]] = {}
        self._side_stream = torch.cuda.Stream(device)

    @staticmethod
    def _shape_key(batch: Batch) -> tuple:
        return (
            tuple((m, tuple(x.shape), x.dtype) for m, x in batch["features"].items()),
            tuple((m, tuple(x.shape)) for m, x in batch["masks"].items()),
            (tuple(batch["labels"].shape), batch["labels"].dtype),
        )

    def _step(self, batch: Batch) -> Tensor:
        """The step itself, free of host synchronisation; gradients are zeroed in place so that
        they keep their memory (the graphs read and write it)."""
        self.optimizer.zero_grad(set_to_none=False)
        with input_checks(False), self.autocast():
            output = self.model(batch["features"], batch["masks"], batch["labels"])
            loss = self.model.loss(output, batch["labels"])
        loss.total.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        self.optimizer.step()
        if self.component_names is None:
            self.component_names = list(loss.components)
        return torch.stack([loss.total.detach().float(), *(loss.components[k].detach().float() for k in self.component_names)])

    def __call__(self, batch: Batch) -> Tensor:
        key = self._shape_key(batch)
        if key in self._graphs:
            graph, static, values = self._graphs[key]
            _copy_into(static, batch)
            graph.replay()
            return values
        seen = self._seen.get(key, 0)
        if seen < self.warmup_steps:
            self._seen[key] = seen + 1
            # Eager steps on a side stream: capture wants the libraries' lazy set-up done there.
            self._side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side_stream):
                values = self._step(batch)
            torch.cuda.current_stream().wait_stream(self._side_stream)
            return values
        static = _clone_batch(batch)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            values = self._step(static)
        self._graphs[key] = (graph, static, values)
        graph.replay()  # capture records the step without running it
        return values


def _clone_batch(batch: Batch) -> Batch:
    return {
        "features": {m: x.clone() for m, x in batch["features"].items()},
        "masks": {m: x.clone() for m, x in batch["masks"].items()},
        "labels": batch["labels"].clone(),
    }


def _copy_into(static: Batch, batch: Batch) -> None:
    for group in ("features", "masks"):
        for m, x in batch[group].items():
            static[group][m].copy_(x, non_blocking=True)
    static["labels"].copy_(batch["labels"], non_blocking=True)
