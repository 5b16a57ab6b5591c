"""Evaluation metrics for the multimodal benchmarks, following the field's MMSA conventions.

Every function takes ``(predictions, labels)`` as numpy arrays, lists or torch tensors and
returns a ``dict`` of plain Python floats. Accuracies are fractions in ``[0, 1]``.

MOSI / MOSEI (regression, labels in ``[-3, 3]``), :func:`mosi_metrics`:

================  ===========================================================================
key               definition
================  ===========================================================================
``mae``           ``mean(|p - y|)`` on the raw (unclipped) values
``corr``          Pearson correlation of the raw values; ``0.0`` if either side is constant
``acc7``          ``mean(round(clip(p, -3, 3)) == round(clip(y, -3, 3)))``, round half to even
``acc5``          same with ``clip(., -2, 2)``
``acc2_nonzero``  samples with ``y != 0`` only; class ``v > 0``; ``nan`` if every ``y == 0``
``f1_nonzero``    weighted F1 of the same two classes; ``nan`` if every ``y == 0``
``acc2_haszero``  all samples; class ``v >= 0`` (so ``0`` counts as non-negative)
``f1_haszero``    weighted F1 of the same two classes
================  ===========================================================================

The papers report the non-zero Acc-2 / F1.

CH-SIMS (regression, labels in ``[-1, 1]``), :func:`sims_metrics`. Predictions and labels are
first clipped to ``[-1, 1]``; a value ``v`` goes to bin ``#{t in thresholds : v > t}``, so a
value equal to a threshold falls in the lower bin:

========  =================================================================================
key       definition
========  =================================================================================
``mae``   ``mean(|p - y|)`` after clipping
``corr``  Pearson correlation after clipping; ``0.0`` if either side is constant
``acc2``  thresholds ``[0]``: bins ``[-1, 0]``, ``(0, 1]``
``acc3``  thresholds ``[-0.1, 0.1]``
``acc5``  thresholds ``[-0.7, -0.1, 0.1, 0.7]``
``f1``    weighted F1 of the Acc-2 bins
========  =================================================================================

Classification, :func:`classification_metrics` (UCI Multiple Features, 10 classes) and
:func:`iemocap_metrics` (happy, sad, neutral, angry, excited, frustrated):

==========================  ==========================================
key                         definition
==========================  ==========================================
``accuracy`` / ``wacc``     overall accuracy ``mean(pred == y)``
``macro_f1``                ``f1_score(y, pred, average="macro")``
``weighted_f1`` / ``waf1``  ``f1_score(y, pred, average="weighted")``
==========================  ==========================================

F1 is always ``sklearn.metrics.f1_score(y_true, y_pred, ...)`` over the classes present in
``y_true`` or ``y_pred`` (sklearn's default label set). ``zero_division=0`` is passed: it gives
the same value as sklearn's default for a class that is never predicted, without the warning.

:data:`METRICS` maps a dataset kind to its function, :data:`PRIMARY_METRIC` to the key used for
early stopping and model selection and whether it is maximised or minimised, and
:func:`compute_metrics` dispatches on the kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias, Union

import numpy as np
import torch

ArrayLike: TypeAlias = Union[np.ndarray, torch.Tensor, Sequence[float], Sequence[int]]
MetricFn: TypeAlias = Callable[[ArrayLike, ArrayLike], dict[str, float]]

SIMS_ACC2_THRESHOLDS = (0.0,)
SIMS_ACC3_THRESHOLDS = (-0.1, 0.1)
SIMS_ACC5_THRESHOLDS = (-0.7, -0.1, 0.1, 0.7)


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Any supported input as a numpy array, without copying when it already is one."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16; float32 holds every bfloat16/float16 value exactly.
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _as_column(arr: np.ndarray, name: str) -> np.ndarray:
    """``(N,)`` or ``(N, 1)`` -> ``(N,)``; any other shape is an error."""
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected shape (N,) or (N, 1), received {arr.shape}")
    return arr


def _check_lengths(first: np.ndarray, first_name: str, second: np.ndarray, second_name: str) -> None:
    """Both non-empty and of equal length, else a ``ValueError`` naming the culprit."""
    for arr, name in ((first, first_name), (second, second_name)):
        if len(arr) == 0:
            raise ValueError(f"{name}: expected at least one sample, received an empty input")
    if len(second) != len(first):
        raise ValueError(
            f"{second_name}: expected {len(first)} samples (one per entry of {first_name}), "
            f"received {len(second)}"
        )


def _regression_input(x: ArrayLike, name: str) -> np.ndarray:
    """Flat real-valued ``(N,)`` array from ``(N,)`` or ``(N, 1)`` input.

    Floating inputs keep their dtype so that threshold comparisons happen in the precision the
    values were produced in (see :func:`_bin`); integer and boolean inputs become float64.
    """
    arr = _as_column(_to_numpy(x), name)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected real numbers, received dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    return arr


def _regression_pair(predictions: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(N,)`` prediction and label arrays."""
    p = _regression_input(predictions, "predictions")
    y = _regression_input(labels, "labels")
    _check_lengths(p, "predictions", y, "labels")
    return p, y


def _class_ids(arr: np.ndarray, name: str) -> np.ndarray:
    """Integer class ids ``(N,)`` from an ``(N,)`` array of integral values."""
    if arr.dtype.kind in "biu":
        return arr.astype(np.int64)
    if arr.dtype.kind != "f":
        raise ValueError(f"{name}: expected integer class ids, received dtype {arr.dtype}")
    # A float (N,) array might be per-sample scores of a binary model; guessing a threshold
    # would silently give wrong metrics, so only integral values are accepted.
    if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise ValueError(
            f"{name}: expected integer class ids for shape (N,), received non-integer values "
            "(pass (N, C) scores to take their argmax)"
        )
    return arr.astype(np.int64)


def _classification_pair(logits_or_predictions: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated predicted and true class ids, both ``(N,)`` int64."""
    name = "logits_or_predictions"
    scores = _to_numpy(logits_or_predictions)
    if scores.ndim == 2 and scores.shape[1] > 1:
        predicted = scores.argmax(axis=1)
    elif scores.ndim == 2 and scores.shape[1] == 0:
        raise ValueError(f"{name}: expected shape (N, C) with C >= 1, received {scores.shape}")
    else:
        # (N, 1) is a column of class ids, not one-class logits whose argmax is always 0.
        predicted = _class_ids(_as_column(scores, name), name)
    truth = _class_ids(_as_column(_to_numpy(labels), "labels"), "labels")
    _check_lengths(predicted, name, truth, "labels")
    return predicted, truth


def _accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(predicted == truth))


def _f1(truth: np.ndarray, predicted: np.ndarray, average: Literal["macro", "weighted"]) -> float:
    """sklearn F1 (true labels first); ``zero_division=0`` equals the default minus its warning."""
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predicted, average=average, zero_division=0))


def _mae(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(p.astype(np.float64) - y.astype(np.float64))))


def _pearson(p: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two ``(N,)`` arrays, ``0.0`` when either is constant.

    A constant side has no defined correlation (``np.corrcoef`` gives ``nan``); ``0.0`` keeps
    model selection and logging free of NaNs, e.g. for a collapsed model predicting one value.
    The constancy test compares min and max because the centred values of a constant float
    array need not be exactly zero after the mean is rounded.
    """
    p64, y64 = p.astype(np.float64), y.astype(np.float64)
    if p64.min() == p64.max() or y64.min() == y64.max():
        return 0.0
    pc, yc = p64 - p64.mean(), y64 - y64.mean()
    # Product of norms rather than sqrt of product of sums of squares, which overflows sooner.
    r = float(pc @ yc) / (float(np.linalg.norm(pc)) * float(np.linalg.norm(yc)))
    return float(np.clip(r, -1.0, 1.0))


def _bin(values: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Bin index ``#{t : v > t}`` per value, ``(N,)`` -> ``(N,)`` int.

    Thresholds are cast to the values' dtype: a float32 ``0.1`` is slightly above the float64
    ``0.1``, and comparing in float64 would move it out of the bin it was meant for.
    """
    t = np.asarray(thresholds, dtype=values.dtype)
    return (values[:, None] > t[None, :]).sum(axis=1)


def mosi_metrics(predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """MOSI / MOSEI sentiment regression metrics (see the module docstring for definitions).

    Args:
        predictions: predicted sentiment, shape ``(N,)`` or ``(N, 1)``.
        labels: true sentiment in ``[-3, 3]``, shape ``(N,)`` or ``(N, 1)``.

    Returns:
        ``{"mae", "corr", "acc7", "acc5", "acc2_nonzero", "f1_nonzero", "acc2_haszero",
        "f1_haszero"}``. The two ``*_nonzero`` values are ``nan`` when every label is 0,
        since the non-zero subset is then empty.

    Raises:
        ValueError: empty inputs, mismatched lengths or unsupported shapes.
    """
    p, y = _regression_pair(predictions, labels)
    acc7 = _accuracy(np.round(np.clip(p, -3.0, 3.0)), np.round(np.clip(y, -3.0, 3.0)))
    acc5 = _accuracy(np.round(np.clip(p, -2.0, 2.0)), np.round(np.clip(y, -2.0, 2.0)))

    nonzero = y != 0
    if nonzero.any():
        truth_nz, pred_nz = y[nonzero] > 0, p[nonzero] > 0
        acc2_nonzero = _accuracy(pred_nz, truth_nz)
        f1_nonzero = _f1(truth_nz, pred_nz, "weighted")
    else:
        acc2_nonzero = f1_nonzero = float("nan")

    truth_hz, pred_hz = y >= 0, p >= 0
    return {
        "mae": _mae(p, y),
        "corr": _pearson(p, y),
        "acc7": acc7,
        "acc5": acc5,
        "acc2_nonzero": acc2_nonzero,
        "f1_nonzero": f1_nonzero,
        "acc2_haszero": _accuracy(pred_hz, truth_hz),
        "f1_haszero": _f1(truth_hz, pred_hz, "weighted"),
    }


def sims_metrics(predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """CH-SIMS sentiment regression metrics (see the module docstring for definitions).

    Both sides are clipped to ``[-1, 1]`` before every metric, MAE and Corr included.

    Args:
        predictions: predicted sentiment, shape ``(N,)`` or ``(N, 1)``.
        labels: true sentiment in ``[-1, 1]``, shape ``(N,)`` or ``(N, 1)``.

    Returns:
        ``{"mae", "corr", "acc2", "acc3", "acc5", "f1"}``.

    Raises:
        ValueError: empty inputs, mismatched lengths or unsupported shapes.
    """
    p, y = _regression_pair(predictions, labels)
    p, y = np.clip(p, -1.0, 1.0), np.clip(y, -1.0, 1.0)
    p2, y2 = _bin(p, SIMS_ACC2_THRESHOLDS), _bin(y, SIMS_ACC2_THRESHOLDS)
    return {
        "mae": _mae(p, y),
        "corr": _pearson(p, y),
        "acc2": _accuracy(p2, y2),
        "acc3": _accuracy(_bin(p, SIMS_ACC3_THRESHOLDS), _bin(y, SIMS_ACC3_THRESHOLDS)),
        "acc5": _accuracy(_bin(p, SIMS_ACC5_THRESHOLDS), _bin(y, SIMS_ACC5_THRESHOLDS)),
        "f1": _f1(y2, p2, "weighted"),
    }


def classification_metrics(logits_or_predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Accuracy, macro-F1 and weighted F1 of a multi-class classifier.

    Args:
        logits_or_predictions: scores ``(N, C)`` with ``C >= 2`` (the argmax is the prediction),
            or class ids ``(N,)`` / ``(N, 1)`` (integers, or floats with integral values).
        labels: true class ids, ``(N,)`` or ``(N, 1)``.

    Returns:
        ``{"accuracy", "macro_f1", "weighted_f1"}``. F1 averages over the classes present in
        ``labels`` or the predictions; a class absent from both does not count.

    Raises:
        ValueError: empty inputs, mismatched lengths, unsupported shapes or non-integer ids.
    """
    predicted, truth = _classification_pair(logits_or_predictions, labels)
    return {
        "accuracy": _accuracy(predicted, truth),
        "macro_f1": _f1(truth, predicted, "macro"),
        "weighted_f1": _f1(truth, predicted, "weighted"),
    }


def iemocap_metrics(logits_or_predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """IEMOCAP six-class emotion metrics: weighted accuracy and weighted F1.

    "Weighted accuracy" in this literature is the plain overall accuracy (each sample weighs
    the same), not the class-balanced accuracy.

    Args:
        logits_or_predictions: scores ``(N, 6)`` or class ids ``(N,)`` / ``(N, 1)``.
        labels: true class ids, ``(N,)`` or ``(N, 1)``.

    Returns:
        ``{"wacc", "waf1"}``.

    Raises:
        ValueError: empty inputs, mismatched lengths, unsupported shapes or non-integer ids.
    """
    predicted, truth = _classification_pair(logits_or_predictions, labels)
    return {"wacc": _accuracy(predicted, truth), "waf1": _f1(truth, predicted, "weighted")}


SENTIMENT_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mosi": ("-3", "-2", "-1", "0", "1", "2", "3"),
    "sims": ("negative", "weakly negative", "neutral", "weakly positive", "positive"),
}


def sentiment_classes(kind: str, values: ArrayLike) -> np.ndarray:
    """Sentiment scores ``(N,)`` as class ids ``(N,)`` int: for ``mosi``/``mosei`` the seven
    integers of ``[-3, 3]`` (ids 0-6, the classes of Acc-7), for ``sims`` the five classes of
    Acc-5 (ids 0-4). Names: :data:`SENTIMENT_CLASS_NAMES` (``mosei`` uses ``mosi``'s)."""
    v = _regression_input(values, "values")
    if kind in ("mosi", "mosei"):
        return (np.round(np.clip(v, -3.0, 3.0)) + 3).astype(np.int64)
    if kind == "sims":
        return _bin(np.clip(v, -1.0, 1.0), SIMS_ACC5_THRESHOLDS).astype(np.int64)
    raise ValueError(f"kind: expected 'mosi', 'mosei' or 'sims', received {kind!r}")


METRICS: dict[str, MetricFn] = {
    "mosi": mosi_metrics,
    "mosei": mosi_metrics,
    "sims": sims_metrics,
    "iemocap": iemocap_metrics,
    "classification": classification_metrics,
}

PRIMARY_METRIC: dict[str, tuple[str, Literal["max", "min"]]] = {
    "mosi": ("mae", "min"),
    "mosei": ("mae", "min"),
    "sims": ("mae", "min"),
    "iemocap": ("waf1", "max"),
    "classification": ("accuracy", "max"),
}


_METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "mosi": ("mae", "corr", "acc7", "acc5", "acc2_nonzero", "f1_nonzero", "acc2_haszero", "f1_haszero"),
    "mosei": ("mae", "corr", "acc7", "acc5", "acc2_nonzero", "f1_nonzero", "acc2_haszero", "f1_haszero"),
    "sims": ("mae", "corr", "acc2", "acc3", "acc5", "f1"),
    "iemocap": ("wacc", "waf1"),
    "classification": ("accuracy", "macro_f1", "weighted_f1"),
}
MINIMISED: frozenset[str] = frozenset({"mae", "loss"})
"""Metrics where lower is better (``loss`` is the validation task loss the trainer adds)."""


def metric_keys(kind: str) -> tuple[str, ...]:
    """The keys :func:`compute_metrics` returns for dataset ``kind``."""
    if kind not in _METRIC_KEYS:
        raise ValueError(f"kind: expected one of {sorted(_METRIC_KEYS)}, received {kind!r}")
    return _METRIC_KEYS[kind]


def compute_metrics(kind: str, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Metrics of dataset ``kind`` (a key of :data:`METRICS`) for ``predictions`` vs ``labels``.

    Shapes are those of the function :data:`METRICS` maps ``kind`` to.

    Raises:
        ValueError: ``kind`` is not a key of :data:`METRICS`, or the inputs are invalid.
    """
    try:
        fn = METRICS[kind]
    except KeyError:
        raise ValueError(f"kind: expected one of {sorted(METRICS)}, received {kind!r}") from None
    return fn(predictions, labels)
