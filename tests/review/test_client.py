"""review.client: one retry policy over a fake transport (offline)."""

from __future__ import annotations

import httpx
import pytest

from review.client import ArgillaClient, ArgillaError, RetryPolicy

URL = "http://127.0.0.1:6900"


class Script:
    """A fake Argilla answering ``statuses`` in turn (the last one forever), recording calls."""

    def __init__(self, *statuses: int | type[Exception], body: object = None, headers=None):
        self.statuses = list(statuses)
        self.body = {"ok": True} if body is None else body
        self.headers = headers or {}
        self.calls: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        step = self.statuses[min(len(self.calls), len(self.statuses)) - 1]
        if isinstance(step, type):
            raise step("boom", request=request)
        if step >= 400:
            return httpx.Response(step, json={"detail": f"status {step}"}, headers=self.headers)
        return httpx.Response(step, json=self.body)


def _client(script: Script, tries: int = 4, sleeps: list[float] | None = None) -> ArgillaClient:
    waits = sleeps if sleeps is not None else []
    return ArgillaClient(
        URL,
        "secret-key",
        retry=RetryPolicy(tries=tries, backoff_s=1.0, max_backoff_s=3.0),
        transport=httpx.MockTransport(script),
        sleep=waits.append,
    )


def test_503_twice_then_200_succeeds_with_growing_jittered_waits():
    script = Script(503, 503, 200, body={"items": [1]})
    waits: list[float] = []
    with _client(script, sleeps=waits) as client:
        assert client.get("/api/v1/me/datasets", "list datasets") == {"items": [1]}
    assert len(script.calls) == 3
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0  # backoff 1 s doubling, upper half


def test_connection_errors_and_timeouts_are_retried():
    script = Script(httpx.ConnectError, httpx.ReadTimeout, 200)
    with _client(script) as client:
        assert client.put("/api/v1/datasets/d/records/bulk", "bulk upsert", json={}) == {"ok": True}
    assert len(script.calls) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried_and_say_the_fix_in_one_line(status):
    script = Script(status)
    with _client(script) as client, pytest.raises(ArgillaError) as err:
        client.get("/api/v1/users", "list users")
    assert len(script.calls) == 1
    message = str(err.value)
    assert message.startswith(f"list users: HTTP {status} (status {status}); ")
    assert "\n" not in message and "secret-key" not in message
    assert err.value.status == status and err.value.operation == "list users"


def test_429_is_retried_and_retry_after_is_honoured_within_the_cap():
    script = Script(429, 200, headers={"Retry-After": "2.5"})
    waits: list[float] = []
    with _client(script, sleeps=waits) as client:
        client.get("/x", "x")
    assert waits == [2.5]
    script = Script(429, 200, headers={"Retry-After": "120"})
    waits = []
    with _client(script, sleeps=waits) as client:
        client.get("/x", "x")
    assert waits == [3.0]  # max_backoff_s


def test_exhausted_retries_raise_one_line_naming_operation_status_and_fix():
    script = Script(502)
    waits: list[float] = []
    with _client(script, tries=4, sleeps=waits) as client, pytest.raises(ArgillaError) as err:
        client.get("/api/v1/datasets/d/records", "list records")
    assert len(script.calls) == 4 and len(waits) == 3
    assert max(waits) <= 3.0
    message = str(err.value)
    assert message.startswith("list records: HTTP 502 after 4 tries")
    assert "thresher review server logs" in message and "\n" not in message


def test_unreachable_server_is_one_line_after_the_retries():
    script = Script(httpx.ConnectError)
    with _client(script, tries=3) as client, pytest.raises(ArgillaError) as err:
        client.get("/api/v1/me", "who am I")
    assert len(script.calls) == 3 and err.value.status is None
    message = str(err.value)
    assert message.startswith(f"who am I: no answer from Argilla at {URL} after 3 tries")
    assert "thresher review server status" in message and "\n" not in message


def test_non_idempotent_post_is_not_repeated_once_it_may_have_reached_the_server():
    for failure in (500, 503, httpx.ReadTimeout, httpx.RemoteProtocolError):
        script = Script(failure, 200)
        with _client(script) as client, pytest.raises(ArgillaError):
            client.post("/api/v1/users", "create user", json={"username": "a"})
        assert len(script.calls) == 1, failure
    # ... but is when nothing went out, or the server refused it unread (429)
    for failure in (httpx.ConnectError, 429):
        script = Script(failure, 201)
        with _client(script) as client:
            client.post("/api/v1/users", "create user", json={"username": "a"})
        assert len(script.calls) == 2, failure
    # an idempotent POST (a search) is retried like a GET
    script = Script(503, 200)
    with _client(script) as client:
        client.post("/api/v1/datasets/d/records/search", "search", json={}, idempotent=True)
    assert len(script.calls) == 2


def test_send_returns_the_final_answer_for_callers_that_handle_a_status():
    script = Script(503, 404)
    with _client(script) as client:
        assert client.send("GET", "/api/v1/datasets/gone", "find dataset").status_code == 404
    assert len(script.calls) == 2


def test_key_header_loopback_identity_and_repr():
    seen: list[httpx.Request] = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200)

    with ArgillaClient(URL, "secret-key", transport=httpx.MockTransport(handler)) as client:
        assert client.get("/x", "x") is None  # empty answer
        assert "secret-key" not in repr(client)
    assert seen[0].headers["X-Argilla-Api-Key"] == "secret-key"
    assert seen[0].headers["Accept-Encoding"] == "identity"
    remote = "https://argilla.example.org"
    with ArgillaClient(remote, "secret-key", transport=httpx.MockTransport(handler)) as client:
        client.get("/x", "x")
    assert seen[-1].headers.get("Accept-Encoding") != "identity"
