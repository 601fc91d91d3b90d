"""The whole dedup search on Ray Data (two local workers) equals the local engine's, array for
array: exact copies, near copies, chains that need several component rounds, big buckets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.dedup import DedupOptions, cluster_corpus
from curate.dedup_sketch import sketch_batches
from curate.ingest import IngestOptions, ingest
from curate.minhash import components
from thresher.project import Project

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from curate.dedup_ray import cluster_with_ray, dense_cluster_ids  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_workers():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=128 << 20,
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


def _chained_corpus(seed: int = 0) -> list[dict]:
    """Unique texts plus planted duplicates: exact copies (case and spacing), near copies, chains
    whose neighbours are near but whose ends are not, and one family bigger than a bucket."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(4000)]

    def doc(n: int = 90) -> list[str]:
        return [str(w) for w in rng.choice(vocab, n)]

    def edit(words: list[str], k: int) -> list[str]:
        out = list(words)
        for _ in range(k):
            out[int(rng.integers(len(out)))] = str(rng.choice(vocab))
        return out

    texts: list[str] = [" ".join(doc()) for _ in range(120)]
    for _ in range(8):  # exact and near copies
        words = doc()
        texts += [" ".join(words), "  ".join(words).upper(), " ".join(edit(words, 2))]
    for _ in range(4):  # exact copies only
        words = doc()
        texts += [" ".join(words), " ".join(words).title() + " "]
    for length in (4, 9, 14):  # chains: each step edits a few words, the ends are far apart
        words = doc(120)
        for _ in range(length):
            texts.append(" ".join(words))
            words = edit(words, 5)
    family = doc()
    texts += [" ".join(edit(family, 1)) for _ in range(24)]  # > max_bucket members per bucket
    texts += ["", "   ", "a"]  # no shingles / one short text
    order = rng.permutation(len(texts))
    labels = [None, "neg", "pos", "pos"]
    return [{"text": texts[i], "label": labels[int(rng.integers(4))]} for i in order]


def _ingested(tmp_path: Path, rows: list[dict]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    project = Project.at(tmp_path / "proj")
    ingest([src], project, IngestOptions())
    return project.records_path("ingest")


def _local(path: Path, opts: DedupOptions):
    batches = pq.ParquetFile(path).iter_batches(opts.batch_size)
    corpus = sketch_batches(batches, opts.normalize(), opts.minhash(), None)
    return cluster_corpus(corpus, opts)


def _assert_same(path: Path, opts: DedupOptions) -> None:
    local, stats = _local(path, opts)
    remote = cluster_with_ray(path, opts)
    for name in ("dup_cluster", "exact_dup", "is_representative", "label_conflict"):
        assert np.array_equal(getattr(remote, name), getattr(local, name)), name
    for name in ("n_clusters", "n_exact_clusters", "n_near_clusters", "n_conflicts"):
        assert getattr(remote, name) == getattr(local, name), name
    assert remote.stats["candidate_reps"] == stats["candidate_reps"]
    assert remote.stats["near_pairs"] == stats["near_pairs"]
    return remote


def test_ray_search_equals_local_on_exact_near_and_chained_duplicates(tmp_path, two_workers):
    path = _ingested(tmp_path, _chained_corpus())
    opts = DedupOptions(threshold=0.7, batch_size=64)
    remote = _assert_same(path, opts)
    assert remote.n_exact_clusters >= 1 and remote.n_near_clusters >= 4
    assert remote.stats["ray_rounds"] >= 2  # the chains took more than one round to settle
    sizes = np.bincount(remote.dup_cluster[remote.dup_cluster >= 0])
    assert sizes.max() >= 24  # the big family is one cluster despite max_bucket


def test_ray_search_equals_local_with_character_shingles_and_no_duplicates(tmp_path, two_workers):
    rows = [{"text": f"review {i} " + "x" * (i % 7), "label": None} for i in range(0, 400, 3)]
    rows += [{"text": r["text"], "label": "pos"} for r in rows[:5]]
    path = _ingested(tmp_path, rows)
    _assert_same(path, DedupOptions(threshold=0.9, shingle="char", ngram=5, batch_size=50))
    only_unique = _ingested(tmp_path / "u", [{"text": f"alone {i} here"} for i in range(30)])
    remote = _assert_same(only_unique, DedupOptions(threshold=0.9))
    assert remote.n_clusters == 0 and remote.is_representative.all()


def test_dense_ids_follow_the_union_find_labels():
    edges = np.array([[5, 2], [2, 7], [0, 9], [3, 3]])
    comp = components(10, edges)
    dense, count = dense_cluster_ids(comp)
    assert count == 2
    assert dense.tolist() == [0, -1, 1, -1, -1, 1, -1, 1, -1, 0]
