"""Building blocks shared by DecAlign and the baselines."""

from alignkit_models.layers.projection import TemporalProjection
from alignkit_models.layers.transformer import CrossModalEncoder, sinusoidal_positions

__all__ = ["CrossModalEncoder", "TemporalProjection", "sinusoidal_positions"]
