"""Run-level metrics (per label, per slice, bootstrap, error table) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tune.evaluate import bootstrap_diff, classification_metrics, error_table, slice_metrics


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
