"""The one way benchmarks report: one JSON object on stdout, optionally saved to ``--out``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: Path | None, **dumps: Any) -> None:
    text = json.dumps(result, indent=2, **dumps)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
