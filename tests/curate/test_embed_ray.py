"""Embeddings on a Ray actor pool (two local CPU workers) equal the local ``embed_texts``, in
input order, and fill the project's embedding cache the same way."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.embeddings import embed_texts

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from curate.embed_ray import RayEmbedOptions, embed_texts_ray  # noqa: E402

pytestmark = pytest.mark.slow

TOPICS = ["film", "budget", "storm", "match", "recipe", "election", "concert"]


def _texts(n: int = 50) -> list[str]:
    rng = np.random.default_rng(3)
    texts = []
    for i in range(n):
        topic = TOPICS[int(rng.integers(len(TOPICS)))]
        texts.append(f"Note {i}: the {topic} was " + " ".join(rng.choice(TOPICS, i % 9 + 1)))
    texts[7] = texts[3]  # a repeated text comes back at both positions
    return texts


@pytest.fixture(scope="module")
def two_workers():
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 << 20
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def test_actor_pool_gives_the_local_vectors_in_input_order(two_workers, tmp_path):
    texts = _texts()
    local = embed_texts(texts, device="cpu", precision="float32")
    opts = RayEmbedOptions(gpus=False, actors=2, block_rows=8, precision="float32")
    remote = embed_texts_ray(texts, cache_dir=tmp_path / "cache", options=opts)
    assert remote.dtype == np.float32 and remote.shape == local.shape
    assert np.allclose(remote, local, atol=1e-5)
    assert np.array_equal(remote[3], remote[7])
    assert list(tmp_path.joinpath("cache").rglob("*.npz"))  # the actors filled the cache
    cached = embed_texts(texts, cache_dir=tmp_path / "cache", device="cpu", precision="float32")
    assert np.allclose(cached, local, atol=1e-5)


def test_no_texts_give_no_vectors(two_workers):
    assert embed_texts_ray([], options=RayEmbedOptions(gpus=False)).shape == (0, 384)
