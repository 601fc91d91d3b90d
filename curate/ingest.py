"""Ingest: read every source, validate each row, keep it or quarantine it with a reason.

Rows in = kept + rejected, always (blank lines are not rows and are counted apart). Outputs go to
``DIR/ingest/`` atomically: ``records.parquet``, ``rejected.jsonl``, ``manifest.json``.

Decisions (documented in README):
- Control characters (C0/C1 except tab, newline, CR; NUL included) are removed from the text, and
  the row is kept if text remains; the count is in the manifest (``control_chars_cleaned``).
- Labels are stored as strings; integral numbers become "1", empty strings and NaN become null.
- Ids come from the id column (``IngestOptions.id_col``, default ``id``) when a source has it;
  the default ``id`` is optional (a source without it gets hash ids), any other name is required.
  A source "has" the column when its header/schema lists it; JSON Lines: when its first object
  has the key (then a later row without it is ``missing_id``).
- With no id column, the id is a hash of the normalized text; the k-th repeat of the same text
  gets ``<hash>-k`` so ids stay unique and stable across re-ingests of the same data.
- With an id column, a repeated id is quarantined: ``duplicate_id`` (different text) or
  ``duplicate_row`` (same text).
- A row nested deeper than the JSON parser (or the metadata writer) allows is ``malformed_json``;
  a line over ``max_line_bytes`` is ``line_too_long``, never held in memory (see readers).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from curate.readers import (
    DEFAULT_MAX_LINE_BYTES,
    RawRow,
    Source,
    columns_of,
    cut,
    expand_sources,
    read_rows,
)
from thresher.errors import ConfigError, InputError
from thresher.project import Project, fingerprint, path_sha256, stage_output
from thresher.records import record_schema, strip_control_chars, text_hash, text_id

log = logging.getLogger(__name__)

STAGE = "ingest"
REJECTED = "rejected.jsonl"
DEFAULT_ID_COL = "id"
_TOO_DEEP = "malformed JSON: nested deeper than the metadata writer allows"


@dataclass(frozen=True)
class IngestOptions:
    """What ingest needs from the config (resolved by the caller).

    ``id_col``: the column holding record ids; None for text-hash ids. ``id_required``: a
    source without that column is an error; None means "unless it is the default ``id``"
    (which is used where present, hash ids elsewhere). ``max_line_bytes``: longer lines are
    quarantined unparsed (``line_too_long``), read in chunks."""

    text_col: str = "text"
    label_col: str | None = "label"
    id_col: str | None = DEFAULT_ID_COL
    id_required: bool | None = None
    format: str = "auto"
    max_text_chars: int = 20_000
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    batch_size: int = 50_000
    labels: tuple[str, ...] = ()

    @property
    def requires_id(self) -> bool:
        """Every source must have ``id_col``."""
        if self.id_col is None:
            return False
        return self.id_required if self.id_required is not None else self.id_col != DEFAULT_ID_COL


@dataclass
class IngestResult:
    """Summary of one ingest run (also what ``--json`` prints)."""

    rows_in: int
    kept: int
    rejected: int
    by_reason: dict[str, int]
    control_chars_cleaned: int
    sources: list[dict[str, Any]]
    path: str
    noop: bool = False
    labels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Rejection(Exception):
    """A row fails validation: ``code`` is the reason counted, ``detail`` the message."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _clean_label(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    raise Rejection("wrong_type_label", f"label has type {type(value).__name__}, expected a string")


def _clean_text(value: Any, text_col: str, max_chars: int) -> tuple[str, bool]:
    if value is None:
        raise Rejection("null_text", f"text column {text_col!r} is null")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise Rejection("invalid_utf8", f"text is not valid UTF-8 (byte {err.start})") from err
    if not isinstance(value, str):
        raise Rejection(
            "wrong_type_text", f"text has type {type(value).__name__}, expected a string"
        )
    text, cleaned = strip_control_chars(value)
    if not text.strip():
        raise Rejection("empty_text", "text is empty or only whitespace")
    if len(text) > max_chars:
        raise Rejection(
            "text_too_long",
            f"text has {len(text)} characters, more than max_text_chars={max_chars}",
        )
    return text, cleaned


def validate_row(
    data: dict[str, Any], opts: IngestOptions, id_col: str | None
) -> tuple[str, str | None, Any, bool]:
    """Check one parsed row; ``id_col`` is this source's id column (None: hash ids). Returns
    (text, label, raw id, control chars cleaned) or raises ``Rejection``. Pure: the id
    uniqueness check lives in ``_IdRegistry``."""
    if opts.text_col not in data:
        raise Rejection("missing_text", f"no {opts.text_col!r} field in this row")
    text, cleaned = _clean_text(data[opts.text_col], opts.text_col, opts.max_text_chars)
    label = _clean_label(data.get(opts.label_col)) if opts.label_col else None
    if label is not None and opts.labels and label not in opts.labels:
        raise Rejection(
            "label_not_allowed",
            f"label {label!r} is not one of the configured labels ({', '.join(opts.labels)})",
        )
    raw_id = None
    if id_col:
        raw_id = data.get(id_col)
        if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
            raise Rejection("missing_id", f"id column {id_col!r} is missing or empty")
        if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
            raise Rejection("wrong_type_id", f"id has type {type(raw_id).__name__}")
    return text, label, raw_id, cleaned


class _IdRegistry:
    """Assigns unique ids: given ids must be unique; text-hash ids get an occurrence suffix."""

    def __init__(self) -> None:
        self._given: dict[str, tuple[bytes, str]] = {}
        self._hashed: Counter[str] = Counter()

    def assign(self, raw_id: Any, text: str, where: str) -> str:
        if raw_id is None:
            base = text_id(text)
            self._hashed[base] += 1
            count = self._hashed[base]
            return base if count == 1 else f"{base}-{count}"
        rid = str(raw_id).strip()
        digest = bytes.fromhex(text_hash(text))
        seen = self._given.get(rid)
        if seen is not None:
            if seen[0] == digest:
                raise Rejection(
                    "duplicate_row", f"id {rid!r} with the same text was kept at {seen[1]}"
                )
            raise Rejection(
                "duplicate_id", f"id {rid!r} already used with a different text at {seen[1]}"
            )
        self._given[rid] = (digest, where)
        return rid


class _RecordWriter:
    """Buffers kept records and writes Parquet row groups of ``batch_size``."""

    def __init__(self, path: Path, batch_size: int) -> None:
        import pyarrow.parquet as pq

        self._schema = record_schema()
        self._writer = pq.ParquetWriter(path, self._schema, compression="zstd")
        self._batch_size = batch_size
        self._rows: list[tuple[Any, ...]] = []

    def add(self, values: tuple[Any, ...]) -> None:
        self._rows.append(values)
        if len(self._rows) >= self._batch_size:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            columns = [
                pa.array(list(values), type=f.type)
                for f, values in zip(self._schema, zip(*self._rows, strict=True), strict=True)
            ]
            self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self._schema))
            self._rows = []

    def close(self) -> None:
        self.flush()
        self._writer.close()


def metadata_json(data: dict[str, Any], skip: frozenset[str | None]) -> str:
    """Every field not in ``skip`` as a JSON object string (keys sorted). A value nested deeper
    than the writers allow (orjson: 255 levels, then the stdlib) raises ``Rejection``."""
    extra = {k: v for k, v in data.items() if k not in skip}
    if not extra:
        return "{}"
    try:
        import orjson

        return orjson.dumps(extra, default=str, option=orjson.OPT_SORT_KEYS).decode()
    except (ImportError, TypeError):  # deep nesting, non-string keys or no orjson: the stdlib
        try:
            return json.dumps(extra, ensure_ascii=False, default=str, sort_keys=True)
        except RecursionError as err:
            raise Rejection("malformed_json", _TOO_DEEP) from err


_UNSET = object()


def _source_id_col(source: Source, opts: IngestOptions) -> Any:
    """This source's id column, None for hash ids, or ``_UNSET`` when only its first row can
    tell (JSON Lines with the optional default). Checks the columns known up front."""
    columns = columns_of(source, opts.max_line_bytes)
    if columns is not None and opts.text_col not in columns:
        raise InputError(
            f"{source.path}: no text column {opts.text_col!r} (columns: {', '.join(columns)}); "
            "pass --text-col NAME"
        )
    if opts.id_col is None:
        return None
    if columns is None:
        return opts.id_col if opts.requires_id else _UNSET
    if opts.id_col in columns:
        return opts.id_col
    if opts.requires_id:
        raise InputError(
            f"{source.path}: no id column {opts.id_col!r} (columns: {', '.join(columns)}); "
            "pass --id-col NAME, or --no-id-col for text-hash ids"
        )
    return None


def _raw_excerpt(row: RawRow) -> str:
    if row.raw:
        return row.raw
    if row.data is not None:
        try:
            return cut(json.dumps(row.data, ensure_ascii=False, default=str))
        except RecursionError:
            return "(nested too deep to show)"
    return ""


def ingest(
    paths: Iterable[str | Path],
    project: Project,
    opts: IngestOptions,
    *,
    force: bool = False,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Ingest ``paths`` into ``project``. A rerun with unchanged inputs and options is a no-op
    unless ``force``. Raises ``InputError`` for a file that cannot be read as asked."""
    if opts.max_line_bytes < 1:
        raise ConfigError(f"ingest.max_line_bytes must be at least 1, got {opts.max_line_bytes}")
    sources = expand_sources(list(paths), opts.format)
    if not sources:
        raise InputError("no input given; pass one or more files or folders")
    source_ids = [_source_id_col(source, opts) for source in sources]
    inputs = [{"path": s.name, "format": s.format, "sha256": path_sha256(s.path)} for s in sources]
    config = asdict(opts)
    config.pop("batch_size")
    stage_fp = fingerprint({"inputs": inputs, "config": config})
    if not force and project.is_fresh(STAGE, stage_fp):
        manifest = project.read_manifest(STAGE) or {}
        return _result(manifest["counts"], manifest.get("sources", []), project, noop=True)

    with stage_output(
        project, STAGE, stage_fp, inputs=inputs, config=config, packages=("pyarrow",)
    ) as run:
        writer = _RecordWriter(run.path("records.parquet"), opts.batch_size)
        with (
            run.timed("read_validate_write"),
            open(run.path(REJECTED), "w", encoding="utf-8") as rejected,
        ):
            state = _IngestRun(opts, writer, rejected, progress)
            for source, id_col in zip(sources, source_ids, strict=True):
                state.read_source(source, id_col)
            writer.close()
        run.counts = state.counts()
        run.extra["sources"] = state.per_source
        run.extra["seed"] = seed
    return _result(run.counts, state.per_source, project, noop=False)


@dataclass
class _SourceTally:
    """One source's running counts, and its id column once known (JSON Lines: its first row)."""

    source: Source
    id_col: Any
    skip: frozenset[str | None]  # the fields that are not metadata
    rows_in: int = 0
    kept: int = 0
    objects: int = 0
    with_text_col: int = 0

    def summary(self) -> dict[str, Any]:
        """The source's entry in the manifest's ``sources``."""
        return {
            "source": self.source.name,
            "rows_in": self.rows_in,
            "kept": self.kept,
            "rejected": self.rows_in - self.kept,
            "id_col": None if self.id_col is _UNSET else self.id_col,
        }


class _IngestRun:
    """One run's state over all sources: the ids handed out, the kept-record writer, the
    quarantine file, and the counts (per reason, per label, control characters cleaned)."""

    def __init__(
        self,
        opts: IngestOptions,
        writer: _RecordWriter,
        rejected: TextIO,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.opts = opts
        self.writer = writer
        self.rejected = rejected
        self.progress = progress
        self.ids = _IdRegistry()
        self.by_reason: Counter[str] = Counter()
        self.labels: Counter[str] = Counter()
        self.cleaned = 0
        self.per_source: list[dict[str, Any]] = []

    def read_source(self, source: Source, id_col: Any) -> None:
        """Every row of ``source``: kept (written) or quarantined with its reason."""
        opts = self.opts
        tally = _SourceTally(source, id_col, self._skip(id_col))
        for row in read_rows(source, opts.batch_size, opts.max_line_bytes):
            tally.rows_in += 1
            try:
                rid, text, label, meta, cleaned = self._validate(tally, row)
            except Rejection as rejection:
                self._reject(source, row, rejection)
                continue
            self.cleaned += cleaned
            tally.kept += 1
            if label is not None:
                self.labels[label] += 1
            self.writer.add((rid, text, label, source.name, row.row, meta))
            if self.progress is not None and tally.rows_in % 10_000 == 0:
                self.progress(10_000)
        if tally.objects and not tally.with_text_col and source.format == "jsonl":
            raise InputError(
                f"{source.path}: no row has a {opts.text_col!r} field; pass --text-col NAME"
            )
        self.per_source.append(tally.summary())
        kept, rejected = tally.kept, tally.rows_in - tally.kept
        log.info("%s: %d rows, %d kept, %d rejected", source.name, tally.rows_in, kept, rejected)

    def _validate(self, tally: _SourceTally, row: RawRow) -> tuple[str, str, str | None, str, bool]:
        """(id, text, label, metadata JSON, control chars cleaned) of a row, or ``Rejection``."""
        opts = self.opts
        where = f"{tally.source.name}:{row.row}"
        if row.error is not None:
            raise Rejection(*row.error)
        assert row.data is not None
        if tally.id_col is _UNSET:  # JSON Lines: the first object decides
            tally.id_col = opts.id_col if opts.id_col in row.data else None
            tally.skip = self._skip(tally.id_col)
        tally.objects += 1
        tally.with_text_col += opts.text_col in row.data
        text, label, raw_id, cleaned = validate_row(row.data, opts, tally.id_col)
        meta = metadata_json(row.data, tally.skip)
        rid = self.ids.assign(raw_id, text, where)
        return rid, text, label, meta, cleaned

    def _skip(self, id_col: Any) -> frozenset[str | None]:
        return frozenset({self.opts.text_col, self.opts.label_col, id_col})

    def _reject(self, source: Source, row: RawRow, rejection: Rejection) -> None:
        """Count the reason and write the row's entry to ``rejected.jsonl``."""
        self.by_reason[rejection.code] += 1
        entry = {
            "source": source.name,
            "row": row.row,
            "reason": rejection.code,
            "detail": rejection.detail,
            "raw": _raw_excerpt(row),
        }
        self.rejected.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def counts(self) -> dict[str, Any]:
        """The manifest's counts."""
        rows_in = sum(s["rows_in"] for s in self.per_source)
        kept = sum(s["kept"] for s in self.per_source)
        return {
            "rows_in": rows_in,
            "kept": kept,
            "rejected": rows_in - kept,
            "by_reason": dict(sorted(self.by_reason.items())),
            "control_chars_cleaned": self.cleaned,
            "labels": dict(sorted(self.labels.items())),
        }


def _result(
    counts: dict[str, Any], sources: list[dict[str, Any]], project: Project, *, noop: bool
) -> IngestResult:
    return IngestResult(
        rows_in=counts["rows_in"],
        kept=counts["kept"],
        rejected=counts["rejected"],
        by_reason=counts["by_reason"],
        control_chars_cleaned=counts["control_chars_cleaned"],
        sources=sources,
        path=str(project.records_path(STAGE)),
        noop=noop,
        labels=counts.get("labels", {}),
    )
