"""``thresher round --from-traffic`` against the embedded Argilla server (session fixture
``argilla`` in tests/conftest.py): served texts the project lacks are pushed with reason
``production`` and become production records; a second run pushes nothing new."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from click.testing import CliRunner

from review.client import open_client
from review.push import PushState
from thresher.production import production_records
from thresher.project import Project
from thresher.records import text_id
from thresher.traffic import write_traffic_file

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def _served(i: int, text: str | None, p_food: float, text_for_hash: str | None = None):
    probs = {"food": p_food, "sport": (1 - p_food) / 2, "tech": (1 - p_food) / 2}
    label = max(probs, key=probs.get)
    return {
        "time": T0 + timedelta(minutes=i),
        "request_id": f"req-{i}",
        "model": "run-1",
        "text_hash": text_id(text if text is not None else text_for_hash),
        "text": text,
        "label": label,
        "prob": probs[label],
        "probs": list(probs.items()),
    }


def _dataset_records(conn, dataset_id):
    with open_client(conn) as client:
        out = client.post(
            f"/api/v1/datasets/{dataset_id}/records/search",
            "search records",
            idempotent=True,
            json={"query": {}},
            params={"limit": 200, "include": ["suggestions"]},
        )
    return [item["record"] for item in out["items"]]


def test_round_from_traffic_pushes_production_records_once(argilla, tmp_path, monkeypatch):
    from thresher.cli import main

    monkeypatch.setenv("THRESHER_HOME", str(argilla.paths.home))
    root = tmp_path / "proj"
    (root / "ingest").mkdir(parents=True)
    pd.DataFrame(
        {
            "id": ["p1", "p2"],
            "text": ["a recipe to bake bread", "the match went to extra time"],
            "label": ["food", "sport"],
            "source": "input.csv",
            "source_row": [0, 1],
            "metadata": "{}",
        }
    ).to_parquet(root / "ingest" / "records.parquet", index=False)
    (root / "thresher.yaml").write_text(
        "labels: [food, sport, tech]\nreview:\n  dataset: traffic-round\n  vectors: false\n"
        "loop:\n  size: 3\n"
    )
    project = Project.at(root)
    rows = [
        _served(0, "a new laptop chip review", 0.34),  # most uncertain
        _served(1, "sauce and oven tips", 0.9),
        _served(2, "a recipe to bake bread", 0.5),  # already a project record
        _served(3, None, 0.4, text_for_hash="a hidden text"),  # served with --no-log-text
        _served(4, "coach of the season", 0.6),
        _served(5, "coach of the season", 0.7),  # the same text again
        _served(6, "cloud data app", 0.45),
        _served(7, "late traffic outside the window", 0.35),
    ]
    write_traffic_file(project.traffic_dir, rows)

    runner = CliRunner()
    args = ["round", "-p", str(root), "--from-traffic", "--until", "2026-12-05T09:07:00Z"]
    out = runner.invoke(main, [*args, "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    select, push = summary["outputs"]["select"], summary["outputs"]["push"]
    assert summary["strategy"] == "production" and summary["round"] == 1
    assert select["read"] == 7 and select["no_text"] == 1 and select["duplicates"] == 1
    assert select["known"] == 1 and select["selected"] == 3
    assert "no monitor report" in select["ranking"]
    assert push["sent"] == 3 and push["appended"] == 3

    chosen = ["a new laptop chip review", "cloud data app", "coach of the season"]
    sel = pd.read_parquet(root / "rounds" / "production" / "1" / "selection.parquet")
    assert list(sel["text"]) == chosen  # smallest margin first
    manifest = json.loads((root / "rounds" / "production" / "1" / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["strategy"] == "production"

    state = PushState.load(root / "review")
    records = _dataset_records(argilla.conn(), state.dataset_id)
    by_id = {r["external_id"]: r for r in records}
    assert set(by_id) == {text_id(t) for t in chosen}
    for text in chosen:
        record = by_id[text_id(text)]
        assert record["metadata"]["reason"] == "production"
        assert record["metadata"]["round"] == 1
        (suggestion,) = record["suggestions"]
        served = sel.set_index("text").loc[text]
        assert suggestion["value"] == served["suggestion"]
        assert suggestion["score"] == pytest.approx(served["suggestion_score"], abs=1e-5)

    prod = production_records(project)
    assert set(prod["id"]) == {text_id(t) for t in chosen} and prod["label"].isna().all()

    # the next run sends only what is left (the surest text), the one after that nothing
    again = runner.invoke(main, [*args, "--json"])
    assert again.exit_code == 0, again.output
    second = json.loads(again.output)
    assert second["round"] == 2 and second["outputs"]["select"]["known"] == 4
    assert second["outputs"]["select"]["selected"] == 1
    assert second["outputs"]["push"]["sent"] == 1
    last = runner.invoke(main, [*args, "--json"])
    assert last.exit_code == 0, last.output
    third = json.loads(last.output)
    assert third["round"] == 3 and third["outputs"]["select"]["known"] == 5
    assert third["outputs"]["select"]["selected"] == 0
    assert third["outputs"]["push"]["sent"] == 0
    ids = {r["external_id"] for r in _dataset_records(argilla.conn(), state.dataset_id)}
    assert ids == {text_id(t) for t in [*chosen, "sauce and oven tips"]}
    assert len(production_records(project)) == 4
