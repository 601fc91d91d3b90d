"""``thresher serve --engine ray`` as a real process: two Ray Serve replicas on a tiny trained run
answer what ``predict_proba`` predicts, both write the traffic log without clobbering each other,
a bad request gets the local engine's one-line 4xx, and SIGTERM with requests in flight answers
them and exits 0. Plus the one-line errors that need no Ray: too many replicas for this
machine, Ray not installed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from tests.helpers.labelled_project import make_project, synthetic_rows
from tests.helpers.serving import check_concurrent_requests, check_predictions
from thresher.errors import ThresherError
from thresher.traffic import read_traffic

TEXTS = [
    "great superb film number 1",
    "awful dull mess number 2",
    "a wonderful charming story",
    "boring tedious plot and cast",
    "the movie was fresh and moving",
]
LABELS = ["neg", "pos"]  # the run's label order


@pytest.fixture(scope="module")
def served_project(tmp_path_factory, tiny_bert) -> tuple[Path, Path]:
    from tune import TuneOptions, train

    root = make_project(tmp_path_factory.mktemp("serve-ray") / "proj", synthetic_rows(120, seed=2))
    opts = TuneOptions(
        base=tiny_bert, run="r1", max_steps=16, eval_steps=16, batch_size=8, lr=5e-3,
        eval_batch_size=32, max_length=32,
    )  # fmt: skip
    return root, train(root, opts)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env() -> dict[str, str]:
    """A local Ray of the test's own, whatever the shell points at."""
    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}


@pytest.mark.slow
def test_two_ray_replicas_answer_like_predict_and_drain_on_sigterm(served_project):
    pytest.importorskip("ray.serve")
    from tune.predict import predict_proba

    project, run = served_project
    expected = predict_proba(run, TEXTS)
    traffic_dir = project / "serve" / "traffic"
    port = free_port()
    cpus = "1" if len(os.sched_getaffinity(0)) >= 2 else "0.5"  # two replicas on any machine
    proc = subprocess.Popen(
        [sys.executable, "-m", "thresher", "serve", "-p", str(project), "--run", "r1",
         "--engine", "ray", "--replicas", "2", "--replica-cpus", cpus, "--port", str(port),
         "--precision", "fp32", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=serve_env(),
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # printed once both replicas answer
        if not line:
            proc.wait(30)
            raise AssertionError(f"serve --engine ray did not start: {proc.stderr.read()}")
        assert line.strip() == f"serving r1 on http://127.0.0.1:{port} (POST /v1/predict)"
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.get("/healthz").json() == {"status": "ok", "model": "r1"}
            check_predictions(http, TEXTS, LABELS, expected, np, model="r1")
            # concurrent requests, each with its own texts in its own order: all answered right
            check_concurrent_requests(http, TEXTS, LABELS, expected, requests=24, span=4)

            bad = http.post("/v1/predict", json={"texts": []})
            assert bad.status_code == 400
            assert bad.json() == {"error": "'texts' is empty; send at least one text"}
            wrong = http.post("/v1/predict", json={"texts": ["ok", 3]})
            assert wrong.status_code == 400 and "texts[1] is a int" in wrong.json()["error"]
            assert http.get("/v1/predict").status_code == 405
            assert "thresher_serve_requests_total" in http.get("/metrics").text

            # SIGTERM once the first of six big requests is answered: the others are in flight
            # on the two replicas and are answered all the same
            done: list[tuple[int, int, float]] = []
            first = threading.Event()

            def big() -> None:
                r = http.post("/v1/predict", json={"texts": TEXTS * 50})
                done.append((r.status_code, len(r.json()["predictions"]), time.monotonic()))
                first.set()

            senders = [threading.Thread(target=big) for _ in range(6)]
            for t in senders:
                t.start()
            assert first.wait(60)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            for t in senders:
                t.join()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert [(status, n) for status, n, _ in done] == [(200, 250)] * 6
    assert any(at > signalled for _, _, at in done)  # answered after SIGTERM
    sent = len(TEXTS) + sum(1 + i % 4 for i in range(24)) + 6 * 250
    traffic = read_traffic(traffic_dir)
    assert len(traffic) == sent and set(traffic["model"]) == {"r1"}
    assert set(traffic["text"]) == set(TEXTS)
    # both replicas answered, each in files of its own (part-<time>-<pid>-<seq>-<tag>.parquet)
    writers = {
        re.match(r"part-\d+T\d+-(\d+)-", p.name).group(1) for p in traffic_dir.rglob("part-*")
    }
    assert len(writers) == 2, sorted(p.name for p in traffic_dir.rglob("part-*"))


def test_more_replicas_than_cores_is_a_one_line_error_before_ray_starts(tmp_path):
    from thresher.cli import main

    cores = len(os.sched_getaffinity(0))
    result = CliRunner().invoke(
        main,
        ["serve", "-p", str(tmp_path), "--engine", "ray", "--replicas", str(cores + 1)],
        env={"RAY_ADDRESS": ""},
    )
    assert result.exit_code == 1
    assert f"--replicas {cores + 1} x --replica-cpus 1 needs {cores + 1} CPUs" in result.output


def test_replicas_without_the_ray_engine_is_a_usage_error(tmp_path):
    from thresher.cli import main

    result = CliRunner().invoke(main, ["serve", "-p", str(tmp_path), "--replicas", "2"])
    assert result.exit_code == 2 and "need --engine ray" in result.output


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    from tune import serve_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without ray imports
    with pytest.raises(ThresherError, match=re.escape("pip install 'thresher[ray]'")):
        serve_ray.import_serve()
