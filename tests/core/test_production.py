"""Production records in the curated set: reviewed ones join export and curated.parquet."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.export import ExportOptions, export
from review.pull import write_curated
from tests.helpers.labelled_project import make_project, synthetic_rows
from thresher.production import append_production_records, reviewed_production_records
from thresher.project import Project
from thresher.records import text_id


def _production(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [text_id(t) for t in texts],
            "text": texts,
            "label": [None] * len(texts),
            "source": "serve/traffic",
            "source_row": list(range(len(texts))),
            "metadata": [json.dumps({"predicted_label": "pos"})] * len(texts),
        }
    )


@pytest.fixture()
def project(tmp_path) -> tuple[Project, list[str]]:
    rows = synthetic_rows(10, seed=3)
    proj = Project.at(make_project(tmp_path / "proj", rows))
    served = ["a served text nobody ingested", "another served text", rows[0]["text"]]
    append_production_records(proj, _production(served))
    ids = [text_id(t) for t in served]
    stage_ids = pq.read_table(proj.records_path("ingest"))["id"].to_pylist()
    # reviewers labelled the first and third served texts and one ingested record
    annotations = pa.table({"id": [ids[0], ids[2], stage_ids[1]], "label": ["neg", "pos", "pos"]})
    pq.write_table(annotations, proj.root / "review" / "annotations.parquet")
    return proj, ids


def test_only_reviewed_production_records_the_stage_lacks(project):
    proj, ids = project
    from thresher.decisions import load_decisions

    table = reviewed_production_records(proj, proj.records_path("ingest"), load_decisions(proj))
    # the second was not reviewed; the third is an ingested text (the stage holds it)
    assert table.column("id").to_pylist() == [ids[0]]
    assert table.schema == pq.read_schema(proj.records_path("ingest"))


def test_export_appends_reviewed_production_records_with_their_label(project, tmp_path):
    proj, ids = project
    result = export(proj, tmp_path / "out.parquet", ExportOptions())
    assert result.production == 1
    assert result.rows_in == result.exported == 11
    out = pq.read_table(tmp_path / "out.parquet").to_pandas().set_index("id")
    assert out.loc[ids[0], "label"] == "neg"
    assert out.loc[ids[0], "label_source"] == "reviewed"
    assert out.loc[ids[0], "source"] == "serve/traffic"
    assert ids[1] not in out.index


def test_pull_curated_set_holds_them_too(project, tmp_path):
    proj, ids = project
    rows = pq.read_table(proj.root / "review" / "annotations.parquet").to_pylist()
    write_curated(proj.records_path("ingest"), rows, tmp_path / "curated.parquet", proj)
    curated = pq.read_table(tmp_path / "curated.parquet").to_pandas().set_index("id")
    assert len(curated) == 11 and curated.loc[ids[0], "label"] == "neg"
    write_curated(proj.records_path("ingest"), rows, tmp_path / "stage_only.parquet")
    assert len(pq.read_table(tmp_path / "stage_only.parquet")) == 10
