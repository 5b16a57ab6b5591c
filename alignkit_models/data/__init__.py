"""Data sets: the shipped UCI Multiple Features, MMSA-format pickles and synthetic MMSA data."""

from alignkit_models.data.base import MultimodalDataset, MultimodalSplit, SplitDataset, collate
from alignkit_models.data.uci import VIEWS as UCI_VIEWS
from alignkit_models.data.uci import load_uci_mfeat, uci_mfeat_dataset

__all__ = [
    "MultimodalDataset",
    "MultimodalSplit",
    "SplitDataset",
    "UCI_VIEWS",
    "collate",
    "load_uci_mfeat",
    "uci_mfeat_dataset",
]
