"""The embedded server on a shared machine: private files, Redis behind a password, pid checks
that never signal an unrelated process, no key in a repr, a warning for plain http."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from review import server
from review.server import (
    Connection,
    ServerPaths,
    connection,
    memory_mb,
    redis_password,
    secure_home,
    server_down,
    server_processes,
)
from thresher.cli import main


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.delenv(server.ENV_URL, raising=False)  # the embedded server, not an external one
    return ServerPaths(tmp_path / "home")


@pytest.fixture
def sleeper():
    """An unrelated process in its own process group (as the server's processes are)."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _pid_file(paths: ServerPaths, name: str, pid: int, started) -> None:
    paths.run.mkdir(parents=True, exist_ok=True)
    paths.pid_file(name).write_text(json.dumps({"pid": pid, "started": started}))


# ---------------------------------------------------------------- pid files and process checks


def test_down_never_signals_a_process_that_reused_the_pid(paths, sleeper):
    started = psutil.Process(sleeper.pid).create_time()
    _pid_file(paths, "worker", sleeper.pid, started - 3600)  # the pid's earlier owner
    assert server_down(paths) == []
    time.sleep(0.2)
    assert sleeper.poll() is None  # not signalled
    assert not paths.pid_file("worker").exists()
    assert server.server_status(paths).pids == {}


def test_pid_file_without_a_start_time_is_not_trusted(paths, sleeper):
    _pid_file(paths, "server", sleeper.pid, None)
    assert server_down(paths) == []
    time.sleep(0.2)
    assert sleeper.poll() is None


def test_down_stops_the_process_its_pid_file_names(paths, sleeper):
    _pid_file(paths, "osmem", sleeper.pid, psutil.Process(sleeper.pid).create_time())
    assert server.server_status(paths).pids == {"osmem": sleeper.pid}
    assert server_down(paths) == ["osmem"]
    assert sleeper.wait(timeout=10) == -15  # SIGTERM


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="older pid files came from /proc")
def test_pid_files_of_older_versions_still_name_their_process(paths, sleeper):
    ticks = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    _pid_file(paths, "redis", sleeper.pid, ticks)
    assert server.server_status(paths).pids == {"redis": sleeper.pid}
    _pid_file(paths, "redis", sleeper.pid, str(int(ticks) - 360000))  # an hour earlier
    assert server.server_status(paths).pids == {}


def test_spawned_processes_get_private_pid_log_and_data_files(paths):
    script = "touch made-by-child && sleep 60"
    pid = server._spawn(paths, "osmem", ["sh", "-c", script], dict(os.environ))
    leader = psutil.Process(pid)
    try:
        info = json.loads(paths.pid_file("osmem").read_text())
        assert info["pid"] == pid
        assert info["started"] == pytest.approx(psutil.Process(pid).create_time(), abs=1.5)
        assert _mode(paths.pid_file("osmem")) == 0o600
        assert _mode(paths.log_file("osmem")) == 0o600
        assert _mode(paths.run) == _mode(paths.logs) == 0o700
        made = paths.root / "made-by-child"
        deadline = time.monotonic() + 10
        while not made.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _mode(made) == 0o600  # the children's umask is 077
        procs = server_processes(paths)
        assert {p.pid for p in procs} >= {pid}
        assert memory_mb(paths) > 0
        assert not list(paths.run.glob(".*.tmp"))  # the pid file was written atomically
    finally:
        assert server_down(paths) == ["osmem"]
    assert memory_mb(paths) == 0
    assert not server._running(leader)


# ---------------------------------------------------------------- files under THRESHER_HOME


def test_secure_home_tightens_what_older_versions_left_open(paths, tmp_path):
    for folder in (paths.data, paths.logs, paths.users_dir):
        folder.mkdir(parents=True, mode=0o755)
        os.chmod(folder, 0o755)
    files = [paths.data / "argilla.db", paths.logs / "server.log", paths.users_dir / "ann.json"]
    for file in files:
        file.write_text("x")
        os.chmod(file, 0o644)
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    os.chmod(outside, 0o644)
    (paths.root / "link").symlink_to(outside)
    os.chmod(paths.home, 0o755)

    secure_home(paths)

    for folder in (paths.home, paths.root, paths.data, paths.logs, paths.run, paths.users_dir):
        assert _mode(folder) == 0o700, folder
    for file in files:
        assert _mode(file) == 0o600, file
    assert _mode(outside) == 0o644  # a link's target is left alone


def test_secrets_are_written_private(paths):
    server.write_secret(paths.users_dir / "alice.json", {"api_key": "k"})
    assert _mode(paths.users_dir) == 0o700
    assert _mode(paths.users_dir / "alice.json") == 0o600
    creds, new = server._owner_credentials(paths)
    assert new and _mode(paths.owner_file) == 0o600 and _mode(paths.root) == 0o700


def test_redis_password_is_made_once_and_kept_in_a_private_config(paths):
    password = redis_password(paths)
    assert len(password) == 64
    conf = paths.redis_conf
    assert _mode(conf) == 0o600 and _mode(conf.parent) == 0o700
    text = conf.read_text()
    assert f"requirepass {password}\n" in text and "bind 127.0.0.1\n" in text
    assert redis_password(paths) == password  # kept across `server up`s
    # an install from before the password (no requirepass line) gets one
    conf.write_text("bind 127.0.0.1\n")
    assert len(redis_password(paths)) == 64


# ---------------------------------------------------------------- connection


def test_connection_repr_hides_the_api_key(monkeypatch):
    conn = Connection("http://127.0.0.1:6900", "thr.owner.s3cret-key", external=False)
    assert "s3cret" not in repr(conn) and "s3cret" not in str(conn)
    assert "127.0.0.1:6900" in repr(conn)
    monkeypatch.setenv(server.ENV_URL, "https://argilla.example.org")
    monkeypatch.setenv(server.ENV_KEY, "ext-s3cret-key")
    conn = connection()
    assert conn.api_key == "ext-s3cret-key" and "s3cret" not in repr(conn)


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://10.1.2.3:6900", True),
        ("http://argilla.example.org", True),
        ("HTTP://argilla.example.org:80/", True),
        ("https://argilla.example.org", False),
        ("http://127.0.0.1:6900", False),
        ("http://127.0.0.2:6900", False),
        ("http://localhost:6900", False),
        ("http://[::1]:6900", False),
    ],
)
def test_plain_http_to_another_host_is_warned_once(monkeypatch, caplog, url, warned):
    monkeypatch.setattr(server, "_warned_plain_http", False)
    monkeypatch.setenv(server.ENV_URL, url)
    monkeypatch.setenv(server.ENV_KEY, "ext-s3cret-key")
    with caplog.at_level(logging.WARNING, logger="review.server"):
        connection()
        connection()
    messages = [r.getMessage() for r in caplog.records if r.name == "review.server"]
    assert len(messages) == (1 if warned else 0)
    if warned:
        assert "unencrypted" in messages[0] and "s3cret" not in messages[0]


# ---------------------------------------------------------------- against the real server


def _redis_say(port: int, *commands: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"".join(c + b"\r\n" for c in commands))
        data = b""
        deadline = time.monotonic() + 5
        while data.count(b"\r\n") < len(commands) and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.integration
def test_redis_refuses_a_client_without_the_password(argilla):
    paths = argilla.paths
    port = json.loads(paths.state.read_text())["redis_port"]
    password = redis_password(paths)
    assert _redis_say(port, b"PING").startswith(b"-NOAUTH")
    assert _redis_say(port, b"AUTH wrong-password", b"PING").startswith(b"-WRONGPASS")
    assert _redis_say(port, b"AUTH " + password.encode(), b"PING") == b"+OK\r\n+PONG\r\n"
    redis_pid = server._read_pid(paths, "redis")[0]
    listening = [
        c.laddr
        for c in psutil.Process(redis_pid).net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and {a.ip for a in listening} == {"127.0.0.1"}


@pytest.mark.integration
def test_no_secret_on_a_command_line_or_in_a_log(argilla):
    paths = argilla.paths
    creds = json.loads(paths.owner_file.read_text())
    secrets = [redis_password(paths), creds["api_key"], creds["password"]]
    secrets.append(creds["auth_secret_key"])
    procs = server_processes(paths)
    assert {p.pid for p in procs} >= set(server.server_status(paths).pids.values())
    assert len(procs) >= len(server.PROCESSES)
    for proc in procs:
        cmdline = " ".join(proc.cmdline())
        for secret in secrets:
            assert secret not in cmdline, proc
    for log in paths.logs.glob("*.log"):
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, log


@pytest.mark.integration
def test_server_files_are_private(argilla):
    paths = argilla.paths
    assert _mode(paths.home) == 0o700
    assert (paths.data / "argilla.db").exists()  # made by the server's own processes
    for path in [paths.root, *paths.root.rglob("*")]:
        if path.is_symlink():
            continue
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path


@pytest.mark.integration
def test_status_exits_zero_while_the_server_runs(argilla, monkeypatch):
    monkeypatch.setenv("THRESHER_HOME", str(argilla.paths.home))
    monkeypatch.delenv(server.ENV_URL, raising=False)
    out = CliRunner().invoke(main, ["review", "server", "status", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["running"] is True


def test_the_launcher_masks_the_redis_password_in_messages():
    from review.argilla_launcher import _MaskPasswords, mask_url_passwords

    message = "Your redis instance at redis://:0a1b2c@127.0.0.1:6379/0 is not available"
    assert mask_url_passwords(message) == (
        "Your redis instance at redis://:***@127.0.0.1:6379/0 is not available"
    )
    assert (
        mask_url_passwords("http://127.0.0.1:9200 and a@b.c") == "http://127.0.0.1:9200 and a@b.c"
    )
    error = ConnectionError("Your redis instance at redis://:0a1b2c@127.0.0.1:6379/0 is down")
    record = logging.LogRecord(
        "backoff", logging.INFO, __file__, 1, "Backing off (%s)", (error,), None
    )
    assert _MaskPasswords().filter(record)
    assert "0a1b2c" not in record.getMessage() and "redis://:***@127.0.0.1" in record.getMessage()
