"""The fast learner (real MiniLM embeddings from the offline package): slower, marked slow."""

from __future__ import annotations

import numpy as np
import pytest

from loop.learners import EmbeddingLogReg, Learner, make_learner


@pytest.mark.slow
def test_fast_learner_learns_caches_and_saves_without_pickle(tmp_path, make_planted):
    texts, labels = make_planted(90, signal=3)
    cache = tmp_path / ".cache" / "embeddings"
    learner = make_learner("fast", ["food", "sport", "tech"], cache_dir=cache)
    assert isinstance(learner, EmbeddingLogReg) and isinstance(learner, Learner)
    learner.fit(texts[:60], labels[:60])
    probs = learner.predict_proba(texts[60:])
    assert probs.shape == (30, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    accuracy = np.mean(np.array(learner.classes)[probs.argmax(axis=1)] == np.array(labels[60:]))
    assert accuracy > 0.6  # three planted topics; chance is 1/3
    emb = learner.embed(texts[:5])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)
    assert list(cache.rglob("shard-*.npz"))  # embeddings went to the project cache
    saved = tmp_path / "train"
    saved.mkdir()
    learner.save(saved)
    assert sorted(p.name for p in saved.iterdir()) == ["head.npz", "learner_state.json"]
    clone = EmbeddingLogReg.load(saved, cache_dir=cache)
    assert clone._memo == {} and clone.cache_dir == cache  # the memo is a cache, not state
    np.testing.assert_allclose(clone.predict_proba(texts[60:]), probs, atol=1e-6)
