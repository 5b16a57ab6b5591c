"""Sensitivity heatmap of a sweep (DecAlign paper, Fig. 7): a metric's mean over seeds for each
cell of a two-axis grid (one row for a one-axis sweep), each cell annotated with mean and std."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from alignkit_models.metrics import MINIMISED
from alignkit_models.plots.figure import check_output, pyplot, save
from alignkit_models.training.sweep import read_sweep


def sensitivity_grid(sweep: dict[str, Any], metric: str, split: str = "test", x: str | None = None, y: str | None = None) -> tuple[np.ndarray, np.ndarray, list[Any], list[Any], str, str | None]:
    """Mean and std ``(len(y values), len(x values))`` of ``metric`` on ``split``, the x and y
    values and keys (``y`` is None for a one-axis sweep). Missing cells are NaN.

    ``x``/``y`` choose two of the sweep's axes (default: the first two; the last part of a
    dotted key, e.g. ``alpha``, is enough). A sweep of more than two axes needs them.
    """
    if split not in ("test", "valid"):
        raise ValueError(f"split: expected 'test' or 'valid', received {split!r}")
    axes = sweep["axes"]

    def axis_key(name: str | None, default_index: int) -> str | None:
        if name is None:
            if len(axes) > 2:
                raise ValueError(f"x, y: the sweep has {len(axes)} axes ({', '.join(axes)}); choose two with --x and --y")
            return list(axes)[default_index] if default_index < len(axes) else None
        matches = [k for k in axes if k == name or k.rsplit(".", 1)[-1] == name]
        if len(matches) != 1:
            raise ValueError(f"axis {name!r}: expected one of the sweep's axes ({', '.join(axes)})")
        return matches[0]

    x_key, y_key = axis_key(x, 0), axis_key(y, 1)
    if x_key is None or x_key == y_key:
        raise ValueError("x, y: expected two different axes of the sweep")
    others = [k for k in axes if k not in (x_key, y_key)]
    if others:
        raise ValueError(f"x, y: the sweep's other axes ({', '.join(others)}) would be averaged over; plot a two-axis sweep")
    available = sweep["cells"][0][split]
    if metric not in available:
        raise ValueError(f"metric: expected one of {', '.join(available)}, received {metric!r}")
    xs, ys = axes[x_key], axes[y_key] if y_key is not None else [None]
    mean, std = np.full((len(ys), len(xs)), np.nan), np.full((len(ys), len(xs)), np.nan)
    for cell in sweep["cells"]:
        i = ys.index(cell["values"][y_key]) if y_key is not None else 0
        j = xs.index(cell["values"][x_key])
        mean[i, j], std[i, j] = cell[split][metric]["mean"], cell[split][metric]["std"]
    return mean, std, xs, ys, x_key, y_key


def plot_sensitivity(sweep_dir: str | Path, output: str | Path | None = None, *, metric: str | None = None, split: str = "test", x: str | None = None, y: str | None = None) -> Path:
    """Draw the heatmap of ``metric`` (default: the first metric of the data set) over the sweep
    in ``sweep_dir``; the colours run from worst (dark) to best (bright). ``output`` defaults to ``<sweep_dir>/sensitivity-<metric>.png``."""
    plt = pyplot()
    sweep = read_sweep(sweep_dir)
    metric = metric or next(iter(sweep["cells"][0][split]))
    output = check_output(output if output is not None else Path(sweep_dir) / f"sensitivity-{metric}.png")
    mean, std, xs, ys, x_key, y_key = sensitivity_grid(sweep, metric, split, x, y)
    lower_is_better = metric in MINIMISED
    figure, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(xs) + 3.0), max(3.5, 0.9 * len(ys) + 2.2)))
    image = ax.imshow(mean, cmap="viridis_r" if lower_is_better else "viridis", aspect="auto", origin="lower")  # y grows upwards
    finite = mean[np.isfinite(mean)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(mean[i, j]):
                bright_cell = (mean[i, j] > middle) != lower_is_better
                ax.text(j, i, f"{mean[i, j]:.4f}\n± {std[i, j]:.4f}", ha="center", va="center", fontsize=8, color="black" if bright_cell else "white")
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(x_key)
    if y_key is not None:
        ax.set_yticks(range(len(ys)), [str(v) for v in ys])
        ax.set_ylabel(y_key)
    else:
        ax.set_yticks([])
    seeds = len(sweep["cells"][0].get("seeds", []))
    direction = "lower" if lower_is_better else "higher"
    ax.set_title(f"{sweep.get('model', '?')} on {sweep.get('dataset', '?')}\n{split} {metric} ({direction} is better), mean ± std over {seeds} seed(s)", fontsize=9)
    figure.colorbar(image, ax=ax, label=f"{split} {metric}")
    figure.tight_layout()
    return save(figure, output)
