"""``thresher serve``: one run behind HTTP, in the foreground, on uvicorn.

``run(project, options)`` binds the port first (``/healthz`` answers 503 while the model loads),
loads and merges the run (``tune.serve_model``), then answers through the app of
``tune.serve_app``. SIGTERM or Ctrl-C drains: the listening socket closes, requests in flight
are answered, the batcher empties, the traffic log is written, and ``run`` returns. A second
Ctrl-C stops without waiting.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from thresher.errors import ThresherError
from thresher.project import Project
from tune.serve_model import PRECISIONS

log = logging.getLogger(__name__)

API_KEY_ENV = "THRESHER_SERVE_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DRAIN_TIMEOUT_S = 30


@dataclass(frozen=True)
class ServeOptions:
    """What ``thresher serve`` was asked for (the CLI flags)."""

    run: str | None = None  # a run name, a folder, "production"; None = the latest run
    host: str = "127.0.0.1"
    port: int = 8000
    log_text: bool = True
    api_key_file: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_texts: int = 256
    max_chars: int = 20000
    device: str | None = None  # cpu | cuda; None = the GPU when there is one
    precision: str = "auto"  # auto | bf16 | fp32


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    import ipaddress

    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(host: str, api_key_file: str | None, env: dict[str, str] | None = None):
    """The API key requests must send (``--api-key-file``, else env ``THRESHER_SERVE_API_KEY``),
    or None. A key file readable by group or others is refused; so is a non-loopback ``host``
    without a key."""
    env = os.environ if env is None else env
    key = None
    if api_key_file:
        path = Path(api_key_file)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ThresherError(f"--api-key-file {path}: cannot read it ({err.strerror})") from err
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ThresherError(
                f"--api-key-file {path} is readable by others; run `chmod 600 {path}`"
            )
        key = text.strip()
        if not key:
            raise ThresherError(f"--api-key-file {path} is empty; write the key in it")
    elif env.get(API_KEY_ENV, "").strip():
        key = env[API_KEY_ENV].strip()
    if key is None and not is_loopback(host):
        raise ThresherError(
            f"--host {host} is reachable from other machines: give an API key with "
            f"--api-key-file FILE or env {API_KEY_ENV}, or bind --host 127.0.0.1"
        )
    return key


def check_options(options: ServeOptions) -> None:
    """One-line errors for limits that make no sense."""
    for flag, value in (
        ("--max-batch", options.max_batch),
        ("--max-texts", options.max_texts),
        ("--max-chars", options.max_chars),
    ):
        if value < 1:
            raise ThresherError(f"{flag} must be at least 1, not {value}")
    if options.max_wait_ms < 0:
        raise ThresherError(f"--max-wait-ms must be >= 0, not {options.max_wait_ms}")
    if not 0 <= options.port <= 65535:
        raise ThresherError(f"--port {options.port} is not a port (0..65535)")
    if options.device not in (None, "cpu", "cuda"):
        raise ThresherError(f"--device {options.device!r}: choose cpu or cuda")
    if options.precision not in PRECISIONS:
        raise ThresherError(f"--precision {options.precision!r}: choose {', '.join(PRECISIONS)}")


def run(project: Project, options: ServeOptions, *, on_ready=None) -> None:
    """Serve ``options.run`` of ``project`` until SIGTERM/SIGINT; returns after draining.
    ``on_ready(model_name, url, endpoint)`` is called once the model answers (the CLI prints
    the URL line)."""
    import asyncio

    from thresher.traffic import TrafficLog
    from tune.evaluate import find_run

    check_options(options)
    api_key = resolve_api_key(options.host, options.api_key_file)
    run_dir = find_run(project.root / "tune", options.run)
    traffic = TrafficLog(project.traffic_dir, log_text=options.log_text)
    try:
        asyncio.run(_serve(run_dir, options, api_key, traffic, on_ready))
    finally:
        traffic.close()
        log.info("stopped; %d rows written to %s", traffic.rows_written, project.traffic_dir)


async def _serve(run_dir: Path, options: ServeOptions, api_key, traffic, on_ready) -> None:
    import asyncio

    from tune.serve_app import AppOptions, attach_model, create_app
    from tune.serve_model import ServedModel

    sock = bind_socket(options.host, options.port)
    port = sock.getsockname()[1]
    app = create_app(
        None,
        AppOptions(
            max_batch=options.max_batch,
            max_wait_ms=options.max_wait_ms,
            max_texts=options.max_texts,
            max_chars=options.max_chars,
            api_key=api_key,
        ),
        traffic,
    )
    server = _uvicorn_server(app, options)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    try:
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if serving.done():  # uvicorn could not start; it logged why
            await serving
            return
        try:
            model = await asyncio.to_thread(
                ServedModel.load, run_dir, device=options.device, precision=options.precision
            )
        except BaseException:
            server.should_exit = True
            await serving
            raise
        if not server.should_exit:  # not stopped while loading
            attach_model(app, model)
            if on_ready is not None:
                endpoint = "/v1/generate" if model.kind == "generate" else "/v1/predict"
                on_ready(model.name, f"http://{_url_host(options.host)}:{port}", endpoint)
            log.info(
                "serving %s from %s (%s, %s)", model.name, run_dir, model.device, model.precision
            )
        await serving
    finally:
        sock.close()


def bind_socket(host: str, port: int):
    """A TCP socket bound to ``host:port`` (``port`` 0: any free one), or a one-line error."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ThresherError(f"--host {host}: not an address of this machine ({err})") from err
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ThresherError(
            f"cannot listen on {host}:{port}: {err.strerror}; choose another --port"
        ) from err
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _uvicorn_server(app, options: ServeOptions):
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM after its graceful shutdown (the process then dies by the
        signal); a drained server exits 0 instead."""

        @contextlib.contextmanager
        def capture_signals(self):
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=DRAIN_TIMEOUT_S,
        server_header=False,
    )
    return Server(config)
