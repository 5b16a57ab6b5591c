"""What CUDA-graph capture of the training step needs, checked without a GPU.

Capture fails on any host synchronisation (``.item()``, ``bool(tensor)``, ``nonzero``, boolean
indexing) and on host-to-device copies inside the step. Running the step on the ``meta`` device
(shapes without data) makes every such read an error, and a dispatch mode records the copies; the
replay itself is checked on a GPU (tests/gpu/test_cuda.py).
"""

from __future__ import annotations

import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from alignkit._checks import input_checks
from alignkit_models.data.base import SplitDataset, collate
from alignkit_models.data.catalog import load_dataset
from alignkit_models.data.mmsa import mmsa_dataset
from alignkit_models.data.synthetic import make_synthetic_mmsa
from alignkit_models.training.config import build_config
from alignkit_models.training.trainer import build_model, check_graphable, to_device

HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal"}
META = torch.device("meta")


class HostTraffic(TorchDispatchMode):
    """Records each op that reads a tensor on the host or copies host data to the device."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: collections.Counter[str] = collections.Counter()
        self.first: dict[str, str] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        devices = {t.device.type for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        if name in HOST_READS or name == "lift_fresh" or (name in ("_to_copy", "copy_") and {"cpu", "meta"} <= devices):
            self.seen[name] += 1
            self.first.setdefault(name, "".join(traceback.format_stack(limit=8)[:-1]))
        return func(*args, **(kwargs or {}))


def _recording(constructor, name: str, traffic: HostTraffic):
    def construct(*args, **kwargs):
        result = constructor(*args, **kwargs)
        if result.device.type == "meta":
            traffic.seen[f"torch.{name}"] += 1
            traffic.first.setdefault(f"torch.{name}", "".join(traceback.format_stack(limit=6)[:-1]))
        return result

    return construct


def _data(dataset: str):
    if dataset == "synthetic-mosi":  # a small MOSI-shaped set: the step, not the data, is under test
        return mmsa_dataset(make_synthetic_mmsa("mosi", sizes=(32, 8, 8), seed=0), name=dataset)
    return load_dataset(dataset, None)


# The authors' DecAlign (the default) on both presets. The alignkit variant starts its GMMs with
# seeded k-means++, drawn on the host: it cannot be captured.
@pytest.mark.parametrize("dataset", ["synthetic-mosi", "uci-mfeat"])
def test_decalign_training_step_has_no_host_traffic(dataset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = build_config("decalign", dataset, progress=False)
    data = _data(dataset)
    torch.manual_seed(0)
    model = build_model(config, data).to(META).train()
    items = SplitDataset(data.train, model.modalities)
    batch = to_device(collate([items[i] for i in range(16)]), META)
    traffic = HostTraffic()
    # torch.tensor(data, device=...) copies host data below the dispatcher: watch the call itself.
    for name in ("tensor", "as_tensor"):
        monkeypatch.setattr(torch, name, _recording(getattr(torch, name), name, traffic))
    monkeypatch.setattr(torch.Tensor, "new_tensor", _recording(torch.Tensor.new_tensor, "Tensor.new_tensor", traffic))
    with input_checks(False), traffic:
        try:
            output = model(batch["features"], batch["masks"], batch["labels"])
            model.loss(output, batch["labels"]).total.backward()
        except (RuntimeError, NotImplementedError) as error:  # a host read of a meta tensor
            pytest.fail(f"the step reads a tensor on the host: {error}\n" + "".join(traceback.format_tb(error.__traceback__)[-6:]))
    assert not traffic.seen, f"host traffic in the step: {dict(traffic.seen)}\n" + "\n".join(traffic.first.values())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "needs a CUDA device"),
        ({"precision": "fp16"}, "fp16"),
        ({"compile": True}, "not both"),
    ],
)
def test_cuda_graphs_refuse_what_they_cannot_capture(changes: dict, message: str) -> None:
    protocol = build_config("decalign", "uci-mfeat", cuda_graphs=True).protocol.model_copy(update=changes)
    device = torch.device("cpu") if not changes else torch.device("cuda")
    with pytest.raises(ValueError, match=message):
        check_graphable(protocol, device)
