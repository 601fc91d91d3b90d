"""Metric functions against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tune.evaluate import (
    accuracy,
    bootstrap_diff,
    classification_metrics,
    error_table,
    expected_calibration_error,
    macro_f1,
    per_class_f1,
    slice_metrics,
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


def test_classification_metrics_names_labels():
    m = classification_metrics(
        [0, 1, 1], np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), ["a", "b"]
    )
    assert m["n"] == 3 and m["accuracy"] == pytest.approx(2 / 3)
    assert m["per_class_f1"] == pytest.approx({"a": 2 / 3, "b": 2 / 3})


def test_slice_metrics_counts_each_group_and_none():
    probs = np.eye(2)[[0, 1, 0, 1]]
    gold = [0, 1, 1, 1]
    slices = [["women"], ["women", "religion"], [], ["religion"]]
    out = slice_metrics(gold, probs, slices, ["x", "y"])
    assert out["women"]["n"] == 2 and out["women"]["accuracy"] == 1.0
    assert out["religion"]["n"] == 2 and out["religion"]["accuracy"] == 1.0
    assert out["(none)"]["n"] == 1 and out["(none)"]["accuracy"] == 0.0


def test_bootstrap_ci_brackets_a_real_difference():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.9, gold, 1 - gold)
    bad = np.where(rng.random(400) < 0.6, gold, 1 - gold)
    out = bootstrap_diff(gold, good, bad, 2, n_boot=300, seed=1)
    assert out["ci_low"] > 0.15 and out["ci_low"] <= out["diff"] <= out["ci_high"]
    assert out["p_not_better"] == 0.0
    same = bootstrap_diff(gold, good, good, 2, n_boot=50)
    assert same["diff"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0


def test_error_table_lists_wrong_and_unsure():
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "text": ["t1", "t2", "t3"],
            "label": ["x", "y", "x"],
            "slice": [[], ["g"], []],
        }
    )
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.55, 0.45]])
    out = error_table(frame, probs, ["x", "y"], low_confidence=0.6)
    assert list(out["id"]) == ["c", "b"]  # least confident first; "a" is right and sure
    assert list(out.columns[:6]) == ["id", "text", "gold", "predicted", "prob", "slice"]
    assert out.set_index("id").loc["b", "slice"] == "g"
