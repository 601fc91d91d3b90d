"""Hostile inputs: rows nested past the parser's limit, lines far longer than any row should be.
Each is quarantined with a reason; every other row is still ingested, in bounded memory."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import re
import tracemalloc

import pyarrow.parquet as pq
import pytest

from curate import readers
from curate.ingest import IngestOptions, ingest
from curate.readers import BoundedLines, LineTooLong, Source, read_rows
from thresher.errors import ConfigError, InputError
from thresher.project import Project

MB = 2**20
OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def kept_texts(project: Project) -> list[str]:
    return pq.read_table(project.records_path("ingest")).column("text").to_pylist()


def rejected(project: Project) -> list[dict]:
    path = project.stage_dir("ingest") / "rejected.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("orjson", [True, False], ids=["orjson", "stdlib"])
def test_a_row_nested_past_the_parser_limit_is_malformed_json(tmp_path, monkeypatch, orjson):
    if not orjson:
        monkeypatch.setattr(readers, "_fast_loads", json.loads)
    lines = [
        b'{"text": "first"}',
        b"[" * 100_000,  # unbalanced, 100 000 levels: today's RecursionError
        b'{"text": "deep metadata", "m": ' + deep(1020) + b"}",  # orjson parses it
        b'{"body": "no text field", "m": ' + deep(1020) + b"}",  # rejected, raw not shown
        b'{"text": "last", "m": ' + deep(50) + b"}",
    ]
    src = tmp_path / "deep.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    project = Project.at(tmp_path / "p")
    result = ingest([src], project, IngestOptions())

    assert (result.rows_in, result.kept) == (5, 2)
    assert kept_texts(project) == ["first", "last"]
    bad = rejected(project)
    assert [r["row"] for r in bad] == [2, 3, 4]
    assert bad[0]["reason"] == "malformed_json" and "nested deeper" in bad[0]["detail"]
    assert len(bad[0]["raw"]) <= readers.RAW_CUT + 1 and len(bad[0]["detail"]) < 100
    # orjson reads 1020 levels; the row is then too deep to store (or, without orjson, to read)
    assert bad[1]["reason"] == "malformed_json" and "nested deeper" in bad[1]["detail"]
    assert bad[2]["reason"] == ("missing_text" if orjson else "malformed_json")


def test_a_json_array_item_nested_too_deep_is_one_bad_row(tmp_path):
    src = tmp_path / "deep.json"
    src.write_bytes(b'[{"text": "a"}, ' + b"[" * 50_000 + b"]" * 50_000 + b', {"text": "b"}]')
    project = Project.at(tmp_path / "p")
    result = ingest([src], project, IngestOptions())
    assert (result.rows_in, result.kept, result.by_reason) == (3, 2, {"malformed_json": 1})
    assert kept_texts(project) == ["a", "b"] and rejected(project)[0]["row"] == 2


def _huge_line_file(path, line_bytes: int, fmt: str) -> None:
    opener = OPENERS.get(path.suffix, open)
    with opener(path, "wb") as fh:
        if fmt in ("csv", "tsv"):
            sep = b"\t" if fmt == "tsv" else b","
            fh.write(b"text" + sep + b"label\nbefore" + sep + b"pos\n")
            fh.write(b"x" * line_bytes + sep + b"neg\n")
            fh.write(b"after" + sep + b"neg\n")
        elif fmt == "json":
            fh.write(b'[{"text": "before"},\n{"text": "')
            fh.write(b"x" * line_bytes + b'"},\n{"text": "after"}]\n')
        else:
            fh.write(b'{"text": "before"}\n{"text": "' + b"x" * line_bytes + b'"}\n')
            fh.write(b'{"text": "after"}\n')


@pytest.mark.parametrize(
    "name",
    ["h.jsonl.gz", "h.jsonl.bz2", "h.jsonl.xz", "h.jsonl", "h.csv.gz", "h.tsv.gz", "h.json.gz"],
)
def test_a_line_over_max_line_bytes_is_quarantined_unparsed(tmp_path, name):
    fmt = name.split(".")[1]
    src = tmp_path / name
    _huge_line_file(src, 5 * MB, fmt)
    project = Project.at(tmp_path / "p")
    result = ingest([src], project, IngestOptions(max_line_bytes=MB))

    assert (result.rows_in, result.kept, result.by_reason) == (3, 2, {"line_too_long": 1})
    assert kept_texts(project) == ["before", "after"]
    (bad,) = rejected(project)
    assert bad["row"] == 2 and f"more than max_line_bytes={MB};" in bad["detail"]
    size = int(re.search(r"has (\d+) bytes", bad["detail"]).group(1))
    assert 5 * MB < size < 5 * MB + 20  # the whole line, counted while it was skipped
    assert len(bad["raw"]) <= readers.RAW_CUT + 1 and set(bad["raw"]) & {"x"}


def test_a_400x_longer_line_in_a_gz_is_read_in_bounded_memory(tmp_path):
    src = tmp_path / "big.jsonl.gz"
    with gzip.open(src, "wb", compresslevel=1) as fh:
        fh.write(b'{"text": "a"}\n{"text": "' + b"y" * (20 * MB) + b'"}\n{"text": "b"}\n')
    tracemalloc.start()
    try:
        rows = list(read_rows(Source(src, "jsonl"), max_line_bytes=MB // 2))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.error[0] if r.error else r.data["text"] for r in rows] == ["a", "line_too_long", "b"]
    assert peak < 3 * MB, f"reading held {peak / MB:.1f} MiB for a 20 MiB line"


class _Spy(io.RawIOBase):
    """A stream that records the largest piece any single read handed out."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)
        self.largest = 0

    def readable(self) -> bool:
        return True

    def readline(self, size: int = -1) -> bytes:
        out = self._inner.readline(size)
        self.largest = max(self.largest, len(out))
        return out

    def read(self, size: int = -1) -> bytes:
        out = self._inner.read(size)
        self.largest = max(self.largest, len(out))
        return out


def test_bounded_lines_never_reads_or_returns_more_than_the_limit(monkeypatch):
    monkeypatch.setattr(readers, "_CHUNK", 256)
    limit = 1000
    spy = _Spy(b"\xef\xbb\xbfshort\n" + b"z" * 10 * limit + b"\n" + b"w" * limit + b"\nend")
    lines = BoundedLines(spy, limit)
    assert next(lines) == b"short\n"  # the byte-order mark is dropped
    with pytest.raises(LineTooLong) as err:
        next(lines)
    assert err.value.size == 10 * limit and len(err.value.head) <= 4 * readers.RAW_CUT
    assert bytes(next(lines)) == b"w" * limit + b"\n"  # exactly the limit: kept
    assert next(lines) == b"end"
    with pytest.raises(StopIteration):
        next(lines)
    assert spy.largest <= 256  # every read is one chunk at most, the long line included


def test_a_csv_row_whose_quoted_field_spans_lines_past_the_limit(tmp_path):
    src = tmp_path / "q.csv"
    src.write_bytes(
        b"text,label\nbefore,pos\n"
        + b'"opens here'
        + b"\nmore of the same field" * 200
        + b'\nends here",neg\n'
        + b'after,neg\n"ok ""quoted""\nfield",pos\n'
    )
    project = Project.at(tmp_path / "p")
    result = ingest([src], project, IngestOptions(max_line_bytes=1000))
    assert (result.rows_in, result.kept, result.by_reason) == (4, 3, {"line_too_long": 1})
    assert kept_texts(project) == ["before", "after", 'ok "quoted"\nfield']
    (bad,) = rejected(project)
    assert bad["row"] == 2 and bad["raw"].startswith('"opens here')
    assert "quoted field over several lines" in bad["detail"]


def test_a_csv_header_over_the_limit_is_an_input_error(tmp_path):
    src = tmp_path / "wide.csv.gz"
    with gzip.open(src, "wb") as fh:
        fh.write(b"text," + b",".join(b"c%d" % i for i in range(1000)) + b"\na\n")
    with pytest.raises(InputError, match=r"wide\.csv\.gz: the header line has .*max_line_bytes"):
        ingest([src], Project.at(tmp_path / "p"), IngestOptions(max_line_bytes=1000))


def test_json_arrays_cut_short_or_followed_by_more_are_bad_rows(tmp_path):
    cases = {
        "short.json": (b'[{"text": "a"}, {"text": "b"', [None, "ends before"]),
        "extra.json": (b'[{"text": "a"}]\n{"text": "b"}\n', [None, "after the array"]),
        "commas.json": (b'[{"text": "a"},, {"text": "b"},]', [None, "empty", None, "empty"]),
        "empty.json": (b" \n[ ]\n", []),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        rows = list(read_rows(Source(tmp_path / name, "jsonl"), max_line_bytes=100))
        got = [None if r.error is None else r.error[1] for r in rows]
        assert len(got) == len(expected), name
        for detail, want in zip(got, expected, strict=True):
            assert (detail is None) if want is None else (want in detail), (name, detail)


def test_max_line_bytes_below_one_is_a_config_error(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "a"}\n')
    with pytest.raises(ConfigError, match="ingest.max_line_bytes"):
        ingest([src], Project.at(tmp_path / "p"), IngestOptions(max_line_bytes=0))
