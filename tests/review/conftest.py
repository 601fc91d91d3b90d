"""A real embedded Argilla server for the integration tests: started once per test session in a
temporary THRESHER_HOME (reusing the server virtualenv of the default THRESHER_HOME, created there
if missing), on a free port, and stopped at the end."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

LABELS = ("neg", "pos")


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


def make_project(root: Path, n: int, seed: int = 0, stage: str = "score") -> Path:
    """A project folder whose ``stage`` records look like the score stage's output."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 2]
        rows.append(
            {
                "id": f"r{i:06d}",
                "text": f"review {i}: this film was {'great' if label == 'pos' else 'dull'}",
                "label": label,
                "source": "reviews.csv",
                "source_row": i,
                "metadata": "{}",
                "dup_cluster": i // 10 if i % 10 == 0 else None,
                "is_representative": True,
                "label_conflict": i % 97 == 0,
                "label_quality": float(rng.random()),
                "predicted_label": LABELS[int(rng.integers(2))],
                "predicted_prob": float(rng.uniform(0.5, 1.0)),
                "bias_groups": ["women"] if i % 13 == 0 else [],
            }
        )
    (root / stage).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / stage / "records.parquet")
    return root


def fake_embed(dims: int = 8):
    """Deterministic unit vectors from the text (same text, same vector)."""

    def embed(texts):
        out = np.empty((len(texts), dims), dtype="float32")
        for k, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")
            rng = np.random.default_rng(seed)
            v = rng.normal(size=dims)
            out[k] = v / np.linalg.norm(v)
        return out

    return embed
