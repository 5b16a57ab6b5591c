"""Building blocks shared by DecAlign and the baselines."""

from alignkit_models.layers.contrastive import supervised_contrastive_loss
from alignkit_models.layers.crossmodal import PairwiseCrossModal
from alignkit_models.layers.dropout import FastDropout, ReorderedDropout
from alignkit_models.layers.heads import ResidualHead
from alignkit_models.layers.projection import TemporalProjection
from alignkit_models.layers.sequence import SequenceEncoder
from alignkit_models.layers.text import BertTextEncoder  # imports transformers only when built
from alignkit_models.layers.transformer import CrossModalEncoder, sinusoidal_positions

__all__ = [
    "BertTextEncoder",
    "CrossModalEncoder",
    "FastDropout",
    "PairwiseCrossModal",
    "ReorderedDropout",
    "ResidualHead",
    "SequenceEncoder",
    "TemporalProjection",
    "sinusoidal_positions",
    "supervised_contrastive_loss",
]
