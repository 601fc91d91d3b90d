"""The demo's simulated production traffic: texts the project lacks, with the planted shift,
sent to a real HTTP endpoint."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd

from loop.demo_traffic import send, traffic_texts
from tests.helpers.labelled_project import make_project
from thresher.assets import debate_statements, write_demo_corpus


def test_traffic_texts_are_new_reviews_with_the_planted_share(tmp_path):
    corpus = pd.read_csv(write_demo_corpus(tmp_path / "corpus.csv"))
    held = corpus.sample(n=60, random_state=0)
    root = make_project(tmp_path / "proj", held[["text", "label"]].to_dict("records"))
    texts = traffic_texts(root, n=80, shift=0.25, seed=3)
    debates = set(debate_statements())
    assert len(texts) == 80
    assert sum(t in debates for t in texts) == 20
    assert not set(texts) & set(held["text"])
    assert texts == traffic_texts(root, n=80, shift=0.25, seed=3)


def test_send_posts_every_text_in_small_requests():
    seen: list[list[str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append(body["texts"])
            answer = {"predictions": [{"label": "x", "probs": {"x": 1.0}} for _ in body["texts"]]}
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        texts = [f"text {i}" for i in range(50)]
        figures = send(f"http://127.0.0.1:{server.server_port}", texts, clients=4)
    finally:
        server.shutdown()
    assert figures["answered"] == 50
    assert sorted(t for chunk in seen for t in chunk) == sorted(texts)
    assert all(1 <= len(chunk) <= 8 for chunk in seen)
