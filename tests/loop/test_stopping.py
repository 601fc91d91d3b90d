"""Stopping rules: kappa, each rule on synthetic curves, the recommendation, simulate's replay."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from loop.simulate import CurvePoint, stopping_summary
from loop.stopping import (
    CONTINUE,
    STOP,
    StoppingOptions,
    check_rules,
    cohen_kappa,
    recommend,
    stop_points,
)


def test_kappa_matches_scikit_learn_on_random_labelings():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 3, 200)
        b = np.where(rng.random(200) < 0.7, a, rng.integers(0, 3, 200))
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) == 1.0
    assert cohen_kappa([1, 1, 1], [0, 0, 0]) == 0.0
    with pytest.raises(ValueError):
        cohen_kappa([1, 2], [1])


# a synthetic run: predictions settle from round 4 on; confidence climbs to 0.93 in round 6
KAPPAS = [None, 0.62, 0.85, 0.95, 0.992, 0.995, 0.999, 1.0]
CONFIDENCE = [0.61, 0.70, 0.78, 0.84, 0.87, 0.89, 0.93, 0.94]
LABELS = [50, 100, 150, 200, 250, 300, 350, 400]


def test_each_rule_stops_where_its_threshold_is_first_met():
    opts = StoppingOptions(kappa=0.99, window=3, confidence=0.9, budget=300)
    points = stop_points(KAPPAS, CONFIDENCE, LABELS, opts)
    # kappa >= 0.99 in rounds 4, 5, 6: met once three in a row are
    assert points["stabilizing_predictions"] == 6
    assert points["confidence"] == 6
    assert points["budget"] == 5  # 300 labels
    assert points["recommended"] == 5  # the budget stops first


def test_without_a_budget_stabilised_predictions_stop_and_a_stricter_window_waits():
    assert stop_points(KAPPAS, CONFIDENCE, LABELS, StoppingOptions())["recommended"] == 6
    late = stop_points(KAPPAS, CONFIDENCE, LABELS, StoppingOptions(window=4))
    assert late["stabilizing_predictions"] == 7
    never = stop_points(KAPPAS, CONFIDENCE, LABELS, StoppingOptions(window=8))
    assert never["stabilizing_predictions"] is None and never["recommended"] is None
    assert never["budget"] is None


def test_confidence_alone_does_not_stop():
    kappas = [None, 0.5, 0.6, 0.5]
    checks = check_rules(kappas, 0.97, 400, StoppingOptions())
    assert [c.met for c in checks] == [False, True, False]
    decision, why = recommend(checks)
    assert decision == CONTINUE and "still change" in why
    first = check_rules([None], None, 50, StoppingOptions())
    assert recommend(first)[0] == CONTINUE
    assert "two rounds" in first[0].detail


def test_stopping_summary_reports_labels_saved_and_f1_given_up():
    f1 = [0.50, 0.60, 0.68, 0.72, 0.74, 0.75, 0.755, 0.76]
    runs = [
        [
            CurvePoint("margin", seed, r, LABELS[r], f1[r] - 0.01 * seed, 0.0, KAPPAS[r], c)
            for r, c in enumerate(CONFIDENCE)
        ]
        for seed in (0, 1)
    ]
    out = stopping_summary(runs, full_f1=0.78, pool_size=1000, opts=StoppingOptions())
    sp = out["stabilizing_predictions"]
    assert sp["stopped"] == 2 and sp["round"] == 6 and sp["labels"] == 350
    assert sp["labels_saved"] == 650
    assert sp["macro_f1_given_up"] == pytest.approx(0.78 - (0.755 + 0.745) / 2)
    # no budget: never met, counted at the last round
    assert out["budget"]["stopped"] == 0 and out["budget"]["labels"] == 400


def test_options_are_validated():
    with pytest.raises(ValueError):
        StoppingOptions(window=0)
    with pytest.raises(ValueError):
        StoppingOptions(confidence=1.5)
    with pytest.raises(ValueError):
        StoppingOptions(budget=0)
    assert recommend(check_rules([None, 1.0], 0.5, 10, StoppingOptions(window=1)))[0] == STOP
