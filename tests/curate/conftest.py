from __future__ import annotations

import json
from pathlib import Path

import pytest


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "wb") as fh:
        for row in rows:
            fh.write(row if isinstance(row, bytes) else (json.dumps(row) + "\n").encode())
    return path


@pytest.fixture
def good_rows() -> list[dict]:
    return [
        {
            "text": f"good review number {i} with some words",
            "label": "pos" if i % 2 else "neg",
            "lang": "en",
        }
        for i in range(20)
    ]
