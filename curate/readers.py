"""Readers for every input format, streaming, turning each input row into a ``RawRow``.

A reader never raises for a bad row: it yields the row with an ``error`` (reason code, message) so
ingest can quarantine it. It raises ``InputError`` only when the whole file cannot be read as asked
(unreadable, unknown format, required column absent), naming the file and the fix.

Memory is bounded whatever the input: text formats (plain or compressed) are read in chunks, and
a line (or an item of a ``.json`` array) longer than ``max_line_bytes`` is skipped to its end
without being held, and yielded as a ``line_too_long`` row.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import logging
import lzma
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from thresher.errors import InputError

log = logging.getLogger(__name__)

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
DEFAULT_MAX_LINE_BYTES = 16 * 2**20
_CHUNK = 1 << 16  # bytes read at a time from a text input
_HEAD = 4 * RAW_CUT  # bytes kept of an over-long line, for its raw excerpt (UTF-8: <= 4 a char)

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


def read_rows(
    source: Source, batch_size: int = 50_000, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[RawRow]:
    """Yield every row of ``source`` (bad ones carry an error). A text line (JSONL, CSV/TSV, an
    item of a ``.json`` array) over ``max_line_bytes`` is a ``line_too_long`` row, never held."""
    if source.format in ("csv", "tsv"):
        yield from _read_delimited(source, max_line_bytes)
    elif source.format == "jsonl":
        yield from _read_jsonl(source, max_line_bytes)
    elif source.format == "parquet":
        yield from _read_parquet(source, batch_size)
    else:
        yield from _read_hf(source, batch_size)


def columns_of(source: Source, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> list[str] | None:
    """Column names known up front (CSV/TSV header, Parquet/HF schema); None for JSONL."""
    if source.format in ("csv", "tsv"):
        with _open_binary(source.path) as fh:
            try:
                first = next(BoundedLines(fh, max_line_bytes), b"")
            except LineTooLong as err:
                raise InputError(
                    f"{source.path}: the header {err.detail}; raise ingest.max_line_bytes "
                    "(--max-line-bytes) or check the format"
                ) from err
        try:
            header = bytes(first).decode("utf-8")
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


# --- Bounded lines ----------------------------------------------------------------------------


class LineTooLong(Exception):
    """A line longer than the limit: it was read to its end in chunks and skipped, never held.
    ``size`` is its length in bytes (newline excluded), ``head`` its first bytes, ``quotes`` the
    number of double quotes in it (CSV uses its parity to tell whether a quoted field is open)."""

    def __init__(
        self,
        size: int,
        limit: int,
        head: bytes,
        what: str = "line",
        quotes: int = 0,
        at_least: bool = False,
    ) -> None:
        self.size = size
        self.limit = limit
        self.head = head
        self.quotes = quotes
        self.continued = False  # CSV: the rest of a row already quarantined
        has = f"at least {size}" if at_least else str(size)
        self.detail = f"{what} has {has} bytes, more than max_line_bytes={limit}; not parsed"
        super().__init__(self.detail)

    @property
    def raw(self) -> str:
        return cut(self.head.decode("utf-8", errors="replace").rstrip("\r\n"))

    @property
    def error(self) -> tuple[str, str]:
        return ("line_too_long", self.detail)


class BoundedLines:
    """The lines of a binary stream (with their newline), none longer than ``limit`` bytes.

    Iterating raises ``LineTooLong`` for a longer line after skipping it to its end in
    ``_CHUNK``-byte reads; iteration then goes on with the next line. So at most ``limit + 1``
    bytes of a line are ever held, whatever the input (a 400 MB line in a small .gz included).
    A UTF-8 byte-order mark opening the stream is dropped. With ``decode``, lines are ``str``
    decoded with ``surrogateescape`` (a bad byte marks only its own row)."""

    def __init__(self, fh: BinaryIO, limit: int, *, decode: bool = False) -> None:
        if limit < 1:
            raise ValueError(f"max_line_bytes must be at least 1, got {limit}")
        self._fh = fh
        self._limit = limit
        self._decode = decode
        self._first = True
        self.want = min(_CHUNK, limit + 1)  # one read gets a whole line, except a long one

    def __iter__(self) -> BoundedLines:
        return self

    def __next__(self) -> Any:
        line = self._fh.readline(self.want)
        if len(line) == self.want and not line.endswith(b"\n"):
            line = self.finish(line)
        elif not line:
            raise StopIteration
        if self._first:
            self._first = False
            if line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
        return line.decode("utf-8", errors="surrogateescape") if self._decode else line

    def finish(self, line: bytes) -> bytes | bytearray:
        """The rest of a line whose first read (``want`` bytes) had no newline; raises
        ``LineTooLong`` past the limit, after skipping to the line's end."""
        fh, limit = self._fh, self._limit
        buf = bytearray(line)  # grows in place: no second copy of a long line
        while not buf.endswith(b"\n") and len(buf) <= limit:
            part = fh.readline(min(_CHUNK, limit + 1 - len(buf)))
            if not part:
                return buf  # last line, no newline
            buf += part
        if buf.endswith(b"\n"):
            return buf
        size, head, quotes = len(buf), bytes(buf[:_HEAD]), buf.count(b'"')
        del buf
        while part := fh.readline(_CHUNK):
            quotes += part.count(b'"')
            if part.endswith(b"\n"):
                size += len(part) - 1
                break
            size += len(part)
        raise LineTooLong(size, limit, head, quotes=quotes)


# --- JSON Lines -------------------------------------------------------------------------------


def _is_json_suffix(path: Path) -> bool:
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] == ".json"


def _read_jsonl(source: Source, max_line_bytes: int) -> Iterator[RawRow]:
    """JSON Lines; a ``.json`` file opening with ``[`` is one JSON array, streamed item by item."""
    with _open_binary(source.path) as fh:
        if _is_json_suffix(source.path) and _opens_array(fh):
            yield from _read_json_array(fh, max_line_bytes)
            return
        lines = BoundedLines(fh, max_line_bytes)
        readline, want = fh.readline, lines.want  # BoundedLines' fast path, inlined: hot loop
        lineno = 0
        while line := readline(want):
            lineno += 1
            if len(line) == want and not line.endswith(b"\n"):
                try:
                    line = lines.finish(line)
                except LineTooLong as err:
                    yield RawRow(lineno, None, err.error, err.raw)
                    continue
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if line.strip():
                yield _parse_json_line(lineno, line)


def _opens_array(fh: BinaryIO) -> bool:
    head = fh.peek(_CHUNK)[:_CHUNK]  # type: ignore[attr-defined]  # every opener buffers
    return head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"[")


_DEPTH_WORDS = ("depth limit", "recursion", "nested")


def _parse_json_line(lineno: int, line: bytes | bytearray) -> RawRow:
    try:
        obj = _fast_loads(line)  # fast path; any failure is classified by the stdlib below
    except (ValueError, RecursionError) as fast_err:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raw = cut(line.decode("utf-8", errors="replace").rstrip("\r\n"))
            detail = f"invalid UTF-8 at byte {err.start}"
            return RawRow(lineno, None, ("invalid_utf8", detail), raw)
        raw = cut(text.rstrip("\r\n"))
        if any(word in str(fast_err).lower() for word in _DEPTH_WORDS):
            return RawRow(lineno, None, ("malformed_json", _TOO_DEEP), raw)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            detail = f"malformed JSON: {err.msg} at column {err.colno}"
            return RawRow(lineno, None, ("malformed_json", detail), raw)
        except RecursionError:  # the stdlib parser recurses once per nesting level
            return RawRow(lineno, None, ("malformed_json", _TOO_DEEP), raw)
    if not isinstance(obj, dict):
        detail = f"not a JSON object (got {type(obj).__name__})"
        raw = cut(line.decode("utf-8", errors="replace").rstrip("\r\n"))
        return RawRow(lineno, None, ("not_an_object", detail), raw)
    return RawRow(lineno, obj, None, "")


_TOO_DEEP = "malformed JSON: nested deeper than the JSON parser allows"

# A .json array is cut into items by a scan that only looks at brackets, commas and strings:
# _SKIP_TOP consumes everything up to the next bracket or comma outside a string (whole strings
# included), _SKIP_IN the same inside an item (commas there do not matter), _STRING_REST the rest
# of a string that a chunk boundary cut. Possessive quantifiers: no backtracking.
_SKIP_TOP = re.compile(rb'(?:[^"\[\]{},]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.DOTALL)
_SKIP_IN = re.compile(rb'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.DOTALL)
_STRING_REST = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)
# The common item, an object with no nested brackets, and the comma or "]" after it: one match.
_FLAT_ITEM = re.compile(
    rb'\s*+(\{(?:[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+\})\s*+([,\]])', re.DOTALL
)
_OPEN = frozenset(b"[{")
_QUOTE, _COMMA, _RBRACKET = ord('"'), ord(","), ord("]")


class _Item:
    """The bytes of one array item, held up to ``limit``; past it only the size and head."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.size = 0
        self.head: bytes | None = None

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.head is None:
            self.buf += piece
            if len(self.buf) > self.limit:
                self.head = bytes(self.buf.lstrip()[:_HEAD])
                self.buf = bytearray()

    def row(self, index: int) -> RawRow | None:
        """The item as a row (None when blank); then empties itself."""
        head, buf, size = self.head, self.buf, self.size
        self.buf, self.size, self.head = bytearray(), 0, None
        if head is not None:
            err = LineTooLong(size, self.limit, head, what="JSON array item")
            return RawRow(index, None, err.error, err.raw)
        buf = buf.strip()
        return _parse_json_line(index, buf) if buf else None


def _read_json_array(fh: BinaryIO, limit: int) -> Iterator[RawRow]:
    """The items of one JSON array, streamed: the scan finds where each item ends, then the item
    alone is parsed, so memory holds one item (at most ``limit`` bytes) whatever the file size.
    Rows are numbered by item; content after the closing ``]`` is one ``malformed_json`` row."""
    data = fh.read(_CHUNK)
    start = data.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    data = start[1:]  # past the opening "[" (checked by _opens_array)
    item = _Item(limit)
    index = 0
    depth = 0
    in_string = escaped = False
    while data:
        i, n = 0, len(data)
        segment = 0  # where the current item's bytes start in this chunk
        while i < n:
            if not (depth or in_string or escaped or item.size) and (
                flat := _FLAT_ITEM.match(data, i)
            ):
                index += 1
                yield _parse_json_line(index, data[flat.start(1) : flat.end(1)])
                i = segment = flat.end()
                if flat.group(2) == b"]":
                    yield from _after_array(fh, data[i:], index + 1)
                    return
            elif escaped:
                escaped = False
                i += 1
            elif in_string:
                i = _STRING_REST.match(data, i).end()
                if i < n:  # a quote ends the string, or a backslash ends the chunk
                    if data[i] == _QUOTE:
                        in_string = False
                    else:
                        escaped = True
                    i += 1
            else:
                i = (_SKIP_IN if depth else _SKIP_TOP).match(data, i).end()
                if i == n:
                    break
                char = data[i]
                i += 1
                if char == _QUOTE:  # a string the chunk boundary cuts
                    in_string = True
                elif char in _OPEN:
                    depth += 1
                elif depth:
                    depth -= 1  # a closing bracket inside an item
                elif char == _COMMA or char == _RBRACKET:
                    item.add(data[segment : i - 1])
                    segment = i
                    index += 1
                    row = item.row(index)
                    if row is not None:
                        yield row
                    elif char == _COMMA or index > 1:
                        detail = "malformed JSON: empty item in the array (a stray comma?)"
                        yield RawRow(index, None, ("malformed_json", detail), "")
                    else:
                        index -= 1  # "[]": an empty array, no row
                    if char == _RBRACKET:
                        yield from _after_array(fh, data[i:], index + 1)
                        return
                # a stray "}" at the top level stays in the item, which then fails to parse
        item.add(data[segment:])
        data = fh.read(_CHUNK)
    # End of file before the closing "]": the file was cut short; what is left is one bad row.
    raw = cut(bytes(item.head or item.buf).strip().decode("utf-8", errors="replace"))
    detail = "malformed JSON: the file ends before the array's closing ] (cut short?)"
    yield RawRow(index + 1, None, ("malformed_json", detail), raw)


def _after_array(fh: BinaryIO, rest: bytes, index: int) -> Iterator[RawRow]:
    while rest:
        tail = rest.strip()
        if tail:
            detail = "malformed JSON: content after the array's closing ] (one array per file)"
            yield RawRow(
                index, None, ("malformed_json", detail), cut(tail.decode("utf-8", "replace"))
            )
            return
        rest = fh.read(_CHUNK)


# --- CSV / TSV --------------------------------------------------------------------------------


def _has_surrogates(values: list[str]) -> bool:
    for value in values:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False


class _CsvLines:
    """Decoded lines for ``csv.reader`` that bound each row, not only each line: a quoted field
    may span lines, so a row over ``limit`` bytes raises ``LineTooLong`` at a line boundary.

    The csv module then starts afresh, while the input is still inside the open quoted field:
    the next line is fed with a quote prepended (a fresh parser is then inside a quoted field
    too), and ``tail`` stays set until that row ends, so its rest is dropped, not misread as
    rows. The caller calls ``row_done`` after every row the reader returns."""

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self._lines = BoundedLines(fh, limit, decode=True)
        self._limit = limit
        self._held = 0  # bytes of the row being parsed (0: the next line starts a row)
        self._head = ""  # start of that row, for the raw excerpt
        self._pending: str | None = None
        self._reopen = False
        self.tail = False

    def __iter__(self) -> _CsvLines:
        return self

    def row_done(self) -> None:
        self._held = 0

    def __next__(self) -> str:
        if self._pending is not None:
            line, self._pending = self._pending, None
        else:
            try:
                line = next(self._lines)
            except LineTooLong as err:
                # A quoted field is open after the skipped line if it was open before it (a row
                # in progress) xor the line holds an odd number of quotes.
                err.continued = self.tail
                self.tail = self._reopen = (self._held > 0) != (err.quotes % 2 == 1)
                self._held = 0
                raise
            if self._reopen:
                line, self._reopen = '"' + line, False
        if self._held and self._held + len(line) > self._limit:
            head = self._head.encode("utf-8", "surrogateescape")
            what = "CSV row (a quoted field over several lines)"
            err = LineTooLong(self._held + len(line), self._limit, head, what, at_least=True)
            err.continued = self.tail
            self._pending, self._held, self.tail = '"' + line, 0, True
            raise err
        if not self._held:
            self._head = line[:_HEAD]
        self._held += len(line)
        return line


def _read_delimited(source: Source, max_line_bytes: int) -> Iterator[RawRow]:
    # _CsvLines bounds every row, so the csv module's own field limit (a process-wide setting,
    # 128 KiB by default) is lifted rather than lowered: other readers in the process keep working.
    csv.field_size_limit(sys.maxsize)
    delimiter = "\t" if source.format == "tsv" else ","
    with _open_binary(source.path) as fh:
        lines = _CsvLines(fh, max_line_bytes)
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except LineTooLong as err:
            raise InputError(
                f"{source.path}: the header {err.detail}; raise ingest.max_line_bytes "
                "(--max-line-bytes) or check the format"
            ) from err
        except csv.Error as err:
            raise InputError(f"{source.path}: cannot parse the header row ({err})") from err
        lines.row_done()
        width = len(header)
        row_number = 0
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except LineTooLong as err:
                if not err.continued:
                    row_number += 1
                    yield RawRow(row_number, None, err.error, err.raw)
                continue
            except csv.Error as err:
                lines.row_done()
                row_number += 1
                yield RawRow(row_number, None, ("csv_error", f"unparseable CSV row: {err}"), "")
                continue
            lines.row_done()
            if lines.tail:  # the end of a row already quarantined as too long
                lines.tail = False
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
