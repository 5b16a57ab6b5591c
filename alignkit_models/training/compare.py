"""``alignkit compare``: several models on one data set (split, seeds, metrics), each trained with
its own reference protocol or, with ``--protocol shared``, all with the data set's one protocol.

Writes into one folder::

    <folder>/<model>/...            each model's run (see :mod:`alignkit_models.training.trainer`)
    <folder>/results.md, results.csv   mean +- std of every test metric per model
    <folder>/bubble.png             accuracy vs F1, bubble size = a third metric (paper Fig. 2)
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from alignkit_models.data.catalog import dataset_info
from alignkit_models.training.checkpoint import atomic_write_text
from alignkit_models.training.config import TrainConfig
from alignkit_models.training.trainer import prepare_dataset, run_experiment

# Per metric family: (x axis, y axis, bubble size) of the bubble plot.
BUBBLE_AXES = {
    "mosi": ("acc2_nonzero", "f1_nonzero", "acc7"),
    "sims": ("acc2", "f1", "acc5"),
    "iemocap": ("wacc", "waf1", "wacc"),
    "classification": ("accuracy", "macro_f1", "weighted_f1"),
}


@dataclass
class ComparisonReport:
    folder: Path
    table_markdown: str
    plot: bool


def _fresh_folder(config: TrainConfig) -> Path:
    base = Path(config.output_dir) / f"compare-{config.dataset}"
    candidate, counter = base, 1
    while candidate.exists():
        counter += 1
        candidate = base.with_name(f"{base.name}-{counter}")
    return candidate


def run_comparison(configs: list[TrainConfig], *, folder: Path | None = None, resume: bool = False) -> ComparisonReport:
    """Train every config (same data set) and write the comparison files."""
    datasets = {c.dataset for c in configs}
    if len(datasets) != 1:
        raise ValueError(f"dataset: a comparison needs one data set, received {sorted(datasets)}")
    folder = folder if folder is not None else _fresh_folder(configs[0])
    folder.mkdir(parents=True, exist_ok=True)
    dataset = prepare_dataset(configs[0])  # loaded once, shared by every model
    summaries = {}
    for config in configs:
        summaries[config.model] = run_experiment(config, run_dir=folder / config.model, resume=resume, dataset=dataset)
    metric_family = dataset_info(configs[0].dataset).metrics
    table = write_tables(folder, summaries, configs)
    plot = write_bubble_plot(folder / "bubble.png", summaries, metric_family)
    return ComparisonReport(folder, table, plot)


def protocol_summary(config: TrainConfig) -> str:
    """One cell: where the protocol comes from and the settings that differ most between models."""
    p = config.protocol
    loss = "" if dataset_info(config.dataset).metrics == "classification" else f", {p.regression_loss}"
    return f"{config.protocol_source}: lr {p.lr:g}, batch {p.batch_size}{loss}, <= {p.max_epochs} epochs, stop after {p.early_stopping_patience}"


def write_tables(folder: Path, summaries: dict[str, dict], configs: list[TrainConfig]) -> str:
    """``results.md`` (mean +- std, each model's protocol) and ``results.csv`` (one row per model);
    returns the markdown table."""
    by_model = {c.model: c for c in configs}
    metrics = list(next(iter(summaries.values()))["test"])
    header = "| model | " + " | ".join(metrics) + " | s / seed | protocol |"
    lines = [header, "|---" * (len(metrics) + 3) + "|"]
    for model, summary in summaries.items():
        seconds = sum(r["seconds"] for r in summary["per_seed"]) / len(summary["per_seed"])
        cells = [f"{summary['test'][m]['mean']:.4f} ± {summary['test'][m]['std']:.4f}" for m in metrics]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {seconds:.0f} | {protocol_summary(by_model[model])} |")
    table = "\n".join(lines)
    seeds = " ".join(str(s) for s in configs[0].seeds)
    protocols = "\n".join(f"- {c.model}: {json.dumps(c.protocol.model_dump())}" for c in configs)
    atomic_write_text(
        folder / "results.md",
        f"# {configs[0].dataset}: test metrics, mean ± std over seeds {seeds}\n\n{table}\n\nProtocols:\n{protocols}\n",
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", *(f"{m}_{stat}" for m in metrics for stat in ("mean", "std"))])
    for model, summary in summaries.items():
        writer.writerow([model, *(f"{summary['test'][m][stat]:.6f}" for m in metrics for stat in ("mean", "std"))])
    atomic_write_text(folder / "results.csv", buffer.getvalue())
    return table


def write_bubble_plot(path: Path, summaries: dict[str, dict], metric_family: str) -> bool:
    """Accuracy vs F1 per model, bubble area from a third metric; False when matplotlib is missing."""
    from alignkit_models.plots.figure import pyplot

    try:
        plt = pyplot()
    except ImportError as error:
        print(f"alignkit compare: no bubble plot; {error}")
        return False
    x_key, y_key, size_key = BUBBLE_AXES[metric_family]
    xs = [s["test"][x_key]["mean"] for s in summaries.values()]
    ys = [s["test"][y_key]["mean"] for s in summaries.values()]
    sizes = [s["test"][size_key]["mean"] for s in summaries.values()]
    low, high = min(sizes), max(sizes)
    areas = [200 + 1800 * ((v - low) / (high - low) if high > low else 0.5) for v in sizes]
    figure, axes = plt.subplots(figsize=(6.5, 5))
    for (model, _), x, y, area in zip(summaries.items(), xs, ys, areas):
        highlight = model == "decalign"
        axes.scatter(x, y, s=area, alpha=0.55, color="tab:red" if highlight else "tab:blue", edgecolors="black")
        axes.annotate(model, (x, y), ha="center", va="center", fontsize=8, fontweight="bold" if highlight else "normal")
    axes.set_xlabel(x_key)
    axes.set_ylabel(y_key)
    axes.set_title(f"test {x_key} vs {y_key} (bubble area: {size_key})")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
