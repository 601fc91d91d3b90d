"""Classification metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.metrics import (
    accuracy,
    expected_calibration_error,
    macro_f1,
    per_class_f1,
    probs_macro_f1,
)


def test_f1_and_accuracy_by_hand():
    gold = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    # class 0: tp2 fp0 fn1 → 4/5; class 1: tp1 fp1 fn1 → 2/4; class 2: tp1 fp1 fn0 → 2/3
    assert per_class_f1(gold, pred, 3) == pytest.approx([0.8, 0.5, 2 / 3])
    assert macro_f1(gold, pred, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert accuracy(gold, pred) == pytest.approx(4 / 6)


def test_macro_f1_ignores_classes_absent_from_gold_and_pred():
    # class 2 never appears: macro over {0, 1} (sklearn's default)
    assert macro_f1([0, 1, 1], [0, 1, 0], 3) == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    gold = np.array([0, 1, 1, 1])
    # bins of width 1/15: 0.9 → bin 13, 0.8 → bin 12, 0.7 → bin 10, 0.6 → bin 9
    # |1-0.9| + |0-0.8| + |1-0.7| + |1-0.6| = 0.1 + 0.8 + 0.3 + 0.4 = 1.6 → /4
    assert expected_calibration_error(probs, gold) == pytest.approx(0.4)
    # two bins: [0.5,1): conf (0.9, 0.8, 0.7, 0.6) mean .75, acc .75 → 0
    assert expected_calibration_error(probs, gold, n_bins=2) == pytest.approx(0.0)


def test_ece_perfectly_confident_and_right_is_zero():
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(probs, [0, 1, 2, 1]) == pytest.approx(0.0)
    assert expected_calibration_error(probs, [1, 2, 0, 0]) == pytest.approx(1.0)


def test_probs_macro_f1_scores_the_argmax():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    f1, acc = probs_macro_f1([0, 1, 1], probs)
    assert f1 == pytest.approx(macro_f1([0, 1, 1], [0, 1, 0], 3))
    assert acc == pytest.approx(2 / 3)
