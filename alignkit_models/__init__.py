"""alignkit_models: the DecAlign reference network, baselines, data, metrics, trainer and CLI."""

from alignkit import __version__

__all__ = ["__version__"]
