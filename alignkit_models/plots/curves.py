"""Training and validation curves of every loss component of a run, one panel per component.

Reads ``history.json`` of each seed. The training value of an epoch is the mean over its batches;
the validation value is the mean over validation batches in evaluation mode (the task loss, and
the alignment terms DecAlign reports when given the labels; runs from before 2026-11-30 have only
the task loss). ``loss`` (the weighted total that is minimised) has training values only. The last
panel is the validation metric that selected the checkpoints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from alignkit_models.plots.figure import check_output, pyplot, save
from alignkit_models.training.checkpoint import read_json


def read_histories(run_dir: str | Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """``{seed folder name: history records}`` and the run's config (as saved), for a run folder
    (``seed-*`` inside) or one seed folder.

    Raises:
        FileNotFoundError: no ``history.json`` there.
        ValueError: a damaged history or config file, in one line naming it.
    """
    run_dir = Path(run_dir)
    if (run_dir / "history.json").is_file():
        seed_dirs, config_path = [run_dir], run_dir.parent / "config.json"
    else:
        seed_dirs, config_path = sorted(p.parent for p in run_dir.glob("seed-*/history.json")), run_dir / "config.json"
    if not seed_dirs:
        raise FileNotFoundError(f"{run_dir}: no history.json in it or in its seed-* folders (is it a finished run folder?)")
    config = read_json(config_path, "run config") if config_path.is_file() else {}
    histories = {}
    for seed_dir in seed_dirs:
        history = read_json(seed_dir / "history.json", "history")
        if not isinstance(history, list) or not all(isinstance(r, dict) and "epoch" in r and "train" in r for r in history):
            raise ValueError(f"history {seed_dir / 'history.json'}: not a list of epoch records")
        histories[seed_dir.name] = history
    return histories, config


def _validation_value(record: dict[str, Any], component: str) -> float | None:
    if component == "task":
        return record.get("valid", {}).get("loss")
    return record.get("valid_components", {}).get(component)


def plot_curves(run_dir: str | Path, output: str | Path | None = None, *, columns: int = 3) -> Path:
    """Draw every loss component of the run in ``run_dir`` over epochs, training (solid) and
    validation (dashed), one colour per seed. ``output`` defaults to ``<run_dir>/curves.png``."""
    from alignkit_models.training.config import validate_config
    from alignkit_models.training.trainer import selection_rule

    output = check_output(output if output is not None else Path(run_dir) / "curves.png")
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    histories, config = read_histories(run_dir)
    components: list[str] = []
    for history in histories.values():
        for record in history:
            components += [k for k in record["train"] if k not in components]
    selection = selection_rule(validate_config(config))[0] if config else "loss"
    panels = [*components, f"validation {selection}"]
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    colors = plt.get_cmap("tab10")
    for index, name in enumerate(panels):
        ax = axes[index // columns][index % columns]
        for k, (seed, history) in enumerate(histories.items()):
            epochs = [r["epoch"] for r in history]
            color = colors(k % 10)
            if index == len(panels) - 1:
                ax.plot(epochs, [r["valid"].get(selection, math.nan) for r in history], "--o", color=color, markersize=3, label=seed)
                continue
            ax.plot(epochs, [r["train"].get(name, math.nan) for r in history], "-o", color=color, markersize=3, label=f"{seed} train")
            valid = [_validation_value(r, name) for r in history]
            if any(v is not None for v in valid):
                ax.plot(epochs, [math.nan if v is None else v for v in valid], "--", color=color, label=f"{seed} valid")
        ax.set_title(name if index == len(panels) - 1 else f"{name} (train solid, valid dashed)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("value (unweighted)" if name not in ("loss", f"validation {selection}") else "weighted total" if name == "loss" else selection)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    title = f"{config.get('model', '?')} on {config.get('dataset', '?')}: {Path(run_dir).resolve().name}" if config else Path(run_dir).name
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return save(figure, output)
