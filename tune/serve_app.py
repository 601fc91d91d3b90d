"""The HTTP app of ``thresher serve``: ``create_app(model, options, traffic_log)`` → FastAPI app.

Endpoints: ``POST /v1/predict`` (classifiers), ``POST /v1/generate`` (runs trained on
instruction/response pairs), ``GET /healthz`` (200 once a model is attached, 503 before) and
``GET /metrics`` (Prometheus text, from a registry of this app's own). Every error answers
``{"error": "<one line>"}``. The model may be attached after the app starts (``attach_model``),
so the server can listen, and say "not ready", while a large model loads.

FastAPI is imported at the top: this module is the HTTP app and is itself imported lazily (by
``tune.serve``). The app knows nothing about how the model is loaded or how the server runs:
``tune.serve`` runs it under uvicorn, and a Ray Serve deployment can mount the same app.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tune.serve_batcher import Batcher, BatcherClosed

log = logging.getLogger(__name__)

CLASSIFY, GENERATE = "classify", "generate"
ENDPOINTS = ("/v1/predict", "/v1/generate", "/healthz", "/metrics")


@dataclass(frozen=True)
class AppOptions:
    """Limits and batching of one app. ``api_key`` None = no key asked (loopback only: the
    caller, ``tune.serve``, enforces that)."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_texts: int = 256
    max_chars: int = 20000
    max_new_tokens: int = 512
    api_key: str | None = None


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "bad_request") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class PredictRequest(BaseModel):
    texts: list[Any] = Field(description="The texts to classify, at least one.")


class GenerateRequest(BaseModel):
    prompts: list[Any] = Field(description="The prompts to continue, at least one.")
    max_new_tokens: int = Field(64, description="Most tokens generated per prompt.")


class ServeMetrics:
    """The app's Prometheus metrics, in a registry of their own (two apps in one process, as in
    tests, do not collide)."""

    def __init__(self, max_batch: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "thresher_serve_requests",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "thresher_serve_request_seconds",
            "Time to answer a request, seconds (queueing + batching + model).",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch})
        self.batch_size = Histogram(
            "thresher_serve_batch_size",
            "Texts per model call (dynamic batches).",
            buckets=[s for s in sizes if s <= max_batch],
            registry=self.registry,
        )
        self.texts = Counter(
            "thresher_serve_texts", "Texts (or prompts) answered.", registry=self.registry
        )
        self.errors = Counter(
            "thresher_serve_errors",
            "Requests answered with an error, by endpoint and kind (bad_request, unauthorized, "
            "not_found, not_ready, model).",
            ["endpoint", "kind"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Serving:
    """The app's state: the model (once attached), its batcher, the traffic log, the metrics."""

    def __init__(self, options: AppOptions, traffic_log: Any = None) -> None:
        self.options = options
        self.traffic_log = traffic_log
        self.metrics = ServeMetrics(options.max_batch)
        self.model: Any = None
        self.batcher: Batcher | None = None

    def attach(self, model: Any) -> None:
        """Start answering with ``model`` (call on the app's event loop)."""
        batcher = Batcher(
            self._predict_batch,
            max_batch=self.options.max_batch,
            max_wait_ms=self.options.max_wait_ms,
            on_batch=self.metrics.batch_size.observe,
        )
        batcher.start()
        self.batcher, self.model = batcher, model

    async def close(self) -> None:
        """Finish the waiting requests and stop the batcher."""
        if self.batcher is not None:
            await self.batcher.close()

    def _predict_batch(self, texts: list[str]) -> list[tuple[str, dict[str, float]]]:
        labels, probs = self.model.predict(texts)
        names = list(self.model.labels)
        return [
            (label, {name: float(p) for name, p in zip(names, row, strict=True)})
            for label, row in zip(labels, probs, strict=True)
        ]


def create_app(model: Any = None, options: AppOptions | None = None, traffic_log: Any = None):
    """The FastAPI app answering with ``model`` (a ``tune.serve_model.ServedModel`` or anything
    with ``name``, ``kind``, ``labels``, ``predict(texts) -> (labels, probs)`` and
    ``generate(prompts, max_new_tokens) -> texts``). ``model`` None: attach one later with
    ``attach_model``; until then /healthz answers 503. ``traffic_log``: a
    ``thresher.traffic.TrafficLog`` that gets one row per predicted text (the caller closes it)."""
    options = options or AppOptions()
    serving = Serving(options, traffic_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if model is not None:
            serving.attach(model)
        yield
        await serving.close()

    app = FastAPI(
        title="thresher serve",
        summary="Predictions (and generations) of a thresher run.",
        lifespan=lifespan,
    )
    app.state.serving = serving

    def error(status: int, message: str, endpoint: str, kind: str) -> JSONResponse:
        serving.metrics.errors.labels(endpoint, kind).inc()
        return JSONResponse({"error": message}, status_code=status)

    app.add_middleware(MeasureRequests, metrics=serving.metrics)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, err: ApiError):
        return error(err.status, err.message, request.url.path, err.kind)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, err: RequestValidationError):
        message = validation_message(err.errors())
        content_type = request.headers.get("content-type", "")
        if content_type and "json" not in content_type:
            message = f"the body is {content_type}; send JSON with 'Content-Type: application/json'"
        return error(400, message, request.url.path, "bad_request")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, err: StarletteHTTPException):
        kind = "not_found" if err.status_code == 404 else "bad_request"
        message = f"{request.method} {request.url.path}: {str(err.detail).lower()}"
        if err.status_code == 405:
            message += "; see /docs for each endpoint's method"
        elif err.status_code == 404:
            message = f"no endpoint {request.url.path}; see {', '.join(ENDPOINTS)}"
        return error(err.status_code, message, "other", kind)

    def require_key(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        ok = scheme.lower() == "bearer" and secrets.compare_digest(
            token.strip().encode(), options.api_key.encode()
        )
        if not ok:
            raise ApiError(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "unauthorized"
            )

    def require_model(kind: str, endpoint: str) -> Any:
        if serving.model is None:
            raise ApiError(503, "the model is still loading; retry when /healthz answers 200",
                           "not_ready")  # fmt: skip
        if serving.model.kind != kind:
            other = "/v1/generate" if kind == CLASSIFY else "/v1/predict"
            what = "generates text" if kind == CLASSIFY else "classifies text"
            raise ApiError(
                404, f"{serving.model.name} {what}: {endpoint} is not served; use {other}",
                "not_found",
            )  # fmt: skip
        return serving.model

    @app.get("/healthz")
    async def healthz():
        """200 once the model is loaded, 503 before."""
        if serving.model is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "model": serving.model.name}

    @app.get("/metrics", dependencies=[Depends(require_key)])
    async def metrics():
        """Prometheus metrics (text format)."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(serving.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/predict", dependencies=[Depends(require_key)])
    async def predict(body: PredictRequest):
        """Classify ``texts``: one prediction per text, in input order."""
        served = require_model(CLASSIFY, "/v1/predict")
        texts = check_texts(body.texts, "texts", options)
        assert serving.batcher is not None
        try:
            results = await serving.batcher.submit(texts)
        except BatcherClosed as err:
            raise ApiError(503, "the server is shutting down", "not_ready") from err
        except Exception as err:
            log.error("the model failed on a batch: %s", err)
            raise ApiError(500, f"the model failed: {one_line(err)}", "model") from err
        serving.metrics.texts.inc(len(texts))
        if serving.traffic_log is not None:
            log_traffic(serving.traffic_log, served.name, texts, results)
        return {
            "model": served.name,
            "predictions": [{"label": label, "probs": probs} for label, probs in results],
        }

    @app.post("/v1/generate", dependencies=[Depends(require_key)])
    async def generate(body: GenerateRequest):
        """Continue ``prompts`` (runs trained on instruction/response pairs)."""
        import asyncio

        served = require_model(GENERATE, "/v1/generate")
        prompts = check_texts(body.prompts, "prompts", options)
        if not 1 <= body.max_new_tokens <= options.max_new_tokens:
            raise ApiError(400, f"max_new_tokens must be 1..{options.max_new_tokens}")
        assert serving.batcher is not None
        loop = asyncio.get_running_loop()
        try:  # on the batcher's model thread: one model call at a time
            texts = await loop.run_in_executor(
                serving.batcher.executor, served.generate, prompts, body.max_new_tokens
            )
        except Exception as err:
            log.error("the model failed to generate: %s", err)
            raise ApiError(500, f"the model failed: {one_line(err)}", "model") from err
        serving.metrics.texts.inc(len(prompts))
        return {"model": served.name, "generations": [{"text": t} for t in texts]}

    return app


class MeasureRequests:
    """Counts every HTTP request by endpoint and status and times it (a plain ASGI middleware:
    Starlette's ``BaseHTTPMiddleware`` costs a task and two streams per request)."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def attach_model(app, model: Any) -> None:
    """Start answering with ``model`` in an app made by ``create_app()`` without one (call on
    the app's event loop, after it started)."""
    app.state.serving.attach(model)


def check_texts(texts: Sequence[Any], field: str, options: AppOptions) -> list[str]:
    """``texts`` as a list of strings, or an ``ApiError`` naming the first problem."""
    if not texts:
        raise ApiError(400, f"'{field}' is empty; send at least one text")
    if len(texts) > options.max_texts:
        raise ApiError(
            413,
            f"{len(texts)} {field} in one request; send at most {options.max_texts} (--max-texts)",
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(400, f"{field}[{i}] is a {type(text).__name__}, not a string")
        if len(text) > options.max_chars:
            raise ApiError(
                413,
                f"{field}[{i}] has {len(text)} characters; "
                f"at most {options.max_chars} (--max-chars)",
            )
    return list(texts)


def validation_message(errors: Sequence[dict[str, Any]]) -> str:
    """One line for FastAPI's validation errors (its default is a list of objects)."""
    if not errors:
        return "invalid request body"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if first.get("type") == "json_invalid":
        return 'the body is not valid JSON; send e.g. {"texts": ["some text"]}'
    if first.get("type") == "missing":
        return f"missing field '{where}' in the JSON body" if where else "the body is empty"
    if not where:
        return f"the body must be a JSON object: {first.get('msg', 'invalid')}"
    return f"'{where}': {first.get('msg', 'invalid')}"


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def log_traffic(traffic_log: Any, model: str, texts: list[str], results) -> None:
    """One traffic row per text of one request (``thresher.traffic``)."""
    from thresher.traffic import Served

    request_id = uuid.uuid4().hex
    traffic_log.append(
        Served(request_id=request_id, model=model, text=text, label=label, probs=probs)
        for text, (label, probs) in zip(texts, results, strict=True)
    )
