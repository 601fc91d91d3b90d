"""The drift tests flag a planted shift and stay quiet on same-distribution samples."""

from __future__ import annotations

import numpy as np
import pytest

from loop.drift import (
    bonferroni,
    confidence_drop,
    embedding_mmd,
    knn_distance,
    label_shift,
    mention_shift,
    near_ood_share,
    psi,
)
from thresher.errors import ThresherError

SEEDS = range(5)


def _cloud(rng, n, dim=16, shift=0.0):
    x = rng.normal(size=(n, dim))
    x[:, 0] += shift
    return x


def test_mmd_flags_a_shifted_cloud_and_not_a_same_one():
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        ref = _cloud(rng, 300)
        assert embedding_mmd(ref, _cloud(rng, 100, shift=1.0), seed=seed).p_value < 0.01
        same = embedding_mmd(ref, _cloud(rng, 100), seed=seed)
        assert same.p_value > 0.01
        assert same.statistic >= 0


def test_mmd_subsamples_and_checks_shapes():
    rng = np.random.default_rng(0)
    result = embedding_mmd(_cloud(rng, 500), _cloud(rng, 50), max_per_side=120, permutations=20)
    assert (result.n_reference, result.n_traffic) == (120, 50)
    assert 0 < result.p_value <= 1
    with pytest.raises(ThresherError, match="sizes differ"):
        embedding_mmd(_cloud(rng, 10, dim=4), _cloud(rng, 10, dim=5))


def _draw(rng, n, shares):
    return list(rng.choice(["a", "b", "c"], size=n, p=shares))


def test_label_shift_flags_a_moved_mix_and_reports_psi():
    quiet = 0
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        ref = _draw(rng, 600, [0.5, 0.3, 0.2])
        moved = label_shift(ref, _draw(rng, 200, [0.2, 0.3, 0.5]), ["a", "b", "c"])
        assert moved.p_value < 1e-6
        assert moved.details["psi"] > 0.2
        same = label_shift(ref, _draw(rng, 200, [0.5, 0.3, 0.2]), ["a", "b", "c"])
        quiet += same.p_value > 0.01
        assert same.details["psi"] < moved.details["psi"]
    assert quiet == len(SEEDS)


def test_label_shift_with_one_label_seen_is_no_evidence():
    result = label_shift(["a"] * 10, ["a"] * 5, ["a", "b"])
    assert result.p_value == 1.0
    assert result.details["traffic_share"] == [1.0, 0.0]


def test_psi_is_zero_for_the_same_mix_and_grows_with_shift():
    assert psi([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert psi([0.5, 0.5], [0.6, 0.4]) < psi([0.5, 0.5], [0.9, 0.1])


def test_confidence_drop_is_one_sided():
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        ref = rng.beta(8, 2, size=400)
        lower = confidence_drop(ref, rng.beta(4, 3, size=150))
        assert lower.p_value < 1e-4
        assert lower.details["p_traffic_lower"] > 0.5
        assert confidence_drop(ref, rng.beta(8, 2, size=150)).p_value > 0.01
        # Higher confidence is not a drop.
        assert confidence_drop(ref, rng.beta(20, 1, size=150)).p_value > 0.5


def test_knn_distance_is_small_near_the_index_and_skips_self():
    rng = np.random.default_rng(0)
    index = _cloud(rng, 200)
    near = knn_distance(index[:10] + 0.01, index, k=3)
    far = knn_distance(-index[:10], index, k=3)
    assert np.all(near < far)
    assert np.all(knn_distance(index[:10], index, k=1, exclude_self=True) > 1e-6)


def test_near_ood_share_flags_far_traffic():
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        # Cosine distance: the data sit around +3 on axis 0; the far texts around -3.
        train = _cloud(rng, 400, shift=3.0)
        held = knn_distance(_cloud(rng, 300, shift=3.0), train)
        same = near_ood_share(held, knn_distance(_cloud(rng, 200, shift=3.0), train))
        assert same.p_value > 0.01
        mixed = np.vstack([_cloud(rng, 150, shift=3.0), _cloud(rng, 50, shift=-3.0)])
        far = near_ood_share(held, knn_distance(mixed, train))
        assert far.p_value < 1e-6
        assert far.statistic > 0.2


def test_mention_shift_two_sided():
    up = mention_shift(20, 1000, 30, 200, "g")
    assert up.statistic > 0 and up.p_value < 0.001
    down = mention_shift(200, 1000, 10, 200, "g")
    assert down.statistic < 0 and down.p_value < 0.001
    assert mention_shift(100, 1000, 20, 200, "g").p_value == pytest.approx(1.0)


def test_bonferroni_divides_alpha():
    threshold, flags = bonferroni([0.01, 0.02, 0.2, 0.5], 0.05)
    assert threshold == pytest.approx(0.0125)
    assert flags == [True, False, False, False]


def test_false_alarm_rate_of_mmd_is_near_alpha():
    hits = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        hits += (
            embedding_mmd(_cloud(rng, 200), _cloud(rng, 60), permutations=99, seed=seed).p_value
            < 0.05
        )
    assert hits <= 6  # 5 % of 40 is 2; binomial 99.9 % bound is about 7


def test_near_ood_share_stays_calibrated_with_a_small_reference():
    # With 40 reference distances the 95th percentile is a rough estimate; the test must still
    # alarm on at most about 5 % of same-distribution windows.
    alarms = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        alarms += near_ood_share(rng.normal(size=40), rng.normal(size=200)).p_value < 0.05
    assert alarms / 300 <= 0.08
