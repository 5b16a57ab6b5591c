"""Gaussian-mixture prototypes (EM) and sample-to-prototype calibration."""

from alignkit.prototypes.calibration import prototype_calibration_loss
from alignkit.prototypes.gmm import GaussianMixture, fit_gmm

__all__ = ["GaussianMixture", "fit_gmm", "prototype_calibration_loss"]
