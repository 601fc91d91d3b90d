"""Push benchmark: thresher's push vs the Argilla SDK's plain ``dataset.records.log`` (defaults),
same embedded server, same records (with 384-d vectors), same run.

Also measures: a rerun with no changes, pull records/s, the embedded server's start-up from cold
(fresh data folder: migrate + owner) and warm (restart with data: reindex), and its memory.

    python benchmarks/push.py [--size 5000]

Prints one JSON object; the embedding step is excluded from both sides (vectors precomputed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from review.pull import PullOptions, pull  # noqa: E402
from review.push import PushOptions, ensure_dataset, push, record_payload  # noqa: E402
from review.server import (  # noqa: E402
    ServerOptions,
    ServerPaths,
    connection,
    ensure_server_venv,
    free_port,
    memory_mb,
    server_down,
    server_up,
)
from tests.helpers.scored_project import LABELS, make_project  # noqa: E402
from thresher.project import Project  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--dims", type=int, default=384)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shared = ServerPaths.default()
    ensure_server_venv(shared)
    home = Path(tempfile.mkdtemp(prefix="thresher-bench-"))
    paths = ServerPaths(home, venv_dir=shared.venv)
    options = ServerOptions(port=free_port(), timeout_s=300)
    out: dict = {"size": args.size, "dims": args.dims}
    try:
        t0 = time.perf_counter()
        server_up(options, paths)
        out["server_cold_start_s"] = round(time.perf_counter() - t0, 2)
        out["server_memory_mb_idle"] = round(memory_mb(paths))
        conn = connection(paths)

        project = Project.at(make_project(home / "proj", args.size))
        import pyarrow.parquet as pq

        rows = pq.read_table(project.records_path("score")).to_pylist()
        rng = np.random.default_rng(0)
        vecs = rng.normal(size=(len(rows), args.dims)).astype("float32")
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        by_text = {r["text"]: v for r, v in zip(rows, vecs, strict=True)}

        # peer: the SDK's plain log with its defaults, same settings and data
        import argilla as rg

        opts = PushOptions(labels=LABELS, vector_dims=args.dims, embedding_model="bench")
        ensure_dataset(conn, "sdk-peer", opts, LABELS, args.dims)
        client = rg.Argilla(api_url=conn.url, api_key=conn.api_key)
        dataset = client.datasets("sdk-peer", workspace="thresher")
        records = []
        for rank, (row, vec) in enumerate(zip(rows, vecs, strict=True), start=1):
            p = record_payload(row, rank)
            records.append(
                rg.Record(
                    id=p["external_id"],
                    fields=p["fields"],
                    metadata=p["metadata"],
                    suggestions=[
                        rg.Suggestion(
                            "label",
                            p["suggestion"]["value"],
                            score=p["suggestion"]["score"],
                            agent="thresher",
                        )
                    ],
                    vectors={"embedding": vec.tolist()},
                )
            )
        t0 = time.perf_counter()
        dataset.records.log(records)
        sdk_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        res = push(
            project,
            conn,
            PushOptions(dataset="thresher", **_common(opts)),
            embed=lambda texts: np.stack([by_text[t] for t in texts]),
        )
        ours_s = time.perf_counter() - t0
        assert res.sent == args.size and res.failed == 0

        t0 = time.perf_counter()
        again = push(
            project,
            conn,
            PushOptions(dataset="thresher", **_common(opts)),
            embed=lambda texts: np.stack([by_text[t] for t in texts]),
        )
        rerun_s = time.perf_counter() - t0
        assert again.sent == 0

        t0 = time.perf_counter()
        pulled = pull(project, conn, PullOptions(dataset="thresher"))
        pull_s = time.perf_counter() - t0
        out["server_memory_mb_with_data"] = round(memory_mb(paths))

        server_down(paths)
        t0 = time.perf_counter()
        server_up(options, paths)
        out["server_warm_start_s"] = round(time.perf_counter() - t0, 2)

        out.update(
            {
                "sdk_log_records_per_s": round(args.size / sdk_s, 1),
                "push_records_per_s": round(args.size / ours_s, 1),
                "ratio_push_vs_sdk": round(sdk_s / ours_s, 2),
                "sdk_log_s": round(sdk_s, 2),
                "push_s": round(ours_s, 2),
                "rerun_unchanged_s": round(rerun_s, 3),
                "rerun_sent": again.sent,
                "pull_records_per_s": round(pulled.records / pull_s, 1),
                "pull_s": round(pull_s, 2),
                "push_batch_size": opts.batch_size,
                "push_concurrency": opts.concurrency,
            }
        )
    finally:
        server_down(paths)
    print(json.dumps(out, sort_keys=True))


def _common(opts: PushOptions) -> dict:
    return {
        "labels": opts.labels,
        "vector_dims": opts.vector_dims,
        "embedding_model": opts.embedding_model,
    }


if __name__ == "__main__":
    main()
