"""Serving throughput and latency: ``thresher serve`` against a plain transformers ``pipeline``.

Trains a short LoRA run on the demo corpus (the default MiniLM base), then, in the same process:

- starts ``thresher serve`` as a real process on 127.0.0.1 and sends the test texts one per
  request from 1, 8 and 64 concurrent clients (async HTTP): records/s, p50/p99 latency;
- the peer: the same run exported merged (``thresher tune export --merged``) and scored by a plain
  ``transformers.pipeline("text-classification")`` loop, one text per call, as a hand-written
  service would: records/s, p50/p99 latency per call.

Both answer the same texts; the predicted labels must be equal (``labels_equal``; the server may
run bf16 where the CPU has it, so probabilities agree to ``max_prob_diff``). One server and one
pipeline never run at the same time. Target: >= 3x the pipeline's records/s at 64 clients.

    python benchmarks/serve.py [--texts 1000] [--clients 1 8 64] [--out results/serve.json]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402
from tune_cpu import demo_project  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(np.asarray(values) * 1000, q)), 2)


def start_server(project: Path, run: str, port: int, extra: list[str]) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "thresher", "serve", "-p", str(project), "--run", run]
    cmd += ["--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("serve did not become healthy in 300 s")


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for the load test: a
    hand-rolled client costs the shared CPU far less than a general one, so the server, not the
    load generator, is what is measured (the role wrk or hey play elsewhere)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def load(port: int, texts: list[str], clients: int) -> tuple[dict, list[str], list[dict]]:
    """``clients`` concurrent clients, one text per request, until every text was answered."""
    import orjson

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(texts)):
        queue.put_nowait(i)
    labels: list[str] = [""] * len(texts)
    probs: list[dict] = [{}] * len(texts)
    latencies: list[float] = []

    async def client(conn: Connection) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            t0 = time.perf_counter()
            status, body = await conn.post("/v1/predict", orjson.dumps({"texts": [texts[i]]}))
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
            answer = orjson.loads(body)["predictions"][0]
            labels[i], probs[i] = answer["label"], answer["probs"]

    conns = [await Connection.open(port) for _ in range(clients)]
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(client(c) for c in conns))
    finally:
        for conn in conns:
            conn.close()
    wall = time.perf_counter() - t0
    figures = {
        "clients": clients,
        "records_per_s": round(len(texts) / wall, 1),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }
    return figures, labels, probs


def serve_figures(project: Path, run: str, texts: list[str], clients: list[int], extra: list[str]):
    port = free_port()
    proc = start_server(project, run, port, extra)
    try:
        asyncio.run(load(port, texts[:64], 8))  # warm-up: first batches, allocator, threads
        rows, labels, probs = [], None, None
        for c in clients:
            figures, got_labels, got_probs = asyncio.run(load(port, texts, c))
            rows.append(figures)
            labels, probs = labels or got_labels, probs or got_probs
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    return rows, labels, probs, code


def pipeline_figures(model_dir: Path, texts: list[str]):
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(model_dir), device="cpu", top_k=None)
    for text in texts[:32]:  # warm-up
        clf(text)
    latencies, answers = [], []
    t0 = time.perf_counter()
    for text in texts:
        s = time.perf_counter()
        answer = clf(text)
        answers.append(answer[0] if answer and isinstance(answer[0], list) else answer)
        latencies.append(time.perf_counter() - s)
    wall = time.perf_counter() - t0
    probs = [{a["label"]: a["score"] for a in answer} for answer in answers]
    labels = [max(p, key=p.get) for p in probs]
    figures = {
        "records_per_s": round(len(texts) / wall, 1),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }
    return figures, labels, probs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2000, help="demo corpus rows to train on")
    parser.add_argument("--steps", type=int, default=40, help="LoRA optimizer steps")
    parser.add_argument("--texts", type=int, default=1000, help="texts sent to each side")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--serve-args", default="", help="extra `thresher serve` flags")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import pandas as pd
    import torch

    from thresher.assets import write_demo_corpus
    from tune import TuneOptions, train
    from tune.export import export_run

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        project = demo_project(root, args.size)
        train(project, TuneOptions(max_steps=args.steps, run="bench"))
        corpus = pd.read_csv(write_demo_corpus(root / "demo.csv"))
        texts = corpus["text"].sample(n=args.texts, random_state=1).astype(str).tolist()
        serve_rows, s_labels, s_probs, exit_code = serve_figures(
            project, "bench", texts, args.clients, args.serve_args.split()
        )
        merged = export_run(project / "tune" / "bench", root / "merged", merged=True)
        pipe, p_labels, p_probs = pipeline_figures(merged, texts)
    for row in serve_rows:
        row["x_pipeline"] = round(row["records_per_s"] / pipe["records_per_s"], 2)
    diffs = [abs(s[k] - p[k]) for s, p in zip(s_probs, p_probs, strict=True) for k in p]
    top = max(serve_rows, key=lambda r: r["clients"])
    emit(
        {
            "benchmark": "serve",
            "texts": len(texts),
            "model": "all-MiniLM-L6-v2 + LoRA (r=8), merged",
            "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()},
            "torch_threads": torch.get_num_threads(),
            "serve": serve_rows,
            "serve_exit_code_after_sigterm": exit_code,
            "pipeline": pipe,
            "labels_equal": sum(a == b for a, b in zip(s_labels, p_labels, strict=True))
            / len(texts),
            "max_prob_diff": round(max(diffs), 4),
            "target": ">= 3x pipeline records/s at 64 clients",
            "target_met": top["x_pipeline"] >= 3.0,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
