"""DMD against the authors' released code (mdswyz/DMD, CVPR 2023): same weights, same numbers.

The oracle is the authors' own code, imported from a checkout named by the environment variable
``ALIGNKIT_DMD_REFERENCE``; without it every test that needs it is skipped. To run them::

    git clone https://github.com/mdswyz/DMD /tmp/dmd-ref        # written against commit 516d4e1
    ALIGNKIT_DMD_REFERENCE=/tmp/dmd-ref OMP_NUM_THREADS=1 python -m pytest -q tests/models/test_dmd_reference.py

Their modules import numpy, scikit-learn, tqdm, pynvml, easydict and transformers (their BERT
encoder, which these tests do not build: ``use_bert=False``). Nothing of their code is copied
here: the tests build their ``DMD`` network and ``DistillationKernel`` units and run one batch
of their training loop ``DMD.do_train``. Their code targets PyTorch 1.9 on a GPU; to run it
unchanged on the installed PyTorch and a CPU, the training test swaps in, for its duration only:
``Tensor.cuda`` returning the tensor itself (they move constants to the GPU);
``nn.CosineEmbeddingLoss`` with PyTorch 1.9's result for their 3-D inputs (cosine along dim 1;
later versions reject such inputs, and 2-D inputs go to the installed loss unchanged); their
``ReduceLROnPlateau`` without the ``verbose`` argument newer PyTorch removed; ``optim.Adam``
recording the gradients at the first step and then stopping the loop; and ``Tensor.backward``
recording the loss it is called on.

Sizes: MOSI's input widths (text 768, audio 5, vision 20) and the fixed length their code sets
for aligned MOSI (50 steps), zero-padded samples (their code has no masks), a small width, and
random weights everywhere, biases and LayerNorms included. Two configurations: MOSI's kernel 5 on
every modality (``T' = 46``), and kernels 5 / 3 / 1 with ``d = 20``, where vision (width 20)
skips the Conv1d as their code does.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit_models.models.dmd import DMD
from alignkit_models.models.dmd_reference import (
    REFERENCE_OPTIONS,
    convert_reference_state_dict,
    from_reference_state_dict,
    infer_options,
)

WIDTHS = {"text": 768, "audio": 5, "vision": 20}
LETTERS = {"text": "l", "audio": "a", "vision": "v"}
STEPS = 50  # their len_l = len_a = len_v for aligned MOSI
BATCH = 8
CONFIGS = {
    "mosi-kernels": {"dim": 10, "heads": 5, "layers": 2, "kernels": {"text": 5, "audio": 5, "vision": 5}},
    "identity-vision": {"dim": 20, "heads": 5, "layers": 2, "kernels": {"text": 5, "audio": 3, "vision": 1}},
}
HOMO_CODE, HETERO_CODE = 64, 32  # run.py's gd_size_low / gd_size_high
MOSI_DROPOUTS = {
    "text_dropout": 0.5, "attn_dropout": 0.3, "attn_dropout_a": 0.2, "attn_dropout_v": 0.0,
    "relu_dropout": 0.0, "embed_dropout": 0.2, "res_dropout": 0.0, "output_dropout": 0.5,
}  # fmt: skip
NO_DROPOUT = dict.fromkeys(MOSI_DROPOUTS, 0.0)
OUR_NO_DROPOUT = {
    "text_dropout": 0.0, "attn_dropout": 0.0, "memory_attn_dropout": None,
    "relu_dropout": 0.0, "embed_dropout": 0.0, "res_dropout": 0.0, "out_dropout": 0.0,
}  # fmt: skip
_THEIR_PACKAGES = ("trains",)
# Their position helper resizes an ``out=`` tensor as it grows, which torch reports each time.
pytestmark = pytest.mark.filterwarnings("ignore:The number of elements in the out tensor:UserWarning")


@pytest.fixture(scope="module")
def reference() -> types.SimpleNamespace:
    """Their network, trainer, GD kernels and helpers, imported from the checkout.

    Their top-level package name (``trains``) is generic, so it is imported with the checkout
    first on ``sys.path`` and removed from ``sys.modules`` afterwards.
    """
    root = os.environ.get("ALIGNKIT_DMD_REFERENCE")
    if not root or not (Path(root) / "trains" / "singleTask" / "model" / "dmd.py").is_file():
        # Deliberate: the reference is a third-party checkout we do not ship; the skip says how to get it.
        pytest.skip(
            "DMD's released code not found: git clone https://github.com/mdswyz/DMD and set "
            "ALIGNKIT_DMD_REFERENCE to the checkout (see this file's docstring)"
        )
    for package in ("sklearn", "tqdm", "pynvml", "easydict", "transformers"):
        pytest.importorskip(package, reason=f"DMD's released code imports {package}")
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] in _THEIR_PACKAGES}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, root)
    try:
        loaded = types.SimpleNamespace(
            network=importlib.import_module("trains.singleTask.model.dmd"),
            trainer=importlib.import_module("trains.singleTask.DMD"),
            homo=importlib.import_module("trains.singleTask.distillnets.get_distillation_kernel_homo"),
            hetero=importlib.import_module("trains.singleTask.distillnets.get_distillation_kernel"),
            misc=importlib.import_module("trains.singleTask.misc"),
        )
    finally:
        sys.path.remove(root)
        for name in [name for name in sys.modules if name.split(".")[0] in _THEIR_PACKAGES]:
            del sys.modules[name]
        sys.modules.update(saved)
    assert Path(loaded.network.__file__).resolve().is_relative_to(Path(root).resolve())
    return loaded


# --- their side ----------------------------------------------------------------------------------


def _randomize(module: nn.Module, seed: int) -> None:
    """Every parameter drawn anew (their init leaves biases 0 and LayerNorms 1, which would hide
    a dropped bias or a swapped norm); matrices scaled by their fan-in."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            scale = 0.2 if p.ndim == 1 else 1.0 / p[0].numel() ** 0.5
            p.copy_(scale * torch.randn(p.shape, generator=g))


def _their_args(config: dict[str, Any], dropouts: dict[str, float]) -> types.SimpleNamespace:
    """What their ``config/config.json`` and ``run.py`` give ``DMD(args)`` and the trainer, for MOSI."""
    kernels = config["kernels"]
    return types.SimpleNamespace(
        use_bert=False, dataset_name="mosi", need_data_aligned=True, feature_dims=list(WIDTHS.values()),
        dst_feature_dim_nheads=[config["dim"], config["heads"]], nlevels=config["layers"], attn_mask=True,
        conv1d_kernel_size_l=kernels["text"], conv1d_kernel_size_a=kernels["audio"], conv1d_kernel_size_v=kernels["vision"],
        **dropouts,
        # the trainer's, for one step
        train_mode="regression", learning_rate=1e-4, patience=5, KeyEval="Loss", update_epochs=1, grad_clip=-1.0,
        device=torch.device("cpu"), model_name="dmd", cur_seed=1, early_stop=10,
    )  # fmt: skip


def _their_kernels(reference: types.SimpleNamespace, args: types.SimpleNamespace, dim: int) -> tuple[nn.Module, nn.Module]:
    """The homogeneous and heterogeneous ``DistillationKernel`` as ``run.py`` builds them."""
    softmax = reference.misc.softmax
    common = {"n_classes": 1, "to_idx": [0, 1, 2], "from_idx": [0, 1, 2], "gd_reg": 10, "w_losses": [1, 10], "metric": "l1", "alpha": 1 / 8, "hyp_params": args}
    homo = reference.homo.DistillationKernel(hidden_size=dim, gd_size=HOMO_CODE, gd_prior=softmax([0, 0, 1, 0, 1, 0], 0.25), **common)
    hetero = reference.hetero.DistillationKernel(hidden_size=2 * dim, gd_size=HETERO_CODE, gd_prior=softmax([0, 0, 1, 0, 1, 1], 0.25), **common)
    _randomize(homo, 11)
    _randomize(hetero, 12)
    return homo, hetero


def _their_model(reference: types.SimpleNamespace, config: dict[str, Any], dropouts: dict[str, float], seed: int = 0) -> nn.Module:
    model = reference.network.DMD(_their_args(config, dropouts))
    _randomize(model, seed)
    return model


def _their_inputs(features: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    return features["text"].clone(), features["audio"].clone(), features["vision"].clone()


class _Cosine19(nn.Module):
    """``nn.CosineEmbeddingLoss()`` as PyTorch 1.9 computes it (margin 0, mean): the cosine along
    dim 1 whatever the rank. Inputs the installed version accepts go to it unchanged."""

    def forward(self, a: Tensor, b: Tensor, target: Tensor) -> Tensor:
        if a.ndim <= 2:
            return F.cosine_embedding_loss(a, b, target)
        cos = (a * b).sum(1) / (((a * a).sum(1) + 1e-12) * ((b * b).sum(1) + 1e-12)).sqrt()
        zeros = torch.zeros_like(cos)
        return (torch.where(target == 1, 1 - cos, zeros) + torch.where(target == -1, cos.clamp_min(0), zeros)).mean()


class _StopAfterFirstStep(Exception):
    pass


def _recording_adam(store: dict[int, Tensor]) -> type[torch.optim.Adam]:
    class RecordingAdam(torch.optim.Adam):
        """Keeps every parameter's gradient (by ``id``) at the first step, then stops the loop."""

        def step(self, closure: Any = None) -> Any:
            for group in self.param_groups:
                store.update({id(p): p.grad.clone() for p in group["params"] if p.grad is not None})
            raise _StopAfterFirstStep

    return RecordingAdam


def _run_their_training_step(
    reference: types.SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    args: types.SimpleNamespace,
    models: list[nn.Module],
    batch: dict[str, Any],
) -> tuple[Tensor, list[dict[str, Tensor]], dict[str, Tensor]]:
    """One batch of their ``do_train``: the loss it calls ``backward`` on, each model's gradients
    by name, and their network's output dict."""
    gradients: dict[int, Tensor] = {}
    losses: list[Tensor] = []
    outputs: list[dict[str, Tensor]] = []
    backward = torch.Tensor.backward

    def recording_backward(self: Tensor, *a: Any, **k: Any) -> None:
        losses.append(self.detach().clone())
        backward(self, *a, **k)

    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau
    hook = models[0].register_forward_hook(lambda module, inputs, output: outputs.append(output))
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
        patch.setattr(torch.nn, "CosineEmbeddingLoss", _Cosine19)
        patch.setattr(reference.trainer, "ReduceLROnPlateau", lambda optimizer, verbose=False, **k: scheduler(optimizer, **k))
        patch.setattr(torch.optim, "Adam", _recording_adam(gradients))
        patch.setattr(torch.Tensor, "backward", recording_backward)
        trainer = reference.trainer.DMD(args)
        with pytest.raises(_StopAfterFirstStep):
            trainer.do_train(models, {"train": [batch]})
    hook.remove()
    assert len(losses) == 1 and len(outputs) == 1
    named = [{name: gradients[id(p)] for name, p in model.named_parameters() if id(p) in gradients} for model in models]
    return losses[0], named, outputs[0]


# --- our side ------------------------------------------------------------------------------------


def _batch(seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """Features zero-padded at the end, their masks, and labels with repeats (shared labels make
    margin-loss positives across samples)."""
    g = torch.Generator().manual_seed(seed)
    features, masks = {}, {}
    for m, width in WIDTHS.items():
        lengths = torch.randint(10, STEPS + 1, (BATCH,), generator=g)
        lengths[0] = STEPS
        masks[m] = torch.arange(STEPS)[None, :] < lengths[:, None]
        features[m] = torch.randn(BATCH, STEPS, width, generator=g) * masks[m].unsqueeze(-1)
    labels = torch.tensor([-2.0, -1.2, 0.0, 0.0, 1.2, 1.2, 2.8, -2.0])[torch.randperm(BATCH, generator=g)]
    return features, masks, labels


def _ours(theirs: nn.Module, config: dict[str, Any], kernels: tuple[nn.Module, nn.Module] | None = None, **options: Any) -> DMD:
    homo, hetero = (None, None) if kernels is None else (kernels[0].state_dict(), kernels[1].state_dict())
    return from_reference_state_dict(theirs.state_dict(), homo, hetero, n_heads=config["heads"], **options)


def _record_ours(model: DMD) -> tuple[dict[str, list[Any]], list[Any]]:
    """Forward hooks keeping, under their output names (one list per name, in call order), what
    our submodules compute."""
    records: dict[str, list[Any]] = defaultdict(list)

    def keep(name: str, read_input: bool = False) -> Any:
        return lambda module, inputs, output: records[name].append(inputs[0] if read_input else output)

    handles = [model.common.register_forward_hook(keep("c")), model.crossmodal.register_forward_hook(keep("last_h"))]
    handles.append(model.common_head.register_forward_hook(keep("logits_c")))
    for m, x in LETTERS.items():
        if m in model.projections:
            handles.append(model.projections[m].register_forward_hook(keep(f"origin_{x}")))
        handles += [
            model.private[m].register_forward_hook(keep(f"s_{x}")),  # second call: s_x_r
            model.decoders[m].register_forward_hook(keep(f"recon_{x}")),
            model.margin_projections[m].register_forward_hook(keep(f"c_{x}_sim")),
            model.homo_heads[m].register_forward_hook(keep(f"logits_{x}_homo")),
            model.homo_heads[m].proj1.register_forward_hook(keep(f"repr_{x}_homo")),
            model.hetero_heads[m].out.register_forward_hook(keep(f"logits_{x}_hetero")),
            model.hetero_heads[m].out.register_forward_hook(keep(f"repr_{x}_hetero", read_input=True)),
        ]
    return records, handles


def _ours_in_their_layout(records: dict[str, list[Any]], features: dict[str, Tensor], prediction: Tensor, training: bool) -> dict[str, Tensor]:
    """Our recorded tensors, shaped and named like their output dict, from the input side on (so
    that the first mismatch reported is the earliest)."""
    ours: dict[str, Tensor] = {}
    for i, (m, x) in enumerate(LETTERS.items()):
        origin = records[f"origin_{x}"][0] if records[f"origin_{x}"] else features[m]  # identity: the input itself
        ours[f"origin_{x}"] = origin.transpose(1, 2)  # their (B, d, T')
        ours[f"s_{x}"] = records[f"s_{x}"][0].transpose(0, 1)  # their (T', B, d)
        ours[f"c_{x}"] = records["c"][i].transpose(0, 1)
        ours[f"last_h_{x}"] = records["last_h"][0][m]
        if training:
            ours[f"s_{x}_r"] = records[f"s_{x}"][1].transpose(1, 2)
            ours[f"recon_{x}"] = records[f"recon_{x}"][0].transpose(1, 2)
            ours[f"c_{x}_sim"] = records[f"c_{x}_sim"][0]
            ours[f"logits_{x}_homo"] = records[f"logits_{x}_homo"][0]
            ours[f"repr_{x}_homo"] = F.relu(records[f"repr_{x}_homo"][0])  # gd_homo_repr="relu"
            ours[f"logits_{x}_hetero"] = records[f"logits_{x}_hetero"][0]
            ours[f"repr_{x}_hetero"] = records[f"repr_{x}_hetero"][0]
    if training:
        ours["logits_c"] = records["logits_c"][0]
    ours["output_logit"] = prediction.unsqueeze(-1)
    return ours


def _assert_outputs_equal(ours: dict[str, Tensor], theirs: dict[str, Tensor]) -> None:
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], rtol=1e-5, atol=1e-5, msg=lambda text, name=name: f"{name}: {text}")


def _cloned(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in state.items()}


# --- predictions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_eval_outputs_equal_their_network(reference: types.SimpleNamespace, name: str) -> None:
    """Eval mode, MOSI dropouts: the fused prediction and every intermediate output their forward
    returns that our eval forward computes (projections, private and common codes, memory streams)."""
    config = CONFIGS[name]
    theirs = _their_model(reference, config, MOSI_DROPOUTS).eval()
    ours = _ours(theirs, config).eval()
    for seed in (0, 1):
        features, masks, _ = _batch(seed)
        records, handles = _record_ours(ours)
        with torch.no_grad():
            expected = theirs(*_their_inputs(features))
            output = ours(features, masks)
        for handle in handles:
            handle.remove()
        assert output.prediction.shape == (BATCH,)
        _assert_outputs_equal(_ours_in_their_layout(records, features, output.prediction, training=False), expected)


def test_edge_priors_equal_their_kernels(reference: types.SimpleNamespace) -> None:
    config = CONFIGS["mosi-kernels"]
    theirs = _their_model(reference, config, MOSI_DROPOUTS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
        kernels = _their_kernels(reference, _their_args(config, NO_DROPOUT), config["dim"])
    ours = _ours(theirs, config, kernels)
    order = [(s, t) for s in "lva" for t in "lva" if s != t]  # their edges: student-major over l, v, a
    names = {x: m for m, x in LETTERS.items()}
    for unit, kernel in ((ours.gd_homo, kernels[0]), (ours.gd_hetero, kernels[1])):
        prior = dict(zip(unit.edges, unit.prior))
        expected = torch.stack([prior[(names[s], names[t])] for s, t in order])
        torch.testing.assert_close(expected, kernel.gd_prior, rtol=1e-6, atol=1e-7)


# --- training ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_one_training_step_gives_their_loss_and_gradients(
    reference: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """One batch of their ``do_train`` (dropout off, clipping off) against
    ``model.loss(model(...), labels).total.backward()``: every head's output, each loss term,
    the total and every parameter's gradient (network and both GD units)."""
    config = CONFIGS[name]
    theirs = _their_model(reference, config, NO_DROPOUT)
    args = _their_args(config, NO_DROPOUT)
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
        homo, hetero = _their_kernels(reference, args, config["dim"])
    ours = from_reference_state_dict(
        _cloned(theirs.state_dict()), _cloned(homo.state_dict()), _cloned(hetero.state_dict()),
        n_heads=config["heads"], **OUR_NO_DROPOUT,
    ).train()  # fmt: skip
    features, masks, labels = _batch(2)
    batch = {"text": features["text"].clone(), "audio": features["audio"].clone(), "vision": features["vision"].clone(), "labels": {"M": labels.clone()}}
    their_loss, their_gradients, their_output = _run_their_training_step(reference, monkeypatch, args, [theirs, homo, hetero], batch)

    records, handles = _record_ours(ours)
    output = ours(features, masks, labels)
    loss = ours.loss(output, labels)
    for handle in handles:
        handle.remove()
    _assert_outputs_equal(_ours_in_their_layout(records, features, output.prediction, training=True), their_output)

    # Their loss terms, from their output dict with their trainer's own loss modules and kernels.
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
        patch.setattr(torch.nn, "CosineEmbeddingLoss", _Cosine19)
        trainer = reference.trainer.DMD(args)
        out = {k: v.detach() for k, v in their_output.items()}
        y = labels.view(-1, 1)
        letters = "lva"
        terms = {
            "task": trainer.criterion(out["output_logit"], y),
            "aux_task": sum(trainer.criterion(out[f"logits_{x}_{b}"], y) for b in ("homo", "hetero") for x in letters) + trainer.criterion(out["logits_c"], y),
            "recon": sum(trainer.MSE(out[f"recon_{x}"], out[f"origin_{x}"]) for x in letters),
            "cycle": sum(trainer.MSE(out[f"s_{x}"].permute(1, 2, 0), out[f"s_{x}_r"]) for x in letters),
            "ort": sum(trainer.cosine(out[f"s_{x}"], out[f"c_{x}"], torch.tensor([-1])).mean(0) for x in letters),
            "margin": trainer.sim_loss(
                labels.repeat_interleave(3).view(-1, 1), torch.stack([out[f"c_{x}_sim"] for x in letters], 1).flatten(0, 1)
            ),
        }
        for prefix, kernel, branch in (("gd_homo", homo, "homo"), ("gd_hetero", hetero, "hetero")):
            logits = torch.stack([out[f"logits_{x}_{branch}"] for x in letters])
            reprs = torch.stack([out[f"repr_{x}_{branch}"] for x in letters])
            edges, _ = kernel(logits, reprs)
            reg, logit, repr_term = kernel.distillation_loss(logits, reprs, edges)
            terms.update({f"{prefix}_reg": reg / 10, f"{prefix}_logit": logit})  # their gd_reg = 10
            if branch == "hetero":
                terms["gd_hetero_repr"] = repr_term / 10  # their w_losses[1] = 10
    for term, value in terms.items():
        torch.testing.assert_close(loss.components[term], value.reshape(()), rtol=1e-5, atol=1e-6, msg=lambda text, term=term: f"{term}: {text}")
    torch.testing.assert_close(loss.total.detach(), their_loss, rtol=1e-5, atol=1e-6)

    loss.total.backward()
    expected = convert_reference_state_dict(*their_gradients)
    received = {name: p.grad for name, p in ours.named_parameters() if p.grad is not None}
    assert set(received) == set(expected) == {name for name, _ in ours.named_parameters()}
    for parameter, gradient in expected.items():
        torch.testing.assert_close(received[parameter], gradient, rtol=1e-5, atol=1e-6, msg=lambda text, parameter=parameter: f"{parameter}: {text}")
    # The comparison means something: every loss term is active.
    assert all(float(value.detach()) > 0 for value in terms.values())


# --- converter -----------------------------------------------------------------------------------


def test_shapes_are_read_from_the_state_dicts(reference: types.SimpleNamespace) -> None:
    config = CONFIGS["identity-vision"]
    theirs = _their_model(reference, config, MOSI_DROPOUTS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
        homo, hetero = _their_kernels(reference, _their_args(config, NO_DROPOUT), config["dim"])
    assert infer_options(theirs.state_dict(), homo.state_dict(), hetero.state_dict()) == {
        "input_dims": WIDTHS, "dim": 20, "kernel_size": {"text": 5, "audio": 3, "vision": 1}, "n_layers": 2,
        "memory_layers": 3, "sequence_lengths": dict.fromkeys(WIDTHS, STEPS), "homo_code_dim": HOMO_CODE,
        "hetero_code_dim": HETERO_CODE,
    }  # fmt: skip
    prefixed = {f"module.{key}": value for key, value in theirs.state_dict().items()}
    model = from_reference_state_dict(prefixed, n_heads=5)
    assert isinstance(model, DMD) and model.padding == "included" and set(model.projections) == {"text", "audio"}
    assert model.flat_steps == {"text": 46, "audio": 48, "vision": 50}


def _one_line_error(call: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


def test_unknown_missing_and_misshapen_keys_are_named_in_one_line(reference: types.SimpleNamespace) -> None:
    config = CONFIGS["mosi-kernels"]
    theirs = _their_model(reference, config, MOSI_DROPOUTS)
    state = theirs.state_dict()
    heads = config["heads"]
    _one_line_error(lambda: from_reference_state_dict({**state, "trans_l_with_a.layers.0.extra": torch.zeros(1)}, n_heads=heads), r"trans_l_with_a\.layers\.0\.extra")
    _one_line_error(lambda: from_reference_state_dict({**state, "encoder_s_l.bias": torch.zeros(1)}, n_heads=heads), r"encoder_s_l\.bias")
    _one_line_error(lambda: from_reference_state_dict({**state, "text_model.model.pooler.dense.bias": torch.zeros(1)}, n_heads=heads), "BERT")
    _one_line_error(lambda: from_reference_state_dict({k: v for k, v in state.items() if k != "proj2_c.bias"}, n_heads=heads), r"common_head\.proj2\.bias")
    _one_line_error(lambda: from_reference_state_dict({k: v for k, v in state.items() if k != "encoder_c.weight"}, n_heads=heads), r"encoder_c\.weight")
    _one_line_error(lambda: from_reference_state_dict({**state, "weight_v.weight": torch.zeros(3, 3)}, n_heads=heads), "size mismatch")
    homo = {"W_logit.weight": torch.zeros(HOMO_CODE, 1), "bone.weight": torch.zeros(1)}
    _one_line_error(lambda: from_reference_state_dict(state, homo, n_heads=heads), "homo_state_dict.*'bone.weight'")
    _one_line_error(lambda: from_reference_state_dict(state, {}, n_heads=heads), r"homo_state_dict: missing 'W_logit\.weight'")
    _one_line_error(lambda: from_reference_state_dict(state, n_heads=heads, dim=12), "dim")


# --- options (no reference needed) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("projection_padding", "full"),
        ("identity_same_width", "yes"),
        ("padding", "none"),
        ("position_table", "learned"),
        ("independent_key_value_dropout", 1),
        ("decoupling_bias", None),
        ("homo_pooling", "max"),
        ("gd_homo_repr", "tanh"),
        ("gd_hetero_repr", "logits"),
        ("gd_repr_weighting", "sum"),
        ("ort_loss", "squared"),
        ("margin_reduction", "mean"),
        ("kernel_size", {"text": 2}),
        ("attn_dropout", {"text": 0.1}),
    ],
)
def test_bad_option_values_name_the_option(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        DMD(WIDTHS, dim=8, n_heads=2, n_layers=1, **{option: value})


def test_flatten_pooling_needs_and_checks_the_sequence_lengths() -> None:
    with pytest.raises(ValueError, match="sequence_lengths"):
        DMD(WIDTHS, dim=8, n_heads=2, n_layers=1, homo_pooling="flatten")
    with pytest.raises(ValueError, match="sequence_lengths"):
        DMD(WIDTHS, dim=8, n_heads=2, n_layers=1, sequence_lengths=12)
    model = DMD(WIDTHS, dim=8, n_heads=2, n_layers=1, homo_pooling="flatten", sequence_lengths=12, kernel_size=3, projection_padding="valid")
    assert model.homo_heads["text"].proj1.weight.shape == (8, 10 * 8)
    features = {m: torch.randn(2, 11, d) for m, d in WIDTHS.items()}
    with pytest.raises(ValueError, match=r"features\['text'\].*sequence_lengths"):
        model(features)
    features = {m: torch.randn(2, 12, d) for m, d in WIDTHS.items()}
    labels = torch.tensor([0.5, -1.0])
    output = model.train()(features, {m: torch.tensor([[True] * 12, [True] * 7 + [False] * 5]) for m in WIDTHS}, labels)
    assert torch.isfinite(model.loss(output, labels).total)


def test_reference_options_keep_eval_output_shapes() -> None:
    options = {k: v for k, v in REFERENCE_OPTIONS.items() if k != "n_heads"}
    model = DMD(WIDTHS, dim=10, n_heads=5, n_layers=1, kernel_size=5, sequence_lengths=STEPS, **options).eval()
    features, masks, _ = _batch(0)
    output = model(features, masks)
    assert output.prediction.shape == (BATCH,) and output.representation.shape == (BATCH, 9 * 10)
    # padding="included": the masks are not read
    assert torch.equal(output.prediction, model(features).prediction)
