"""The record schema shared by every stage, record ids, and text cleaning.

A record is ``id, text, label (nullable), source, source_row, metadata``; ``metadata`` is a JSON
object (a string) holding every extra input column. Later stages add columns (see DESIGN.md).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

# C0 and C1 control characters except tab, newline and carriage return. NUL and friends are
# removed from text at ingest (never a crash, never a silent reject); the count is in the manifest.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Record:
    """One input row that passed validation."""

    id: str
    text: str
    label: str | None
    source: str
    source_row: int
    metadata: dict[str, Any] = field(default_factory=dict)


def record_schema():
    """The Arrow schema of ``ingest/records.parquet``."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("label", pa.string(), nullable=True),
            pa.field("source", pa.string(), nullable=False),
            pa.field("source_row", pa.int64(), nullable=False),
            pa.field("metadata", pa.string(), nullable=False),
        ]
    )


def strip_control_chars(text: str) -> tuple[str, bool]:
    """Remove control characters (keeping tab/newline/CR). Returns (text, changed)."""
    if _CONTROL_CHARS.search(text) is None:
        return text, False
    return _CONTROL_CHARS.sub("", text), True


def normalize_for_id(text: str) -> str:
    """The normalization behind text-hash ids: NFKC, case-folded, whitespace collapsed."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.casefold().split())


def text_id(text: str) -> str:
    """Stable 16-hex-digit id of a text (hash of its normalized form)."""
    return hashlib.blake2b(normalize_for_id(text).encode("utf-8"), digest_size=8).hexdigest()


def text_hash(text: str) -> str:
    """Hash of the exact text (content identity, e.g. for change detection)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


REPRESENTATIVE = "is_representative"


def representative_mask(table):
    """Which rows stand for their duplicate cluster, as a numpy bool array: the rows dedup marked
    ``is_representative``, rows with a null there (outside any cluster), and every row of a table
    without dedup output. One rule for every stage that keeps "representatives only" (score,
    export, review push, tune, the active-learning loop).

    ``table`` is a pandas DataFrame or a pyarrow Table / RecordBatch."""
    import numpy as np

    is_pandas = hasattr(table, "iloc")
    names = table.columns if is_pandas else table.column_names
    if REPRESENTATIVE not in names:
        return np.ones(len(table), dtype=bool)
    if is_pandas:
        return table[REPRESENTATIVE].fillna(True).astype(bool).to_numpy()
    import pyarrow.compute as pc

    filled = pc.fill_null(table.column(REPRESENTATIVE), True)
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=bool)
