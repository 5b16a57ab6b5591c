"""The ``alignkit`` command line.

    alignkit train --model decalign --dataset uci-mfeat
    alignkit train --model decalign --dataset mosi --data aligned_50.pkl --seeds 1111 1112
    alignkit train ... --config my.yaml --set protocol.lr=1e-4 --set model_options.n_layers=2
    alignkit train ... --resume runs/decalign-mosi
    alignkit evaluate --checkpoint runs/decalign-uci-mfeat/seed-1111/best.pt
    alignkit compare --models decalign,mult,misa --dataset uci-mfeat --seeds 1111 1112 1113
    alignkit sweep --model decalign --dataset uci-mfeat --set model_options.alpha=0.01,0.1 --set model_options.beta=0.01,0.1
    alignkit plot gap --checkpoint runs/decalign-uci-mfeat/seed-1111/best.pt       # also: confusion, curves, sensitivity
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
from alignkit_models.training.config import ConfigError, apply_override, build_config, validate_config
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
    evaluate.add_argument("--debias", default="none", choices=["none", "mcis"], help="also report debiased metrics: mcis = MCIS counterfactual debiasing at inference (Yang et al., ECCV 2024; adapted)")
    evaluate.add_argument("--mcis-label-weight", dest="mcis_label_weight", type=float, metavar="W", help="weight of the purified label-bias output subtracted (default 1.0)")
    evaluate.add_argument("--mcis-context-weight", dest="mcis_context_weight", type=float, metavar="W", help="weight of the purified language-context output subtracted (default 0.1)")
    evaluate.add_argument("--mcis-text-modality", dest="mcis_text_modality", metavar="NAME", help="language modality of the context term: auto ('text' if present; default), none, or a modality name")
    evaluate.add_argument("--mcis-strata", dest="mcis_strata", choices=["auto", "sign", "none"], help="label strata of the backdoor adjustment: auto (classes; Acc-7/Acc-5 classes for regression; default), sign, none")
    evaluate.add_argument("--mcis-prior", dest="mcis_prior", choices=["empirical", "uniform"], help="P(z) of the backdoor adjustment (default empirical)")
    evaluate.add_argument("--mcis-tune", dest="mcis_tune", action="store_const", const=True, help="pick both weights on the valid split (grid) instead of the given ones")

    compare = commands.add_parser("compare", help="train several models under one protocol; writes results.md/.csv and a bubble plot")
    compare.add_argument("--models", required=True, help="comma-separated model names, or 'all'")
    _add_run_options(compare)
    compare.add_argument("--resume", metavar="COMPARE_DIR", help="continue an interrupted comparison")

    sweep = commands.add_parser("sweep", help="train one model over a grid: every --set key=v1,v2,... with several values is an axis; rerun to continue")
    sweep.add_argument("--model", required=True, help="model name (see `alignkit models`)")
    _add_run_options(sweep)

    plot = commands.add_parser("plot", help="draw a run: gap, confusion, curves or sensitivity (needs alignkit[plot])")
    plots = plot.add_subparsers(dest="plot", required=True)
    gap = plots.add_parser("gap", help="2-D projection of each modality's unique and common features, with gap measures (decalign checkpoints)")
    gap.add_argument("--checkpoint", dest="checkpoints", action="append", required=True, help="a decalign checkpoint (repeat to draw several side by side, e.g. with and without alignment)")
    gap.add_argument("--label", dest="labels", action="append", help="a row title per checkpoint (default: run folder and seed)")
    gap.add_argument("--method", default="pca", choices=["pca", "tsne", "umap"], help="2-D projection (umap needs umap-learn)")
    gap.add_argument("--max-points", dest="max_points", type=int, default=1000, help="samples drawn per modality (all are measured)")
    confusion = plots.add_parser("confusion", help="confusion matrix (7 sentiment classes for MOSI/MOSEI, 5 for CH-SIMS, the classes of a classification data set)")
    confusion.add_argument("--checkpoint", required=True)
    for command in (gap, confusion):
        command.add_argument("--split", default="test", choices=["train", "valid", "test"])
        command.add_argument("--data", help="MMSA pickle, if the data set needs one (default: the path used in training)")
    curves = plots.add_parser("curves", help="training and validation curves of every loss component of a run")
    curves.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (seed-* inside) or one seed folder")
    sensitivity = plots.add_parser("sensitivity", help="heatmap of a metric over the grid of an `alignkit sweep`")
    sensitivity.add_argument("sweep_dir", metavar="SWEEP_DIR")
    sensitivity.add_argument("--metric", help="metric key (default: the data set's first, e.g. accuracy or mae)")
    sensitivity.add_argument("--split", default="test", choices=["test", "valid"], help="test metrics, or the validation metrics of the selected epochs")
    sensitivity.add_argument("--x", help="axis for the columns (default: the sweep's first)")
    sensitivity.add_argument("--y", help="axis for the rows (default: the sweep's second)")
    for command in (gap, confusion, curves, sensitivity):
        command.add_argument("--output", "-o", help="image file: .png, .svg or .pdf (default: beside the input)")

    convert = commands.add_parser("convert-official", help="turn a checkpoint of the authors' DecAlign code into an alignkit checkpoint")
    convert.add_argument("source", metavar="IN", help="their state_dict file (torch.save(model.state_dict()))")
    convert.add_argument("target", metavar="OUT", help="alignkit checkpoint to write (for `alignkit evaluate`)")
    convert.add_argument("--dataset", default="mosi", help="data set the checkpoint was trained on (default mosi)")
    convert.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a model option the weights do not show, e.g. model_options.n_heads=10 (repeatable)")

    models = commands.add_parser("models", help="list the models with their parameter counts")
    models.add_argument("--all", dest="all_systems", action="store_true", help="also the DecAlign paper's comparison systems that are not in the zoo, and why")
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
    from alignkit_models.training.trainer import evaluate, load_trained

    mcis_options = {k: getattr(args, f"mcis_{k}") for k in ("label_weight", "context_weight", "text_modality", "strata", "prior", "tune")}
    given = [f"--mcis-{k.replace('_', '-')}" for k, v in mcis_options.items() if v is not None]
    if args.debias != "mcis" and given:
        raise ValueError(f"{', '.join(given)}: MCIS options need --debias mcis")
    if args.debias == "mcis":  # check the options before the (slow) loading
        from alignkit_models.debias.mcis import check_weight, mcis_report

        for key in ("label_weight", "context_weight"):
            if mcis_options[key] is not None:
                check_weight(f"--mcis-{key.replace('_', '-')}", mcis_options[key])
                if mcis_options["tune"]:
                    raise ValueError(f"--mcis-{key.replace('_', '-')}: --mcis-tune picks the weights on the valid split; pass one or the other")
    config, dataset, model = load_trained(args.checkpoint, args.data)
    kind = dataset_info(config.dataset).metrics
    if args.debias == "none":
        metrics = evaluate(model, dataset.split(args.split), kind, config.protocol.batch_size, torch.device("cpu"))
        print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, "metrics": metrics}, indent=1))
        return
    metrics, debias = mcis_report(
        model,
        dataset,
        args.split,
        kind=kind,
        batch_size=config.protocol.batch_size,
        device=torch.device("cpu"),
        label_weight=mcis_options["label_weight"],
        context_weight=mcis_options["context_weight"],
        text_modality=mcis_options["text_modality"] or "auto",
        strata=mcis_options["strata"] or "auto",
        prior=mcis_options["prior"] or "empirical",
        tune=bool(mcis_options["tune"]),
    )
    print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, "metrics": metrics, "debias": debias}, indent=1))


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


def _sweep(args: argparse.Namespace) -> None:
    from alignkit_models.training.sweep import run_sweep

    report = run_sweep(args.model, args.dataset, args.overrides, config_file=args.config, **_run_options(args))
    print(f"\n{args.model} on {args.dataset}, {len(report.cells)} cells, test metrics (mean +- std):")
    for cell in report.cells:
        print(f"  {cell['folder']}: " + _format_summary(cell["test"]))
    print(f"written: {report.folder}/sweep.json, results.csv (draw it: alignkit plot sensitivity {report.folder})")


def _plot(args: argparse.Namespace) -> None:
    from alignkit_models import plots

    if args.plot == "gap":
        first = Path(args.checkpoints[0])
        output = args.output or first.parent / f"gap-{args.split}.png"
        path, measures = plots.plot_gap(args.checkpoints, output, labels=args.labels, split=args.split, method=args.method, data=args.data, max_points=args.max_points)
        for checkpoint, values in zip(args.checkpoints, measures):
            for kind, numbers in values.items():
                print(f"{checkpoint} {kind}: " + "  ".join(f"{k} {v:.4g}" for k, v in numbers.items()))
    elif args.plot == "confusion":
        output = args.output or Path(args.checkpoint).parent / f"confusion-{args.split}.png"
        path, _ = plots.plot_confusion(args.checkpoint, output, split=args.split, data=args.data)
    elif args.plot == "curves":
        path = plots.plot_curves(args.run_dir, args.output)
    else:
        path = plots.plot_sensitivity(args.sweep_dir, args.output, metric=args.metric, split=args.split, x=args.x, y=args.y)
    print(f"wrote {path}")


def _models(all_systems: bool = False) -> None:
    from alignkit_models.registry import NOT_IN_THE_ZOO, list_models

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
    if all_systems:
        print("\nThe DecAlign paper's other comparison systems, not models of this zoo:")
        for name, reason in NOT_IN_THE_ZOO.items():
            print(f"{name:13s} {reason}")


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
        elif args.command == "sweep":
            _sweep(args)
        elif args.command == "plot":
            _plot(args)
        elif args.command == "convert-official":
            _convert_official(args)
        elif args.command == "models":
            _models(args.all_systems)
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
