"""Pictures of runs, as in the DecAlign paper's figures: the modality gap (Fig. 6), confusion
matrices (Fig. 4), alpha/beta sensitivity (Fig. 7) and training curves.

Each ``plot_*`` function reads files the trainer wrote (checkpoints, ``history.json``, a sweep
folder), draws one figure and saves it; ``alignkit plot ...`` calls them. matplotlib is an
optional extra (``pip install 'alignkit[plot]'``); without it they raise ``ImportError`` with
that line.
"""

from alignkit_models.plots.confusion import plot_confusion
from alignkit_models.plots.curves import plot_curves
from alignkit_models.plots.gap import gap_measures, plot_gap
from alignkit_models.plots.sensitivity import plot_sensitivity

__all__ = ["gap_measures", "plot_confusion", "plot_curves", "plot_gap", "plot_sensitivity"]
