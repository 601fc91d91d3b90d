import math

import numpy as np
import pytest

from thresher import simhash


def _pairs_at(similarity: float, n: int, dim: int = 96, seed: int = 0) -> np.ndarray:
    """2n rows: row i and row n + i at cosine exactly ``similarity``, unrelated otherwise."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, dim))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    other = rng.normal(size=(n, dim))
    other -= np.sum(other * a, axis=1, keepdims=True) * a
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    b = similarity * a + math.sqrt(1 - similarity**2) * other
    return np.vstack([a, b]).astype(np.float32)


def test_bands_give_the_promised_chance_at_the_threshold():
    for threshold in (0.935, 0.95, 0.97, 0.99):
        bands = simhash.bands_for(threshold)
        assert simhash.pair_chance(threshold, bands) >= simhash.RECALL_AT_THRESHOLD
        assert simhash.pair_chance(threshold, bands - 1) < simhash.RECALL_AT_THRESHOLD
        assert simhash.pair_chance(threshold + 0.01, bands) > simhash.pair_chance(threshold, bands)
    assert simhash.bands_for(0.9) > simhash.bands_for(0.95) > simhash.bands_for(0.99)
    assert simhash.bands_for(-1.0) == math.inf and simhash.bands_for(1.0) == 1


@pytest.mark.parametrize("bands", [10, 40])
def test_pairs_at_the_threshold_collide_as_often_as_the_formula_says(bands):
    n = 3000
    x = _pairs_at(0.95, n)
    found = simhash.candidate_pairs(x, bands)
    planted = {(i, n + i) for i in range(n)}
    share = len(planted & {tuple(p) for p in found.pairs.tolist()}) / n
    expected = simhash.pair_chance(0.95, bands)  # 0.29 and 0.74
    assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    assert len(found.pairs) < 2 * n  # unrelated rows (cosine ~0) almost never collide
    assert np.all(found.pairs[:, 0] < found.pairs[:, 1]) and len(found.dense) == 0


def test_the_same_pairs_on_every_run_and_for_float16_rows():
    x = _pairs_at(0.97, 500, seed=3)
    first = simhash.candidate_pairs(x, 30)
    again = simhash.candidate_pairs(x, 30, key_bytes=4 * len(x) * 7)  # bands hashed 7 at a time
    np.testing.assert_array_equal(first.pairs, again.pairs)
    half = simhash.candidate_pairs(x.astype(np.float16), 30)
    codes = [p.pairs[:, 0] * len(x) + p.pairs[:, 1] for p in (first, half)]
    assert len(np.intersect1d(*codes)) >= 0.98 * len(first.pairs)  # a rare sign flips


def test_long_runs_and_zero_rows(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 32)).astype(np.float32)
    x[:30] = x[0]  # 30 identical rows share every key
    x[30:80] = 0.0
    monkeypatch.setattr(simhash, "MAX_RUN", 20)
    found = simhash.candidate_pairs(x, 5)
    np.testing.assert_array_equal(found.dense, np.arange(30))
    assert not np.isin(found.pairs, np.arange(30, 80)).any()
    monkeypatch.setattr(simhash, "MAX_RUN", 64)
    found = simhash.candidate_pairs(x, 5)
    assert len(found.dense) == 0
    assert {(i, j) for i in range(30) for j in range(i + 1, 30)} <= set(
        map(tuple, found.pairs.tolist())
    )
