"""The whole dedup search on Ray Data (two local workers) equals the local engine's, array for
array: exact copies, near copies, chains that need several component rounds, big buckets; and
``--engine ray`` writes the local engine's output through the stage."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.dedup import DedupOptions, cluster_corpus, dedup
from curate.dedup_sketch import sketch_batches
from curate.ingest import IngestOptions, ingest
from thresher.project import Project

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from curate.dedup_ray import cluster_with_ray  # noqa: E402

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


def _chained_corpus(
    seed: int = 0, n_unique: int = 120, chains: tuple[int, ...] = (4, 9, 14), family: int = 24
) -> list[dict]:
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

    texts: list[str] = [" ".join(doc()) for _ in range(n_unique)]
    for _ in range(8):  # exact and near copies
        words = doc()
        texts += [" ".join(words), "  ".join(words).upper(), " ".join(edit(words, 2))]
    for _ in range(4):  # exact copies only
        words = doc()
        texts += [" ".join(words), " ".join(words).title() + " "]
    for length in chains:  # chains: each step edits a few words, the ends are far apart
        words = doc(120)
        for _ in range(length):
            texts.append(" ".join(words))
            words = edit(words, 5)
    words = doc()
    texts += [" ".join(edit(words, 1)) for _ in range(family)]  # > max_bucket members per bucket
    texts += ["", "   ", "a"]  # no shingles / one short text
    order = rng.permutation(len(texts))
    labels = [None, "neg", "pos", "pos"]
    return [{"text": texts[i], "label": labels[int(rng.integers(4))]} for i in order]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _project(tmp_path: Path, rows: list[dict]) -> Project:
    project = Project.at(tmp_path / "proj")
    ingest([_write_jsonl(tmp_path / "rows.jsonl", rows)], project, IngestOptions())
    return project


def _ingested(tmp_path: Path, rows: list[dict]) -> Path:
    return _project(tmp_path, rows).records_path("ingest")


def _local(path: Path, opts: DedupOptions):
    batches = pq.ParquetFile(path).iter_batches(opts.batch_size)
    corpus = sketch_batches(batches, opts.normalize(), opts.minhash(), None)
    return cluster_corpus(corpus, opts)


def _assert_same(path: Path, opts: DedupOptions) -> None:
    local, stats = _local(path, opts)
    remote, remote_stats = cluster_with_ray(path, opts)
    for name in ("dup_cluster", "exact_dup", "is_representative", "label_conflict"):
        assert np.array_equal(getattr(remote, name), getattr(local, name)), name
    for name in ("n_clusters", "n_exact_clusters", "n_near_clusters", "n_conflicts"):
        assert getattr(remote, name) == getattr(local, name), name
    assert remote_stats["candidate_reps"] == stats["candidate_reps"]
    assert remote_stats["near_pairs"] == stats["near_pairs"]
    return remote, remote_stats


def test_ray_search_equals_local_on_exact_near_and_chained_duplicates(tmp_path, two_workers):
    path = _ingested(tmp_path, _chained_corpus())
    opts = DedupOptions(threshold=0.7, batch_size=64)
    remote, stats = _assert_same(path, opts)
    assert remote.n_exact_clusters >= 1 and remote.n_near_clusters >= 4
    assert stats["ray_rounds"] >= 2  # the chains took more than one round to settle
    sizes = np.bincount(remote.dup_cluster[remote.dup_cluster >= 0])
    assert sizes.max() >= 24  # the big family is one cluster despite max_bucket


def test_ray_search_equals_local_with_character_shingles_and_no_duplicates(tmp_path, two_workers):
    rows = [{"text": f"review {i} " + "x" * (i % 7), "label": None} for i in range(0, 400, 3)]
    rows += [{"text": r["text"], "label": "pos"} for r in rows[:5]]
    path = _ingested(tmp_path, rows)
    _assert_same(path, DedupOptions(threshold=0.9, shingle="char", ngram=5, batch_size=50))
    only_unique = _ingested(tmp_path / "u", [{"text": f"alone {i} here"} for i in range(30)])
    remote, _ = _assert_same(only_unique, DedupOptions(threshold=0.9))
    assert remote.n_clusters == 0 and remote.is_representative.all()


def _stage_output(project: Project, name: str = "records.parquet") -> list[dict]:
    return pq.read_table(project.stage_dir("dedup") / name).to_pylist()


def _counts(project: Project) -> dict:
    counts = dict((project.read_manifest("dedup") or {})["counts"])
    counts.pop("ray_rounds", None)
    return counts


def test_ray_engine_runs_the_whole_search_and_writes_the_local_output(tmp_path, two_workers):
    rows = _chained_corpus(seed=1, n_unique=30, chains=(4,), family=0)
    project = _project(tmp_path, rows)
    opts = DedupOptions(threshold=0.7, batch_size=32)
    local = dedup(project, opts)
    expected, expected_counts = _stage_output(project), _counts(project)
    assert local.clusters >= 5 and local.label_conflicts >= 1

    remote = dedup(project, replace(opts, engine="ray"), force=True)
    assert "ray_search" in remote.timings and "sketch" not in remote.timings
    assert _stage_output(project) == expected
    assert _counts(project) == expected_counts

    # --against needs every sketch on the driver: only the hashing pass runs on Ray.
    other = _write_jsonl(tmp_path / "eval.jsonl", rows[:10] + [{"text": "an eval-only text"}])
    local = dedup(project, opts, against=other, force=True)
    leakage = _stage_output(project, "leakage.parquet")
    remote = dedup(project, replace(opts, engine="ray"), against=other, force=True)
    assert "sketch" in remote.timings and "ray_search" not in remote.timings
    assert _stage_output(project, "leakage.parquet") == leakage
    assert _stage_output(project) == expected
    assert remote.leaked == local.leaked >= 10
