"""``thresher serve --engine ray``: the same HTTP app on N Ray Serve replicas (``thresher[ray]``).

Every replica is one Ray actor that loads the run (``tune.serve_model.ServedModel``), opens its
own traffic log and builds the app of ``tune.serve_app.create_app`` around them, with that app's
batcher, metrics, errors and API-key rule: one code path for both engines. Ray Serve's HTTP
proxy binds ``--host:--port`` and spreads requests over the replicas.

``run(project, options, ray_options)`` connects to the cluster ``--address`` or env
``RAY_ADDRESS`` names, or starts a local Ray; deploys; calls ``on_ready`` once every replica
answers; and waits for SIGTERM/SIGINT. It then drains the replicas (requests in flight are
answered, each batcher empties, each traffic log is written) and stops what it started: a local
Ray entirely, on a cluster only its own application. Ray is imported lazily.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.errors import ThresherError
from thresher.project import Project
from tune.serve import DRAIN_TIMEOUT_S, ServeOptions, bind_socket, check_options, resolve_api_key

log = logging.getLogger(__name__)

APP_NAME = "thresher-serve"
LOCAL_OBJECT_STORE_BYTES = 128 * 1024**2  # requests are small; the store holds no models
INSTALL_HINT = "--engine ray needs Ray Serve: pip install 'thresher[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide ``--engine ray`` serves. ``address`` None: env ``RAY_ADDRESS``, else a
    local Ray started for this server (stopped with it)."""

    replicas: int = 1
    address: str | None = None
    replica_cpus: float = 1.0  # CPUs each replica reserves (and torch threads it runs)


class ServeReplica:
    """One replica: the run's model, a traffic log of its own, and the app around them.

    Ray Serve builds the ASGI app after the constructor (``__serve_build_asgi_app__``), runs its
    lifespan (the batcher starts and, at shutdown, empties) and calls ``__del__`` last."""

    def __init__(self, run_dir: str, app_options: Any, traffic_dir: str, log_text: bool,
                 device: str | None, precision: str, threads: int) -> None:  # fmt: skip
        import torch

        from thresher.traffic import TrafficLog
        from tune.serve_model import ServedModel

        torch.set_num_threads(threads)  # the CPUs Ray reserved for this replica, no more
        self.model = ServedModel.load(run_dir, device=device, precision=precision)
        self.app_options = app_options
        self.traffic = TrafficLog(traffic_dir, log_text=log_text)

    def __serve_build_asgi_app__(self):
        from tune.serve_app import create_app

        return create_app(self.model, self.app_options, self.traffic)

    def __del__(self) -> None:
        traffic = getattr(self, "traffic", None)
        if traffic is not None:
            traffic.close()


def check_ray_options(ray_options: RayOptions) -> None:
    """One-line errors for replica counts and sizes that make no sense."""
    if ray_options.replicas < 1:
        raise ThresherError(f"--replicas must be at least 1, not {ray_options.replicas}")
    if ray_options.replica_cpus <= 0:
        raise ThresherError(f"--replica-cpus must be above 0, not {ray_options.replica_cpus}")


def import_serve():
    """``ray.serve``, or a one-line error saying how to install it."""
    try:
        import ray
        from ray import serve
    except ImportError as err:
        raise ThresherError(INSTALL_HINT) from err
    return ray, serve


def build_app(run_dir: Path, options: ServeOptions, ray_options: RayOptions, api_key, traffic_dir):
    """The Ray Serve application: ``replicas`` copies of ``ServeReplica`` behind one route."""
    from tune.serve_app import AppOptions

    _, serve = import_serve()
    app_options = AppOptions(
        max_batch=options.max_batch,
        max_wait_ms=options.max_wait_ms,
        max_texts=options.max_texts,
        max_chars=options.max_chars,
        api_key=api_key,
    )
    deployment = serve.deployment(
        serve.ingress()(ServeReplica),
        name="model",
        num_replicas=ray_options.replicas,
        # enough requests per replica for its batcher to fill a batch of single texts
        max_ongoing_requests=max(16, 2 * options.max_batch),
        ray_actor_options={
            "num_cpus": ray_options.replica_cpus,
            "num_gpus": 1 if options.device == "cuda" else 0,
        },
        graceful_shutdown_timeout_s=DRAIN_TIMEOUT_S,
        max_constructor_retry_count=1,  # a run that does not load will not load on a retry
    )
    return deployment.bind(
        str(run_dir), app_options, str(traffic_dir), options.log_text,
        options.device, options.precision, max(1, math.floor(ray_options.replica_cpus)),
    )  # fmt: skip


def run(project: Project, options: ServeOptions, ray_options: RayOptions, *, on_ready=None):
    """Serve ``options.run`` on Ray Serve until SIGTERM/SIGINT; returns after draining.
    ``on_ready(model_name, url, endpoint)`` is called once every replica answers."""
    from tune.evaluate import find_run
    from tune.runtime import read_run_config, trained_on_pairs

    check_options(options)
    check_ray_options(ray_options)
    address = ray_options.address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        check_local_room(ray_options)
    api_key = resolve_api_key(options.host, options.api_key_file)
    # absolute: replicas run in other processes, maybe on other machines (a shared DIR)
    run_dir = find_run(project.root / "tune", options.run).resolve()
    config = read_run_config(run_dir)
    name = str(config.get("run") or run_dir.name)
    endpoint = "/v1/generate" if trained_on_pairs(config) else "/v1/predict"
    if address is None:
        port = free_port(options.host, options.port)
    elif options.port == 0:
        raise ThresherError("--port 0 picks a free port of this machine; on a cluster give one")
    else:  # Serve's proxies listen on the cluster's nodes (and may already hold the port)
        port = options.port
    ray, serve = import_serve()

    stop = threading.Event()
    previous: dict = {}
    try:
        connect(ray, address, local_cpus(ray_options))
        # after ray.init, which installs a SIGTERM handler of its own (it aborts the process)
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _stop_once(stop))
        serve.start(http_options={"host": options.host, "port": port})
        traffic_dir = Path(project.traffic_dir).resolve()
        app = build_app(run_dir, options, ray_options, api_key, traffic_dir)
        if not stop.is_set():
            try:
                serve.run(app, name=APP_NAME, route_prefix="/")
            except RuntimeError as err:
                raise ThresherError(
                    f"the replicas of {name} did not start: {replica_error(serve) or err}"
                ) from err
        if not stop.is_set():
            if on_ready is not None:
                on_ready(name, f"http://{_url_host(options.host)}:{port}", endpoint)
            log.info("serving %s from %s on %d Ray replicas", name, run_dir, ray_options.replicas)
            while not stop.wait(0.5):
                pass
    finally:
        shut_down(ray, serve)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def connect(ray, address: str | None, cpus: int) -> None:
    """Join the cluster at ``address``, else start a local Ray of our own with ``cpus`` CPUs (no
    dashboard, a small object store; never one that ``ray start`` left running: pass
    ``--address auto`` for that)."""
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines are for operators
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init("local", num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as err:
        if not address:
            raise ThresherError(f"cannot start a local Ray: {_first_line(err)}") from err
        raise ThresherError(
            f"cannot reach the Ray cluster at {address} (--address / RAY_ADDRESS): "
            f"{_first_line(err)}; check `ray status` there, and with Ray's token "
            f"authentication set RAY_AUTH_MODE=token here"
        ) from err


def local_cpus(ray_options: RayOptions) -> int:
    """The CPUs a local Ray reserves: what the replicas ask for, no more."""
    return max(1, math.ceil(ray_options.replicas * ray_options.replica_cpus))


def check_local_room(ray_options: RayOptions) -> None:
    """A local Ray has no autoscaler: replicas that do not fit this machine's CPUs would wait
    forever (and more replicas than cores gain nothing)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    wanted = ray_options.replicas * ray_options.replica_cpus
    if wanted > (cpus or 1):
        raise ThresherError(
            f"--replicas {ray_options.replicas} x --replica-cpus {ray_options.replica_cpus:g} "
            f"needs {wanted:g} CPUs and this machine has {cpus}; ask for fewer, or serve on a "
            f"Ray cluster with --address"
        )


def replica_error(serve) -> str | None:
    """The last line of the error a replica's constructor raised (Ray keeps the traceback in
    the deployment's status), if there is one."""
    try:
        app = serve.status().applications.get(APP_NAME)
        messages = [d.message for d in app.deployments.values()] if app else []
    except Exception:  # noqa: BLE001 - only a better message is lost
        return None
    for message in messages:
        lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return None


def shut_down(ray, serve) -> None:
    """Drain and stop: a local Ray entirely; on a cluster, only this application."""
    if not ray.is_initialized():
        return
    try:
        # drains the replicas (answers in flight, batchers, traffic logs); the rest of a local
        # Ray goes with ray.shutdown (serve.shutdown would also kill the controller, noisily)
        serve.delete(APP_NAME)
    except Exception as err:  # noqa: BLE001 - stopping after a failed start: keep its error
        log.warning("could not remove the Ray Serve application %s: %s", APP_NAME, err)
    finally:
        ray.shutdown()  # a local Ray stops; from a cluster it only disconnects
    log.info("stopped; the replicas wrote their traffic under the project's serve/traffic")


def free_port(host: str, port: int) -> int:
    """``port``, or any free one for 0, checked free on ``host`` (the one-line error of the
    local engine when it is taken). Ray Serve's proxy binds it afterwards."""
    sock = bind_socket(host, port)
    try:
        return sock.getsockname()[1]
    finally:
        sock.close()


def _stop_once(stop: threading.Event):
    def handle(signum, frame) -> None:
        if stop.is_set():  # a second Ctrl-C: stop without waiting for the drain
            raise KeyboardInterrupt
        stop.set()

    return handle


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
