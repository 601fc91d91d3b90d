"""The stream score engine with embeddings at scale: time and peak memory per record, 100k vs 1M.

    python benchmarks/score_scale.py [--sizes 100000 1000000] [--out FILE]

Embedding a million texts takes hours on two CPU cores (benchmarks/embed.py measures docs/s), so
the vectors are given: each synthetic record (1-2 Rotten Tomatoes sentences of one class, 10 % of
labels flipped, as benchmarks/score_stream.py) gets a generated 384-d unit vector from a cluster
of its true class (one cluster per 500 records, a random centre plus a 16-d subspace and a little
noise, as benchmarks/neighbours.py), written into the project's embedding cache by text hash
before the run. Then the real CLI, ``thresher curate score --engine stream`` (what ``auto`` picks
above 200k records) with embeddings, runs in its own subprocess: its wall seconds, the stage's
step timings and its peak RSS (``ru_maxrss`` from ``wait4``) are its own. The engine streams the
label-noise passes (hashed naive Bayes), writes the embeddings to a float16 file and finds each
record's neighbours on the ANN index (``thresher.neighbours``) for the outlier and near-OOD scores.

Scores: AUPRC of ``1 - label_quality`` for "this label was flipped" and the share flagged
``near_ood``, to show the run scored for real. Prints one JSON object."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _report import emit  # noqa: E402
from score_stream import cli, corpus, ingest, metrics, synthetic  # noqa: E402

DIM = 384
ROWS_PER_CLUSTER = 500
SUBSPACE = 16
CACHE_SHARD = 100_000


def class_vectors(true: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """A float32 unit vector per record from a cluster of its true class."""
    rng = np.random.default_rng(seed)
    n = len(true)
    per_class = max(2, n // ROWS_PER_CLUSTER // n_classes)
    centres = rng.normal(size=(n_classes, per_class, DIM)).astype(np.float32)
    centres += 0.5 * rng.normal(size=(n_classes, 1, DIM)).astype(np.float32)  # class direction
    bases = rng.normal(size=(n_classes, per_class, SUBSPACE, DIM)).astype(np.float32)
    bases *= 3 / np.sqrt(DIM)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 65_536):
        c = true[start : start + 65_536]
        k = rng.integers(0, per_class, len(c))
        z = rng.normal(size=(len(c), SUBSPACE)).astype(np.float32)
        x = centres[c, k] + np.einsum("ns,nsd->nd", z, bases[c, k])
        x += rng.normal(scale=0.5, size=x.shape).astype(np.float32)
        out[start : start + len(c)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def seed_cache(project: Path, vectors: np.ndarray) -> int:
    """Write record ``r<i>``'s vector ``vectors[i]`` into the project's embedding cache under the
    hash of its text as ingested (normalised, as the score stage reads it); distinct texts only."""
    import pyarrow.parquet as pq

    from thresher.assets import resolve_model
    from thresher.embeddings import EmbeddingCache, _hash_texts
    from thresher.project import Project

    proj = Project.at(project)
    table = pq.read_table(proj.records_path("ingest"), columns=["id", "text"])
    rows = np.array([int(i[1:]) for i in table.column("id").to_pylist()], dtype=np.int64)
    keys = _hash_texts([str(t) for t in table.column("text").to_pylist()])
    _, first = np.unique(keys, return_index=True)
    first.sort()
    cache = EmbeddingCache(proj.embedding_cache, resolve_model("default").path)
    for start in range(0, len(first), CACHE_SHARD):
        part = first[start : start + CACHE_SHARD]
        cache.add(keys[part], vectors[rows[part]])
    return len(first)


def run_size(work: Path, texts, labels, n: int, flip: float, seed: int) -> dict:
    s_texts, s_labels, flipped = synthetic(texts, labels, n, flip, seed)
    classes = sorted(set(labels))
    noisy = np.array([classes.index(v) for v in s_labels])
    true = np.where(flipped, 1 - noisy, noisy) if len(classes) == 2 else noisy
    by_id = {f"r{i}": bool(f) for i, f in enumerate(flipped)}
    project, ing = ingest(work, f"scale_{n}", s_texts, s_labels)
    t0 = time.perf_counter()
    distinct = seed_cache(project, class_vectors(true, len(classes), seed))
    cache_seconds = time.perf_counter() - t0
    del s_texts
    args = ["curate", "score", "-p", str(project), "--engine", "stream", "--force"]
    load_before = os.getloadavg()[0]
    run = cli(args)
    result = run["result"]
    row = {
        "records": n,
        "distinct_texts": distinct,
        "scored": result.get("scored"),
        "ingest_seconds": ing["seconds"],
        "cache_seed_seconds": round(cache_seconds, 1),
        "seconds": run["seconds"],
        "records_per_s": round(n / run["seconds"], 1),
        "peak_rss_mb": run["peak_rss_mb"],
        "peak_rss_kb_per_record": round(run["peak_rss_mb"] * 1024 / n, 2),
        "timings": result.get("timings", {}),
        "near_ood": result.get("near_ood"),
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
        **metrics(project, by_id),
    }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--flip", type=float, default=0.10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="scratch folder [a temp dir]")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="score_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    texts, labels = corpus(work / "cache")
    out: dict = {
        "benchmark": "score_scale",
        "what": "thresher curate score --engine stream with embeddings (given, cached)",
        "machine_cpus": len(os.sched_getaffinity(0)),
        "sizes": [],
    }
    for n in args.sizes:  # saved after each size: the 1M run is long
        out["sizes"].append(run_size(work, texts, labels, n, args.flip, args.seed))
        emit(out, args.out)


if __name__ == "__main__":
    main()
