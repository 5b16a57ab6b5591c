"""Kernel reductions: Gaussian MMD and the backends behind it."""

from alignkit.kernels.dispatch import Backend, kernel_sum, resolve_backend
from alignkit.kernels.mmd import gaussian_mmd, median_bandwidth, multimodal_mmd

__all__ = ["Backend", "gaussian_mmd", "kernel_sum", "median_bandwidth", "multimodal_mmd", "resolve_backend"]
