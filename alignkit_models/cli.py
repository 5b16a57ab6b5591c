"""The ``alignkit`` command line.

    alignkit train --model decalign --dataset uci-mfeat
    alignkit train --model decalign --dataset mosi --data aligned_50.pkl --seeds 1111 1112
    alignkit train ... --config my.yaml --set protocol.lr=1e-4 --set model_options.n_layers=2
    alignkit train ... --resume runs/decalign-mosi
    alignkit evaluate --checkpoint runs/decalign-uci-mfeat/seed-1111/best.pt
    alignkit compare --models decalign,mult,misa --dataset uci-mfeat --seeds 1111 1112 1113
    alignkit convert-official decalign-mosi.pth decalign-mosi.pt    # a checkpoint of the authors' code
    alignkit models
    alignkit datasets

Configuration mistakes end with one line naming the field (exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from alignkit_models.training.checkpoint import read_json
from alignkit_models.training.config import ConfigError, TrainConfig, apply_override, build_config, validate_config
from alignkit_models.training.distributed import is_main


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="data set name (see `alignkit datasets`)")
    parser.add_argument("--data", help="path to the MMSA feature pickle (real MOSI/MOSEI/SIMS/IEMOCAP)")
    parser.add_argument("--config", help="YAML or JSON file with config fields (overrides the preset)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one field, e.g. protocol.lr=1e-4 (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 1111-1115)")
    parser.add_argument("--epochs", type=int, dest="max_epochs", help="maximum epochs per seed")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="mixed precision of the network (autocast; fp16 with loss scaling)")
    parser.add_argument("--compile", action="store_const", const=True, help="run the training forward pass through torch.compile")
    parser.add_argument("--cuda-graphs", dest="cuda_graphs", action="store_const", const=True, help="replay the whole training step from a CUDA graph (one GPU; fp32 or bf16)")
    parser.add_argument("--protocol", dest="protocol_source", choices=["model", "shared"], help="each model's own reference protocol where the preset has one (default), or the data set's shared protocol for every model")
    parser.add_argument("--threads", type=int, help="CPU threads of this process (default: $OMP_NUM_THREADS, else torch's choice: the physical cores)")
    parser.add_argument("--output-dir", dest="output_dir", help="folder for run folders (default runs/)")
    parser.add_argument("--run-name", dest="run_name", help="run folder name (default <model>-<dataset>)")
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bars")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description="Train and compare DecAlign and baselines on multimodal data.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model over seeds; prints test metrics (mean +- std)")
    train.add_argument("--model", required=True, help="model name (see `alignkit models`)")
    _add_run_options(train)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR")

    evaluate = commands.add_parser("evaluate", help="metrics of a saved checkpoint")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--data", help="MMSA pickle, if the data set needs one (default: the path used in training)")
    evaluate.add_argument("--split", default="test", choices=["train", "valid", "test"])

    compare = commands.add_parser("compare", help="train several models under one protocol; writes results.md/.csv and a bubble plot")
    compare.add_argument("--models", required=True, help="comma-separated model names, or 'all'")
    _add_run_options(compare)
    compare.add_argument("--resume", metavar="COMPARE_DIR", help="continue an interrupted comparison")

    convert = commands.add_parser("convert-official", help="turn a checkpoint of the authors' DecAlign code into an alignkit checkpoint")
    convert.add_argument("source", metavar="IN", help="their state_dict file (torch.save(model.state_dict()))")
    convert.add_argument("target", metavar="OUT", help="alignkit checkpoint to write (for `alignkit evaluate`)")
    convert.add_argument("--dataset", default="mosi", help="data set the checkpoint was trained on (default mosi)")
    convert.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a model option the weights do not show, e.g. model_options.n_heads=10 (repeatable)")

    commands.add_parser("models", help="list the models with their parameter counts")
    commands.add_parser("datasets", help="list the data sets")
    return parser


def _run_options(args: argparse.Namespace) -> dict:
    return {
        "data": args.data,
        "seeds": args.seeds,
        "max_epochs": args.max_epochs,
        "device": args.device,
        "threads": args.threads,
        "precision": args.precision,
        "compile": args.compile,
        "cuda_graphs": args.cuda_graphs,
        "protocol_source": args.protocol_source,
        "output_dir": args.output_dir,
        "run_name": args.run_name,
        "progress": args.progress,
    }


def _format_summary(summary: dict) -> str:
    return "  ".join(f"{name} {stats['mean']:.4f} +- {stats['std']:.4f}" for name, stats in summary.items())


def _train(args: argparse.Namespace) -> None:
    from alignkit_models.training.trainer import run_experiment

    config = build_config(args.model, args.dataset, config_file=args.config, overrides=args.overrides, **_run_options(args))
    run_dir = None
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").is_file():
            raise ConfigError(f"resume: no run found in {run_dir} (config.json missing)")
        saved = validate_config(read_json(run_dir / "config.json", "run config"))
        for field, given in (("model", args.model), ("dataset", args.dataset)):
            if given != getattr(saved, field):
                raise ConfigError(f"resume: {run_dir} is a run of {field} {getattr(saved, field)!r}, received --{field} {given}")
        # Continue with the saved settings; only the seed list may grow.
        config = validate_config({**saved.model_dump(), "seeds": config.seeds if args.seeds else saved.seeds})
    result = run_experiment(config, run_dir=run_dir, resume=bool(args.resume))
    if is_main():  # under torchrun: one report, from rank zero
        print(f"\n{config.model} on {config.dataset}, {len(config.seeds)} seed(s), test metrics (mean +- std):")
        print("  " + _format_summary(result["test"]))
        print(f"results: {result['run_dir']}/results.json")


def _evaluate(args: argparse.Namespace) -> None:
    import torch

    from alignkit_models.data.catalog import dataset_info
    from alignkit_models.training.checkpoint import load_checkpoint
    from alignkit_models.training.trainer import build_model, evaluate, prepare_dataset

    checkpoint = load_checkpoint(args.checkpoint)
    config = validate_config(checkpoint["config"])
    dataset = prepare_dataset(config, args.data)
    model = build_model(config, dataset)
    model.load_state_dict(checkpoint["model_state"])
    metrics = evaluate(model, dataset.split(args.split), dataset_info(config.dataset).metrics, config.protocol.batch_size, torch.device("cpu"))
    print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, "metrics": metrics}, indent=1))


def _convert_official(args: argparse.Namespace) -> None:
    import torch

    from alignkit_models.models.decalign.official import from_official_state_dict, infer_options
    from alignkit_models.training.checkpoint import save_checkpoint

    source = Path(args.source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    try:  # weights_only: a checkpoint is data; it must never run code
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is one line for the user
        raise ValueError(f"{source}: not a readable PyTorch state_dict ({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    raw: dict = {"model_options": {}}
    for assignment in args.overrides:
        apply_override(raw, assignment)
    options = raw["model_options"]
    model = from_official_state_dict(state, **options)
    inferred = {k: v for k, v in infer_options({k.removeprefix("module."): v for k, v in state.items()}).items() if k not in ("input_dims", "task", "n_classes")}
    config = validate_config({"model": "decalign", "dataset": args.dataset, "seeds": [0], "model_options": {**inferred, **options}})
    save_checkpoint(Path(args.target), {"config": config.model_dump(), "model_state": model.state_dict(), "epoch": 0, "valid": {}, "seed": 0})
    print(f"wrote {args.target}: DecAlign (official) with {sum(p.numel() for p in model.parameters()):,} parameters, options {config.model_options}")


def _compare(args: argparse.Namespace) -> None:
    from alignkit_models.registry import list_models
    from alignkit_models.training.compare import run_comparison

    names = [info.name for info in list_models()] if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    configs = [build_config(name, args.dataset, config_file=args.config, overrides=args.overrides, **_run_options(args)) for name in names]
    folder = Path(args.resume) if args.resume else None
    report = run_comparison(configs, folder=folder, resume=bool(args.resume))
    print(report.table_markdown)
    print(f"\nwritten: {report.folder}/results.md, results.csv" + (", bubble.png" if report.plot else ""))


def _models() -> None:
    from alignkit_models.registry import list_models

    mosi = {"text": 768, "audio": 5, "vision": 20}
    uci = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
    rows = []
    for info in list_models():
        counts = []
        for dims, task, classes in ((mosi, "regression", None), (uci, "classification", 10)):
            model = info.cls(dims, task=task, n_classes=classes)
            counts.append(sum(p.numel() for p in model.parameters()))
        rows.append((info.name, f"{counts[0]:,}", f"{counts[1]:,}", info.modalities, info.fidelity, info.summary, info.notes))
    print(f"{'model':13s} {'params MOSI':>12s} {'params UCI':>12s}  {'modalities':28s} {'fidelity':9s} summary")
    for name, p_mosi, p_uci, modalities, fidelity, summary, notes in rows:
        print(f"{name:13s} {p_mosi:>12s} {p_uci:>12s}  {modalities[:28]:28s} {fidelity:9s} {summary}")
        if notes:
            print(f"{'':13s} {'':>12s} {'':>12s}  notes: {notes}")


def _datasets() -> None:
    from alignkit_models.data.catalog import DATASETS

    for info in DATASETS.values():
        source = "--data PATH" if info.needs_path else "built in"
        print(f"{info.name:15s} {source:12s} metrics={info.metrics:15s} {info.description}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "compare":
            _compare(args)
        elif args.command == "convert-official":
            _convert_official(args)
        elif args.command == "models":
            _models()
        else:
            _datasets()
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as error:  # ImportError: a missing optional extra
        print(f"alignkit: error: {error}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()
    return 0


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
