"""The full DecAlign pipeline on an MMSA feature pickle, or on a synthetic one when none is given.

    python examples/decalign_reference.py                       # synthetic MOSI-format data
    python examples/decalign_reference.py ~/data/MOSI/aligned_50.pkl --dataset mosi
    python examples/decalign_reference.py --output-dir runs        # keep the run folder

Without ``--output-dir`` the run folder (and the synthetic pickle, when one is written) live in a
temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from alignkit_models.data import load_mmsa, write_synthetic_mmsa
from alignkit_models.training.config import build_config
from alignkit_models.training.trainer import run_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pickle", nargs="?", help="MMSA feature pickle (default: write a synthetic one)")
    parser.add_argument("--dataset", default="mosi", choices=["mosi", "mosei", "sims"], help="preset and metrics")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1111])
    parser.add_argument("--output-dir", help="keep the run folder here (default: a temporary folder, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        run(args, Path(scratch))


def run(args: argparse.Namespace, scratch: Path) -> None:
    path = Path(args.pickle) if args.pickle else None
    if path is None:
        # Synthetic data with the real set's dimensions, lengths and sizes (MOSI: 1284/229/686).
        path = write_synthetic_mmsa(scratch / f"synthetic-{args.dataset}.pkl", args.dataset, seed=0)
        print(f"no pickle given: wrote synthetic {args.dataset} data (removed at the end)")
    dataset = load_mmsa(path, name=args.dataset)
    print(f"{dataset.name}: {len(dataset.train)}/{len(dataset.valid)}/{len(dataset.test)} samples, dims {dataset.input_dims}")

    config = build_config("decalign", args.dataset, data=str(path), seeds=args.seeds, max_epochs=args.epochs, output_dir=args.output_dir or str(scratch))
    summary = run_experiment(config, dataset=dataset)
    for metric, stats in summary["test"].items():
        print(f"  {metric:14s} {stats['mean']:.4f} +- {stats['std']:.4f}")
    if args.output_dir:
        print(f"run folder: {summary['run_dir']}")


if __name__ == "__main__":
    main()
