"""Peak memory (RSS) of the whole ``thresher curate dedup`` process on many documents.

Writes ``--size`` news-length documents straight into ``DIR/ingest/records.parquet`` in the
ingest schema (running ingest on a million rows is not what is measured here). One 100k chunk
comes from ``dedup_data`` (planted duplicates); each further chunk is that chunk under its own
letter-substitution cipher, so chunks share no words or shingles (generating every chunk afresh
would take longer than the run). Then it runs ``python -m thresher curate dedup`` as a child
process and reads its peak RSS with ``os.wait4`` (through a small launcher). A 1k-document run
gives the fixed overhead (interpreter, numpy, pyarrow), so ``(peak - overhead) / docs`` is the
memory per document. Prints one JSON object.

    python benchmarks/dedup_memory.py [--size 1000000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
from dedup_data import make_corpus  # noqa: E402
from dedup_speed import run_process  # noqa: E402

CHUNK = 100_000


def write_records(root: Path, size: int) -> float:
    """Write ``size`` records as ``root/ingest/records.parquet``; returns uncompressed MiB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thresher.records import record_schema, text_id

    path = root / "ingest" / "records.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = record_schema()
    done = 0
    base, _, _ = make_corpus(min(CHUNK, size), seed=0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        while done < size:
            n = min(CHUNK, size - done)
            perm = "".join(np.random.default_rng(done // CHUNK).permutation(list(letters)))
            cipher = str.maketrans(letters + letters.upper(), perm + perm.upper())
            texts = [t.translate(cipher) for t in base[:n]] if done else base[:n]
            ids = [f"{text_id(t)}-{done + i}" for i, t in enumerate(texts)]
            table = pa.table(
                {
                    "id": ids,
                    "text": texts,
                    "label": [("pos", "neg")[i % 2] for i in range(n)],
                    "source": ["bench"] * n,
                    "source_row": list(range(done, done + n)),
                    "metadata": ["{}"] * n,
                },
                schema=schema,
            )
            writer.write_table(table)
            done += n
    meta = pq.ParquetFile(path).metadata
    return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) / 2**20


def measure(root: Path) -> dict:
    cmd = [sys.executable, "-m", "thresher", "curate", "dedup", "-p", str(root), "--json"]
    cmd += ["--force", "--threshold", "0.7"]
    run = run_process(cmd)
    summary = json.loads(run.pop("stdout"))
    return {**run, "clusters": summary["clusters"], "removed": summary["removed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated projects")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dedup-mem-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        write_records(work / "small", 1000)
        big_mib = write_records(work / "big", args.size)
        generate_s = time.perf_counter() - t0
        small = measure(work / "small")
        big = measure(work / "big")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    per_doc = (big["peak_rss_mib"] - small["peak_rss_mib"]) * 2**20 / args.size
    result = {
        "benchmark": "dedup_memory",
        "docs": args.size,
        "input_uncompressed_mib": round(big_mib, 1),
        "kept_in_memory_between_passes": big_mib <= 256,
        "peak_rss_mib": round(big["peak_rss_mib"], 1),
        "overhead_rss_mib_1k_docs": round(small["peak_rss_mib"], 1),
        "bytes_per_doc_above_overhead": round(per_doc),
        "extrapolated_10m_docs_gib": round(
            (small["peak_rss_mib"] * 2**20 + per_doc * 10_000_000) / 2**30, 2
        ),
        "process_wall_s": round(big["wall_s"], 2),
        "process_cpu_s": round(big["cpu_s"], 2),
        "docs_per_s_wall": round(args.size / big["wall_s"]),
        "clusters": big["clusters"],
        "removed": big["removed"],
        "generate_s": round(generate_s, 1),
        "workdir": str(work) if args.keep else None,
        "note": "a ~150-word document; short documents need less pass-1 scratch, the same sketch",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
