from __future__ import annotations

import pytest


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
