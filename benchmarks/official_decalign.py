"""Check alignkit's DecAlign against the authors' code, and write the test fixture from it.

The authors' code (https://github.com/taco-group/DecAlign, commit 6fa8df9) is not part of alignkit;
give the path of a checkout of it (it needs ``transformers`` importable)::

    python benchmarks/official_decalign.py check   --official /path/to/DecAlign
    python benchmarks/official_decalign.py fixture --official /path/to/DecAlign   # rewrites tests/data/decalign_official.pt
    python benchmarks/official_decalign.py train-official --official /path/to/DecAlign --data mosi.pkl --epochs 10
    python benchmarks/official_decalign.py train-ours --data mosi.pkl --epochs 10

``check`` builds their model with the MOSI configuration (widths 768 / 5 / 20, d 64, 5 layers,
8 heads, K 7), a random batch of 32, converts its weights with
:func:`alignkit_models.models.decalign.from_official_state_dict` and prints the largest
differences of the logits, of ``dec_loss``, ``hete_loss``, ``homo_loss`` (evaluation mode) and of
the gradients of ``dec + hete + homo`` (training mode, dropout 0), in float32 and float64, and of a
training-mode forward with their MOSI dropouts from the same seed (ours with ``fast_dropout=False``);
then the same with a tiny random BERT text encoder on token ids. ``fixture`` stores a small
configuration's weights, inputs and the authors' outputs (its weights after three steps of their
trainer, the initial weights their constructor draws after a seed, and a training-mode forward
with every dropout on) for
``tests/models/test_decalign_official.py``, which then needs no copy of their code. ``train-official`` runs their MOSI training (their data loader,
trainer, configuration; ``use_bert=False`` so the float text features are used; on the CPU) and
``train-ours`` alignkit's default DecAlign with the MOSI preset on the same file; each prints one
JSON line: training and validation seconds per epoch, peak resident memory, test metrics. Run
them one after the other on an otherwise idle machine. ``paired`` runs their training and ours
with every dropout 0 (``--dropout``: their MOSI dropouts, ours with ``fast_dropout=False``
drawing the same masks), ours from their initial weights and on their batches in their order, and
prints both runs' validation loss per epoch, test metrics and per-step losses: what is left
between them is rounding (``--float64`` shrinks it)::

    python benchmarks/official_decalign.py paired --official /path/to/DecAlign --data mosi.pkl --epochs 10 [--float64] [--dropout]

``float32-gradients`` asks whether either code loses more to float32 rounding: for a random batch
at their MOSI configuration (dropout 0), the gradients of a training loss (L1 task loss plus
``dec + hete + homo``) in float32, theirs and ours, against theirs in float64, as the largest
relative L2 error of a parameter in each group of our parameter names::

    python benchmarks/official_decalign.py float32-gradients --official /path/to/DecAlign --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignkit_models.models.decalign import from_official_state_dict
from alignkit_models.models.decalign.official import convert_state_dict

MODALITIES = ("text", "audio", "vision")
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "decalign_official.pt"
DROPOUTS = ("attn_dropout", "attn_dropout_a", "attn_dropout_v", "relu_dropout", "embed_dropout", "res_dropout", "output_dropout", "text_dropout")
OUR_DROPOUTS = ("attn_dropout", "relu_dropout", "res_dropout", "embed_dropout", "output_dropout", "input_dropout")  # alignkit's names
# The small configuration of the fixture: a kernel-3 projection, a modality already of width d
# (the authors skip its projection), two layers, batches below and above K.
SMALL = {
    "feature_dims": [24, 5, 16],
    "dst_feature_dim_nheads": [16, 4],
    "nlevels": 2,
    "conv1d_kernel_size_l": 3,
    "conv1d_kernel_size_a": 1,
    "conv1d_kernel_size_v": 1,
    "pde_dim": 12,
}
INIT_SEED = 3
# Every dropout on, each at its own rate, for the training-mode comparison of the fixture.
DROPOUT_RATES = {"attn_dropout": 0.1, "attn_dropout_a": 0.2, "attn_dropout_v": 0.15, "relu_dropout": 0.1, "res_dropout": 0.05,
                 "embed_dropout": 0.12, "output_dropout": 0.3, "text_dropout": 0.25}
DROPOUT_SEED = 4


def official_args(official: Path, overrides: dict[str, Any]) -> Any:
    """Their MOSI configuration (``use_bert=False``) plus ``overrides``."""
    if str(official) not in sys.path:
        sys.path.insert(0, str(official))
    from config import get_config_regression  # their config.py

    args = get_config_regression("decalign", "mosi", official / "config" / "dec_mosi_config.json")
    args.use_bert = False
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def official_model(official: Path, overrides: dict[str, Any]) -> torch.nn.Module:
    """Their ``DecAlign(args)`` with their MOSI configuration plus ``overrides``."""
    args = official_args(official, overrides)  # also puts their checkout on the path
    from models.model import DecAlign  # their model

    return DecAlign(args)


def official_training_steps(official: Path, overrides: dict[str, Any], state: dict[str, torch.Tensor], steps: list[tuple[dict[str, torch.Tensor], torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Their weights after one training step per ``(batch, labels)``, float64: the loss, gradient
    clipping and Adam of their ``DecAlignTrainer.do_train``, called through its own methods."""
    args = official_args(official, overrides)  # also puts their checkout on the path
    from models.model import DecAlign  # their model
    from trains.ATIO import DecAlignTrainer  # their trainer

    trainer = DecAlignTrainer(args)
    model = DecAlign(args)
    model.load_state_dict(state)
    model = model.double().train()
    optimizer = torch.optim.Adam([{"params": model.parameters(), "weight_decay": args.weight_decay}], lr=args.learning_rate)
    for batch, labels in steps:
        model.zero_grad()
        outputs = model(*(batch[m].double() for m in MODALITIES))
        loss = trainer._combined_loss(trainer._main_loss(outputs["output_logit"], labels.double()), outputs)
        loss = loss + args.ct_weight * trainer._contrastive_loss(outputs["final_rep"], labels.double())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def official_outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Their forward in evaluation mode."""
    model = model.to(dtype).eval()
    with torch.no_grad():
        out = model(*(batch[m].to(dtype) if batch[m].is_floating_point() else batch[m] for m in MODALITIES))
    return {key: out[key].detach().clone() for key in ("output_logit", "dec_loss", "hete_loss", "homo_loss", "final_rep")}


def official_gradients(model: torch.nn.Module, batch: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64,
                       labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Gradients of ``dec_loss + hete_loss + homo_loss`` (plus the L1 task loss against ``labels``)
    in training mode (dropout set to 0), in ``dtype``."""
    model = model.to(dtype).train()
    model.zero_grad()
    out = model(*(batch[m].to(dtype) if batch[m].is_floating_point() else batch[m] for m in MODALITIES))
    loss = out["dec_loss"] + out["hete_loss"] + out["homo_loss"]
    if labels is not None:
        loss = loss + (out["output_logit"].reshape(-1) - labels.to(dtype)).abs().mean()
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def official_dropout_run(official: Path, state: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Their training-mode forward with :data:`DROPOUT_RATES` after ``torch.manual_seed(DROPOUT_SEED)``,
    float64: outputs, and gradients of the summed predictions plus ``dec + hete + homo``."""
    model = official_model(official, {**SMALL, **DROPOUT_RATES})
    model.load_state_dict(state)
    model = model.double().train()
    torch.manual_seed(DROPOUT_SEED)
    out = model(*(batch[m].double() for m in MODALITIES))
    (out["output_logit"].sum() + out["dec_loss"] + out["hete_loss"] + out["homo_loss"]).backward()
    return {
        "seed": DROPOUT_SEED,
        "rates": DROPOUT_RATES,
        **{key: out[key].detach().clone() for key in ("output_logit", "dec_loss", "hete_loss", "homo_loss")},
        "grads": {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None},
    }


def ours(state: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], dtype: torch.dtype, **options: Any):
    """Our converted model's prediction, components and gradients (dropout 0 for gradients)."""
    model = from_official_state_dict(state, **options).to(dtype)
    features = {m: batch[m].to(dtype) if batch[m].is_floating_point() else batch[m].transpose(1, 2) for m in MODALITIES}
    labels = torch.zeros(features["audio"].shape[0], dtype=dtype)
    with torch.no_grad():
        evaluated = model.eval()(features, None, labels)
    zero = dict.fromkeys(OUR_DROPOUTS, 0.0)
    trained = from_official_state_dict(state, **{**options, **zero, "alpha": 1.0, "beta": 1.0, "contrastive_weight": 0.0}).to(dtype).train()
    trained(features, None, None).aux_losses["alignment"].backward()
    return evaluated, trained


def compare(reference: dict[str, torch.Tensor], evaluated: Any) -> dict[str, float]:
    """Largest absolute logit difference and relative loss differences."""
    result = {"logits_abs": float((evaluated.prediction.reshape(-1) - reference["output_logit"].reshape(-1)).abs().max())}
    for ours_key, theirs in (("dec", "dec_loss"), ("hete", "hete_loss"), ("homo", "homo_loss")):
        result[f"{ours_key}_rel"] = float((evaluated.components[ours_key] - reference[theirs]).abs() / reference[theirs].abs())
    return result


def gradient_error(model_grads: dict[str, torch.Tensor], trained: torch.nn.Module) -> float:
    """Largest relative difference between their gradients (renamed to ours) and ours."""
    mapped = convert_state_dict(model_grads, trained)
    params = dict(trained.named_parameters())
    worst = 0.0
    for name, grad in mapped.items():
        mine = params[name].grad
        worst = max(worst, float((mine.reshape(grad.shape) - grad).abs().max() / grad.abs().max().clamp_min(1e-30)))
    return worst


def random_batch(batch_size: int, steps: int, dims: list[int], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch_size, steps, d, generator=generator) for m, d in zip(MODALITIES, dims)}


def float32_gradient_errors(official: Path, seed: int) -> dict[str, dict[str, float]]:
    """Per group of our parameter names (``cross_modal``, ``unique_encoders.audio``, ...), the largest
    relative L2 error of a parameter's float32 gradient, theirs and ours, against their float64
    gradient (see the module docstring)."""
    zero_dropout = dict.fromkeys(DROPOUTS, 0.0)
    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in official_model(official, zero_dropout).state_dict().items()}
    batch = random_batch(32, 50, [768, 5, 20], seed=seed + 1)
    labels = 1.5 * torch.randn(32, generator=torch.Generator().manual_seed(seed + 2))

    def theirs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
        model = official_model(official, zero_dropout)
        model.load_state_dict(state)
        return official_gradients(model, batch, dtype, labels)

    options = {**dict.fromkeys(OUR_DROPOUTS, 0.0), "alpha": 1.0, "beta": 1.0, "contrastive_weight": 0.0}
    mine = from_official_state_dict(state, **options).float().train()
    out = mine({m: batch[m].float() for m in MODALITIES}, None, None)
    ((out.prediction.reshape(-1) - labels).abs().mean() + out.aux_losses["alignment"]).backward()
    reference, their_float32 = convert_state_dict(theirs(torch.float64), mine), convert_state_dict(theirs(torch.float32), mine)
    errors: dict[str, dict[str, float]] = {}
    for name, parameter in mine.named_parameters():
        exact = reference[name].reshape(-1)
        head, *rest = name.split(".")
        group = f"{head}.{rest[0]}" if rest[0] in MODALITIES else head  # per modality where the module is
        worst = errors.setdefault(group, {"theirs": 0.0, "ours": 0.0})
        for who, grad in (("theirs", their_float32[name]), ("ours", parameter.grad)):
            error = float((grad.reshape(-1).double() - exact).norm() / exact.norm().clamp_min(1e-300))
            worst[who] = max(worst[who], error)
    return errors


def tiny_bert(folder: Path) -> None:
    import transformers

    config = transformers.BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)


def check(official: Path) -> None:
    zero_dropout = dict.fromkeys(DROPOUTS, 0.0)
    torch.manual_seed(0)
    model = official_model(official, {})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = random_batch(32, 50, [768, 5, 20], seed=1)
    report: dict[str, Any] = {}
    for dtype in (torch.float32, torch.float64):
        theirs = official_model(official, {})
        theirs.load_state_dict(state)
        reference = official_outputs(theirs, batch, dtype)
        evaluated, _ = ours(state, batch, dtype)
        report[str(dtype)] = compare(reference, evaluated)
    theirs = official_model(official, zero_dropout)
    theirs.load_state_dict(state)
    _, trained = ours(state, batch, torch.float64)
    report["gradients_rel_float64"] = gradient_error(official_gradients(theirs, batch), trained)
    # Training mode with their MOSI dropouts: ours with nn.Dropout draws their masks from the same seed.
    theirs = official_model(official, {})
    theirs.load_state_dict(state)
    theirs = theirs.double().train()
    torch.manual_seed(DROPOUT_SEED)
    reference = theirs(*(batch[m].double() for m in MODALITIES))
    mine = from_official_state_dict(state, fast_dropout=False).double().train()
    torch.manual_seed(DROPOUT_SEED)
    report["train_dropout_float64"] = compare(reference, mine({m: batch[m].double() for m in MODALITIES}, None, torch.zeros(len(batch["audio"]), dtype=torch.float64)))

    with tempfile.TemporaryDirectory() as folder:
        tiny_bert(Path(folder))
        bert_overrides = {"use_bert": True, "pretrained": folder, "feature_dims": [24, 5, 20]}
        torch.manual_seed(0)
        theirs = official_model(official, bert_overrides)
        state = {k: v.clone() for k, v in theirs.state_dict().items()}
        generator = torch.Generator().manual_seed(2)
        lengths = torch.randint(3, 12, (8,), generator=generator)
        ids = torch.randint(1, 50, (8, 12), generator=generator)
        mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
        tokens = torch.stack([ids * mask, mask, torch.zeros_like(ids)], dim=1)  # their (B, 3, L) layout
        other = random_batch(8, 12, [1, 5, 20], seed=3)
        bert_batch = {"text": tokens, "audio": other["audio"], "vision": other["vision"]}
        reference = official_outputs(theirs, bert_batch, torch.float32)
        evaluated, _ = ours(state, bert_batch, torch.float32, text_encoder=folder)
        report["bert_float32"] = compare(reference, evaluated)
    print(json.dumps(report, indent=1))


def fixture(official: Path, out: Path) -> None:
    torch.manual_seed(0)
    model = official_model(official, SMALL)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [random_batch(n, 10, SMALL["feature_dims"], seed=n) for n in (5, 12)]
    payload: dict[str, Any] = {"official_config": SMALL, "official_commit": "6fa8df9", "state_dict": state, "batches": batches}
    for dtype, key in ((torch.float64, "eval_float64"), (torch.float32, "eval_float32")):
        payload[key] = []
        for batch in batches:
            theirs = official_model(official, SMALL)
            theirs.load_state_dict(state)
            payload[key].append(official_outputs(theirs, batch, dtype))
    payload["grads_float64"] = []
    for batch in batches:
        theirs = official_model(official, {**SMALL, **dict.fromkeys(DROPOUTS, 0.0)})
        theirs.load_state_dict(state)
        payload["grads_float64"].append(official_gradients(theirs, batch))
    # Their training recipe, dropout 0: three steps on batches 1, 0, 1 (12, 5 and 12 samples).
    generator = torch.Generator().manual_seed(7)
    payload["train_labels"] = [(torch.rand(len(batch["audio"]), generator=generator, dtype=torch.float64) * 6 - 3).round(decimals=1) for batch in batches]
    for labels in payload["train_labels"]:
        labels[0] = 0.0  # a neutral sample, as MOSI has
    payload["train_order"] = [1, 0, 1]
    steps = [(batches[i], payload["train_labels"][i]) for i in payload["train_order"]]
    payload["trained_float64"] = official_training_steps(official, {**SMALL, **dict.fromkeys(DROPOUTS, 0.0)}, state, steps)
    # Their initial weights at a seed, with every modality projected (a width-20 vision stream):
    # alignkit's DecAlign creates its layers in their order and draws the same weights.
    torch.manual_seed(INIT_SEED)
    payload["seeded_init"] = {"seed": INIT_SEED, "state_dict": official_model(official, {**SMALL, "feature_dims": [24, 5, 20]}).state_dict()}
    # Their training-mode outputs with every dropout on (alignkit's nn.Dropout path draws their masks).
    payload["train_dropout"] = official_dropout_run(official, state, batches[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


def train_official(official: Path, data: Path, epochs: int, seed: int, workers: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Their MOSI training run (their ``main._run``: data loader, trainer, best checkpoint, test) on
    the CPU, timed, with their configuration changed by ``overrides``. Besides the timings and test
    metrics, the result holds their initial weights (``initial_state``), each epoch's training
    batches as dataset indices (``batch_order``) and validation results (``valid``). Their code
    calls ``model.cuda()``; that call is made a no-op here."""
    import importlib.util
    import os
    import types

    torch.nn.Module.cuda = lambda self, device=None: self  # type: ignore[method-assign]
    sys.path.insert(0, str(official))
    cwd = os.getcwd()
    os.chdir(official)
    try:
        import data_loader  # noqa: F401  (their modules, imported before main.py: see below)
        import models  # noqa: F401
        from config import get_config_regression
        from trains.ATIO import DecAlignTrainer
        from utils import setup_seed

        # main.py imports pandas only to write a CSV this run never writes; without pandas, a
        # stand-in module is present while main.py is imported (and only then: torch's own
        # imports, done above, reject a module without a spec).
        stand_in = importlib.util.find_spec("pandas") is None
        if stand_in:
            sys.modules["pandas"] = types.ModuleType("pandas")
        try:
            import main as their_main
        finally:
            if stand_in:
                del sys.modules["pandas"]
    finally:
        os.chdir(cwd)
    epochs_seconds: list[float] = []
    batch_order: list[list[list[int]]] = []
    original_loader = their_main.MMDataLoader

    class TimedEpochs:
        def __init__(self, loader: Any) -> None:
            self.loader = loader

        def __len__(self) -> int:
            return len(self.loader)

        def __iter__(self):
            started = time.perf_counter()
            batch_order.append([])
            for batch in self.loader:
                batch_order[-1].append(batch["index"].tolist())
                yield batch
            epochs_seconds.append(time.perf_counter() - started)

    def loaders(args: Any, num_workers: int = 4) -> dict[str, Any]:
        result = original_loader(args, num_workers)
        result["train"] = TimedEpochs(result["train"])
        return result

    their_main.MMDataLoader = loaders
    valid_seconds: list[float] = []
    valid: list[dict[str, float]] = []
    original_test = DecAlignTrainer.do_test

    def timed_test(self: Any, model: Any, loader: Any, mode: str = "VAL") -> dict[str, Any]:
        started = time.perf_counter()
        result = original_test(self, model, loader, mode)
        if mode == "VAL":
            valid_seconds.append(time.perf_counter() - started)
            valid.append({k: float(v) for k, v in result.items()})
        return result

    DecAlignTrainer.do_test = timed_test
    initial_state: dict[str, torch.Tensor] = {}
    original_train = DecAlignTrainer.do_train

    def recorded_train(self: Any, model: Any, dataloader: Any, return_epoch_results: bool = False) -> Any:
        initial_state.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original_train(self, model, dataloader, return_epoch_results)

    DecAlignTrainer.do_train = recorded_train
    args = get_config_regression("decalign", "mosi", official / "config" / "dec_mosi_config.json")
    with tempfile.TemporaryDirectory() as folder:
        for key, value in {"featurePath": str(data), "use_bert": False, "num_epochs": epochs, "is_distill": False, "mode": "train",
                           "model_save_path": f"{folder}/decalign-mosi.pth", "feature_T": "", "feature_A": "", "feature_V": "", "cur_seed": 1,
                           **(overrides or {})}.items():
            setattr(args, key, value)
        setup_seed(seed)
        test = their_main._run(args, workers, False)
    return {"epoch_train_seconds": epochs_seconds, "epoch_valid_seconds": valid_seconds, "test": {k: float(v) for k, v in test.items()},
            "valid": valid, "initial_state": initial_state, "batch_order": batch_order}


def train_ours(data: Path, epochs: int, seed: int, model_options: dict[str, Any] | None = None, *,
               initial_state: dict[str, torch.Tensor] | None = None, batch_order: list[list[list[int]]] | None = None) -> dict[str, Any]:
    """alignkit's default DecAlign on the same file with the MOSI preset (the authors'
    configuration), its model options updated with ``model_options``. For a paired run,
    ``initial_state`` (their ``state_dict``) replaces the initial weights and ``batch_order`` (per
    epoch, the training batches as dataset indices) the shuffled batches; floating-point inputs are
    cast to torch's default dtype."""
    from unittest import mock

    from alignkit_models.training import trainer
    from alignkit_models.training.config import build_config

    def build_model(config: Any, dataset: Any) -> Any:
        model = original_build(config, dataset)
        model.load_state_dict(convert_state_dict(initial_state, model))
        return model

    class GivenOrder:
        """Stands in for the trainer's batch sampler: epoch ``e`` yields ``batch_order[e]``."""

        epoch = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __len__(self) -> int:
            return len(batch_order[0])

        def __iter__(self):
            # A generator, so the epoch advances when batches are drawn: the data loader calls
            # iter() on its sampler twice per epoch.
            GivenOrder.epoch += 1
            yield from batch_order[GivenOrder.epoch - 1]

    def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        batch = original_to_device(batch, device)
        cast = lambda x: x.to(torch.get_default_dtype()) if x.is_floating_point() else x  # noqa: E731
        return {"features": {m: cast(x) for m, x in batch["features"].items()}, "masks": batch["masks"], "labels": cast(batch["labels"])}

    original_build, original_to_device = trainer.build_model, trainer.to_device
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as patches:
        if initial_state is not None:
            patches.enter_context(mock.patch.object(trainer, "build_model", build_model))
        if batch_order is not None:
            patches.enter_context(mock.patch.object(trainer, "GlobalBatchSampler", GivenOrder))
        if torch.get_default_dtype() != torch.float32:
            patches.enter_context(mock.patch.object(trainer, "to_device", to_device))
        config = build_config("decalign", "mosi", data=str(data), seeds=[seed], max_epochs=epochs, output_dir=folder, progress=False)
        config.model_options.update(model_options or {})
        summary = trainer.run_experiment(config)
        history = json.loads((Path(summary["run_dir"]) / f"seed-{seed}" / "history.json").read_text())
    return {
        "epoch_train_seconds": [r["train_seconds"] for r in history],
        "epoch_valid_seconds": [r["valid_seconds"] for r in history],
        "test": {k: v["mean"] for k, v in summary["test"].items()},
        "valid": [r["valid"] for r in history],
    }


def paired(official: Path, data: Path, epochs: int, seed: int, float64: bool, dropout: bool = False) -> dict[str, Any]:
    """Their training and ours, ours started from their initial weights and fed their batches in
    their order, with every dropout 0 or (``dropout``) their MOSI dropouts, ours with
    ``fast_dropout=False`` and, before each training step, the global generator state their step
    started from (so both draw the same masks): the runs differ only by rounding (float32, or
    float64 with ``float64``). Returns both runs' validation task loss per epoch, test metrics and,
    per training step, ``[sum of the predictions, dec, hete, homo]`` (unweighted losses)."""
    from unittest import mock

    from alignkit_models.models.decalign import DecAlign

    if float64:
        torch.set_default_dtype(torch.float64)  # their model, data and ours are then float64
    if str(official) not in sys.path:
        sys.path.insert(0, str(official))
    from models.model import DecAlign as TheirDecAlign  # their model

    steps: dict[str, list[list[float]]] = {"theirs": [], "ours": []}
    rng_states: list[torch.Tensor] = []  # the global generator at each of their training steps

    def their_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            rng_states.append(torch.get_rng_state())
        out = their_forward.original(self, *args, **kwargs)
        if self.training:
            steps["theirs"].append([float(out["output_logit"].detach().sum()), *(float(out[k].detach()) for k in ("dec_loss", "hete_loss", "homo_loss"))])
        return out

    def our_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            torch.set_rng_state(rng_states[len(steps["ours"])])
        out = our_forward.original(self, *args, **kwargs)
        if self.training:
            steps["ours"].append([float(out.prediction.detach().sum()), *(float(out.components[k]) for k in ("dec", "hete", "homo"))])
        return out

    their_forward.original, our_forward.original = TheirDecAlign.forward, DecAlign.forward
    with mock.patch.object(TheirDecAlign, "forward", their_forward), mock.patch.object(DecAlign, "forward", our_forward):
        theirs = train_official(official, data, epochs, seed, 0, {} if dropout else dict.fromkeys(DROPOUTS, 0.0))
        options = {"fast_dropout": False} if dropout else dict.fromkeys(OUR_DROPOUTS, 0.0)
        mine = train_ours(data, epochs, seed, options, initial_state=theirs["initial_state"], batch_order=theirs["batch_order"])
    return {
        "dtype": str(torch.get_default_dtype()),
        "dropout": "their MOSI rates" if dropout else "none",
        "valid_loss": {"theirs": [r["MOSI"] for r in theirs["valid"]], "ours": [r["loss"] for r in mine["valid"]]},
        "test": {"theirs": theirs["test"], "ours": mine["test"]},
        "steps": steps,
    }


def _commit() -> str:
    """alignkit's commit, with ``+dirty`` when the working tree has changes (or ``unknown``)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["check", "fixture", "train-official", "train-ours", "paired", "float32-gradients"])
    parser.add_argument("--official", type=Path, help="checkout of taco-group/DecAlign (commit 6fa8df9)")
    parser.add_argument("--out", type=Path, default=FIXTURE, help="fixture file (fixture command)")
    parser.add_argument("--data", type=Path, help="MOSI-format MMSA pickle (train-* commands)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1111)
    parser.add_argument("--workers", type=int, default=4, help="their data loader's worker processes (their default 4)")
    parser.add_argument("--float64", action="store_true", help="paired command: both runs in float64")
    parser.add_argument("--dropout", action="store_true", help="paired command: their MOSI dropouts on (the same masks in both runs)")
    args = parser.parse_args()
    if args.command != "train-ours" and (args.official is None or not (args.official / "models" / "model.py").is_file()):
        parser.error(f"--official: no models/model.py under {args.official}")
    if args.command.startswith(("train", "paired")) and (args.data is None or not args.data.is_file()):
        parser.error("--data: an MMSA pickle is needed")
    if args.command == "check":
        check(args.official)
    elif args.command == "fixture":
        fixture(args.official, args.out)
    elif args.command == "float32-gradients":
        print(json.dumps({"command": args.command, "seed": args.seed, "alignkit_commit": _commit(), "torch": torch.__version__,
                          "errors": float32_gradient_errors(args.official, args.seed)}))
    elif args.command == "paired":
        print(json.dumps({"command": "paired", "epochs": args.epochs, "seed": args.seed, "alignkit_commit": _commit(),
                          **paired(args.official, args.data.resolve(), args.epochs, args.seed, args.float64, args.dropout)}))
    else:
        import resource

        torch.manual_seed(args.seed)
        run = train_official(args.official, args.data.resolve(), args.epochs, args.seed, args.workers) if args.command == "train-official" else train_ours(args.data.resolve(), args.epochs, args.seed)
        run = {k: v for k, v in run.items() if k not in ("initial_state", "batch_order", "valid")}
        usage = {who: resource.getrusage(getattr(resource, who)).ru_maxrss / 1024 for who in ("RUSAGE_SELF", "RUSAGE_CHILDREN")}
        print(json.dumps({"command": args.command, "epochs": args.epochs, "seed": args.seed, "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "alignkit_commit": _commit(), "peak_rss_mib": usage["RUSAGE_SELF"], "children_peak_rss_mib": usage["RUSAGE_CHILDREN"], **run}))


if __name__ == "__main__":
    main()
