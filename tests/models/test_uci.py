"""The shipped UCI Multiple Features data and its loaders."""

from __future__ import annotations

import numpy as np

from alignkit_models.data import UCI_VIEWS, load_uci_mfeat, uci_mfeat_dataset
from alignkit_models.data.uci import VIEW_DIMS, split_indices


def test_six_views_in_fixed_order_as_float32() -> None:
    data = load_uci_mfeat()
    assert tuple(data.views) == UCI_VIEWS == ("fou", "fac", "kar", "pix", "zer", "mor")
    for view, array in data.views.items():
        assert array.dtype == np.float32
        assert array.shape == (2000, VIEW_DIMS[view])


def test_labels_are_ten_balanced_classes() -> None:
    assert np.array_equal(np.bincount(load_uci_mfeat().labels), np.full(10, 200))


def test_split_is_stratified_disjoint_and_complete() -> None:
    data = load_uci_mfeat()
    train, valid, test = (data.splits[s] for s in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (1400, 300, 300)
    assert len(np.unique(np.concatenate([train, valid, test]))) == 2000
    for rows, per_class in ((train, 140), (valid, 30), (test, 30)):
        assert np.array_equal(np.bincount(data.labels[rows]), np.full(10, per_class))


def test_split_is_deterministic() -> None:
    labels = load_uci_mfeat().labels
    first, second = split_indices(labels), split_indices(labels)
    assert all(np.array_equal(first[s], second[s]) for s in first)


def test_known_values_survive_the_packaging() -> None:
    # First row of mfeat-mor.csv: 1,0,0,133.15,1.3117,1620.2 (label 0); first of mfeat-pix starts 0,0,0,0,0,0,1,3
    data = load_uci_mfeat()
    assert np.allclose(data.views["mor"][0], [1, 0, 0, 133.15, 1.3117, 1620.2], rtol=1e-6)
    assert np.array_equal(data.views["pix"][1][:8], [0, 0, 0, 0, 0, 0, 1, 3])
    assert data.labels[0] == 0 and data.labels[-1] == 9


def test_dataset_is_standardized_on_the_train_split() -> None:
    dataset = uci_mfeat_dataset()
    assert dataset.modalities == UCI_VIEWS and dataset.n_classes == 10 and dataset.task == "classification"
    train = dataset.train.features["fac"][:, 0, :]
    assert np.allclose(train.mean(0), 0, atol=1e-4)
    stds = train.std(0)
    assert np.allclose(stds[stds > 0], 1, atol=1e-3)
    assert dataset.train.features["fou"].shape == (1400, 1, 76)
