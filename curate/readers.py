"""Readers for every input format, streaming, turning each input row into a ``RawRow``.

A reader never raises for a bad row: it yields the row with an ``error`` (reason code, message) so
ingest can quarantine it. It raises ``InputError`` only when the whole file cannot be read as asked
(unreadable, unknown format, required column absent), naming the file and the fix.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from thresher.errors import InputError

FORMATS = ("csv", "tsv", "jsonl", "parquet", "hf")
_COMPRESSION = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_SUFFIX_FORMAT = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
RAW_CUT = 500

try:  # orjson parses JSON Lines several times faster; the stdlib is the fallback
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency, but stay usable without it
    _fast_loads = json.loads


@dataclass(frozen=True)
class RawRow:
    """One input row: its 1-based position in the source, the parsed fields or an error."""

    row: int
    data: dict[str, Any] | None
    error: tuple[str, str] | None = None
    raw: str = ""


@dataclass(frozen=True)
class Source:
    """One input: a file (or HF dataset folder) and its format."""

    path: Path
    format: str

    @property
    def name(self) -> str:
        return str(self.path)


def cut(text: str, limit: int = RAW_CUT) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in _HF_MARKERS)


def detect_format(path: Path) -> str | None:
    """Format by extension (compression suffixes .gz/.bz2/.xz are looked through)."""
    if is_hf_dataset_dir(path):
        return "hf"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return _SUFFIX_FORMAT.get(suffixes[-1]) if suffixes else None


def expand_sources(paths: list[str | Path], fmt: str = "auto") -> list[Source]:
    """Files and folders → sources. A folder that is not a saved HF dataset contributes every
    supported file under it (sorted). ``fmt`` other than auto forces the format of plain files."""
    if fmt != "auto" and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; use one of auto, {', '.join(FORMATS)}")
    sources: list[Source] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder; check the path")
        if path.is_dir() and not is_hf_dataset_dir(path):
            found = sorted(p for p in path.rglob("*") if p.is_file() and detect_format(p))
            if not found:
                raise InputError(
                    f"{path}: folder holds no CSV/TSV/JSONL/Parquet files and is not a saved "
                    "Hugging Face dataset (no dataset_info.json/state.json)"
                )
            sources.extend(Source(p, fmt if fmt != "auto" else detect_format(p)) for p in found)
            continue
        detected = (
            "hf" if is_hf_dataset_dir(path) else (fmt if fmt != "auto" else detect_format(path))
        )
        if detected is None:
            raise InputError(
                f"{path}: cannot tell the format from the extension; "
                f"pass --format ({', '.join(FORMATS)})"
            )
        sources.append(Source(path, detected))
    return sources


def _open_binary(path: Path) -> BinaryIO:
    opener = _COMPRESSION.get(path.suffix.lower())
    try:
        return opener(path, "rb") if opener else open(path, "rb")  # noqa: SIM115
    except OSError as err:
        raise InputError(f"{path}: cannot open ({err.strerror or err}); check permissions") from err


def read_rows(source: Source, batch_size: int = 50_000) -> Iterator[RawRow]:
    """Yield every row of ``source`` (bad ones carry an error)."""
    reader = {
        "csv": _read_delimited,
        "tsv": _read_delimited,
        "jsonl": _read_jsonl,
        "parquet": _read_parquet,
        "hf": _read_hf,
    }[source.format]
    yield from reader(source, batch_size)


def columns_of(source: Source) -> list[str] | None:
    """Column names known up front (CSV/TSV header, Parquet/HF schema); None for JSONL."""
    if source.format in ("csv", "tsv"):
        with _open_binary(source.path) as fh:
            first = fh.readline()
        try:
            header = first.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise InputError(
                f"{source.path}: header line is not valid UTF-8; re-save as UTF-8"
            ) from err
        delimiter = "\t" if source.format == "tsv" else ","
        return next(csv.reader([header], delimiter=delimiter), [])
    if source.format == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_schema(source.path).names
        except Exception as err:  # pyarrow raises several types for a bad file
            raise InputError(f"{source.path}: not a readable Parquet file ({err})") from err
    if source.format == "hf":
        return _hf_column_names(source.path)
    return None


# --- JSON Lines -------------------------------------------------------------------------------


def _is_json_suffix(path: Path) -> bool:
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] == ".json"


def _read_jsonl(source: Source, batch_size: int) -> Iterator[RawRow]:
    """JSON Lines; a ``.json`` file holding one JSON array of objects is read whole."""
    with _open_binary(source.path) as fh:
        if _is_json_suffix(source.path):
            blob = fh.read()
            items = _json_array(blob)
            if items is not None:
                yield from _rows_of_array(items)
                return
            stream: Iterable[bytes] = io.BytesIO(blob)
        else:
            stream = fh
        for lineno, line in enumerate(stream, start=1):
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            yield _parse_json_line(lineno, line)


def _json_array(blob: bytes) -> list | None:
    if not blob.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return None
    try:
        items = json.loads(blob.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # not one array after all: read it line by line, row errors quarantined
    return items if isinstance(items, list) else None


def _rows_of_array(items: list) -> Iterator[RawRow]:
    for index, obj in enumerate(items, start=1):
        if isinstance(obj, dict):
            yield RawRow(index, obj)
        else:
            detail = f"not a JSON object (got {type(obj).__name__})"
            raw = cut(json.dumps(obj, ensure_ascii=False, default=str))
            yield RawRow(index, None, ("not_an_object", detail), raw)


def _parse_json_line(lineno: int, line: bytes) -> RawRow:
    try:
        obj = _fast_loads(line)  # fast path; any failure is classified by the stdlib below
    except ValueError:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raw = cut(line.decode("utf-8", errors="replace").rstrip("\r\n"))
            detail = f"invalid UTF-8 at byte {err.start}"
            return RawRow(lineno, None, ("invalid_utf8", detail), raw)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            detail = f"malformed JSON: {err.msg} at column {err.colno}"
            return RawRow(lineno, None, ("malformed_json", detail), cut(text.rstrip("\r\n")))
    if not isinstance(obj, dict):
        detail = f"not a JSON object (got {type(obj).__name__})"
        raw = cut(line.decode("utf-8", errors="replace").rstrip("\r\n"))
        return RawRow(lineno, None, ("not_an_object", detail), raw)
    return RawRow(lineno, obj, None, "")


# --- CSV / TSV --------------------------------------------------------------------------------


def _decoded_lines(fh: BinaryIO) -> Iterator[str]:
    # Decode line by line with surrogateescape so one bad byte sequence marks only its row.
    for index, line in enumerate(fh):
        if index == 0 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        yield line.decode("utf-8", errors="surrogateescape")


def _has_surrogates(values: list[str]) -> bool:
    for value in values:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False


def _read_delimited(source: Source, batch_size: int) -> Iterator[RawRow]:
    csv.field_size_limit(sys.maxsize)
    delimiter = "\t" if source.format == "tsv" else ","
    with _open_binary(source.path) as fh:
        reader = csv.reader(_decoded_lines(fh), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise InputError(f"{source.path}: cannot parse the header row ({err})") from err
        width = len(header)
        row_number = 0
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                row_number += 1
                yield RawRow(row_number, None, ("csv_error", f"unparseable CSV row: {err}"), "")
                continue
            if not values or (len(values) == 1 and not values[0].strip() and width > 1):
                continue  # blank line
            row_number += 1
            raw = cut(delimiter.join(values).encode("utf-8", "replace").decode("utf-8"))
            if _has_surrogates(values):
                yield RawRow(row_number, None, ("invalid_utf8", "row is not valid UTF-8"), raw)
                continue
            if len(values) != width:
                detail = f"row has {len(values)} fields, header has {width}"
                yield RawRow(row_number, None, ("bad_field_count", detail), raw)
                continue
            yield RawRow(row_number, dict(zip(header, values, strict=True)), None, raw)


# --- Parquet / Hugging Face datasets ----------------------------------------------------------


def _rows_from_batches(batches) -> Iterator[RawRow]:
    row = 0
    for batch in batches:
        for data in batch.to_pylist():
            row += 1
            yield RawRow(row, data)


def _read_parquet(source: Source, batch_size: int) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source.path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise InputError(f"{source.path}: not a readable Parquet file ({err})") from err
    yield from _rows_from_batches(parquet.iter_batches(batch_size=batch_size))


def _load_hf(path: Path):
    try:
        from datasets import load_from_disk
    except ImportError as err:
        raise InputError("reading a saved dataset needs `pip install datasets`") from err
    try:
        return load_from_disk(str(path))
    except Exception as err:  # datasets raises several types for a bad folder
        raise InputError(f"{path}: not a readable saved Hugging Face dataset ({err})") from err


def _hf_splits(path: Path):
    loaded = _load_hf(path)
    if hasattr(loaded, "column_names") and isinstance(loaded.column_names, list):
        return [(None, loaded)]
    return list(loaded.items())


def _hf_column_names(path: Path) -> list[str]:
    names: list[str] = []
    for _, split in _hf_splits(path):
        names.extend(n for n in split.column_names if n not in names)
    return names


def _read_hf(source: Source, batch_size: int) -> Iterator[RawRow]:
    row = 0
    for split_name, split in _hf_splits(source.path):
        for table in split.with_format("arrow").iter(batch_size=batch_size):
            for data in table.to_pylist():
                row += 1
                if split_name is not None:
                    data = {**data, "split": data.get("split", split_name)}
                yield RawRow(row, data)
