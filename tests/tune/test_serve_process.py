"""``thresher serve`` as a real process on a tiny trained run: answers over HTTP equal
``predict_proba``, concurrent requests are all answered, SIGTERM with a request in flight answers
it, writes one traffic row per text and exits 0; an open bind without a key refuses to start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers.labelled_project import make_project, synthetic_rows
from tests.helpers.serving import check_concurrent_requests, check_predictions
from thresher.traffic import read_traffic

TEXTS = [
    "great superb film number 1",
    "awful dull mess number 2",
    "a wonderful charming story",
    "boring tedious plot and cast",
    "the movie was fresh and moving",
]


@pytest.fixture(scope="module")
def served_project(tmp_path_factory, tiny_bert) -> tuple[Path, Path]:
    from tune import TuneOptions, train

    root = make_project(tmp_path_factory.mktemp("serve") / "proj", synthetic_rows(120, seed=2))
    opts = TuneOptions(
        base=tiny_bert,
        run="r1",
        max_steps=16,
        eval_steps=16,
        batch_size=8,
        lr=5e-3,
        eval_batch_size=32,
        max_length=32,
    )
    return root, train(root, opts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(project: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "thresher", "serve", "-p", str(project), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    line = proc.stdout.readline()  # printed once the model answers
    if not line:
        proc.wait(10)
        raise AssertionError(f"serve did not start: {proc.stderr.read()}")
    assert line.startswith("serving r1 on http://127.0.0.1:") and "(POST /v1/predict)" in line
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


@pytest.mark.slow
def test_serves_what_predict_proba_predicts_and_drains_on_sigterm(served_project, tmp_path):
    from tune.predict import predict_proba

    project, run = served_project
    expected = predict_proba(run, TEXTS)
    labels = ["neg", "pos"]  # the run's label order (config.json)
    logged_before = len(read_traffic(project / "serve" / "traffic"))
    key = tmp_path / "key"
    key.write_text("k-123456\n")
    key.chmod(0o600)
    auth = {"Authorization": "Bearer k-123456"}
    proc, url = start(
        project, "--run", "r1", "--precision", "fp32", "--api-key-file", str(key),
        "--max-batch", "32", "--max-wait-ms", "20",
    )  # fmt: skip
    try:
        with httpx.Client(base_url=url, timeout=30, headers=auth) as http:
            assert http.get("/healthz").json() == {"status": "ok", "model": "r1"}
            assert httpx.post(f"{url}/v1/predict", json={"texts": ["x"]}).status_code == 401
            check_predictions(http, TEXTS, labels, expected, np, model="r1")
            # concurrent requests from threads, each with its own texts, all answered right
            check_concurrent_requests(http, TEXTS, labels, expected, requests=12, span=3)
            metrics = http.get("/metrics").text
            assert 'requests_total{endpoint="/v1/predict",status="200"} 13.0' in metrics
            assert 'requests_total{endpoint="/v1/predict",status="401"} 1.0' in metrics

            # SIGTERM once the first of six big requests is answered: the other five are in
            # flight (their batches queue behind the first's) and are answered all the same
            done: list[tuple[int, int, float]] = []
            first = threading.Event()

            def big() -> None:
                r = http.post("/v1/predict", json={"texts": TEXTS * 50})
                done.append((r.status_code, len(r.json()["predictions"]), time.monotonic()))
                first.set()

            senders = [threading.Thread(target=big) for _ in range(6)]
            for t in senders:
                t.start()
            assert first.wait(30)
            signalled = time.monotonic()
            code, err = stop(proc)
            for t in senders:
                t.join()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert "k-123456" not in err
    assert [(status, n) for status, n, _ in done] == [(200, 250)] * 6
    assert any(at > signalled for _, _, at in done)  # answered after SIGTERM
    sent = len(TEXTS) + sum(1 + i % 3 for i in range(12)) + 6 * 250
    traffic = read_traffic(project / "serve" / "traffic")
    assert len(traffic) - logged_before == sent and set(traffic["model"]) == {"r1"}
    assert set(traffic["text"]) == set(TEXTS)


def test_an_open_bind_without_a_key_refuses_to_start(tmp_path):
    project = tmp_path  # refused before any run is looked for
    env = {k: v for k, v in os.environ.items() if k != "THRESHER_SERVE_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "thresher", "serve", "-p", str(project), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--host 0.0.0.0 is reachable from other machines" in lines[0]


def test_a_port_in_use_is_a_one_line_error(tmp_path):
    run = tmp_path / "tune" / "r1"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")  # enough to be found; the bind fails first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "thresher", "serve", "-p", str(tmp_path), "--run", "r1",
             "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], result.stderr
