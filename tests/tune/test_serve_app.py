"""The HTTP app with a fake model (the model is not what these test): answers in input order,
one-line 4xx errors, the API key, /healthz before and after a model is attached, /metrics, the
traffic log rows, and the serve options' key and limit rules."""

from __future__ import annotations

import os

import numpy as np
import pytest
from fastapi.testclient import TestClient

from thresher.errors import ThresherError
from thresher.traffic import TrafficLog, read_traffic
from tune.serve import ServeOptions, check_options, is_loopback, resolve_api_key
from tune.serve_app import AppOptions, attach_model, create_app


class FakeClassifier:
    """'pos' when the text holds 'good', else 'neg'; probabilities from the text's length."""

    name = "fake-run"
    kind = "classify"
    labels = ["neg", "pos"]

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    def predict(self, texts):
        self.batches.append(list(texts))
        if self.fail:
            raise RuntimeError("out of memory\nsecond line")
        p_pos = np.array([0.9 if "good" in t else 0.2 for t in texts])
        probs = np.stack([1 - p_pos, p_pos], axis=1)
        return [self.labels[i] for i in probs.argmax(1)], probs


class FakeGenerator:
    name = "fake-sft"
    kind = "generate"
    labels: list[str] = []

    def generate(self, prompts, max_new_tokens):
        return [f"{p[::-1]}"[:max_new_tokens] for p in prompts]


def client(model=None, **options) -> TestClient:
    return TestClient(create_app(model, AppOptions(**options)), raise_server_exceptions=False)


def test_predict_answers_every_text_in_order():
    model = FakeClassifier()
    with client(model) as c:
        r = c.post("/v1/predict", json={"texts": ["good one", "bad one", "very good"]})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "fake-run"
    assert [p["label"] for p in body["predictions"]] == ["pos", "neg", "pos"]
    assert body["predictions"][1]["probs"] == pytest.approx({"neg": 0.8, "pos": 0.2})
    assert model.batches == [["good one", "bad one", "very good"]]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"texts": []}, 400, "'texts' is empty"),
        ({"texts": ["ok", 3]}, 400, "texts[1] is a int, not a string"),
        ({"texts": ["ok", None]}, 400, "texts[1] is a NoneType"),
        ({"texts": "just one"}, 400, "'texts': Input should be a valid list"),
        ({"text": ["x"]}, 400, "missing field 'texts'"),
        ({"texts": ["a"] * 5}, 413, "5 texts in one request; send at most 4 (--max-texts)"),
        ({"texts": ["ok", "x" * 11]}, 413, "texts[1] has 11 characters; at most 10"),
        (["a list"], 400, "the body must be a JSON object"),
    ],
)
def test_bad_requests_get_a_one_line_reason(body, status, needle):
    model = FakeClassifier()
    with client(model, max_texts=4, max_chars=10) as c:
        r = c.post("/v1/predict", json=body)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"]
    assert needle in r.json()["error"] and "\n" not in r.json()["error"]
    assert model.batches == []


def test_malformed_json_and_unknown_paths():
    with client(FakeClassifier()) as c:
        bad = c.post(
            "/v1/predict", content=b'{"texts": [', headers={"content-type": "application/json"}
        )
        missing = c.post("/v1/predict")
        unknown = c.get("/v2/nothing")
        form = c.post("/v1/predict", data={"texts": "x"})
        method = c.get("/v1/predict")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    assert missing.status_code == 400 and "\n" not in missing.json()["error"]
    assert unknown.status_code == 404 and "/v1/predict" in unknown.json()["error"]
    assert form.status_code == 400 and "Content-Type: application/json" in form.json()["error"]
    assert method.status_code == 405 and "GET /v1/predict: method not allowed" in method.text


def test_a_model_failure_is_a_500_with_one_line():
    with client(FakeClassifier(fail=True)) as c:
        r = c.post("/v1/predict", json={"texts": ["x"]})
        again = c.get("/healthz")
    assert r.status_code == 500 and r.json() == {"error": "the model failed: out of memory"}
    assert again.status_code == 200


def test_api_key_is_checked_but_not_on_healthz():
    with client(FakeClassifier(), api_key="s3cret") as c:
        none = c.post("/v1/predict", json={"texts": ["x"]})
        wrong = c.post(
            "/v1/predict", json={"texts": ["x"]}, headers={"Authorization": "Bearer nope"}
        )
        right = c.post(
            "/v1/predict", json={"texts": ["x"]}, headers={"Authorization": "Bearer s3cret"}
        )
        metrics = c.get("/metrics")
        health = c.get("/healthz")
    assert none.status_code == 401 and wrong.status_code == 401
    assert "Authorization: Bearer" in none.json()["error"] and "s3cret" not in none.text
    assert right.status_code == 200 and metrics.status_code == 401
    assert health.status_code == 200


def test_healthz_is_503_until_a_model_is_attached():
    app = create_app(None, AppOptions())
    with TestClient(app) as c:
        before = c.get("/healthz")
        early = c.post("/v1/predict", json={"texts": ["x"]})
        c.portal.call(attach_model, app, FakeClassifier())  # on the app's event loop
        after = c.get("/healthz")
        answer = c.post("/v1/predict", json={"texts": ["good"]})
    assert before.status_code == 503 and early.status_code == 503
    assert "loading" in early.json()["error"]
    assert after.status_code == 200 and after.json()["model"] == "fake-run"
    assert answer.json()["predictions"][0]["label"] == "pos"


def test_metrics_count_requests_texts_batches_and_errors():
    with client(FakeClassifier(), max_texts=2) as c:
        c.post("/v1/predict", json={"texts": ["a", "b"]})
        c.post("/v1/predict", json={"texts": ["c"]})
        c.post("/v1/predict", json={"texts": []})
        text = c.get("/metrics").text
    assert 'thresher_serve_requests_total{endpoint="/v1/predict",status="200"} 2.0' in text
    assert 'thresher_serve_requests_total{endpoint="/v1/predict",status="400"} 1.0' in text
    assert "thresher_serve_texts_total 3.0" in text
    assert (
        "thresher_serve_batch_size_count 2.0" in text
        and "thresher_serve_batch_size_sum 3.0" in text
    )
    assert 'thresher_serve_errors_total{endpoint="/v1/predict",kind="bad_request"} 1.0' in text
    assert 'thresher_serve_request_seconds_count{endpoint="/v1/predict"} 3.0' in text


def test_two_apps_keep_their_own_metrics():
    with client(FakeClassifier()) as a, client(FakeClassifier()) as b:
        a.post("/v1/predict", json={"texts": ["x"]})
        assert "thresher_serve_texts_total 1.0" in a.get("/metrics").text
        assert "thresher_serve_texts_total 0.0" in b.get("/metrics").text


def test_generate_and_predict_answer_only_their_kind_of_run():
    with client(FakeGenerator(), max_new_tokens=8) as c:
        gen = c.post("/v1/generate", json={"prompts": ["abc", "hello"], "max_new_tokens": 3})
        wrong = c.post("/v1/predict", json={"texts": ["x"]})
        too_long = c.post("/v1/generate", json={"prompts": ["x"], "max_new_tokens": 9})
    assert gen.json() == {"model": "fake-sft", "generations": [{"text": "cba"}, {"text": "oll"}]}
    assert wrong.status_code == 404 and "use /v1/generate" in wrong.json()["error"]
    assert too_long.status_code == 400 and "1..8" in too_long.json()["error"]
    with client(FakeClassifier()) as c:
        other = c.post("/v1/generate", json={"prompts": ["x"]})
    assert other.status_code == 404 and "use /v1/predict" in other.json()["error"]


@pytest.mark.parametrize("log_text", [True, False])
def test_each_predicted_text_is_one_traffic_row(tmp_path, log_text):
    log = TrafficLog(tmp_path / "traffic", log_text=log_text)
    app = create_app(FakeClassifier(), AppOptions(), log)
    with TestClient(app) as c:
        c.post("/v1/predict", json={"texts": ["good a", "bad b"]})
        c.post("/v1/predict", json={"texts": ["good c"]})
    log.close()
    rows = read_traffic(tmp_path / "traffic")
    assert len(rows) == 3 and set(rows["model"]) == {"fake-run"}
    assert rows["request_id"].nunique() == 2
    assert sorted(rows["label"]) == ["neg", "pos", "pos"]
    texts = set(rows["text"]) if log_text else set()
    assert texts == ({"good a", "bad b", "good c"} if log_text else set())
    assert rows["text"].isna().all() != log_text


def test_an_api_key_is_required_off_loopback(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    with pytest.raises(ThresherError, match="--host 0.0.0.0 is reachable from other machines"):
        resolve_api_key("0.0.0.0", None, env={})
    assert resolve_api_key("127.0.0.1", None, env={}) is None
    assert resolve_api_key("0.0.0.0", None, env={"THRESHER_SERVE_API_KEY": " k1 "}) == "k1"
    key = tmp_path / "key"
    key.write_text("k2\n")
    os.chmod(key, 0o644)
    with pytest.raises(ThresherError, match="readable by others; run `chmod 600"):
        resolve_api_key("0.0.0.0", str(key), env={})
    os.chmod(key, 0o600)
    assert resolve_api_key("0.0.0.0", str(key), env={"THRESHER_SERVE_API_KEY": "k1"}) == "k2"
    with pytest.raises(ThresherError, match="cannot read it"):
        resolve_api_key("127.0.0.1", str(tmp_path / "none"), env={})


def test_nonsense_limits_are_refused():
    with pytest.raises(ThresherError, match="--max-batch must be at least 1"):
        check_options(ServeOptions(max_batch=0))
    with pytest.raises(ThresherError, match="--precision 'fp8'"):
        check_options(ServeOptions(precision="fp8"))
    check_options(ServeOptions())
