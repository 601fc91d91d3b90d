"""The traffic log: every text ``thresher serve`` answered, as Parquet under ``DIR/serve/traffic``.

One row per text: ``time`` (UTC), ``request_id``, ``model`` (the run that answered),
``text_hash`` (``thresher.records.text_id``: the same id the text gets at ingest, so traffic
dedups against labelled records), ``text`` (null when the server runs with ``--no-log-text``),
``label`` (predicted), ``prob`` (its probability) and ``probs`` (label → probability).

Files are partitioned by day (``date=YYYY-MM-DD/``) and each is written whole through a temp
file and a rename, so a killed server loses at most the rows it had not flushed yet (a few
seconds' worth) and never leaves half a file. The server writes; ``thresher monitor`` and
``thresher round --from-traffic`` read (``read_traffic``).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from thresher.errors import ThresherError

log = logging.getLogger(__name__)

COLUMNS = ("time", "request_id", "model", "text_hash", "text", "label", "prob", "probs")


def traffic_schema():
    """The Arrow schema of a traffic file."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("text_hash", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=True),
            pa.field("label", pa.string(), nullable=False),
            pa.field("prob", pa.float32(), nullable=False),
            pa.field("probs", pa.map_(pa.string(), pa.float32()), nullable=False),
        ]
    )


@dataclass(frozen=True)
class Served:
    """One answered text, as the server logs it."""

    request_id: str
    model: str
    text: str
    label: str
    probs: Mapping[str, float]
    time: datetime | None = None


class TrafficLog:
    """Buffered, thread-safe writer of the traffic log.

    ``append`` is cheap (it only buffers); a background thread writes the buffer as one Parquet
    file every ``flush_every_s`` seconds or once ``max_rows`` rows are waiting; ``close`` writes
    what is left. ``log_text=False`` stores the hash without the text."""

    def __init__(
        self,
        folder: str | Path,
        *,
        log_text: bool = True,
        flush_every_s: float = 5.0,
        max_rows: int = 5000,
    ) -> None:
        self.folder = Path(folder)
        self.log_text = log_text
        self.flush_every_s = flush_every_s
        self.max_rows = max_rows
        self.rows_written = 0
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._seq = itertools.count()
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self._thread = threading.Thread(target=self._run, name="traffic-log", daemon=True)
        self._thread.start()

    def append(self, served: Iterable[Served]) -> None:
        from thresher.records import text_id

        now = datetime.now(UTC)
        rows = [
            {
                "time": s.time or now,
                "request_id": s.request_id,
                "model": s.model,
                "text_hash": text_id(s.text),
                "text": s.text if self.log_text else None,
                "label": s.label,
                "prob": float(max(s.probs.values())) if s.probs else 0.0,
                "probs": [(k, float(v)) for k, v in s.probs.items()],
            }
            for s in served
        ]
        with self._lock:
            if self._closed:
                raise ThresherError("the traffic log is closed")
            self._rows.extend(rows)
            full = len(self._rows) >= self.max_rows
        if full:
            self._wake.set()

    def flush(self) -> int:
        """Write the waiting rows as one file now; how many were written."""
        with self._write_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            write_traffic_file(self.folder, rows, seq=next(self._seq))
            self.rows_written += len(rows)
            return len(rows)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # keep serving; the rows stay lost only if the disk keeps failing
                log.exception("could not write the traffic log under %s", self.folder)
            with self._lock:
                if self._closed:
                    return


def write_traffic_file(folder: Path, rows: Sequence[dict[str, Any]], *, seq: int = 0) -> Path:
    """Write ``rows`` (dicts with ``COLUMNS``) as one Parquet file in their day's partition."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thresher.project import atomic_output

    first = min(r["time"] for r in rows)
    day = folder / f"date={first:%Y-%m-%d}"
    day.mkdir(parents=True, exist_ok=True)
    os.chmod(day, 0o700)
    # pid and seq alone can repeat across machines (replicas in containers share pids) and
    # across logs of one process: a random tag keeps every writer's files apart
    name = f"part-{first:%Y%m%dT%H%M%S%f}-{os.getpid()}-{seq:06d}-{secrets.token_hex(4)}.parquet"
    table = pa.Table.from_pylist(list(rows), schema=traffic_schema())
    with atomic_output(day / name) as tmp:
        pq.write_table(table, tmp)
    return day / name


def parse_time(value: str | None, what: str) -> datetime | None:
    """An ISO 8601 time (``2026-12-05``, ``2026-12-05T10:00``, ``...Z`` or ``+01:00``) as an
    aware UTC datetime; a time without a zone is taken as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ThresherError(
            f"{what} {value!r} is not an ISO 8601 time; write e.g. 2026-12-05T10:00:00Z"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def read_traffic(
    folder: str | Path,
    since: datetime | None = None,
    until: datetime | None = None,
    columns: Sequence[str] | None = None,
):
    """The logged traffic with ``since <= time < until`` as a pandas DataFrame in time order
    (``probs`` as dicts); an empty frame with the log's columns when nothing was served."""
    import pandas as pd
    import pyarrow.parquet as pq

    folder = Path(folder)
    cols = list(columns or COLUMNS)
    files = sorted(
        p
        for p in folder.glob("date=*/part-*.parquet")
        if _day_in_range(p.parent.name, since, until)
    )
    if not files:
        return pd.DataFrame({c: pd.Series(dtype=_empty_dtype(c)) for c in cols})
    frame = pq.ParquetDataset(files, schema=traffic_schema()).read(columns=cols).to_pandas()
    if "time" in frame.columns:
        keep = pd.Series(True, index=frame.index)
        if since is not None:
            keep &= frame["time"] >= pd.Timestamp(since)
        if until is not None:
            keep &= frame["time"] < pd.Timestamp(until)
        frame = frame[keep].sort_values("time", kind="stable").reset_index(drop=True)
    if "probs" in frame.columns:
        frame["probs"] = [dict(p) for p in frame["probs"]]
    return frame


def _day_in_range(name: str, since: datetime | None, until: datetime | None) -> bool:
    day = name.removeprefix("date=")
    if since is not None and day < f"{since:%Y-%m-%d}":
        return False
    return until is None or day <= f"{until:%Y-%m-%d}"


def _empty_dtype(column: str) -> str:
    return {"time": "datetime64[us, UTC]", "prob": "float32"}.get(column, "object")


def wait_for_rows(folder: str | Path, n: int, timeout_s: float = 30.0) -> int:
    """Poll until the log under ``folder`` holds at least ``n`` rows (tests, demo); the count."""
    deadline = time.monotonic() + timeout_s
    while True:
        count = len(read_traffic(folder, columns=["request_id"]))
        if count >= n or time.monotonic() > deadline:
            return count
        time.sleep(0.2)
