import logging
import sys

import numpy as np
import pytest

from thresher import neighbours as nb
from thresher.errors import ThresherError

pytest.importorskip("usearch.index")


def _clustered(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Unit rows around n/200 centres, each cluster spread over an 8-d subspace."""
    rng = np.random.default_rng(seed)
    clusters = max(2, n // 200)
    centres = rng.normal(size=(clusters, dim))
    bases = rng.normal(size=(clusters, 8, dim)) / np.sqrt(dim)
    which = rng.integers(0, clusters, n)
    z = rng.normal(size=(n, 8)) * 3.0
    x = (
        centres[which]
        + np.einsum("ns,nsd->nd", z, bases[which])
        + rng.normal(scale=0.2, size=(n, dim))
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist(), strict=True))
    return hits / truth.size


@pytest.fixture(scope="module")
def vectors():
    return _clustered(20_000)


@pytest.fixture(scope="module")
def exact(vectors):
    return nb.cosine_knn(vectors, 10, method="exact")


def test_ann_recall_at_10_against_exact(vectors, exact):
    dist, idx = nb.cosine_knn(vectors, 10, method="ann")
    assert _recall(idx, exact[1]) >= 0.95
    assert np.all(np.diff(dist, axis=1) >= 0)
    # distances are exact cosines of the neighbours returned
    found = np.einsum("nd,nkd->nk", vectors, vectors[idx])
    np.testing.assert_allclose(dist, 1.0 - found, atol=1e-5)


def test_ann_is_the_same_on_every_run(vectors):
    first = nb.cosine_knn(vectors[:5000], 5, method="ann")[1]
    again = nb.cosine_knn(vectors[:5000], 5, method="ann")[1]
    np.testing.assert_array_equal(first, again)


def test_build_threads_one_up_to_the_reproducible_size_all_cores_above(monkeypatch, vectors):
    monkeypatch.setattr(nb, "_all_cores", lambda: 7)
    auto = nb.AnnParams()
    assert nb._build_threads(auto, nb.REPRODUCIBLE_BUILD_MAX_ROWS) == 1
    assert nb._build_threads(auto, nb.REPRODUCIBLE_BUILD_MAX_ROWS + 1) == 7
    assert nb._build_threads(nb.AnnParams(build_threads=0), 10) == 7
    assert nb._build_threads(nb.AnnParams(build_threads=1), 10**7) == 1
    # a parallel build keeps recall (the graph may differ run to run, the quality does not)
    monkeypatch.setattr(nb, "REPRODUCIBLE_BUILD_MAX_ROWS", 1000)
    monkeypatch.setattr(nb, "_all_cores", lambda: 2)
    exact = nb.cosine_knn(vectors[:5000], 10, method="exact")[1]
    assert _recall(nb.cosine_knn(vectors[:5000], 10, method="ann")[1], exact) >= 0.95


def test_exclude_self_keeps_an_identical_twin():
    x = _clustered(300, dim=16, seed=1)
    x[7] = x[42]
    for method in ("exact", "ann"):
        dist, idx = nb.cosine_knn(x, 3, method=method)
        assert not np.any(idx == np.arange(300)[:, None])
        assert idx[7, 0] == 42 and idx[42, 0] == 7
        assert dist[7, 0] == pytest.approx(0.0, abs=1e-6)
        kept, kept_idx = nb.cosine_knn(x, 3, method=method, exclude_self=False)
        assert set(kept_idx[7, :2]) == {7, 42} and kept[7, 0] == pytest.approx(0.0, abs=1e-6)


def test_queries_are_answered_against_the_index(vectors, exact):
    queries = vectors[:200] + 0.01
    d_exact, i_exact = nb.cosine_knn(vectors, 10, queries=queries, method="exact")
    d_ann, i_ann = nb.cosine_knn(vectors, 10, queries=queries, method="ann")
    assert _recall(i_ann, i_exact) >= 0.95
    assert np.all(i_exact[:, 0] == np.arange(200))  # each query's source row is nearest


def _planted_pairs(n: int = 25_000):
    rng = np.random.default_rng(5)
    x = _clustered(n, seed=2)
    sources = rng.choice(n, 120, replace=False)
    copies, sources = sources[:60], sources[60:]
    noise = rng.normal(size=(60, x.shape[1]))
    noise *= (rng.uniform(0.05, 0.35, 60) / np.linalg.norm(noise, axis=1))[:, None]
    near = x[sources] + noise
    x[copies] = near / np.linalg.norm(near, axis=1, keepdims=True)
    group = rng.choice(np.setdiff1d(np.arange(n), np.r_[copies, sources]), 40, replace=False)
    x[group] = x[group[0]] + rng.normal(scale=0.002, size=(40, x.shape[1]))  # > candidates
    x[group] /= np.linalg.norm(x[group], axis=1, keepdims=True)
    return x.astype(np.float32), group


@pytest.mark.parametrize(("threshold", "path"), [(0.95, "simhash"), (0.85, "ann")])
def test_pairs_above_ann_equals_exact_on_planted_pairs(threshold, path):
    x, group = _planted_pairs()
    assert nb.pair_path(len(x), threshold, "ann") == path
    want = nb.pairs_above(x, threshold, method="exact")
    got = nb.pairs_above(x, threshold, method="ann")
    found = {tuple(p) for p in got.tolist()}
    assert found <= {tuple(p) for p in want.tolist()}  # every pair verified by exact cosine
    sims = np.einsum("pd,pd->p", x[want[:, 0]], x[want[:, 1]])
    missed = [tuple(p) not in found for p in want.tolist()]
    assert sum(missed) <= 0.01 * len(want)  # SimHash: chance ≥ 0.99 for a pair at the threshold
    assert np.all(sims[missed] < threshold + 0.01)  # 0.999 at 0.96, more above
    assert len(want) >= 40 * 39 // 2 + 30  # the group is complete, most planted pairs clear it
    sims = np.einsum("pd,pd->p", x[want[:, 0]], x[want[:, 1]])
    assert np.all(sims >= threshold) and np.all(want[:, 0] < want[:, 1])


def test_simhash_crowded_buckets_are_compared_exactly(monkeypatch, caplog):
    from thresher import simhash

    x, group = _planted_pairs()
    n = len(x)
    x = np.vstack([x, np.zeros((300, x.shape[1]), np.float32)])  # cosine 0: never a pair
    monkeypatch.setattr(simhash, "MAX_RUN", 8)  # the 40-row group overflows its buckets
    with caplog.at_level(logging.INFO, logger="thresher.neighbours"):
        got = nb.pairs_above(x, 0.95, method="ann")
    want = nb.pairs_above(x, 0.95, method="exact")
    assert {tuple(p) for p in got.tolist()} <= {tuple(p) for p in want.tolist()}
    assert len(got) >= 0.99 * len(want)
    assert "crowded SimHash buckets" in caplog.text
    assert got.max() < n
    in_group = np.isin(got, group).all(axis=1).sum()
    assert in_group == 40 * 39 // 2


def test_auto_is_exact_below_the_cut_off(monkeypatch, vectors):
    def no_ann(*args, **kwargs):
        raise AssertionError("the ann path ran")

    monkeypatch.setattr(nb, "_ann_knn", no_ann)
    monkeypatch.setattr(nb, "_ann_pairs", no_ann)
    small = vectors[: nb.EXACT_MAX_ROWS // 10]
    nb.cosine_knn(small, 5)
    nb.pairs_above(small, 0.9)
    assert not nb.use_ann(nb.EXACT_MAX_ROWS) and nb.use_ann(nb.EXACT_MAX_ROWS + 1)
    monkeypatch.setattr(nb, "EXACT_MAX_ROWS", 100)
    with pytest.raises(AssertionError, match="ann path ran"):
        nb.cosine_knn(small, 5)


def test_auto_falls_back_to_exact_without_usearch(monkeypatch, caplog, vectors, exact):
    monkeypatch.setitem(sys.modules, "usearch.index", None)  # import fails
    monkeypatch.setattr(nb, "_NOTED", set())
    monkeypatch.setattr(nb, "EXACT_MAX_ROWS", 1000)
    with caplog.at_level(logging.INFO, logger="thresher.neighbours"):
        dist, idx = nb.cosine_knn(vectors, 10)
    np.testing.assert_array_equal(idx, exact[1])
    assert "pip install 'thresher[ann]'" in caplog.text
    with pytest.raises(ThresherError, match=r"thresher\[ann\]"):
        nb.cosine_knn(vectors, 10, method="ann")


def test_float16_memmap_gives_the_same_neighbours(tmp_path, monkeypatch, vectors, exact):
    path = tmp_path / "x16.npy"
    np.save(path, vectors.astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    monkeypatch.setattr(nb, "INDEX_CHUNK_ROWS", 3000)  # several chunks, none the whole matrix
    d16, i16 = nb.cosine_knn(mm, 10, method="exact")
    assert (i16 == exact[1]).mean() >= 0.99  # float16 rounding may swap near-ties
    np.testing.assert_allclose(d16, exact[0], atol=2e-3)
    _, a16 = nb.cosine_knn(mm, 10, method="ann")
    assert _recall(a16, exact[1]) >= 0.95
    pairs = nb.pairs_above(mm, 0.9, method="exact")  # in float32 from the same float16 values:
    same_values = vectors.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(pairs, nb.pairs_above(same_values, 0.9, method="exact"))


def test_monitor_distances_through_the_index(monkeypatch, vectors):
    from loop.drift import knn_distance

    queries = np.vstack([vectors[:50], -vectors[50:60]])
    exact = knn_distance(queries, vectors, k=5, exclude_self=True)
    monkeypatch.setattr(nb, "EXACT_MAX_ROWS", 1000)
    ann = knn_distance(queries, vectors, k=5, exclude_self=True)
    np.testing.assert_allclose(ann, exact, atol=0.02)
    assert np.all(ann[:50] > 1e-6) and np.all(ann[50:] > ann[:50].max())


def test_bad_arguments_are_refused(vectors):
    with pytest.raises(ThresherError, match="neighbour method"):
        nb.cosine_knn(vectors[:10], 2, method="fast")
    with pytest.raises(ThresherError, match="k = 10"):
        nb.cosine_knn(vectors[:10], 10)
