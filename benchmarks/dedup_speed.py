"""Speed: the whole ``thresher curate dedup`` process vs datasketch's hashing+LSH loop.

On ``--size`` news-length documents (~150 words, planted duplicates from ``dedup_data``):

- thresher: ``python -m thresher curate dedup -p DIR --force --threshold 0.7`` as a subprocess
  (start-up, reading the ingested Parquet, hashing, LSH, clustering, writing), ``--repeat`` times;
  the median wall time is reported, with the child's CPU time and peak RSS (``os.wait4``).
- datasketch: MinHash(128) over the same word 3-grams + MinHashLSH(threshold 0.7) query/insert
  loop, in this process. On a shared machine this loop is slow, so it is timed on the first
  ``--peer-size`` documents and scaled linearly to ``--size`` (it is linear: per-document work
  plus O(1) LSH buckets); the JSON says so.
- rensa (compiled Rust MinHash from PyPI), for the choice of implementation: its per-document loop
  (RMinHash + RMinHashLSH), and its bulk digest kernel on our shingle hashes plus the cost of
  getting the digests back into numpy, vs our numpy signatures on the same shingles.

Also reports pair F1 of the thresher run against the planted truth. Prints one JSON object.

    python benchmarks/dedup_speed.py [--size 100000] [--peer-size 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from dedup_data import make_corpus  # noqa: E402
from dedup_quality import pair_scores  # noqa: E402


def prepare_project(texts: list[str], root: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.ingest import IngestOptions, ingest
    from thresher.project import Project

    src = root / "in.parquet"
    pq.write_table(pa.table({"text": texts}), src)
    project = Project.at(root / "proj")
    ingest([src], project, IngestOptions(label_col=None))
    src.unlink()
    return project


# A small launcher forks and execs the command and reports the child's rusage: a child forked
# straight from this (large) process would inherit its peak RSS as a floor.
_LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
report = {"wall_s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime,
          "peak_rss_mib": usage.ru_maxrss / 1024, "status": status}
os.write(int(sys.argv[1]), json.dumps(report).encode())
"""


def run_process(args: list[str]) -> dict:
    """Run a child process; wall seconds, CPU seconds (user+sys), peak RSS (MiB), stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(write_fd), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        pass_fds=(write_fd,),
    )
    os.close(write_fd)
    out, _ = proc.communicate()
    with os.fdopen(read_fd, "rb") as fh:
        report = json.loads(fh.read() or b"{}")
    if proc.returncode != 0 or report.get("status") != 0:
        raise RuntimeError(f"{args} failed: {report}")
    report.pop("status")
    return {**report, "stdout": out.decode()}


def _shingles(text: str) -> list[str]:
    from curate.normalize import words

    w = words(text)
    return list({" ".join(w[j : j + 3]) for j in range(max(len(w) - 2, 1))})


def datasketch_loop(texts: list[str], threshold: float) -> dict[str, float]:
    from datasketch import MinHash, MinHashLSH

    t0, c0 = time.perf_counter(), time.process_time()
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    for i, text in enumerate(texts):
        m = MinHash(num_perm=128)
        m.update_batch([s.encode() for s in _shingles(text)])
        lsh.query(m)
        lsh.insert(i, m)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def rensa_loop(texts: list[str], threshold: float) -> dict[str, float]:
    from rensa import RMinHash, RMinHashLSH

    bands = 16  # rensa needs num_perm divisible by bands; 16x8 is nearest to datasketch's 14x9
    t0, c0 = time.perf_counter(), time.process_time()
    lsh = RMinHashLSH(threshold, 128, bands)
    for i, text in enumerate(texts):
        m = RMinHash(128, 42)
        m.update(_shingles(text))
        lsh.query(m)
        lsh.insert(i, m)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def signature_kernels(texts: list[str]) -> dict[str, float]:
    """CPU seconds for signatures from the same shingle hashes: numpy OPH vs rensa's bulk
    kernel (+ converting its digests to a numpy array, which banding/verification need)."""
    import pyarrow as pa
    import rensa

    from curate import minhash as mh
    from curate.normalize import normalized_bytes

    ours = theirs = convert = 0.0
    arr = pa.array(texts, pa.string())
    for start in range(0, len(texts), 4096):
        data, offsets = normalized_bytes(arr.slice(start, 4096))
        hashes, counts = mh.word_hashes(data, offsets)
        shingles, per_doc = mh.word_shingles(hashes, counts, 3)
        c0 = time.process_time()
        mh.signatures(shingles, per_doc, 128, 0)
        c1 = time.process_time()
        rows = np.zeros(len(per_doc) + 1, dtype=np.uint64)
        np.cumsum(per_doc, out=rows[1:])
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(shingles, rows, 128, 42)
        c2 = time.process_time()
        np.array(matrix.to_rows(), dtype=np.uint32)
        c3 = time.process_time()
        ours, theirs, convert = ours + c1 - c0, theirs + c2 - c1, convert + c3 - c2
    return {
        "numpy_oph_cpu_s": round(ours, 3),
        "rensa_digest_cpu_s": round(theirs, 3),
        "rensa_to_numpy_cpu_s": round(convert, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--peer-size", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    texts, truth, _ = make_corpus(args.size, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        project = prepare_project(texts, Path(tmp))
        cmd = [sys.executable, "-m", "thresher", "curate", "dedup", "-p", str(project.root)]
        cmd += ["--threshold", str(args.threshold), "--force", "--json"]
        runs = [run_process(cmd) for _ in range(args.repeat)]
        summary = json.loads(runs[-1]["stdout"])
        import pyarrow.parquet as pq

        col = pq.read_table(project.records_path("dedup"), columns=["dup_cluster"]).column(0)
        pred = np.array([-1 if v is None else v for v in col.to_pylist()])
        import_only = run_process([sys.executable, "-m", "thresher", "curate", "dedup", "--help"])

    peer_n = min(args.peer_size, args.size)
    scale = args.size / peer_n
    ds = datasketch_loop(texts[:peer_n], args.threshold)
    rs = rensa_loop(texts[:peer_n], args.threshold)
    kernels = signature_kernels(texts[: min(peer_n, 20_000)])

    wall = statistics.median(r["wall_s"] for r in runs)
    cpu = statistics.median(r["cpu_s"] for r in runs)
    ds_wall, ds_cpu = ds["wall_s"] * scale, ds["cpu_s"] * scale
    result = {
        "benchmark": "dedup_speed",
        "docs": args.size,
        "threshold": args.threshold,
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "thresher": {
            "process_wall_s_median": round(wall, 3),
            "process_wall_s_runs": [round(r["wall_s"], 3) for r in runs],
            "process_cpu_s_median": round(cpu, 3),
            "docs_per_s_wall": round(args.size / wall),
            "peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs), 1),
            "stage_timings_s": summary.get("timings"),
            "startup_help_wall_s": round(import_only["wall_s"], 3),
            "clusters": summary["clusters"],
            "removed": summary["removed"],
            **{f"pair_{k}": v for k, v in pair_scores(pred, truth).items()},
        },
        "datasketch": {
            "measured_docs": peer_n,
            "scaled_linearly_to": args.size if peer_n < args.size else None,
            "hash_lsh_loop_wall_s": round(ds_wall, 3),
            "hash_lsh_loop_cpu_s": round(ds_cpu, 3),
            "docs_per_s_wall": round(args.size / ds_wall),
        },
        "rensa_loop": {
            "measured_docs": peer_n,
            "hash_lsh_loop_wall_s": round(rs["wall_s"] * scale, 3),
            "hash_lsh_loop_cpu_s": round(rs["cpu_s"] * scale, 3),
        },
        "signature_kernels_on_docs": min(peer_n, 20_000),
        "signature_kernels": kernels,
        "speedup_vs_datasketch_wall": round(ds_wall / wall, 2),
        "speedup_vs_datasketch_cpu": round(ds_cpu / cpu, 2),
        "speedup_vs_rensa_loop_wall": round(rs["wall_s"] * scale / wall, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
