"""One client for Argilla's REST API, with one retry policy: push, pull, users and the loop.

Every request goes through ``ArgillaClient``. Transient failures (connection errors, timeouts,
HTTP 429 and 5xx) are retried with exponential backoff and jitter, at most
``RetryPolicy.tries`` attempts in all (``DEFAULT_RETRY``: the one place to change it). Any other
status >= 400, or a transient failure that outlasts the retries, raises ``ArgillaError`` whose
one-line message names the operation, the status and the fix.

A request that may have reached the server is retried only when repeating it is harmless: GET,
HEAD, PUT and DELETE, and POSTs the caller marks ``idempotent=True`` (searches; the bulk record
upsert is a PUT keyed by record id). Other POSTs (create a user, a workspace, a metadata
property) are retried only when the connection failed before the request went out, or on 429
(the server refused it unread).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from thresher.errors import ThresherError

log = logging.getLogger(__name__)

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class ArgillaError(ThresherError):
    """An Argilla request failed. ``operation`` names it; ``status`` is the HTTP status of the
    last answer (None when the server could not be reached)."""

    def __init__(self, message: str, *, operation: str, status: int | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried: ``tries`` attempts in all; before attempt k+1 the
    wait is ``backoff_s * 2**(k-1)`` capped at ``max_backoff_s``, drawn uniformly from its upper
    half (jitter, so parallel clients do not retry in step), or the server's ``Retry-After``
    when that is longer (capped the same way)."""

    tries: int = 7
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def wait_s(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        wait = random.uniform(base / 2, base)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff_s))
        return wait


DEFAULT_RETRY = RetryPolicy()


def _transient_status(status: int) -> bool:
    return status == 429 or status >= 500


def _detail(resp) -> str:
    """The server's reason in one short line (Argilla answers ``{"detail": ...}``)."""
    text = ""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, dict):
            detail = detail.get("message") or detail.get("code") or detail
        text = str(detail)
    if not text:
        text = resp.text or resp.reason_phrase or ""
    text = re.sub(r"\s+", " ", text).strip()
    return text[:200] + ("…" if len(text) > 200 else "")


def _fix(status: int) -> str:
    if status == 401:
        return (
            "the API key was refused: check ARGILLA_API_KEY, or the owner key file that "
            "`thresher review server status` names"
        )
    if status == 403:
        return "this key's user may not do that: use an owner or admin key"
    if status == 404:
        return "not found on the server: check the dataset/workspace name, or push first"
    if status == 409:
        return "it already exists on the server"
    if status == 422:
        return "the server rejected the request's content (see above)"
    if _transient_status(status):
        return (
            "the server keeps failing: see `thresher review server logs` (or the external "
            "server's logs) and rerun"
        )
    return "see the server's answer above"


def _retry_after(resp) -> float | None:
    value = resp.headers.get("Retry-After") if resp is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare, the backoff covers it


class ArgillaClient:
    """Argilla's REST API over one ``httpx.Client`` (thread-safe: push shares one across its
    threads). ``get``/``post``/``put``/``patch``/``delete`` return the decoded JSON answer
    (None when empty) and raise ``ArgillaError``; ``send`` returns the final response for
    callers that handle a status themselves. Use as a context manager, or ``close()``."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        transport: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import httpx

        headers = {"X-Argilla-Api-Key": api_key}
        if urlparse(url).hostname in LOOPBACK:
            # The bulk answer echoes every record (vectors included); gzipping it costs the
            # server a quarter of its CPU and saves nothing on the loopback.
            headers["Accept-Encoding"] = "identity"
        self.url = url.rstrip("/")
        self.retry = retry
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            transport=transport,
        )

    def __enter__(self) -> ArgillaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:  # never the key
        return f"ArgillaClient({self.url!r})"

    # ------------------------------------------------------------ requests

    def send(
        self, method: str, path: str, what: str, *, idempotent: bool | None = None, **kwargs: Any
    ):
        """Send a request, retrying transient failures (see the module doc); returns the last
        ``httpx.Response`` whatever its status. ``idempotent`` defaults to the method's
        (GET/HEAD/PUT/DELETE yes, POST/PATCH no). Raises ``ArgillaError`` when the server
        cannot be reached within the retries."""
        import httpx
        import tenacity

        method = method.upper()
        safe = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        policy = self.retry

        def retry_error(err: BaseException) -> bool:
            if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
                return True  # nothing reached the server
            return safe and isinstance(
                err, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
            )

        def retry_status(resp) -> bool:
            return resp.status_code == 429 or (safe and resp.status_code >= 500)

        def wait(state: tenacity.RetryCallState) -> float:
            outcome = state.outcome
            resp = None if outcome is None or outcome.failed else outcome.result()
            return policy.wait_s(state.attempt_number, _retry_after(resp))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            outcome = state.outcome
            if outcome is not None and outcome.failed:
                err = outcome.exception()
                reason = f"{type(err).__name__}: {err}"
            else:
                reason = f"HTTP {outcome.result().status_code}" if outcome else "?"
            wait_s = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "%s: %s; try %d of %d in %.1f s",
                what,
                reason,
                state.attempt_number + 1,
                policy.tries,
                wait_s,
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, policy.tries)),
            wait=wait,
            retry=tenacity.retry_if_exception(retry_error) | tenacity.retry_if_result(retry_status),
            before_sleep=before_sleep,
            sleep=self._sleep,
            retry_error_callback=lambda state: state.outcome.result(),  # re-raises an error
        )
        tries = 0

        def once():
            nonlocal tries
            tries += 1
            return self._http.request(method, path, **kwargs)

        try:
            resp = retrying(once)
        except httpx.TransportError as err:
            after = f" after {tries} tries" if tries > 1 else ""
            raise ArgillaError(
                f"{what}: no answer from Argilla at {self.url}{after} ({type(err).__name__}: "
                f"{err}); check that it runs (`thresher review server status`) or "
                "ARGILLA_API_URL, then rerun",
                operation=what,
            ) from err
        if tries > 1 and _transient_status(resp.status_code):
            raise ArgillaError(
                f"{what}: HTTP {resp.status_code} after {tries} tries ({_detail(resp)}); "
                f"{_fix(resp.status_code)}",
                operation=what,
                status=resp.status_code,
            )
        return resp

    def call(
        self, method: str, path: str, what: str, *, idempotent: bool | None = None, **kwargs: Any
    ) -> Any:
        """``send``, then the decoded JSON answer (None when empty); ``ArgillaError`` on any
        status >= 400."""
        resp = self.send(method, path, what, idempotent=idempotent, **kwargs)
        if resp.status_code >= 400:
            raise ArgillaError(
                f"{what}: HTTP {resp.status_code} ({_detail(resp)}); {_fix(resp.status_code)}",
                operation=what,
                status=resp.status_code,
            )
        return resp.json() if resp.content else None

    def get(self, path: str, what: str, **kwargs: Any) -> Any:
        """GET ``path`` (retried), decoded."""
        return self.call("GET", path, what, **kwargs)

    def post(self, path: str, what: str, *, idempotent: bool = False, **kwargs: Any) -> Any:
        """POST ``path``; retried after it may have reached the server only when
        ``idempotent`` (a search, an upsert by id)."""
        return self.call("POST", path, what, idempotent=idempotent, **kwargs)

    def put(self, path: str, what: str, **kwargs: Any) -> Any:
        """PUT ``path`` (retried: Argilla's PUTs are upserts), decoded."""
        return self.call("PUT", path, what, **kwargs)

    def patch(self, path: str, what: str, *, idempotent: bool = False, **kwargs: Any) -> Any:
        """PATCH ``path``, decoded; retried like ``post``."""
        return self.call("PATCH", path, what, idempotent=idempotent, **kwargs)

    def delete(self, path: str, what: str, **kwargs: Any) -> Any:
        """DELETE ``path`` (retried), decoded."""
        return self.call("DELETE", path, what, **kwargs)


def open_client(
    conn: Any, *, retry: RetryPolicy = DEFAULT_RETRY, transport: Any = None
) -> ArgillaClient:
    """An ``ArgillaClient`` for ``conn`` (``review.server.Connection``: its url and API key)."""
    return ArgillaClient(conn.url, conn.api_key, retry=retry, transport=transport)
