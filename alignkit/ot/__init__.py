"""Optimal transport: Bures costs between Gaussians, (multi-marginal) entropic Sinkhorn."""

from alignkit.ot.bures import bures_wasserstein_cost
from alignkit.ot.result import OTResult
from alignkit.ot.sinkhorn import joint_cost_tensor, multi_marginal_sinkhorn, sinkhorn
from alignkit.ot.sqrtm import sqrtm_psd

__all__ = ["OTResult", "bures_wasserstein_cost", "joint_cost_tensor", "multi_marginal_sinkhorn", "sinkhorn", "sqrtm_psd"]
