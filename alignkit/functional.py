"""The public pure functions of alignkit, re-exported from the module that implements each.

=====================================  ===========================================  ==============
function                               computes                                     paper
=====================================  ===========================================  ==============
:func:`decoupling_loss`                cosine overlap of unique and common features eq. 1
:func:`fit_gmm`                        Gaussian-mixture prototypes by EM            eqs. 2-4
:func:`sqrtm_psd`                      PSD matrix square root, stable backward      eq. 6
:func:`bures_wasserstein_cost`         pairwise W2^2 between Gaussian components    eq. 6
:func:`joint_cost_tensor`              multi-marginal cost ``sum_{i<j} C_ij``       eq. 5
:func:`sinkhorn`                       entropic OT, two marginals                   eq. 7
:func:`multi_marginal_sinkhorn`        entropic OT, ``M >= 2`` marginals            eqs. 7-8
:func:`prototype_calibration_loss`     sample-to-prototype calibration              eq. 9
:func:`moment_matching_loss`           mean / covariance / skewness matching        eq. 10
:func:`gaussian_mmd`                   squared Gaussian-kernel MMD                  eqs. 11-12
:func:`multimodal_mmd`                 average pairwise MMD^2 over modalities       eq. 11
=====================================  ===========================================  ==============
"""

from alignkit.decoupling import decoupling_loss
from alignkit.kernels.mmd import gaussian_mmd, median_bandwidth, multimodal_mmd
from alignkit.moments import feature_moments, moment_matching_loss
from alignkit.ot.bures import bures_wasserstein_cost
from alignkit.ot.sinkhorn import joint_cost_tensor, multi_marginal_sinkhorn, sinkhorn
from alignkit.ot.sqrtm import sqrtm_psd
from alignkit.prototypes.calibration import prototype_calibration_loss
from alignkit.prototypes.gmm import fit_gmm

__all__ = [
    "bures_wasserstein_cost",
    "decoupling_loss",
    "feature_moments",
    "fit_gmm",
    "gaussian_mmd",
    "joint_cost_tensor",
    "median_bandwidth",
    "moment_matching_loss",
    "multi_marginal_sinkhorn",
    "multimodal_mmd",
    "prototype_calibration_loss",
    "sinkhorn",
    "sqrtm_psd",
]
