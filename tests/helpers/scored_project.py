"""A project folder shaped like the score stage's output, and a deterministic stand-in embedder,
for the review tests (the real Argilla server fixture ``argilla`` is in tests/conftest.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LABELS = ("neg", "pos")


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
