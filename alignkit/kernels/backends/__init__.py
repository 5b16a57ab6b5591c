"""Kernel-reduction backends. :mod:`alignkit.kernels.dispatch` is the one place that picks one."""
