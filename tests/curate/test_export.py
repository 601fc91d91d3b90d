"""Export: representatives only, from the most downstream stage, in three formats."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from curate.dedup import DedupOptions, dedup
from curate.export import ExportOptions, export
from curate.ingest import IngestOptions, ingest
from thresher.cli import main
from thresher.errors import InputError, StageMissingError
from thresher.project import Project

BASE = "the quick brown fox jumps over the lazy dog near the river bank today"
ROWS = [
    {"text": BASE, "label": "a"},
    {"text": BASE.upper(), "label": "a"},
    {"text": "a completely different sentence about quarterly revenue growth", "label": "b"},
    {"text": "yet another unrelated line, this one about the weather in spring", "label": "b"},
]


@pytest.fixture
def project(tmp_path: Path) -> Project:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    proj = Project.at(tmp_path / "proj")
    ingest([src], proj, IngestOptions())
    return proj


def test_export_after_ingest_keeps_everything(project, tmp_path):
    result = export(project, tmp_path / "out.parquet", ExportOptions())
    assert result.stage == "ingest" and result.exported == 4 == result.rows_in
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 4


def test_export_keeps_representatives(project, tmp_path):
    dedup(project, DedupOptions())
    result = export(project, tmp_path / "out.jsonl", ExportOptions(format="jsonl"))
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert result.stage == "dedup" and result.exported == 3 and result.dropped_duplicates == 1
    assert [r["text"] for r in lines] == [BASE, ROWS[2]["text"], ROWS[3]["text"]]
    assert all(r["is_representative"] for r in lines)


def test_score_stage_is_preferred_and_label_issues_drop_only_on_request(project, tmp_path):
    dedup(project, DedupOptions())
    table = pq.read_table(project.records_path("dedup"))
    flags = pa.array([False, False, True, False])
    score_dir = project.stage_dir("score")
    score_dir.mkdir()
    pq.write_table(table.append_column("label_issue", flags), score_dir / "records.parquet")
    kept = export(project, tmp_path / "a.parquet", ExportOptions())
    assert kept.stage == "score" and kept.exported == 3 and kept.dropped_label_issues == 0
    dropped = export(project, tmp_path / "b.parquet", ExportOptions(drop_label_issues=True))
    assert dropped.exported == 2 and dropped.dropped_label_issues == 1
    texts = pq.read_table(tmp_path / "b.parquet").column("text").to_pylist()
    assert ROWS[2]["text"] not in texts


def test_export_errors(tmp_path, project):
    with pytest.raises(StageMissingError):
        export(Project.at(tmp_path / "none"), tmp_path / "x.parquet", ExportOptions())
    with pytest.raises(InputError):
        export(project, tmp_path / "x.csv", ExportOptions(format="csv"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("x")
    with pytest.raises(InputError):
        export(project, tmp_path / "hf", ExportOptions(format="hf"))


def test_export_cli(project, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["curate", "dedup", "-p", str(project.root)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "curated.parquet"
    res = runner.invoke(main, ["curate", "export", "-p", str(project.root), str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["exported"] == 3


@pytest.mark.slow
def test_export_hf_dataset(project, tmp_path):
    datasets = pytest.importorskip("datasets")
    dedup(project, DedupOptions())
    export(project, tmp_path / "hf", ExportOptions(format="hf"))
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds.num_rows == 3 and "dup_cluster" in ds.column_names
    export(project, tmp_path / "hf", ExportOptions(format="hf", force=True))


# --- the review applied: consensus labels, discards, settled label issues ---------------------

REVIEW_ROWS = [
    {"text": BASE, "label": "a"},  # representative of the duplicate pair, not reviewed
    {"text": BASE.upper(), "label": "a"},  # its duplicate: dropped before the review applies
    {"text": "relabel me: the invoice total was wrong by a few cents again", "label": "b"},
    {"text": "confirm me: parsley, sage, rosemary and thyme in the garden", "label": "b"},
    {"text": "tie: two reviewers disagree about this ambiguous headline", "label": "a"},
    {"text": "discarded: asdf qwer zxcv lorem ipsum keyboard noise", "label": "b"},
    {"text": "flagged and reviewed: the train left the station on time", "label": "a"},
    {"text": "flagged, not reviewed: a cat sat quietly on the warm mat", "label": "a"},
]
ISSUES = [False, False, False, False, True, False, True, True]


@pytest.fixture
def reviewed(tmp_path: Path) -> tuple[Project, list[str]]:
    """dedup + a hand-made score stage (label_issue) + a hand-made review pull: one relabel,
    one confirm (and discarded by a third reviewer), one tie, one discarded by all, one flagged
    record relabelled by reviewers. Returns the project and the ids in REVIEW_ROWS order."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in REVIEW_ROWS), encoding="utf-8")
    proj = Project.at(tmp_path / "proj")
    ingest([src], proj, IngestOptions())
    dedup(proj, DedupOptions())
    table = pq.read_table(proj.records_path("dedup"))
    by_text = dict(zip(table["text"].to_pylist(), table["id"].to_pylist(), strict=True))
    ids = [by_text[r["text"]] for r in REVIEW_ROWS]
    issue = [ISSUES[ids.index(i)] for i in table["id"].to_pylist()]
    proj.stage_dir("score").mkdir()
    pq.write_table(table.append_column("label_issue", pa.array(issue)), proj.records_path("score"))
    (proj.root / "review").mkdir()
    annotations = pa.table(
        {
            "id": [ids[2], ids[3], ids[4], ids[5], ids[6]],
            "label": ["a", "b", None, None, "b"],
            "n_annotators": [2, 2, 2, 0, 2],
            "discarded_by": [[], ["cat"], [], ["ann", "bob"], []],
        }
    )
    pq.write_table(annotations, proj.root / "review" / "annotations.parquet")
    return proj, ids


def _by_id(rows: list[dict]) -> dict[str, tuple]:
    return {r["id"]: (r["label"], r["original_label"], r["label_source"]) for r in rows}


def test_export_applies_the_review(reviewed, tmp_path):
    project, ids = reviewed
    result = export(project, tmp_path / "out.parquet", ExportOptions())
    counts = {k: v for k, v in result.to_dict().items() if k not in ("stage", "format", "path")}
    assert counts == {
        "rows_in": 8,
        "exported": 6,
        "dropped_duplicates": 1,
        "dropped_discarded": 1,
        "dropped_label_issues": 0,
        "reviewed": 3,
        "relabelled": 2,
        "production": 0,
    }
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names[-2:] == ["original_label", "label_source"]
    assert _by_id(table.to_pylist()) == {
        ids[0]: ("a", "a", "original"),
        ids[2]: ("a", "b", "reviewed"),  # relabelled
        ids[3]: ("b", "b", "reviewed"),  # confirmed (one discard among submits does not drop)
        ids[4]: ("a", "a", "original"),  # tie: the input label stays
        ids[6]: ("b", "a", "reviewed"),  # flagged, settled by reviewers
        ids[7]: ("a", "a", "original"),
    }
    jsonl = export(project, tmp_path / "out.jsonl", ExportOptions(format="jsonl"))
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert jsonl.to_dict() | {"format": "parquet", "path": ""} == result.to_dict() | {"path": ""}
    assert _by_id(lines) == _by_id(table.to_pylist())
    assert [r["id"] for r in lines] == table.column("id").to_pylist()  # stage order kept


def test_drop_label_issues_keeps_reviewed_records(reviewed, tmp_path):
    project, ids = reviewed
    result = export(project, tmp_path / "out.parquet", ExportOptions(drop_label_issues=True))
    assert result.dropped_label_issues == 2 and result.exported == 4  # the tie and the unreviewed
    kept = set(pq.read_table(tmp_path / "out.parquet").column("id").to_pylist())
    assert kept == {ids[0], ids[2], ids[3], ids[6]}
    assert result.rows_in == result.exported + result.dropped_duplicates + (
        result.dropped_discarded + result.dropped_label_issues
    )


def test_export_without_review_adds_no_columns(project, tmp_path):
    result = export(project, tmp_path / "out.parquet", ExportOptions())
    names = pq.read_table(tmp_path / "out.parquet").column_names
    assert "original_label" not in names and "label_source" not in names
    assert (result.reviewed, result.relabelled, result.dropped_discarded) == (0, 0, 0)


def test_export_cli_json_has_review_counts(reviewed, tmp_path):
    project, _ = reviewed
    out = tmp_path / "curated.jsonl"
    args = ["curate", "export", "-p", str(project.root), str(out), "--format", "jsonl"]
    res = CliRunner().invoke(main, [*args, "--drop-label-issues", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["reviewed"] == 3 and summary["relabelled"] == 2
    assert summary["dropped_discarded"] == 1 and summary["exported"] == 4
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and "1 discarded by reviewers" in res.output
    assert "reviewed labels: 3 (2 changed)" in res.output


@pytest.mark.slow
def test_export_hf_dataset_with_review(reviewed, tmp_path):
    datasets = pytest.importorskip("datasets")
    project, ids = reviewed
    export(project, tmp_path / "hf", ExportOptions(format="hf"))
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds.num_rows == 6 and ds.column_names[-2:] == ["original_label", "label_source"]
    assert dict(zip(ds["id"], ds["label"], strict=True))[ids[2]] == "a"


def test_a_review_of_a_duplicate_reaches_its_new_representative(project, tmp_path):
    """The member reviewed when it stood for the cluster; a later dedup run chose another
    representative: the export carries the reviewer's label to the one it keeps."""
    dedup(project, DedupOptions(semantic=False))
    stage = pq.read_table(project.records_path("dedup")).to_pylist()
    cluster = [r for r in stage if r["dup_cluster"] is not None]
    assert len(cluster) == 2
    member = next(r for r in cluster if not r["is_representative"])
    rep = next(r for r in cluster if r["is_representative"])
    (project.root / "review").mkdir()
    pq.write_table(
        pa.table({"id": [member["id"]], "label": ["b"]}),
        project.root / "review" / "annotations.parquet",
    )
    result = export(project, tmp_path / "out.parquet", ExportOptions())
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out.parquet").to_pylist()}
    assert member["id"] not in rows
    assert (rows[rep["id"]]["label"], rows[rep["id"]]["label_source"]) == ("b", "reviewed")
    assert rows[rep["id"]]["original_label"] == "a"
    assert result.reviewed == 1 and result.relabelled == 1


def test_export_never_replaces_the_project_or_what_thresher_wrote(project, tmp_path):
    """An export onto the project folder (or its parent, with hf --force) would have removed the
    project; one into a stage folder would have replaced that stage's records."""
    root = project.root

    def tree():
        return {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    before = tree()
    targets = [root, tmp_path, root / "ingest", root / "ingest" / "records.parquet"]
    targets += [root / "tune" / "x.parquet", root / "thresher.yaml", root / "ingest" / ".." / "."]
    runner = CliRunner()
    for out in targets:
        for fmt in ("parquet", "hf"):
            with pytest.raises(InputError, match="project") as err:
                export(project, out, ExportOptions(format=fmt, force=True))
            assert "\n" not in str(err.value)
            args = ["curate", "export", "-p", str(root), str(out), "--format", fmt, "--force"]
            res = runner.invoke(main, args)
            assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert tree() == before
    inside = export(project, root / "exports" / "curated.parquet", ExportOptions())
    assert inside.exported == 4 and export(project, root / "curated.jsonl", ExportOptions())
