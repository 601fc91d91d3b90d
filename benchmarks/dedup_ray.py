"""Dedup on one machine: the local engine vs Ray Data (hashing only, and the whole search).

On ``--size`` news-length documents with planted duplicates (``dedup_data``), each way in its own
fresh process (so its peak memory is that driver's alone; Ray's workers are other processes):

- ``local``: ``sketch_batches`` + ``cluster_corpus`` in the process (the local engine's search);
- ``ray_sketch``: ``sketch_with_ray`` + ``cluster_corpus`` (the hashing pass on Ray, the rest on
  the driver: what ``--engine ray`` runs with ``--semantic`` or ``--against``);
- ``ray_whole``: ``cluster_with_ray`` (sketch, exact groups, LSH buckets, verification,
  components and representatives on Ray Data; the driver keeps the per-row results): what
  ``--engine ray`` runs otherwise;
- ``stage_local`` / ``stage_ray``: the whole stage (``curate.dedup.dedup``, output written) with
  ``engine="local"`` / ``"ray"``, what ``thresher curate dedup [--engine ray]`` runs.

Ray runs a local instance with ``--cpus`` CPUs. Reports wall seconds of the work (Ray's start
shown apart), the driver's peak resident memory (``VmHWM`` from ``/proc/self/status``: reset by
exec, unlike ``ru_maxrss``, which a child inherits from its parent) and its resident memory
before the work (interpreter, imports and ``ray.init``), the load average around each run (the
VM is shared), and checks that all ways give the same clusters.

    python benchmarks/dedup_ray.py [--size 10000 100000] [--cpus 2] [--out results/dedup_ray.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _report import emit  # noqa: E402

WAYS = ("local", "ray_sketch", "ray_whole", "stage_local", "stage_ray")


def _memory_mib(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _digest(clusters) -> str:
    import numpy as np

    digest = hashlib.sha256()
    for name in ("dup_cluster", "exact_dup", "is_representative", "label_conflict"):
        digest.update(np.ascontiguousarray(getattr(clusters, name)).tobytes())
    return digest.hexdigest()[:16]


def _stage_digest(project) -> str:
    """The same digest from the stage's output file."""
    import numpy as np
    import pyarrow.parquet as pq

    from curate.dedup_clusters import Clusters

    table = pq.read_table(project.records_path("dedup"))

    def column(name, fill):
        return np.array([fill if v is None else v for v in table.column(name).to_pylist()])

    kinds = table.column("dup_kind").to_pylist()
    clusters = Clusters(
        dup_cluster=column("dup_cluster", -1).astype(np.int64),
        exact_dup=np.array([k == "exact" for k in kinds]),
        is_representative=column("is_representative", False).astype(bool),
        label_conflict=column("label_conflict", False).astype(bool),
        semantic_cluster=None,
        n_clusters=0,
        n_exact_clusters=0,
        n_near_clusters=0,
        n_conflicts=0,
        n_semantic=None,
    )
    return _digest(clusters)


def child(how: str, project_dir: Path, cpus: int, threshold: float) -> dict:
    """One way, in this (fresh) process."""
    import pyarrow.parquet as pq

    from curate.dedup import DedupOptions, cluster_corpus, dedup
    from thresher.project import Project

    project = Project.at(project_dir)
    path = project.records_path("ingest")
    engine = "ray" if how in ("ray_sketch", "ray_whole", "stage_ray") else "local"
    opts = DedupOptions(threshold=threshold, engine=engine)
    ray_start = 0.0
    if engine == "ray":
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_start = time.perf_counter() - t0
    rss_before = _memory_mib("VmRSS")
    t0 = time.perf_counter()
    if how == "local":
        from curate.dedup_sketch import sketch_batches

        batches = pq.ParquetFile(path).iter_batches(opts.batch_size)
        corpus = sketch_batches(batches, opts.normalize(), opts.minhash(), None)
        clusters, stats = cluster_corpus(corpus, opts)
    elif how == "ray_sketch":
        from curate.dedup_ray import sketch_with_ray

        clusters, stats = cluster_corpus(sketch_with_ray(path, opts), opts)
    elif how == "ray_whole":
        from curate.dedup_ray import cluster_with_ray

        clusters, stats = cluster_with_ray(path, opts)
    else:
        result = dedup(project, opts, force=True)
        stats = {"near_pairs": (project.read_manifest("dedup") or {})["counts"]["near_pairs"]}
    wall = time.perf_counter() - t0
    peak = _memory_mib("VmHWM")
    if how.startswith("stage"):
        n_clusters, digest = result.clusters, _stage_digest(project)
    else:
        n_clusters, digest = clusters.n_clusters, _digest(clusters)
    return {
        "wall_s": round(wall, 2),
        "ray_start_s": round(ray_start, 2),
        "driver_peak_rss_mib": round(peak, 1),
        "driver_rss_before_mib": round(rss_before, 1),
        "clusters": n_clusters,
        "near_pairs": int(stats["near_pairs"]),
        "output_sha256": digest,
    }


def prepare(texts: list[str], root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.ingest import IngestOptions, ingest
    from thresher.project import Project

    src = root / "in.parquet"
    pq.write_table(pa.table({"text": texts}), src)
    project = Project.at(root / "proj")
    ingest([src], project, IngestOptions(label_col=None))
    return project.root


def run(how: str, project_dir: Path, cpus: int, threshold: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--child", how, "--project", str(project_dir)]
    cmd += ["--cpus", str(cpus), "--threshold", str(threshold)]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{how} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return report


def measure(size: int, ways: list[str], cpus: int, threshold: float) -> dict:
    """Every way on one corpus of ``size`` documents, and the Ray / local wall-time ratios."""
    from dedup_data import make_corpus

    texts, _, _ = make_corpus(size)
    with tempfile.TemporaryDirectory() as tmp:
        project_dir = prepare(texts, Path(tmp))
        del texts
        runs = {how: run(how, project_dir, cpus, threshold) for how in ways}
    out = {
        "size": size,
        "same_output": len({r["output_sha256"] for r in runs.values()}) == 1,
        "runs": runs,
    }
    pairs = (("ray_sketch", "local"), ("ray_whole", "local"), ("stage_ray", "stage_local"))
    for way, base in pairs:
        if way in runs and base in runs:
            out[f"{way}_vs_{base}_wall"] = round(runs[way]["wall_s"] / runs[base]["wall_s"], 2)
    print(json.dumps(out), file=sys.stderr)  # each size as it is done (the 100k run is long)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[10_000])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--ways", default=",".join(WAYS), help="comma-separated subset of WAYS")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.project, args.cpus, args.threshold)))
        return

    ways = [w for w in args.ways.split(",") if w]
    result = {
        "benchmark": "dedup: local engine vs Ray Data on one machine (time, driver peak memory)",
        "command": "python benchmarks/dedup_ray.py --size "
        + " ".join(map(str, args.size))
        + f" --cpus {args.cpus}",
        "cpus": args.cpus,
        "os_cpus": os.cpu_count(),
        "threshold": args.threshold,
        "memory": "driver_peak_rss_mib: VmHWM of the driver process (Ray workers not included)",
        "load_avg_1min": "before and after each run; the 2-core VM was shared with other jobs",
        "sizes": [measure(size, ways, args.cpus, args.threshold) for size in args.size],
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
