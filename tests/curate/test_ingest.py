from __future__ import annotations

import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.ingest import IngestOptions, ingest
from tests.helpers.files import write_jsonl
from thresher.errors import InputError
from thresher.project import Project
from thresher.records import text_id


def read_records(project: Project) -> list[dict]:
    return pq.read_table(project.records_path("ingest")).to_pylist()


def read_rejected(project: Project) -> list[dict]:
    path = project.stage_dir("ingest") / "rejected.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


BAD_ROWS = [
    (b'{"text": "unterminated\n', "malformed_json"),
    (b'["a", "list"]\n', "not_an_object"),
    (b'"just a string"\n', "not_an_object"),
    (b'{"label": "pos"}\n', "missing_text"),
    (b'{"text": null, "label": "pos"}\n', "null_text"),
    (b'{"text": "", "label": "pos"}\n', "empty_text"),
    (b'{"text": "   \\t ", "label": "pos"}\n', "empty_text"),
    (b'{"text": 42, "label": "pos"}\n', "wrong_type_text"),
    (b'{"text": ["a"], "label": "pos"}\n', "wrong_type_text"),
    (b'{"text": "bad \xff\xfe bytes", "label": "pos"}\n', "invalid_utf8"),
    (('{"text": "' + "x" * 200 + '", "label": "pos"}\n').encode(), "text_too_long"),
    (b'{"text": "\\u0000\\u0001", "label": "pos"}\n', "empty_text"),
    (b'{"text": "ok text", "label": {"a": 1}}\n', "wrong_type_label"),
]


def test_mixed_file_keeps_every_good_row_and_gives_one_reason_per_bad_row(tmp_path, good_rows):
    lines = [(json.dumps(r) + "\n").encode() for r in good_rows]
    for i, (bad, _) in enumerate(BAD_ROWS):
        lines.insert(2 * i + 1, bad)
    src = write_jsonl(tmp_path / "mixed.jsonl", lines)
    project = Project.at(tmp_path / "proj")
    result = ingest([src], project, IngestOptions(max_text_chars=100))

    assert result.rows_in == len(good_rows) + len(BAD_ROWS)
    assert result.kept == len(good_rows) and result.rejected == len(BAD_ROWS)
    kept = read_records(project)
    assert sorted(r["text"] for r in kept) == sorted(r["text"] for r in good_rows)
    assert all(json.loads(r["metadata"]) == {"lang": "en"} for r in kept)
    rejected = read_rejected(project)
    assert [r["reason"] for r in rejected] == [reason for _, reason in BAD_ROWS]
    assert all(r["source"].endswith("mixed.jsonl") and r["detail"] for r in rejected)
    # Rows are numbered by line: the first bad row sits on line 2.
    assert rejected[0]["row"] == 2
    manifest = project.read_manifest("ingest")
    assert (
        manifest["counts"]["rows_in"] == manifest["counts"]["kept"] + manifest["counts"]["rejected"]
    )


def test_nul_and_control_characters_are_removed_not_fatal(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": "a\u0000b\u0007c\td\ne"}])
    result = ingest([src], Project.at(tmp_path / "p"), IngestOptions())
    assert result.kept == 1 and result.control_chars_cleaned == 1
    assert read_records(Project.at(tmp_path / "p"))[0]["text"] == "abc\td\ne"


def test_ids_given_must_be_unique(tmp_path):
    rows = [
        {"uid": 1, "text": "alpha"},
        {"uid": "2", "text": "beta"},
        {"uid": 1, "text": "alpha"},  # exact repeat
        {"uid": 2, "text": "gamma"},  # same id, other text
        {"uid": None, "text": "delta"},
    ]
    src = write_jsonl(tmp_path / "ids.jsonl", rows)
    project = Project.at(tmp_path / "p")
    result = ingest([src], project, IngestOptions(id_col="uid"))
    assert result.kept == 2
    assert [r["id"] for r in read_records(project)] == ["1", "2"]
    assert [r["reason"] for r in read_rejected(project)] == [
        "duplicate_row",
        "duplicate_id",
        "missing_id",
    ]


def test_an_id_column_gives_the_ids_by_default(tmp_path):
    rows = [
        {"id": "a1", "text": "alpha", "lang": "en"},
        {"id": 7, "text": "beta"},
        {"id": "a1", "text": "gamma"},  # same id, other text
        {"id": "a1", "text": "alpha"},  # exact repeat
        {"id": "", "text": "delta"},
    ]
    src = write_jsonl(tmp_path / "ids.jsonl", rows)
    project = Project.at(tmp_path / "p")
    result = ingest([src], project, IngestOptions())
    records = read_records(project)
    assert [r["id"] for r in records] == ["a1", "7"]
    assert [json.loads(r["metadata"]) for r in records] == [{"lang": "en"}, {}]
    assert [r["reason"] for r in read_rejected(project)] == [
        "duplicate_id",
        "duplicate_row",
        "missing_id",
    ]
    assert result.sources[0]["id_col"] == "id"

    # A CSV with an id column too; one without falls back to text-hash ids.
    (tmp_path / "with.csv").write_text("id,text\nx-1,first\nx-2,second\n")
    (tmp_path / "without.csv").write_text("text\nthird\n")
    both = Project.at(tmp_path / "both")
    result = ingest([tmp_path / "with.csv", tmp_path / "without.csv"], both, IngestOptions())
    assert [r["id"] for r in read_records(both)] == ["x-1", "x-2", text_id("third")]
    assert [s["id_col"] for s in result.sources] == ["id", None]


def test_no_id_col_gives_text_hash_ids_and_keeps_the_column_as_metadata(tmp_path):
    rows = [{"id": "a1", "text": "alpha"}, {"id": "a1", "text": "beta"}]
    src = write_jsonl(tmp_path / "ids.jsonl", rows)
    project = Project.at(tmp_path / "p")
    result = ingest([src], project, IngestOptions(id_col=None))
    records = read_records(project)
    assert result.kept == 2 and [r["id"] for r in records] == [text_id("alpha"), text_id("beta")]
    assert [json.loads(r["metadata"]) for r in records] == [{"id": "a1"}, {"id": "a1"}]


def test_another_id_column_is_required_where_the_default_is_optional(tmp_path):
    (tmp_path / "a.csv").write_text("id,uid,text\n1,u1,alpha\n2,u2,beta\n")
    project = Project.at(tmp_path / "p")
    ingest([tmp_path / "a.csv"], project, IngestOptions(id_col="uid"))
    records = read_records(project)
    assert [r["id"] for r in records] == ["u1", "u2"]
    assert json.loads(records[0]["metadata"]) == {"id": "1"}
    (tmp_path / "b.csv").write_text("text\nalpha\n")
    for opts in (IngestOptions(id_col="uid"), IngestOptions(id_col="id", id_required=True)):
        with pytest.raises(InputError, match=r"b\.csv: no id column .*--no-id-col"):
            ingest([tmp_path / "b.csv"], Project.at(tmp_path / "q"), opts)


def test_jsonl_has_an_id_column_when_its_first_object_has_the_key(tmp_path):
    first_without = [b"not json\n", {"text": "a"}, {"id": "x", "text": "b"}]
    src = write_jsonl(tmp_path / "f.jsonl", first_without)
    project = Project.at(tmp_path / "p")
    ingest([src], project, IngestOptions())
    records = read_records(project)
    assert [r["id"] for r in records] == [text_id("a"), text_id("b")]
    assert json.loads(records[1]["metadata"]) == {"id": "x"}

    first_with = [{"id": "x", "text": "a"}, {"text": "b"}]
    src = write_jsonl(tmp_path / "g.jsonl", first_with)
    result = ingest([src], Project.at(tmp_path / "q"), IngestOptions())
    assert result.kept == 1 and result.by_reason == {"missing_id": 1}


def test_ingest_command_id_flags_and_config(tmp_path):
    from click.testing import CliRunner

    from thresher.cli import main

    rows = [{"id": "a1", "uid": "u1", "text": "alpha"}, {"id": "a2", "uid": "u2", "text": "beta"}]
    src = str(write_jsonl(tmp_path / "ids.jsonl", rows))
    proj = tmp_path / "p"
    runner = CliRunner()

    def ids(*flags: str) -> list[str]:
        res = runner.invoke(main, ["curate", "ingest", src, "-p", str(proj), "--force", *flags])
        assert res.exit_code == 0, res.output
        return [r["id"] for r in read_records(Project.at(proj))]

    out = runner.invoke(main, ["curate", "ingest", src, "-p", str(proj)]).output
    assert "ids: from column 'id'" in out
    assert ids() == ["a1", "a2"]
    assert ids("--id-col", "uid") == ["u1", "u2"]
    assert ids("--no-id-col") == [text_id("alpha"), text_id("beta")]
    both = runner.invoke(
        main, ["curate", "ingest", src, "-p", str(proj), "--id-col", "x", "--no-id-col"]
    )
    assert both.exit_code == 2 and "exclude each other" in both.output

    (proj / "thresher.yaml").write_text("columns:\n  id: null\n")
    assert ids() == [text_id("alpha"), text_id("beta")]
    (proj / "thresher.yaml").write_text("columns:\n  id: uid\n")
    assert ids() == ["u1", "u2"]
    (tmp_path / "plain.csv").write_text("text\ngamma\n")
    res = runner.invoke(main, ["curate", "ingest", str(tmp_path / "plain.csv"), "-p", str(proj)])
    assert res.exit_code == 1 and "no id column 'uid'" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_text_hash_ids_are_stable_and_unique(tmp_path):
    rows = [{"text": "Same  Text"}, {"text": "same text"}, {"text": "other"}]
    src = write_jsonl(tmp_path / "h.jsonl", rows)
    first = ingest([src], Project.at(tmp_path / "a"), IngestOptions())
    ingest([src], Project.at(tmp_path / "b"), IngestOptions())
    ids_a = [r["id"] for r in read_records(Project.at(tmp_path / "a"))]
    ids_b = [r["id"] for r in read_records(Project.at(tmp_path / "b"))]
    assert first.kept == 3 and ids_a == ids_b and len(set(ids_a)) == 3
    assert ids_a[1] == ids_a[0] + "-2"  # normalized-equal texts: same hash, occurrence suffix


def test_every_format_reads_the_same_records(tmp_path, good_rows):
    rows = good_rows[:5]
    fields = ["text", "label", "lang"]
    with open(tmp_path / "d.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(tmp_path / "d.tsv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    write_jsonl(tmp_path / "d.jsonl", rows)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    from datasets import Dataset, DatasetDict

    Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    DatasetDict(
        {"train": Dataset.from_list(rows[:3]), "test": Dataset.from_list(rows[3:])}
    ).save_to_disk(str(tmp_path / "hfdict"))

    expected = sorted(r["text"] for r in rows)
    for name in ["d.csv", "d.tsv", "d.jsonl", "d.jsonl.gz", "d.json", "d.parquet", "hf", "hfdict"]:
        project = Project.at(tmp_path / f"p-{name}")
        result = ingest([tmp_path / name], project, IngestOptions())
        assert (result.kept, result.rejected) == (5, 0), name
        records = read_records(project)
        assert sorted(r["text"] for r in records) == expected, name
        assert {r["label"] for r in records} == {"pos", "neg"}, name
        assert all(json.loads(r["metadata"])["lang"] == "en" for r in records), name
    hfdict_meta = [
        json.loads(r["metadata"]) for r in read_records(Project.at(tmp_path / "p-hfdict"))
    ]
    assert sorted(m["split"] for m in hfdict_meta) == ["test", "test", "train", "train", "train"]


def test_csv_bad_rows(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(
        b"text,label\n"
        b"fine row,pos\n"
        b"too,many,fields\n"
        b'"bad \xff bytes",neg\n'
        b",neg\n"
        b'"multi\nline",pos\n'
    )
    project = Project.at(tmp_path / "p")
    result = ingest([path], project, IngestOptions())
    assert result.kept == 2 and result.rejected == 3
    assert [r["reason"] for r in read_rejected(project)] == [
        "bad_field_count",
        "invalid_utf8",
        "empty_text",
    ]
    assert [r["text"] for r in read_records(project)] == ["fine row", "multi\nline"]


def test_configured_labels_quarantine_unknown_ones(tmp_path):
    src = write_jsonl(
        tmp_path / "l.jsonl",
        [
            {"text": "a", "label": "pos"},
            {"text": "b", "label": "meh"},
            {"text": "c", "label": 1.0},
            {"text": "d", "label": ""},
        ],
    )
    project = Project.at(tmp_path / "p")
    result = ingest([src], project, IngestOptions(labels=("pos", "neg", "1")))
    assert result.kept == 3 and result.by_reason == {"label_not_allowed": 1}
    assert [r["label"] for r in read_records(project)] == ["pos", "1", None]


def test_file_level_errors_are_input_errors(tmp_path):
    project = Project.at(tmp_path / "p")
    with pytest.raises(InputError, match="no such file"):
        ingest([tmp_path / "missing.jsonl"], project, IngestOptions())
    (tmp_path / "x.csv").write_text("body,label\nhello,pos\n")
    with pytest.raises(InputError, match=r"x\.csv: no text column 'text'.*--text-col"):
        ingest([tmp_path / "x.csv"], project, IngestOptions())
    write_jsonl(tmp_path / "y.jsonl", [{"body": "a"}, {"body": "b"}])
    with pytest.raises(InputError, match=r"y\.jsonl: no row has a 'text' field"):
        ingest([tmp_path / "y.jsonl"], project, IngestOptions())
    (tmp_path / "z.txt").write_text("hello")
    with pytest.raises(InputError, match="--format"):
        ingest([tmp_path / "z.txt"], project, IngestOptions())
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable Parquet"):
        ingest([tmp_path / "broken.parquet"], project, IngestOptions())
    assert not project.records_path("ingest").exists()


def test_rerun_is_a_noop_and_force_redoes(tmp_path, good_rows):
    src = write_jsonl(tmp_path / "a.jsonl", good_rows)
    project = Project.at(tmp_path / "p")
    first = ingest([src], project, IngestOptions())
    stamp = project.manifest_path("ingest").stat().st_mtime_ns
    again = ingest([src], project, IngestOptions())
    assert again.noop and (again.kept, again.rejected) == (first.kept, first.rejected)
    assert project.manifest_path("ingest").stat().st_mtime_ns == stamp
    forced = ingest([src], project, IngestOptions(), force=True)
    assert not forced.noop and forced.kept == first.kept
    changed = ingest([src], project, IngestOptions(max_text_chars=10))
    assert not changed.noop and changed.kept < first.kept
    write_jsonl(src, good_rows[:3])
    assert ingest([src], project, IngestOptions()).kept == 3


_good = st.fixed_dictionaries(
    {
        "text": st.text(min_size=1, max_size=30).filter(str.strip),
        "label": st.sampled_from(["a", "b", None]),
    }
)
_line = st.one_of(
    _good.map(lambda r: (json.dumps(r) + "\n").encode()),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"),
    st.sampled_from([b for b, _ in BAD_ROWS]),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(_line, max_size=40))
def test_rows_in_equals_kept_plus_rejected_under_random_corruption(tmp_path_factory, lines):
    tmp = tmp_path_factory.mktemp("fuzz")
    src = write_jsonl(tmp / "f.jsonl", lines)
    project = Project.at(tmp / "p")
    try:
        result = ingest([src], project, IngestOptions(max_text_chars=100))
    except InputError:
        # Only a file where JSON objects exist but none has the text field is a file-level error.
        objects = [_object_or_none(line) for line in lines]
        assert any(o is not None for o in objects)
        assert all("text" not in o for o in objects if o is not None)
        assert not project.records_path("ingest").exists()
        return
    bom = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark opening the file is not content
    non_blank = sum(
        1 for i, line in enumerate(lines) if (line.removeprefix(bom) if i == 0 else line).strip()
    )
    assert result.rows_in == non_blank
    assert result.kept + result.rejected == result.rows_in
    assert len(read_records(project)) == result.kept
    assert len(read_rejected(project)) == result.rejected


def _object_or_none(line: bytes) -> dict | None:
    try:
        obj = json.loads(line.removeprefix(b"\xef\xbb\xbf"))
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
