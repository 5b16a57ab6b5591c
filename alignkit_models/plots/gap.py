"""The modality gap (DecAlign paper, Fig. 6): where each modality's unique and common features
lie, projected to 2-D, with numbers that say how far apart the modalities are.

    alignkit plot gap --checkpoint runs/decalign-uci-mfeat/seed-1111/best.pt \\
                      --checkpoint runs/no-alignment/seed-1111/best.pt

The measures are computed in the feature space itself (width ``d``), not in the projection:

- ``centroid_distance``: mean over modality pairs of the distance between the modalities'
  mean feature vectors;
- ``relative_centroid_distance``: that distance over the mean within-modality spread (root mean
  squared distance of a modality's samples to their own centroid), so that runs whose features
  have different scales can be compared;
- ``mmd``: mean over modality pairs of the squared Gaussian-kernel MMD (biased estimate), with
  the median-heuristic bandwidth of each pair: 0 when two modalities' features are identically
  distributed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from alignkit.kernels.mmd import gaussian_mmd
from alignkit_models.data.base import MultimodalSplit, ordered_batches
from alignkit_models.models.base import MultimodalModel
from alignkit_models.plots.figure import check_output, pyplot, save

METHODS = ("pca", "tsne", "umap")
KINDS = ("unique", "common")


@torch.no_grad()
def decoupled_features(model: MultimodalModel, split: MultimodalSplit, batch_size: int = 256) -> dict[str, dict[str, np.ndarray]]:
    """``{"unique" | "common": {modality: (N, d) array}}`` of a trained model on ``split`` (CPU, eval mode).

    Raises:
        ValueError: the model has no decoupled unique/common features (only DecAlign has).
    """
    if not hasattr(model, "decoupled_features"):
        raise ValueError(f"checkpoint: {type(model).__name__} has no unique and common features to plot (plot gap needs a decalign checkpoint)")
    model.eval()
    loader = ordered_batches(split, model.modalities, batch_size)
    parts: dict[str, dict[str, list[np.ndarray]]] = {kind: {m: [] for m in model.modalities} for kind in KINDS}
    for batch in loader:
        for kind, pooled in zip(KINDS, model.decoupled_features(batch["features"], batch["masks"])):
            for m, x in pooled.items():
                parts[kind][m].append(x.float().numpy())
    return {kind: {m: np.concatenate(chunks) for m, chunks in by_modality.items()} for kind, by_modality in parts.items()}


def gap_measures(features: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Gap between modalities (see the module docstring) for ``{modality: (N_m, d)}``, at least two."""
    if len(features) < 2:
        raise ValueError(f"features: expected at least two modalities, received {len(features)}")
    arrays = {m: np.asarray(x, dtype=np.float64) for m, x in features.items()}
    for m, x in arrays.items():
        if x.ndim != 2 or x.shape[0] < 2 or not np.isfinite(x).all():
            raise ValueError(f"features[{m!r}]: expected a finite (N, d) array with N >= 2, received shape {x.shape}")
    centroids = {m: x.mean(0) for m, x in arrays.items()}
    spread = float(np.mean([np.sqrt(((x - centroids[m]) ** 2).sum(1).mean()) for m, x in arrays.items()]))
    pairs = list(combinations(arrays, 2))
    distance = float(np.mean([np.linalg.norm(centroids[a] - centroids[b]) for a, b in pairs]))
    mmd = float(np.mean([float(gaussian_mmd(torch.from_numpy(arrays[a]), torch.from_numpy(arrays[b]), sigma="median")) for a, b in pairs]))
    return {"centroid_distance": distance, "relative_centroid_distance": distance / spread if spread > 0 else float("inf"), "mmd": mmd}


def project_2d(arrays: Sequence[np.ndarray], method: str = "pca", seed: int = 0) -> tuple[list[np.ndarray], tuple[str, str]]:
    """One joint 2-D embedding of all the arrays (rows stacked), split back per array; and the
    two axis labels. ``method``: ``pca``, ``tsne`` (scikit-learn) or ``umap`` (umap-learn, if installed)."""
    stacked = np.concatenate(arrays).astype(np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(stacked)
        embedded = pca.transform(stacked)
        share = pca.explained_variance_ratio_ * 100
        axes = (f"PC 1 ({share[0]:.0f} % of variance)", f"PC 2 ({share[1]:.0f} % of variance)")
    elif method == "tsne":
        from sklearn.manifold import TSNE

        embedded = TSNE(n_components=2, random_state=seed, init="pca", perplexity=min(30.0, (len(stacked) - 1) / 3)).fit_transform(stacked)
        axes = ("t-SNE 1", "t-SNE 2")
    elif method == "umap":
        try:
            import umap
        except ImportError:
            raise ImportError("method umap needs umap-learn: pip install umap-learn (or use --method pca or tsne)") from None
        embedded = umap.UMAP(n_components=2, random_state=seed).fit_transform(stacked)
        axes = ("UMAP 1", "UMAP 2")
    else:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, received {method!r}")
    bounds = np.cumsum([len(a) for a in arrays])[:-1]
    return np.split(embedded, bounds), axes


def _subsample(x: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= max_points else x[np.sort(rng.choice(len(x), max_points, replace=False))]


def plot_gap(
    checkpoints: Sequence[str | Path],
    output: str | Path,
    *,
    labels: Sequence[str] | None = None,
    split: str = "test",
    method: str = "pca",
    data: str | Path | None = None,
    max_points: int = 1000,
    seed: int = 0,
) -> tuple[Path, list[dict[str, dict[str, float]]]]:
    """Draw the unique and common features of each checkpoint (one row each) and their gap measures.

    Args:
        checkpoints: one or more DecAlign checkpoints (e.g. trained with and without alignment).
        output: image file (``.png``, ``.svg`` or ``.pdf``).
        labels: a row title per checkpoint (default: run folder and seed).
        split: ``train``, ``valid`` or ``test``.
        method: 2-D projection, see :func:`project_2d`.
        data: the MMSA pickle, when it is not where the runs found it.
        max_points: at most this many samples per modality are drawn (all are measured).
        seed: seed of the subsampling and of t-SNE/UMAP.

    Returns:
        The image path, and per checkpoint ``{"unique": measures, "common": measures}``.
    """
    from alignkit_models.training.trainer import load_trained

    output = check_output(output)
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, received {method!r}")
    if not checkpoints:
        raise ValueError("checkpoints: expected at least one checkpoint")
    if labels is not None and len(labels) != len(checkpoints):
        raise ValueError(f"labels: expected one per checkpoint ({len(checkpoints)}), received {len(labels)}")
    plt = pyplot()
    rows = []
    for index, path in enumerate(checkpoints):
        config, dataset, model = load_trained(path, data)
        features = decoupled_features(model, dataset.split(split), config.protocol.batch_size)
        label = labels[index] if labels is not None else _default_label(Path(path))
        rows.append((label, features))

    measures: list[dict[str, dict[str, float]]] = []
    figure, axes = plt.subplots(len(rows), 2, figsize=(11, 4.6 * len(rows)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for row, (label, features) in enumerate(rows):
        measures.append({})
        for column, kind in enumerate(KINDS):
            by_modality = features[kind]
            measures[-1][kind] = gap_measures(by_modality)
            rng = np.random.default_rng(seed)
            shown = {m: _subsample(x, max_points, rng) for m, x in by_modality.items()}
            embedded, axis_labels = project_2d(list(shown.values()), method, seed)
            ax = axes[row][column]
            for k, (m, points) in enumerate(zip(shown, embedded)):
                ax.scatter(points[:, 0], points[:, 1], s=7, alpha=0.55, color=colors(k % 10), label=m)
                centre = points.mean(0)
                ax.scatter(*centre, s=140, marker="X", color=colors(k % 10), edgecolors="black", linewidths=0.8)
            values = measures[-1][kind]
            ax.text(
                0.02, 0.98,
                f"centroid distance {values['centroid_distance']:.3g}\n(relative to spread {values['relative_centroid_distance']:.3g})\nMMD² {values['mmd']:.3g}",
                transform=ax.transAxes, va="top", ha="left", fontsize=8, bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85},
            )
            ax.set_title(f"{label}: {kind} features ({split} split)", fontsize=10)
            ax.set_xlabel(axis_labels[0])
            ax.set_ylabel(axis_labels[1])
            ax.grid(alpha=0.3)
            ax.legend(title="modality (X: centroid)", fontsize=7, title_fontsize=7, loc="lower right", markerscale=2)
    figure.suptitle(f"Modality gap, {method.upper() if method == 'pca' else method} projection of pooled features; measures in the full feature space", fontsize=11)
    figure.tight_layout()
    return save(figure, output), measures


def _default_label(checkpoint: Path) -> str:
    """``<run folder> (seed-1111)`` for ``<run folder>/seed-1111/best.pt``."""
    seed_dir = checkpoint.resolve().parent
    return f"{seed_dir.parent.name} ({seed_dir.name})"
