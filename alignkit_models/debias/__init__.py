"""Inference-time debiasing wrapped around a trained zoo model (``alignkit evaluate --debias``).

:mod:`~alignkit_models.debias.mcis`: MCIS (Yang et al., ECCV 2024), counterfactual subtraction of
the purified label-bias and context-bias outputs; adapted (see its module docstring).
"""

from alignkit_models.debias.mcis import (
    CONTEXT_GRID,
    DEFAULT_CONTEXT_WEIGHT,
    DEFAULT_LABEL_WEIGHT,
    FIDELITY,
    LABEL_GRID,
    NOTES,
    PAPER,
    MCISOutputs,
    MCISStatistics,
    check_weight,
    label_strata,
    mcis_combine,
    mcis_outputs,
    mcis_predict,
    mcis_report,
    mcis_statistics,
    resolve_text_modality,
    task_loss_by_batch,
    tune_weights,
)

__all__ = [
    "CONTEXT_GRID",
    "DEFAULT_CONTEXT_WEIGHT",
    "DEFAULT_LABEL_WEIGHT",
    "FIDELITY",
    "LABEL_GRID",
    "NOTES",
    "PAPER",
    "MCISOutputs",
    "MCISStatistics",
    "check_weight",
    "label_strata",
    "mcis_combine",
    "mcis_outputs",
    "mcis_predict",
    "mcis_report",
    "mcis_statistics",
    "resolve_text_modality",
    "task_loss_by_batch",
    "tune_weights",
]
