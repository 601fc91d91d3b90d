"""Dedup's search (sketch + clusters, no output writing) on one machine: local vs Ray.

On ``--size`` news-length documents with planted duplicates (``dedup_data``), three ways, each in
its own process (so each peak RSS is that driver's alone; Ray's workers are other processes):

- ``local``: ``sketch_batches`` + ``cluster_corpus`` in the process (the local engine);
- ``ray_sketch``: ``sketch_with_ray`` + ``cluster_corpus`` (the sketch on Ray, the rest on the
  driver: what ``--engine ray`` ran before ``cluster_with_ray``);
- ``ray_whole``: ``cluster_with_ray`` (sketch, exact groups, LSH buckets, verification,
  components and representatives on Ray Data; the driver keeps the per-row results).

Ray runs a local instance with ``--cpus`` CPUs. Reports wall seconds (Ray's start included and
also shown apart), the driver's peak RSS, and checks the three give the same clusters.

    python benchmarks/dedup_ray.py [--size 100000] [--cpus 2] [--out results/dedup_ray.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _report import emit  # noqa: E402
from dedup_data import make_corpus  # noqa: E402

_CHILD = """
import hashlib, json, resource, sys, time
import numpy as np
import pyarrow.parquet as pq
from curate.dedup import DedupOptions, cluster_corpus
from curate.dedup_sketch import sketch_batches
how, path, cpus, threshold = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
opts = DedupOptions(threshold=threshold)
ray_start = 0.0
if how != "local":
    import ray
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_start = time.perf_counter() - t0
t0 = time.perf_counter()
if how == "local":
    corpus = sketch_batches(pq.ParquetFile(path).iter_batches(opts.batch_size),
                            opts.normalize(), opts.minhash(), None)
    clusters, stats = cluster_corpus(corpus, opts)
elif how == "ray_sketch":
    from curate.dedup_ray import sketch_with_ray
    clusters, stats = cluster_corpus(sketch_with_ray(path, opts), opts)
else:
    from curate.dedup_ray import cluster_with_ray
    clusters = cluster_with_ray(path, opts)
    stats = clusters.stats
wall = time.perf_counter() - t0
digest = hashlib.sha256()
for name in ("dup_cluster", "exact_dup", "is_representative", "label_conflict"):
    digest.update(np.ascontiguousarray(getattr(clusters, name)).tobytes())
print(json.dumps({
    "wall_s": round(wall, 2), "ray_start_s": round(ray_start, 2),
    "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "clusters": clusters.n_clusters, "near_pairs": int(stats["near_pairs"]),
    "output_sha256": digest.hexdigest()[:16],
}))
"""


def prepare(texts: list[str], root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.ingest import IngestOptions, ingest
    from thresher.project import Project

    src = root / "in.parquet"
    pq.write_table(pa.table({"text": texts}), src)
    project = Project.at(root / "proj")
    ingest([src], project, IngestOptions(label_col=None))
    return project.records_path("ingest")


def run(how: str, path: Path, cpus: int, threshold: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, how, str(path), str(cpus), str(threshold)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{how} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    texts, _, _ = make_corpus(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = prepare(texts, Path(tmp))
        runs = {how: run(how, path, args.cpus, args.threshold) for how in
                ("local", "ray_sketch", "ray_whole")}  # fmt: skip
    same = len({r["output_sha256"] for r in runs.values()}) == 1
    result = {
        "benchmark": "dedup search (sketch + clusters): local vs Ray Data on one machine",
        "size": args.size,
        "cpus": args.cpus,
        "os_cpus": os.cpu_count(),
        "threshold": args.threshold,
        "same_output": same,
        "runs": runs,
        "ray_whole_vs_local_wall": round(runs["ray_whole"]["wall_s"] / runs["local"]["wall_s"], 2),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
