"""The data sets ``alignkit train --dataset NAME`` knows, and how to load each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignkit_models.data.base import MultimodalDataset
from alignkit_models.data.mmsa import TEXT_INPUTS, TextInput, load_mmsa, mmsa_dataset
from alignkit_models.data.synthetic import make_synthetic_mmsa
from alignkit_models.data.uci import uci_mfeat_dataset


@dataclass(frozen=True)
class DatasetInfo:
    """One entry of the catalog.

    Attributes:
        name: ``--dataset`` value.
        description: one line for ``alignkit datasets``.
        metrics: metric family in :data:`alignkit_models.metrics.METRICS`.
        needs_path: the user supplies the file with ``--data PATH``.
        loader: ``(path, text) -> MultimodalDataset`` (``path`` is None when not needed; ``text``
            is ``"features"`` or, for data sets with ``tokens``, ``"tokens"``).
        tokens: the data set can give its text as BERT token ids (``text="tokens"``).
    """

    name: str
    description: str
    metrics: str
    needs_path: bool
    loader: Callable[[Path | None, TextInput], MultimodalDataset]
    tokens: bool = False


def _mmsa(name: str, task: str = "regression") -> Callable[[Path | None, TextInput], MultimodalDataset]:
    def load(path: Path | None, text: TextInput) -> MultimodalDataset:
        if path is None:
            raise ValueError(f"data: the {name!r} data set needs --data PATH to its MMSA feature pickle")
        return load_mmsa(path, name=name, task=task, text=text)  # type: ignore[arg-type]

    return load


def _synthetic(preset: str) -> Callable[[Path | None, TextInput], MultimodalDataset]:
    def load(path: Path | None, text: TextInput) -> MultimodalDataset:
        data = make_synthetic_mmsa(preset, seed=0, text_bert=text == "tokens")
        return mmsa_dataset(data, name=f"synthetic-{preset}", text=text, source=f"synthetic {preset}")

    return load


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo("uci-mfeat", "UCI Multiple Features: 2,000 digits, 6 views, 10 classes (shipped)", "classification", False, lambda _path, _text: uci_mfeat_dataset()),
        DatasetInfo("mosi", "CMU-MOSI MMSA features (text 768 / audio 5 / vision 20), sentiment in [-3, 3]", "mosi", True, _mmsa("mosi"), tokens=True),
        DatasetInfo("mosei", "CMU-MOSEI MMSA features (768 / 74 / 35), sentiment in [-3, 3]", "mosi", True, _mmsa("mosei"), tokens=True),
        DatasetInfo("sims", "CH-SIMS MMSA features (768 / 33 / 709, unaligned), sentiment in [-1, 1]", "sims", True, _mmsa("sims"), tokens=True),
        DatasetInfo("iemocap", "IEMOCAP six-class emotions, MMSA-format pickle with classification_labels", "iemocap", True, _mmsa("iemocap", "classification"), tokens=True),
        DatasetInfo("synthetic-mosi", "synthetic MOSI-format data with planted shared/unique structure (generated)", "mosi", False, _synthetic("mosi"), tokens=True),
        DatasetInfo("synthetic-sims", "synthetic CH-SIMS-format data, unaligned (generated)", "sims", False, _synthetic("sims"), tokens=True),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, received {name!r}")
    return DATASETS[name]


def load_dataset(name: str, path: str | Path | None = None, *, text: TextInput = "features") -> MultimodalDataset:
    """Load a catalog data set; ``path`` is the MMSA pickle for the real MMSA data sets.

    ``text="tokens"`` gives the text modality as int64 ``(N, L, 3)`` BERT token ids (see
    :func:`~alignkit_models.data.mmsa.load_mmsa`); only data sets with ``tokens`` in their
    :class:`DatasetInfo` have them (the synthetic ones generate them).
    """
    info = dataset_info(name)
    if text not in TEXT_INPUTS:
        raise ValueError(f"text: expected one of {TEXT_INPUTS}, received {text!r}")
    if text == "tokens" and not info.tokens:
        with_tokens = sorted(n for n, i in DATASETS.items() if i.tokens)
        raise ValueError(
            f"text: the {name!r} data set has no token ids, so text='tokens' is not available; "
            f"expected 'features', or one of the data sets {with_tokens}"
        )
    return info.loader(Path(path) if path is not None else None, text)
