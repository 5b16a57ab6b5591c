"""MCIS: counterfactual debiasing at inference time around any trained zoo model (adapted).

Paper: Dingkang Yang, Mingcheng Li, Dongling Xiao, Yang Liu, Kun Yang, Zhaoyu Chen, Yuzheng Wang,
Peng Zhai, Ke Li, Lihua Zhang, "Towards Multimodal Sentiment Analysis Debiasing via Bias
Purification" (MCIS, Multimodal Counterfactual Inference Sentiment), ECCV 2024, arXiv:2403.05023.

What the paper says, and what we take from it: a trained ("vanilla") model carries two harmful
data set biases, an utterance-level *label bias* (imbalanced sentiment labels) and a word-level
*context bias* (words of the language modality spuriously tied to a sentiment). MCIS needs no
training: at inference it imagines two counterfactual inputs, one per bias, purifies each
counterfactual with the backdoor adjustment ``P(Y | do(X)) = sum_z P(Y | X, z) P(z)``, and
subtracts the purified counterfactual (bias) outputs from the factual output, with a weight per
bias. The authors published no code that we could find, so this module follows that
description; it is **adapted**, not a reproduction, and the exact equations of the paper could
not be checked against its text (their numbering is therefore not cited).

What is computed. ``F`` is the trained model, ``x = (x_1, ..., x_M)`` one input, ``l`` the
language modality, ``z`` a stratum of the training labels with prior ``P(z)`` and
``xbar_{m,z}`` the average utterance of modality ``m`` over the training samples of stratum
``z`` (see :func:`mcis_statistics`)::

    factual            Y(x)      = F(x)
    label bias         B_label   = sum_z P(z) F(xbar_{1,z}, ..., xbar_{M,z})
    context bias       B_ctx(x)  = sum_z P(z) F(x_l, xbar_{m,z} for every m != l)
    debiased           Yhat(x)   = Y(x) - label_weight * B_label - context_weight * B_ctx(x)

All in the model's output space: the score ``(N,)`` for regression, the logits ``(N, C)`` for
classification (whose class is then the arg-max of the debiased logits). With both weights 0
the factual predictions come back unchanged, bit for bit (the terms are not even computed).

What the paper leaves open, or what we could not take from it, and what we chose:

1. *Where the counterfactual enters.* MCIS swaps embeddings inside the model (the multimodal
   representation; the language embedding). A wrapper that works for every zoo model can only
   use the public ``model(features, masks)``, so the counterfactuals are built in the input
   feature space.
2. *The confounder of the backdoor adjustment.* We stratify by the training label: the classes
   of a classification data set; for regression the Acc-7 classes (MOSI/MOSEI, the rounded
   score) or the Acc-5 classes (CH-SIMS), else the sign (negative / zero / positive).
   ``strata="none"`` gives one stratum, i.e. the plain average input without purification.
3. *The prior P(z).* The empirical stratum frequency of the training split (the backdoor
   formula's ``P(z)``); ``prior="uniform"`` weighs every stratum alike.
4. *The level of the adjustment.* The sum over ``z`` averages the model's outputs on the
   stratum counterfactuals (``sum_z P(z) F(.)``, as the adjustment formula reads), not the
   counterfactual inputs; for classification it averages logits, not probabilities.
5. *The average utterance.* Step ``t`` of ``xbar_{m,z}`` is the mean of step ``t`` over the
   stratum's samples whose sequence reaches ``t``; its length is the stratum's mean length
   rounded half up (at least 1); padding beyond is zero and masked.
6. *Word-level context.* Pre-extracted per-word vectors carry no word identities (and we have no
   sentiment lexicon), so the paper's selection of context words is not reproduced: the whole
   factual language sequence stands for its word-level context, the other modalities take their
   stratum averages. ``text_modality="auto"`` uses a modality named ``"text"``; without one
   (e.g. UCI Multiple Features) the context term is skipped and a note says so.
7. *BERT token ids.* A mean of token ids means nothing: in the label counterfactual the text of
   a model with a BERT encoder is the empty utterance made of each sample's first and last real
   tokens (``[CLS] [SEP]``); the context counterfactual keeps the tokens as they are.
8. *The weights.* The paper's values could not be retrieved; ours are ``label_weight=1.0`` (the
   whole label-bias output is removed, as in total-direct-effect debiasing) and
   ``context_weight=0.1``. :func:`tune_weights` picks both on a held-out split over
   :data:`LABEL_GRID` x :data:`CONTEXT_GRID` instead (``alignkit evaluate --mcis-tune``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from alignkit._checks import check_non_negative
from alignkit_models.data.base import (
    MultimodalDataset,
    MultimodalSplit,
    is_token_array,
    ordered_batches,
)
from alignkit_models.metrics import PRIMARY_METRIC, compute_metrics, sentiment_classes
from alignkit_models.models.base import MultimodalModel

PAPER = 'Yang et al., "Towards Multimodal Sentiment Analysis Debiasing via Bias Purification", ECCV 2024, arXiv:2403.05023'
FIDELITY = "adapted"
NOTES = (
    "counterfactuals built on the inputs (not inside the model); backdoor adjustment over label strata "
    "(classes; Acc-7/Acc-5 classes or sign for regression) averaging outputs with the empirical prior; "
    "the whole language sequence stands for its word-level context; BERT text -> [CLS] [SEP] in the label "
    "counterfactual; weights ours (1.0 / 0.1), not the paper's"
)
DEFAULT_LABEL_WEIGHT = 1.0
DEFAULT_CONTEXT_WEIGHT = 0.1
LABEL_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
CONTEXT_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3)
STRATA = ("auto", "sign", "none")
PRIORS = ("empirical", "uniform")

Strata = Literal["auto", "sign", "none"]
Prior = Literal["empirical", "uniform"]


@dataclass
class MCISStatistics:
    """What MCIS needs from the training split.

    Attributes:
        strata: a name per stratum ``z`` (``Z`` of them; strata without training samples are
            dropped).
        prior: ``(Z,)`` float32, ``P(z)``, summing to 1.
        means: per float modality ``m``, ``(Z, T_m, d_m)`` float32: the average utterance
            ``xbar_{m,z}`` (zero beyond its length). Token modalities have none.
        lengths: per float modality, ``(Z,)`` int64: the length of ``xbar_{m,z}``.
        token_modalities: modalities held as BERT token ids ``(N, L, 3)``.
    """

    strata: tuple[str, ...]
    prior: Tensor
    means: dict[str, Tensor]
    lengths: dict[str, Tensor]
    token_modalities: tuple[str, ...] = ()


@dataclass
class MCISOutputs:
    """The model's outputs on a split, factual and counterfactual.

    Attributes:
        factual: ``(N,)`` regression scores or ``(N, C)`` logits, equal to
            :func:`~alignkit_models.training.trainer.predict`'s with the same ``batch_size``.
        labels: ``(N,)``.
        label: ``B_label`` broadcast to the shape of ``factual``, or None when not computed.
        context: ``B_ctx(x)``, shaped like ``factual``, or None when not computed (weight 0, or
            no language modality).
        batch_size: the batch size the split was run with (the task loss is a mean over
            batches of that size).
        notes: what was skipped and why.
    """

    factual: Tensor
    labels: Tensor
    label: Tensor | None
    context: Tensor | None
    batch_size: int
    notes: list[str] = field(default_factory=list)


def check_weight(name: str, value: float) -> float:
    """``value`` as a float; ``ValueError`` naming ``name`` unless finite and ``>= 0``."""
    return check_non_negative(float(value), name)


def label_strata(labels: np.ndarray, task: str, kind: str | None = None, strata: str = "auto") -> tuple[np.ndarray, tuple[str, ...]]:
    """A stratum id per training sample, and the stratum names.

    Args:
        labels: ``(N,)`` class ids (classification) or scores (regression).
        task: ``"classification"`` or ``"regression"``.
        kind: the data set's metric family (``"mosi"``, ``"mosei"``, ``"sims"``, ...), which
            names the sentiment classes of a regression data set.
        strata: ``"auto"`` (classes; for regression the Acc-7 / Acc-5 classes of ``kind``, else
            the sign), ``"sign"`` (regression only) or ``"none"`` (one stratum).

    Returns:
        ``(ids, names)``: int64 ``(N,)`` in ``[0, Z)`` and ``Z`` names, only strata that occur.
    """
    if strata not in STRATA:
        raise ValueError(f"strata: expected one of {list(STRATA)}, received {strata!r}")
    values = np.asarray(labels).reshape(-1)
    if values.size == 0:
        raise ValueError("train split: MCIS needs training samples for its averages, received none")
    if strata == "none":
        return np.zeros(values.size, dtype=np.int64), ("all",)
    if task == "classification":
        if strata == "sign":
            raise ValueError("strata: 'sign' needs a regression data set; use 'auto' (the classes) or 'none'")
        raw = values.astype(np.int64)
        names_of = {int(c): f"class {int(c)}" for c in np.unique(raw)}
    elif strata == "auto" and kind in ("mosi", "mosei", "sims"):
        raw = sentiment_classes(kind, values)
        names_of = {int(c): f"{kind} class {int(c)}" for c in np.unique(raw)}
    else:
        raw = np.sign(values.astype(np.float64)).astype(np.int64)
        names_of = {int(c): {-1: "negative", 0: "zero", 1: "positive"}[int(c)] for c in np.unique(raw)}
    present = sorted(names_of)
    index = {c: i for i, c in enumerate(present)}
    return np.asarray([index[int(c)] for c in raw], dtype=np.int64), tuple(names_of[c] for c in present)


def mcis_statistics(
    train: MultimodalSplit,
    modalities: Sequence[str],
    *,
    task: str,
    kind: str | None = None,
    strata: Strata = "auto",
    prior: Prior = "empirical",
) -> MCISStatistics:
    """Stratum priors and average utterances of the training split.

    Args:
        train: the training split: ``features[m]`` ``(N, T_m, d_m)`` float (or int64 ``(N, L, 3)``
            tokens), ``lengths[m]`` ``(N,)``, ``labels`` ``(N,)``.
        modalities: the model's modalities, in its order.
        task, kind, strata: see :func:`label_strata`.
        prior: ``"empirical"`` (stratum frequencies) or ``"uniform"``.

    Returns:
        :class:`MCISStatistics`. ``xbar_{m,z}[t] = sum_{i in z, t < len_i} x_{m,i}[t] /
        #{i in z: t < len_i}`` for ``t < L_{m,z} = max(1, floor(mean_{i in z} len_i + 1/2))``.
    """
    if prior not in PRIORS:
        raise ValueError(f"prior: expected one of {list(PRIORS)}, received {prior!r}")
    ids, names = label_strata(train.labels, task, kind, strata)
    counts = np.bincount(ids, minlength=len(names)).astype(np.float64)
    p = counts / counts.sum() if prior == "empirical" else np.full(len(names), 1.0 / len(names))
    means: dict[str, Tensor] = {}
    lengths: dict[str, Tensor] = {}
    tokens: list[str] = []
    for m in modalities:
        if m not in train.features:
            raise ValueError(f"train split: expected modality {m!r}, received {sorted(train.features)}")
        array = train.features[m]
        if is_token_array(array):
            tokens.append(m)
            continue
        _, steps, width = array.shape
        length = np.clip(np.asarray(train.lengths[m]).astype(np.int64), 0, steps)
        mean = np.zeros((len(names), steps, width), dtype=np.float64)
        size = np.zeros(len(names), dtype=np.int64)
        for z in range(len(names)):
            members = np.flatnonzero(ids == z)
            total = np.zeros((steps, width), dtype=np.float64)
            reach = np.zeros(steps, dtype=np.float64)
            for start in range(0, members.size, 1024):  # bounded memory on MOSEI-sized splits
                chunk = members[start : start + 1024]
                valid = np.arange(steps)[None, :] < length[chunk][:, None]  # (n_chunk, T)
                total += np.einsum("nt,ntd->td", valid.astype(np.float64), array[chunk].astype(np.float64))
                reach += valid.sum(0)
            size[z] = max(1, math.floor(float(length[members].mean()) + 0.5))
            keep = np.arange(steps) < size[z]
            mean[z] = np.where(keep[:, None], total / np.maximum(reach, 1.0)[:, None], 0.0)
        means[m] = torch.from_numpy(mean.astype(np.float32))
        lengths[m] = torch.from_numpy(size)
    return MCISStatistics(names, torch.from_numpy(p.astype(np.float32)), means, lengths, tuple(tokens))


def resolve_text_modality(modalities: Sequence[str], text_modality: str | None) -> str | None:
    """The language modality of the context term: ``"auto"`` -> ``"text"`` if present else
    None; ``"none"``/None -> None; a modality name -> itself."""
    if text_modality is None or text_modality == "none":
        return None
    if text_modality == "auto":
        return "text" if "text" in modalities else None
    if text_modality not in modalities:
        raise ValueError(f"text_modality: expected 'auto', 'none' or one of {list(modalities)}, received {text_modality!r}")
    return text_modality


def _steps_mask(lengths: Tensor, steps: int) -> Tensor:
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def _empty_utterance(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Token ids ``(B, L, 3)`` -> the ``[CLS] [SEP]`` utterance of each sample (its first and last
    real tokens, rest padding) and its ``(B, L)`` mask."""
    batch, steps, _ = tokens.shape
    real = tokens[..., 1].long().sum(1).clamp(1, steps)  # (B,)
    empty = torch.zeros_like(tokens)
    empty[:, 0] = tokens[:, 0]
    keep = torch.minimum(real, torch.full_like(real, 2))
    last = tokens[torch.arange(batch, device=tokens.device), real - 1]  # (B, 3)
    two = keep == 2
    empty[two, 1] = last[two]
    empty[..., 1] = _steps_mask(keep, steps).to(tokens.dtype)
    return empty, _steps_mask(keep, steps)


def _repeat(x: Tensor, times: int) -> Tensor:
    """``(B, ...)`` -> ``(B * times, ...)``, each row ``times`` times in a row (b-major)."""
    return x.repeat_interleave(times, dim=0)


def _tile(x: Tensor, batch: int) -> Tensor:
    """``(Z, ...)`` -> ``(batch * Z, ...)``: the ``Z`` rows once per sample (b-major)."""
    return x.repeat((batch,) + (1,) * (x.ndim - 1))


def _forward(model: MultimodalModel, features: dict[str, Tensor], masks: dict[str, Tensor], chunk: int) -> Tensor:
    """Model outputs of a counterfactual batch, ``chunk`` rows at a time, as float32."""
    rows = next(iter(features.values())).shape[0]
    outputs = []
    for start in range(0, rows, chunk):
        part = slice(start, start + chunk)
        outputs.append(model({m: x[part] for m, x in features.items()}, {m: x[part] for m, x in masks.items()}, None).prediction.float())
    return torch.cat(outputs)


def _backdoor(outputs: Tensor, prior: Tensor, batch: int) -> Tensor:
    """``(batch * Z, *out)`` outputs (b-major) -> ``sum_z P(z) F(.)``, ``(batch, *out)``."""
    grouped = outputs.reshape(batch, prior.numel(), *outputs.shape[1:])
    weights = prior.to(outputs).reshape(1, -1, *([1] * (outputs.ndim - 1)))
    return (grouped * weights).sum(1)


@torch.no_grad()
def mcis_outputs(
    model: MultimodalModel,
    split: MultimodalSplit,
    stats: MCISStatistics,
    *,
    text_modality: str | None = "auto",
    label: bool = True,
    context: bool = True,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> MCISOutputs:
    """Factual and counterfactual outputs of ``model`` on ``split`` (eval mode, no gradients).

    Args:
        model: a trained zoo model (any :class:`MultimodalModel`).
        split: the split to predict: ``features[m]`` ``(N, T_m, d_m)``.
        stats: :func:`mcis_statistics` of the training split.
        text_modality: the language modality of the context term (see
            :func:`resolve_text_modality`).
        label, context: compute ``B_label`` / ``B_ctx`` (skip a term whose weight is 0).
        batch_size: samples per factual batch; a counterfactual batch holds ``batch_size * Z``
            inputs, run ``batch_size`` at a time.
        device: where to run (default: where the model's parameters are).

    Returns:
        :class:`MCISOutputs` with ``factual``, ``label``, ``context`` ``(N,)`` or ``(N, C)``.
    """
    model.eval()
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    modalities = model.modalities
    missing = [m for m in modalities if m not in stats.means and m not in stats.token_modalities]
    if missing:
        raise ValueError(f"stats: no training averages for modalities {missing}; build them with the model's modalities")
    text = resolve_text_modality(modalities, text_modality)
    notes: list[str] = []
    if context and text is None:
        context = False
        notes.append("context term skipped: no language modality (a modality named 'text', or --mcis-text-modality NAME)")
    prior = stats.prior.to(device)
    n_strata = prior.numel()
    means = {m: x.to(device) for m, x in stats.means.items()}
    mean_masks = {m: _steps_mask(stats.lengths[m].to(device), x.shape[1]) for m, x in means.items()}
    tokens = [m for m in modalities if m in stats.token_modalities]
    shared_label: Tensor | None = None
    if label and not tokens:  # the label counterfactual does not depend on the sample: run it once
        outputs = _forward(model, {m: means[m] for m in modalities}, {m: mean_masks[m] for m in modalities}, batch_size)
        shared_label = _backdoor(outputs, prior, 1)[0]
    factual, labels, label_out, context_out = [], [], [], []
    for batch in ordered_batches(split, tuple(modalities), batch_size):
        features = {m: x.to(device) for m, x in batch["features"].items()}
        masks = {m: x.to(device) for m, x in batch["masks"].items()}
        size = batch["labels"].shape[0]
        prediction = model(features, masks, None).prediction.float()
        factual.append(prediction.cpu())
        labels.append(batch["labels"])
        if label:
            if shared_label is not None:
                label_out.append(shared_label.expand_as(prediction).cpu())
            else:
                cf_x, cf_m = {}, {}
                for m in modalities:
                    if m in tokens:
                        empty, empty_mask = _empty_utterance(features[m])
                        cf_x[m], cf_m[m] = _repeat(empty, n_strata), _repeat(empty_mask, n_strata)
                    else:
                        cf_x[m], cf_m[m] = _tile(means[m], size), _tile(mean_masks[m], size)
                label_out.append(_backdoor(_forward(model, cf_x, cf_m, batch_size), prior, size).cpu())
        if context:
            cf_x, cf_m = {}, {}
            for m in modalities:
                if m == text:
                    cf_x[m], cf_m[m] = _repeat(features[m], n_strata), _repeat(masks[m], n_strata)
                elif m in tokens:
                    raise ValueError(f"text_modality: token modality {m!r} has no average; name it as the language modality")
                else:
                    cf_x[m], cf_m[m] = _tile(means[m], size), _tile(mean_masks[m], size)
            context_out.append(_backdoor(_forward(model, cf_x, cf_m, batch_size), prior, size).cpu())
    if not factual:
        raise ValueError("split: MCIS needs at least one sample to predict, received none")
    return MCISOutputs(
        torch.cat(factual),
        torch.cat(labels),
        torch.cat(label_out) if label else None,
        torch.cat(context_out) if context else None,
        batch_size,
        notes,
    )


def mcis_combine(outputs: MCISOutputs, label_weight: float = DEFAULT_LABEL_WEIGHT, context_weight: float = DEFAULT_CONTEXT_WEIGHT) -> Tensor:
    """``Yhat = Y - label_weight * B_label - context_weight * B_ctx``, shaped like ``Y``.

    A term with weight 0, or not computed, is left out (so weights 0 give ``Y`` exactly).

    Raises:
        ValueError: a weight is negative or not finite, or a term with a nonzero weight was not
            computed in ``outputs`` (the context term may be absent: then it is skipped).
    """
    label_weight = check_weight("label_weight", label_weight)
    context_weight = check_weight("context_weight", context_weight)
    result = outputs.factual
    if label_weight != 0.0:
        if outputs.label is None:
            raise ValueError("label_weight: the label-bias outputs were not computed (mcis_outputs(..., label=True))")
        result = result - label_weight * outputs.label
    if context_weight != 0.0 and outputs.context is not None:
        result = result - context_weight * outputs.context
    return result


def task_loss_by_batch(model: MultimodalModel, predictions: Tensor, labels: Tensor, batch_size: int) -> float:
    """The mean over batches of ``batch_size`` of the model's task loss (as the trainer reports it)."""
    losses = [float(model.task_loss(p, y)) for p, y in zip(torch.split(predictions, batch_size), torch.split(labels, batch_size))]
    return float(np.mean(losses))


def tune_weights(
    outputs: MCISOutputs,
    kind: str,
    *,
    label_grid: Sequence[float] = LABEL_GRID,
    context_grid: Sequence[float] = CONTEXT_GRID,
) -> tuple[float, float, float]:
    """The grid weights with the best primary metric of ``kind`` on ``outputs`` (a held-out split).

    Returns:
        ``(label_weight, context_weight, metric value)``; ties keep the first (smallest weights).
    """
    metric, mode = PRIMARY_METRIC[kind]
    best: tuple[float, float, float] | None = None
    for lw in label_grid if outputs.label is not None else (0.0,):
        for cw in context_grid if outputs.context is not None else (0.0,):
            value = compute_metrics(kind, mcis_combine(outputs, lw, cw), outputs.labels)[metric]
            better = best is None or (value < best[2] if mode == "min" else value > best[2])
            if better:
                best = (float(lw), float(cw), float(value))
    assert best is not None
    return best


def mcis_predict(
    model: MultimodalModel,
    split: MultimodalSplit,
    train_split: MultimodalSplit,
    *,
    label_weight: float = DEFAULT_LABEL_WEIGHT,
    context_weight: float = DEFAULT_CONTEXT_WEIGHT,
    text_modality: str | None = "auto",
    kind: str | None = None,
    strata: Strata = "auto",
    prior: Prior = "empirical",
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> Tensor:
    """MCIS-debiased predictions of ``model`` on ``split``.

    Args:
        model: a trained zoo model; its outputs are ``(N,)`` scores or ``(N, C)`` logits.
        split: the split to predict.
        train_split: the split whose label strata and average utterances define the
            counterfactuals (the training split; no gradient, no retraining).
        label_weight, context_weight: ``>= 0``; the weights of ``B_label`` and ``B_ctx``.
        text_modality: language modality of the context term (``"auto"``: ``"text"`` if any).
        kind: metric family of the data set (names the sentiment classes of ``"auto"`` strata).
        strata, prior: see :func:`mcis_statistics`.
        batch_size, device: see :func:`mcis_outputs`.

    Returns:
        ``(N,)`` or ``(N, C)`` float32: ``Y - label_weight * B_label - context_weight * B_ctx``.
    """
    label_weight = check_weight("label_weight", label_weight)
    context_weight = check_weight("context_weight", context_weight)
    resolve_text_modality(model.modalities, text_modality)  # a bad name fails before any work
    stats = mcis_statistics(train_split, model.modalities, task=model.task, kind=kind, strata=strata, prior=prior)
    outputs = mcis_outputs(
        model, split, stats, text_modality=text_modality, label=label_weight != 0.0, context=context_weight != 0.0, batch_size=batch_size, device=device
    )
    return mcis_combine(outputs, label_weight, context_weight)


def mcis_report(
    model: MultimodalModel,
    dataset: MultimodalDataset,
    split: str,
    *,
    kind: str,
    batch_size: int,
    device: torch.device | str | None = None,
    label_weight: float | None = None,
    context_weight: float | None = None,
    text_modality: str | None = "auto",
    strata: Strata = "auto",
    prior: Prior = "empirical",
    tune: bool = False,
) -> tuple[dict[str, float], dict]:
    """Vanilla and MCIS metrics of ``model`` on ``dataset.split(split)`` (``alignkit evaluate``).

    Args:
        model, batch_size, device: as for :func:`mcis_outputs`.
        dataset: its ``train`` split gives the statistics, its ``valid`` split the tuning.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        kind: the data set's metric family (:data:`alignkit_models.metrics.METRICS`).
        label_weight, context_weight: None for the defaults; ignored with ``tune``.
        text_modality, strata, prior: see :func:`mcis_predict`.
        tune: pick the weights on the valid split with :func:`tune_weights`.

    Returns:
        ``(vanilla, debias)``: the vanilla metrics (with ``loss``, equal to
        :func:`~alignkit_models.training.trainer.evaluate`'s) and a dict with ``method``,
        ``paper``, ``fidelity``, ``notes``, ``options`` (the weights used), ``strata`` (name ->
        ``P(z)``), ``skipped`` and ``metrics`` (the debiased metrics, with ``loss``).
    """
    label_weight = check_weight("label_weight", DEFAULT_LABEL_WEIGHT if label_weight is None else label_weight)
    context_weight = check_weight("context_weight", DEFAULT_CONTEXT_WEIGHT if context_weight is None else context_weight)
    text = resolve_text_modality(model.modalities, text_modality)
    stats = mcis_statistics(dataset.train, model.modalities, task=dataset.task, kind=kind, strata=strata, prior=prior)
    common = {"text_modality": text_modality, "batch_size": batch_size, "device": device}
    tuned: dict | None = None
    valid_outputs = None
    if tune:
        valid_outputs = mcis_outputs(model, dataset.valid, stats, **common)
        label_weight, context_weight, value = tune_weights(valid_outputs, kind)
        tuned = {"split": "valid", "metric": PRIMARY_METRIC[kind][0], "value": value, "label_grid": list(LABEL_GRID), "context_grid": list(CONTEXT_GRID)}
    if split == "valid" and valid_outputs is not None:
        outputs = valid_outputs
    else:
        outputs = mcis_outputs(model, dataset.split(split), stats, label=label_weight != 0.0, context=context_weight != 0.0, **common)
    debiased = mcis_combine(outputs, label_weight, context_weight)
    vanilla = {**compute_metrics(kind, outputs.factual, outputs.labels), "loss": task_loss_by_batch(model, outputs.factual, outputs.labels, batch_size)}
    report = {
        "method": "mcis",
        "paper": PAPER,
        "fidelity": FIDELITY,
        "notes": NOTES,
        "options": {
            "label_weight": label_weight,
            "context_weight": context_weight,
            "text_modality": text,
            "strata": strata,
            "prior": prior,
            "tuned": tuned,
        },
        "strata": {name: float(p) for name, p in zip(stats.strata, stats.prior.tolist())},
        "skipped": list(outputs.notes),
        "metrics": {**compute_metrics(kind, debiased, outputs.labels), "loss": task_loss_by_batch(model, debiased, outputs.labels, batch_size)},
    }
    return vanilla, report
