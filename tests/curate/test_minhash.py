"""MinHash/LSH pieces: hashing stability, Jaccard estimates, banding, union-find."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate import minhash as mh
from curate.normalize import normalized_bytes


def _sketch(texts: list[str], **kw) -> mh.Sketch:
    data, offsets = normalized_bytes(pa.array(texts, pa.string()))
    return mh.sketch_batch(data, offsets, mh.MinHashOptions(**kw))


def _shingle_set(text: str, k: int = 3) -> set[tuple[str, ...]]:
    w = text.lower().split()
    return {tuple(w[i : i + k]) for i in range(max(len(w) - k + 1, 1))}


def test_word_hashes_do_not_depend_on_the_batch():
    a = normalized_bytes(pa.array(["alpha beta gamma", "delta"]))
    b = normalized_bytes(pa.array(["x", "y z", "delta alpha", "extraordinarily-long-word"]))
    ha, _ = mh.word_hashes(*a)
    hb, counts = mh.word_hashes(*b)
    assert counts.tolist() == [1, 2, 2, 1]
    assert ha[0] == hb[4] and ha[3] == hb[3]  # "alpha", "delta" hash alike anywhere
    assert len(set(hb.tolist())) == len(hb)


def test_long_words_differ_past_eight_bytes():
    h, _ = mh.word_hashes(*normalized_bytes(pa.array(["abcdefghij abcdefghik abcdefgh"])))
    assert len(set(h.tolist())) == 3


def test_short_and_empty_documents():
    sk = _sketch(["one two", "", "a b c d"], ngram=3)
    assert sk.has_shingles.tolist() == [True, False, True]
    assert (sk.signatures[1] == mh.EMPTY).all()
    assert (sk.signatures[0] != mh.EMPTY).all()  # densified: every bin filled
    # same normalised text → same exact key; different → different
    keys = _sketch(["A  b c", "a b c", "a c b"]).exact
    assert (keys[0] == keys[1]).all() and not (keys[0] == keys[2]).all()


def test_estimated_jaccard_tracks_true_jaccard():
    rng = np.random.default_rng(7)
    vocab = [f"w{i}" for i in range(3000)]
    errors = []
    for _ in range(40):
        base = list(rng.choice(vocab, 200))
        other = list(base)
        for _ in range(int(rng.integers(0, 60))):
            other[int(rng.integers(len(other)))] = str(rng.choice(vocab))
        a, b = " ".join(base), " ".join(other)
        sa, sb = _shingle_set(a), _shingle_set(b)
        true = len(sa & sb) / len(sa | sb)
        sk = _sketch([a, b], num_perm=256)
        est = mh.estimated_jaccard(sk.signatures, np.array([[0, 1]]))[0]
        errors.append(est - true)
    errors = np.array(errors)
    assert abs(errors.mean()) < 0.03  # unbiased
    assert np.abs(errors).max() < 0.15  # ~4 standard deviations at 256 bins


def test_optimal_bands_match_datasketch_rule():
    assert mh.optimal_bands(0.7, 128) == (14, 9)
    assert mh.optimal_bands(0.8, 128) == (9, 13)
    lsh = pytest.importorskip("datasketch.lsh")
    assert mh.optimal_bands(0.6, 64) == lsh._optimal_param(0.6, 64, 0.5, 0.5)


def test_candidate_pairs_cover_buckets():
    bands = np.array([[1, 9], [1, 8], [2, 8], [3, 7]], dtype=np.uint64)
    pairs = mh.candidate_pairs(bands).tolist()
    assert pairs == [[0, 1], [1, 2]]
    # one huge bucket: bounded pairs, still connected
    big = np.zeros((100, 1), dtype=np.uint64)
    pairs = mh.candidate_pairs(big, max_bucket=4)
    assert len(pairs) < 100 * 4
    assert len(set(mh.components(100, pairs).tolist())) == 1


def _naive_components(n, edges):
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [min(i for i in range(n) if find(i) == find(j)) for j in range(n)]


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 30).flatmap(
        lambda n: st.tuples(
            st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)))
        )
    )
)
def test_components_match_naive_union_find(case):
    n, edges = case
    arr = np.array(edges, dtype=np.int64).reshape(-1, 2)
    assert mh.components(n, arr).tolist() == _naive_components(n, edges)


def test_char_shingles():
    sk = _sketch(["Hello   world", "hello world ", "hello wurld"], shingle="char", ngram=5)
    est = mh.estimated_jaccard(sk.signatures, np.array([[0, 1], [0, 2]]))
    assert est[0] == 1.0 and 0.2 < est[1] < 0.9
    with pytest.raises(ValueError):
        _sketch(["x"], shingle="char", ngram=9)
