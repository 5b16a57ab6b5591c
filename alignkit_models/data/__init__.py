"""Data sets: the shipped UCI Multiple Features, MMSA-format pickles, synthetic MMSA data, preprocessing."""

from alignkit_models.data.base import MultimodalDataset, MultimodalSplit, SplitDataset, collate
from alignkit_models.data.catalog import DATASETS, load_dataset
from alignkit_models.data.mmsa import load_mmsa, mmsa_dataset
from alignkit_models.data.preprocess import standardize_features
from alignkit_models.data.synthetic import make_synthetic_mmsa, write_synthetic_mmsa
from alignkit_models.data.uci import VIEWS as UCI_VIEWS
from alignkit_models.data.uci import load_uci_mfeat, uci_mfeat_dataset

__all__ = [
    "DATASETS",
    "MultimodalDataset",
    "MultimodalSplit",
    "SplitDataset",
    "UCI_VIEWS",
    "collate",
    "load_dataset",
    "load_mmsa",
    "load_uci_mfeat",
    "make_synthetic_mmsa",
    "mmsa_dataset",
    "standardize_features",
    "uci_mfeat_dataset",
    "write_synthetic_mmsa",
]
