"""``alignkit sweep``: train one model over a grid of settings (e.g. the paper's alpha/beta
sensitivity study, Fig. 7).

Every ``--set key=v1,v2,...`` with more than one value is an axis of the grid; the others hold
for every cell. Writes into one folder::

    <folder>/<key>=<v>,<key>=<v>/...   each cell's run (see :mod:`alignkit_models.training.trainer`)
    <folder>/sweep.json               the axes, and each cell's settings and metrics (mean +- std)
    <folder>/results.csv              one row per cell

Running the same command again continues the sweep: finished seeds and cells are read back, an
interrupted seed resumes from its last checkpoint, and new values or seeds are trained. A cell
whose saved settings differ from what the command asks (another epoch budget, say) is refused
with one line, never silently mixed.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from alignkit_models.data.base import MultimodalDataset
from alignkit_models.training.checkpoint import atomic_write_text, read_json
from alignkit_models.training.config import ConfigError, build_config
from alignkit_models.training.trainer import prepare_dataset, run_experiment

# Fields that may differ between two runs of the same cell without changing what it trains.
_RUN_ONLY_FIELDS = ("seeds", "progress", "output_dir", "run_name", "threads", "world_size", "device")


@dataclass
class SweepReport:
    folder: Path
    axes: dict[str, list[Any]]
    cells: list[dict[str, Any]]


def split_values(raw: str) -> list[str]:
    """``"0.01,0.05"`` -> ``["0.01", "0.05"]``: commas split only outside brackets, braces and
    quotes, so that a YAML list or mapping stays one value."""
    values, depth, quote, current = [], 0, "", ""
    for char in raw:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += char
    values.append(current.strip())
    return values


def sweep_axes(overrides: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split ``--set`` assignments into the fixed ones and the axes ``{key: [raw values]}``."""
    fixed, axes = [], {}
    for assignment in overrides:
        if "=" not in assignment:
            raise ConfigError(f"--set: expected key=value, received {assignment!r}")
        key, raw = (part.strip() for part in assignment.split("=", 1))
        values = split_values(raw)
        if len(values) == 1:
            fixed.append(assignment)
            continue
        if key in axes:
            raise ConfigError(f"--set {key}: given twice")
        if any(v == "" for v in values) or len(set(values)) != len(values):
            raise ConfigError(f"--set {key}: expected distinct comma-separated values, received {raw!r}")
        axes[key] = values
    if not axes:
        raise ConfigError("sweep: no axis; give at least one --set key=v1,v2 with several values")
    return fixed, axes


def cell_name(assignment: dict[str, str]) -> str:
    """Folder name of a cell: ``alpha=0.05,beta=0.1`` (the last part of each key, unless two
    axes share it); characters a file name cannot hold become ``_``."""
    leaves = [key.rsplit(".", 1)[-1] for key in assignment]
    keys = leaves if len(set(leaves)) == len(leaves) else list(assignment)
    name = ",".join(f"{k}={v}" for k, v in zip(keys, assignment.values()))
    return "".join(c if c.isalnum() or c in "=,.-_+" else "_" for c in name)


def _differences(saved: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(saved) | set(wanted)):
        if not prefix and key in _RUN_ONLY_FIELDS:
            continue
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key} (saved {a!r}, asked {b!r})")
    return found


def run_sweep(
    model: str,
    dataset: str,
    overrides: Sequence[str],
    *,
    config_file: str | Path | None = None,
    folder: str | Path | None = None,
    **run_options: Any,
) -> SweepReport:
    """Train every cell of the grid that ``overrides`` spans (see the module docstring).

    Args:
        model, dataset: as for ``alignkit train``.
        overrides: ``--set`` assignments; those with several comma-separated values are the axes.
        config_file: a YAML/JSON config file, as for ``alignkit train``.
        folder: the sweep folder (default ``<output_dir>/sweep-<model>-<dataset>``; continued if it exists).
        run_options: the explicit settings of ``build_config`` (seeds, max_epochs, output_dir, ...).
    """
    fixed, axes = sweep_axes(overrides)
    grid = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    configs = [build_config(model, dataset, config_file=config_file, overrides=[*fixed, *(f"{k}={v}" for k, v in cell.items())], **run_options) for cell in grid]
    folder = Path(folder) if folder is not None else Path(configs[0].output_dir) / (configs[0].run_name or f"sweep-{model}-{dataset}")
    for cell, config in zip(grid, configs):  # refuse before training anything
        saved_path = folder / cell_name(cell) / "config.json"
        if saved_path.is_file():
            differences = _differences(read_json(saved_path, "run config"), json.loads(config.model_dump_json()))
            if differences:
                raise ConfigError(f"sweep: {saved_path.parent} was trained with other settings: {differences[0]}; choose another --run-name or --output-dir")
    folder.mkdir(parents=True, exist_ok=True)
    datasets: dict[str, MultimodalDataset] = {}
    cells = []
    bar = tqdm(list(zip(grid, configs)), desc="sweep", disable=not configs[0].progress, dynamic_ncols=True)
    for cell, config in bar:
        name = cell_name(cell)
        bar.set_postfix_str(name)
        # Loaded once per distinct data configuration (an axis may change the preprocessing).
        data_key = json.dumps([config.dataset, config.data, config.preprocessing.model_dump(), bool(config.model_options.get("text_encoder"))])
        if data_key not in datasets:
            datasets[data_key] = prepare_dataset(config)
        summary = run_experiment(config, run_dir=folder / name, resume=True, dataset=datasets[data_key])
        cells.append(
            {
                "values": {k: yaml.safe_load(v) for k, v in cell.items()},
                "folder": name,
                "seeds": config.seeds,
                "test": summary["test"],
                "valid": _valid_summary(summary["per_seed"]),
            }
        )
    parsed_axes = {key: [yaml.safe_load(v) for v in values] for key, values in axes.items()}
    _write_results(folder, model, dataset, parsed_axes, cells)
    return SweepReport(folder, parsed_axes, cells)


def _valid_summary(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and std over seeds of each validation metric at the selected epoch."""
    keys = per_seed[0]["valid"].keys()
    return {k: {"mean": float(np.mean([r["valid"][k] for r in per_seed])), "std": float(np.std([r["valid"][k] for r in per_seed]))} for k in keys}


def _write_results(folder: Path, model: str, dataset: str, axes: dict[str, list[Any]], cells: list[dict[str, Any]]) -> None:
    atomic_write_text(folder / "sweep.json", json.dumps({"model": model, "dataset": dataset, "axes": axes, "cells": cells}, indent=1))
    metrics = list(cells[0]["test"])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*axes, *(f"test_{m}_{stat}" for m in metrics for stat in ("mean", "std"))])
    for cell in cells:
        writer.writerow([*(cell["values"][k] for k in axes), *(f"{cell['test'][m][stat]:.6f}" for m in metrics for stat in ("mean", "std"))])
    atomic_write_text(folder / "results.csv", buffer.getvalue())


def read_sweep(folder: str | Path) -> dict[str, Any]:
    """The ``sweep.json`` of a sweep folder, checked.

    Raises:
        FileNotFoundError: no ``sweep.json`` in ``folder``.
        ValueError: a damaged or foreign file, in one line naming it.
    """
    path = Path(folder) / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no sweep.json (is it the folder `alignkit sweep` wrote?)")
    sweep = read_json(path, "sweep")
    if not (isinstance(sweep, dict) and isinstance(sweep.get("axes"), dict) and isinstance(sweep.get("cells"), list) and sweep["cells"]):
        raise ValueError(f"sweep {path}: expected the axes and cells `alignkit sweep` writes")
    return sweep

