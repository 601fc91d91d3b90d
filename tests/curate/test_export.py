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
