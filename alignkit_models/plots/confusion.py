"""Confusion matrix of a trained model (DecAlign paper, Fig. 4).

Classification data sets use their classes; sentiment regression (MOSI, MOSEI) is cut into the
seven classes of Acc-7 (the integers of [-3, 3]) and CH-SIMS into the five of Acc-5, so that the
diagonal holds exactly the samples Acc-7 (Acc-5) counts as right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import confusion_matrix

from alignkit_models.data.catalog import dataset_info
from alignkit_models.metrics import SENTIMENT_CLASS_NAMES, sentiment_classes
from alignkit_models.plots.figure import check_output, pyplot, save


def confusion_counts(metric_kind: str, predictions: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(C, C)`` counts, rows = true class, columns = predicted class, and the class names.

    Args:
        metric_kind: the data set's metric family (``mosi``, ``mosei``, ``sims``,
            ``classification`` or ``iemocap``).
        predictions: ``(N,)`` sentiment scores, or ``(N, C)`` logits for classification.
        labels: ``(N,)`` true scores or class ids.
        class_names: names of the ``C`` classes of a classification data set (default ``0..C-1``).
    """
    if metric_kind in ("mosi", "mosei", "sims"):
        family = "sims" if metric_kind == "sims" else "mosi"
        names = SENTIMENT_CLASS_NAMES[family]
        truth, predicted = sentiment_classes(metric_kind, labels), sentiment_classes(metric_kind, predictions)
    else:
        if predictions.ndim != 2:
            raise ValueError(f"predictions: expected (N, C) logits for {metric_kind!r}, received shape {tuple(predictions.shape)}")
        n_classes = predictions.shape[1]
        names = class_names if class_names is not None else tuple(str(c) for c in range(n_classes))
        truth, predicted = labels.long().numpy(), predictions.argmax(1).numpy()
    return confusion_matrix(truth, predicted, labels=np.arange(len(names))), tuple(names)


def plot_confusion(checkpoint: str | Path, output: str | Path, *, split: str = "test", data: str | Path | None = None, title: str | None = None) -> tuple[Path, np.ndarray]:
    """Draw the confusion matrix of ``checkpoint`` on ``split``: colour = share of the true
    class (row-normalised), text = count. Returns the image path and the ``(C, C)`` counts."""
    from alignkit_models.training.trainer import load_trained, predict

    output = check_output(output)
    plt = pyplot()
    config, dataset, model = load_trained(checkpoint, data)
    result = predict(model, dataset.split(split), config.protocol.batch_size, torch.device("cpu"))
    kind = dataset_info(config.dataset).metrics
    counts, names = confusion_counts(kind, result.predictions, result.labels, dataset.class_names)
    rows = counts.sum(1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)

    size = max(5.0, 0.55 * len(names) + 2.5)
    figure, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8, color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right" if max(map(len, names)) > 3 else "center")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(title or f"{config.model} on {config.dataset} ({split}, {counts.sum()} samples): {accuracy:.1%} on the diagonal", fontsize=10)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    figure.tight_layout()
    return save(figure, output), counts
