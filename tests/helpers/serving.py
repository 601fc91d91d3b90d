"""Checks shared by the tests of a running ``thresher serve`` (local and Ray engines)."""

from __future__ import annotations

import threading


def check_predictions(http, texts, labels, expected, np, model: str) -> None:
    """One request with every text: the ``model`` that answered, probabilities within 1e-3 of
    ``expected`` (rows in ``texts`` order, columns in ``labels`` order) and the argmax labels."""
    body = http.post("/v1/predict", json={"texts": texts}).json()
    assert body["model"] == model
    got = np.array([[p["probs"][k] for k in labels] for p in body["predictions"]])
    assert np.allclose(got, expected, atol=1e-3)
    assert [p["label"] for p in body["predictions"]] == [labels[i] for i in expected.argmax(1)]


def check_concurrent_requests(http, texts, labels, expected, requests: int, span: int) -> None:
    """``requests`` requests from threads at once, request ``i`` asking for ``1 + i % span``
    texts starting at text ``i``: every one answered, each in its own order."""
    answers: dict[int, list[str]] = {}

    def ask(i: int) -> None:
        mine = [texts[(i + j) % len(texts)] for j in range(1 + i % span)]
        r = http.post("/v1/predict", json={"texts": mine})
        answers[i] = [p["label"] for p in r.json()["predictions"]]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == requests
    for i, got in answers.items():
        want = [labels[expected[(i + j) % len(texts)].argmax()] for j in range(1 + i % span)]
        assert got == want, i
