"""Specification of alignkit_models.metrics: every expected value is worked out by hand."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from alignkit_models.metrics import (
    METRICS,
    PRIMARY_METRIC,
    classification_metrics,
    compute_metrics,
    iemocap_metrics,
    mosi_metrics,
    sims_metrics,
)

MetricFn = Callable[..., dict[str, float]]

# ---------------------------------------------------------------------------------------------
# MOSI / MOSEI
# ---------------------------------------------------------------------------------------------


def test_mosi_returns_exactly_the_contract_keys_as_python_floats() -> None:
    out = mosi_metrics([1.0, -1.0, 2.0], [1.0, -2.0, 0.5])
    assert set(out) == {"mae", "corr", "acc7", "acc5", "acc2_nonzero", "f1_nonzero", "acc2_haszero", "f1_haszero"}
    assert all(type(v) is float for v in out.values())


def test_mosi_mae_and_corr_on_small_case() -> None:
    # |1-1| + |2-3| + |3-2| = 2 over 3 samples.
    # centred p = [-1, 0, 1], centred y = [-1, 1, 0]: sum(p*y) = 1, |p| = |y| = sqrt(2) -> 1/2.
    out = mosi_metrics([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert out["mae"] == pytest.approx(2 / 3)
    assert out["corr"] == pytest.approx(0.5)


def test_mosi_mae_uses_unclipped_values() -> None:
    # A prediction of 4 against a label of 3 still costs 1 (MMSA does not clip for MAE).
    out = mosi_metrics([4.0, -3.0], [3.0, -3.0])
    assert out["mae"] == pytest.approx(0.5)


def test_corr_is_zero_when_predictions_are_constant() -> None:
    assert mosi_metrics([0.1, 0.1, 0.1], [1.0, 2.0, 3.0])["corr"] == 0.0


def test_corr_is_zero_when_labels_are_constant() -> None:
    assert mosi_metrics([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])["corr"] == 0.0


def test_acc7_rounds_half_to_even() -> None:
    # pred -> rounded vs label -> rounded (half-up / half-away-from-zero would miss the ties):
    #   0.5 -> 0  vs 0 -> 0     hit   (half-up: 1)
    #   1.5 -> 2  vs 2 -> 2     hit
    #   2.5 -> 2  vs 2 -> 2     hit   (half-up: 3)
    #  -0.5 -> -0 vs 0 -> 0     hit   (away from zero: -1)
    #  -2.5 -> -2 vs -2 -> -2   hit   (away from zero: -3)
    #   2.0 -> 2  vs 2.5 -> 2   hit   (labels are rounded too; half-up: 3)
    #   1.0 -> 1  vs 2 -> 2     miss
    out = mosi_metrics([0.5, 1.5, 2.5, -0.5, -2.5, 2.0, 1.0], [0.0, 2.0, 2.0, 0.0, -2.0, 2.5, 2.0])
    assert out["acc7"] == pytest.approx(6 / 7)


def test_acc7_clips_to_plus_minus_three_before_rounding() -> None:
    # 3.7 -> 3 vs 3 hit (unclipped would round to 4); -4 -> -3 vs -3 hit; 1.2 -> 1 vs 2 miss.
    out = mosi_metrics([3.7, -4.0, 1.2], [3.0, -3.0, 2.0])
    assert out["acc7"] == pytest.approx(2 / 3)


def test_acc5_clips_to_plus_minus_two_before_rounding() -> None:
    # preds  [2.4, -2.6, 2.6, 0.4] -> clip [2, -2, 2, 0.4] -> round [2, -2, 2, 0]
    # labels [3.0, -3.0, 2.0, 1.0] -> clip [2, -2, 2, 1]   -> round [2, -2, 2, 1]  => 3/4
    # Acc-7 on the same data: [2, -3, 3, 0] vs [3, -3, 2, 1]                      => 1/4
    out = mosi_metrics([2.4, -2.6, 2.6, 0.4], [3.0, -3.0, 2.0, 1.0])
    assert out["acc5"] == pytest.approx(3 / 4)
    assert out["acc7"] == pytest.approx(1 / 4)


#            idx:   0     1     2    3    4     5    6
ACC2_PREDS = [0.5, 0.2, 0.3, 0.0, 1.0, 0.0, 0.4]
ACC2_LABELS = [1.0, -1.0, 0.0, 0.0, 2.0, -2.0, 0.0]


def test_acc2_nonzero_drops_zero_labels_and_splits_at_greater_than_zero() -> None:
    # Kept: 0, 1, 4, 5. truth >0 = [T, F, T, F], pred >0 = [T, T, T, F] -> hits 0, 4, 5 = 3/4.
    # (Sample 5 predicts exactly 0 for a negative label: a hit only because 0 is not > 0.)
    assert mosi_metrics(ACC2_PREDS, ACC2_LABELS)["acc2_nonzero"] == pytest.approx(3 / 4)


def test_acc2_haszero_counts_zero_as_non_negative() -> None:
    # truth >=0 = [T, F, T, T, T, F, T], pred >=0 = all T -> hits 0, 2, 3, 4, 6 = 5/7.
    # (Labels 0 at 2, 3, 6 are non-negative; the prediction exactly 0 at 3 is too.)
    assert mosi_metrics(ACC2_PREDS, ACC2_LABELS)["acc2_haszero"] == pytest.approx(5 / 7)


def test_f1_nonzero_is_weighted_f1_of_the_nonzero_subset() -> None:
    # y_true = [1, 0, 1, 0], y_pred = [1, 1, 1, 0]
    # class 1: TP 2, FP 1, FN 0 -> P = 2/3, R = 1,   F1 = 4/5, support 2
    # class 0: TP 1, FP 0, FN 1 -> P = 1,   R = 1/2, F1 = 2/3, support 2
    # weighted = (2 * 4/5 + 2 * 2/3) / 4 = 11/15
    assert mosi_metrics(ACC2_PREDS, ACC2_LABELS)["f1_nonzero"] == pytest.approx(11 / 15)


def test_f1_haszero_is_weighted_f1_over_all_samples() -> None:
    # y_true = [1, 0, 1, 1, 1, 0, 1], y_pred = [1, 1, 1, 1, 1, 1, 1]
    # class 1: TP 5, FP 2, FN 0 -> P = 5/7, R = 1, F1 = (10/7) / (12/7) = 5/6, support 5
    # class 0: TP 0             -> F1 = 0,                                support 2
    # weighted = 5 * 5/6 / 7 = 25/42
    assert mosi_metrics(ACC2_PREDS, ACC2_LABELS)["f1_haszero"] == pytest.approx(25 / 42)


def test_nonzero_metrics_are_nan_when_every_label_is_zero() -> None:
    out = mosi_metrics([0.3, -0.2], [0.0, 0.0])
    assert math.isnan(out["acc2_nonzero"])
    assert math.isnan(out["f1_nonzero"])
    assert out["acc2_haszero"] == pytest.approx(1 / 2)


def test_mosi_accepts_column_predictions() -> None:
    out = mosi_metrics(np.array([[1.0], [2.0], [3.0]]), [1.0, 3.0, 2.0])
    assert out["mae"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------
# CH-SIMS
# ---------------------------------------------------------------------------------------------


def test_sims_returns_exactly_the_contract_keys() -> None:
    assert set(sims_metrics([0.2, -0.4], [0.1, -0.5])) == {"mae", "corr", "acc2", "acc3", "acc5", "f1"}


def test_sims_clips_to_plus_minus_one_before_mae() -> None:
    # 1.5 -> 1 against 1; -2 -> -1 against -1: no error left. Unclipped MAE would be 0.5.
    assert sims_metrics([1.5, -2.0], [1.0, -1.0])["mae"] == 0.0


def test_sims_mae_and_corr_on_small_case() -> None:
    # |0.2-0.2| + |0.4-0.6| + |0.6-0.4| = 0.4 over 3; same ranks pattern as the MOSI case -> 1/2.
    out = sims_metrics([0.2, 0.4, 0.6], [0.2, 0.6, 0.4])
    assert out["mae"] == pytest.approx(0.4 / 3)
    assert out["corr"] == pytest.approx(0.5)


def test_sims_acc2_puts_zero_and_minus_one_in_the_negative_bin() -> None:
    # preds 0.0 and -1.0 are in bin (-1, 0] like the negative labels; 0.3 is positive like 1.0.
    assert sims_metrics([0.0, -1.0, 0.3], [-0.5, -0.2, 1.0])["acc2"] == 1.0


def test_sims_acc3_threshold_values_fall_in_the_lower_bin() -> None:
    # bins: <= -0.1 | (-0.1, 0.1] | > 0.1
    # 0.1 -> middle like 0.0; -0.1 -> lower like -0.5; 0.0 -> middle like 0.05; 0.5 -> upper like 0.11
    assert sims_metrics([0.1, -0.1, 0.0, 0.5], [0.0, -0.5, 0.05, 0.11])["acc3"] == 1.0


def test_sims_acc3_bins_float32_values_in_their_own_precision() -> None:
    # float32(0.1) is 0.10000000149 > float64(0.1); it must still land in the middle bin.
    preds = torch.tensor([0.1, -0.1], dtype=torch.float32)
    assert sims_metrics(preds, [0.0, -0.5])["acc3"] == 1.0


def test_sims_acc5_bins() -> None:
    # bins: <= -0.7 | (-0.7, -0.1] | (-0.1, 0.1] | (0.1, 0.7] | > 0.7
    # pred  0.7 -> 3, label  0.5 -> 3  hit
    # pred -0.7 -> 0, label -1.0 -> 0  hit
    # pred 0.75 -> 4, label  1.0 -> 4  hit
    # pred -0.75 -> 0, label -0.9 -> 0 hit
    # pred  0.1 -> 2, label  0.0 -> 2  hit
    # pred -0.1 -> 1, label -0.3 -> 1  hit
    # pred 0.11 -> 3, label  0.1 -> 2  miss
    # pred -0.05 -> 2, label -0.3 -> 1 miss
    out = sims_metrics(
        [0.7, -0.7, 0.75, -0.75, 0.1, -0.1, 0.11, -0.05],
        [0.5, -1.0, 1.0, -0.9, 0.0, -0.3, 0.1, -0.3],
    )
    assert out["acc5"] == pytest.approx(6 / 8)


def test_sims_f1_is_weighted_f1_of_the_two_class_split() -> None:
    # pred bins [1, 0, 1, 0], label bins [1, 1, 1, 0]
    # class 1: TP 2, FP 0, FN 1 -> P = 1, R = 2/3, F1 = 4/5, support 3
    # class 0: TP 1, FP 1, FN 0 -> P = 1/2, R = 1, F1 = 2/3, support 1
    # weighted = (3 * 4/5 + 2/3) / 4 = 23/30
    out = sims_metrics([0.5, -0.5, 0.2, 0.0], [0.3, 0.4, 0.9, -0.6])
    assert out["f1"] == pytest.approx(23 / 30)
    assert out["acc2"] == pytest.approx(3 / 4)


# ---------------------------------------------------------------------------------------------
# Classification / IEMOCAP
# ---------------------------------------------------------------------------------------------

# y_true = [0, 0, 0, 1, 1, 2], y_pred = [0, 0, 1, 1, 2, 2]
# class 0: TP 2, FP 0, FN 1 -> P = 1,   R = 2/3, F1 = 4/5, support 3
# class 1: TP 1, FP 1, FN 1 -> P = 1/2, R = 1/2, F1 = 1/2, support 2
# class 2: TP 1, FP 1, FN 0 -> P = 1/2, R = 1,   F1 = 2/3, support 1
CLS_TRUE = [0, 0, 0, 1, 1, 2]
CLS_PRED = [0, 0, 1, 1, 2, 2]


def test_classification_accuracy() -> None:
    assert classification_metrics(CLS_PRED, CLS_TRUE)["accuracy"] == pytest.approx(4 / 6)


def test_classification_macro_f1_is_unweighted_mean_over_classes() -> None:
    # (4/5 + 1/2 + 2/3) / 3 = 59/90
    assert classification_metrics(CLS_PRED, CLS_TRUE)["macro_f1"] == pytest.approx(59 / 90)


def test_classification_weighted_f1_weights_by_support() -> None:
    # (3 * 4/5 + 2 * 1/2 + 1 * 2/3) / 6 = 61/90
    assert classification_metrics(CLS_PRED, CLS_TRUE)["weighted_f1"] == pytest.approx(61 / 90)


def test_classification_logits_give_the_same_result_as_their_argmax() -> None:
    logits = np.array(
        [
            [2.0, 0.1, -1.0],
            [0.9, 0.2, 0.3],
            [0.0, 1.5, 1.4],
            [-3.0, 0.0, -0.5],
            [0.1, 0.2, 0.3],
            [0.0, -1.0, 5.0],
        ]
    )  # argmax = [0, 0, 1, 1, 2, 2] = CLS_PRED
    assert classification_metrics(logits, CLS_TRUE) == classification_metrics(CLS_PRED, CLS_TRUE)


def test_classification_accepts_integral_float_ids_and_rejects_fractional_ones() -> None:
    assert classification_metrics([0.0, 1.0], [0, 0])["accuracy"] == 0.5
    with pytest.raises(ValueError, match="logits_or_predictions"):
        classification_metrics([0.2, 0.9], [0, 1])


def test_iemocap_wacc_and_waf1() -> None:
    # y_true = [0, 1, 2, 3, 4, 5, 5, 5], y_pred = [0, 1, 2, 3, 4, 5, 5, 4]; wacc = 7/8
    # classes 0-3: F1 = 1, support 1 each
    # class 4: TP 1, FP 1, FN 0 -> F1 = 2/3, support 1
    # class 5: TP 2, FP 0, FN 1 -> F1 = 4/5, support 3
    # waf1 = (4 + 2/3 + 3 * 4/5) / 8 = 53/60
    out = iemocap_metrics([0, 1, 2, 3, 4, 5, 5, 4], [0, 1, 2, 3, 4, 5, 5, 5])
    assert set(out) == {"wacc", "waf1"}
    assert out["wacc"] == pytest.approx(7 / 8)
    assert out["waf1"] == pytest.approx(53 / 60)


# ---------------------------------------------------------------------------------------------
# Input types and validation
# ---------------------------------------------------------------------------------------------


def test_torch_tensors_are_accepted() -> None:
    preds = torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True)
    out = mosi_metrics(preds, torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64))
    assert out["mae"] == pytest.approx(2 / 3)
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2]], dtype=torch.bfloat16)
    assert classification_metrics(logits, torch.tensor([1, 1]))["accuracy"] == 0.5


@pytest.mark.parametrize("fn", [mosi_metrics, sims_metrics])
def test_regression_length_mismatch_names_labels_with_expected_and_received(fn: MetricFn) -> None:
    with pytest.raises(ValueError, match=r"labels: expected 3 .*received 2"):
        fn([0.1, 0.2, 0.3], [0.1, 0.2])


@pytest.mark.parametrize("fn", [classification_metrics, iemocap_metrics])
def test_classification_length_mismatch_names_labels(fn: MetricFn) -> None:
    with pytest.raises(ValueError, match=r"labels: expected 2 .*received 3"):
        fn([0, 1], [0, 1, 1])


@pytest.mark.parametrize("fn", [mosi_metrics, sims_metrics])
def test_empty_predictions_raise_naming_predictions(fn: MetricFn) -> None:
    with pytest.raises(ValueError, match="predictions"):
        fn([], [])


def test_empty_labels_raise_naming_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        mosi_metrics([0.5], [])


def test_empty_classification_input_raises_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="logits_or_predictions"):
        classification_metrics(np.zeros((0, 3)), [])


def test_regression_rejects_multi_column_predictions() -> None:
    with pytest.raises(ValueError, match="predictions"):
        mosi_metrics(np.zeros((2, 2)), [0.0, 1.0])


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------


def test_compute_metrics_dispatches_on_kind() -> None:
    assert compute_metrics("mosei", [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == mosi_metrics([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert compute_metrics("classification", CLS_PRED, CLS_TRUE)["macro_f1"] == pytest.approx(59 / 90)


def test_compute_metrics_rejects_unknown_kind_by_name() -> None:
    with pytest.raises(ValueError, match="'mosii'"):
        compute_metrics("mosii", [0.0], [0.0])


def test_every_primary_metric_is_produced_by_its_kind() -> None:
    assert set(PRIMARY_METRIC) == set(METRICS) == {"mosi", "mosei", "sims", "iemocap", "classification"}
    regression = ([0.5, -0.5, 0.2], [0.4, -0.6, 0.1])
    classes = ([0, 1, 2], [0, 1, 1])
    for kind, (key, direction) in PRIMARY_METRIC.items():
        args = classes if kind in {"iemocap", "classification"} else regression
        assert key in compute_metrics(kind, *args)
        assert direction in {"max", "min"}
