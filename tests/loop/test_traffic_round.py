"""Production records back to annotators: selection from the traffic log (ranking, dedup,
no-text rows), the production records file, and their union into tune's training data."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from loop.traffic_round import (
    known_text_ids,
    margin,
    monitor_flags,
    production_rows,
    select_traffic,
)
from thresher.production import (
    SOURCE,
    append_production_records,
    production_records,
    with_production_records,
)
from thresher.project import Project
from thresher.records import text_id
from thresher.traffic import read_traffic, write_traffic_file

T0 = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def served(text, probs, minutes=0, model="run-1", log_text=True):
    label = max(probs, key=probs.get)
    return {
        "time": T0 + timedelta(minutes=minutes),
        "request_id": f"req-{minutes}",
        "model": model,
        "text_hash": text_id(text),
        "text": text if log_text else None,
        "label": label,
        "prob": probs[label],
        "probs": list(probs.items()),
    }


def log_traffic(project: Project, rows):
    write_traffic_file(project.traffic_dir, rows)
    return read_traffic(project.traffic_dir)


@pytest.fixture()
def project(tmp_path) -> Project:
    root = tmp_path / "proj"
    (root / "ingest").mkdir(parents=True)
    pd.DataFrame(
        {
            "id": ["a1", "a2"],
            "text": ["an ingested text", "another ingested text"],
            "label": ["pos", "neg"],
            "source": "input.csv",
            "source_row": [0, 1],
            "metadata": "{}",
        }
    ).to_parquet(root / "ingest" / "records.parquet", index=False)
    return Project.at(root)


def test_margin_is_top1_minus_top2():
    assert margin({"a": 0.7, "b": 0.2, "c": 0.1}) == pytest.approx(0.5)
    assert margin({"a": 0.9}) == pytest.approx(0.9)
    assert margin({}) == 0.0


def test_uncertain_first_and_near_ood_before_them(project):
    traffic = log_traffic(
        project,
        [
            served("sure one", {"pos": 0.95, "neg": 0.05}, 0),
            served("unsure one", {"pos": 0.52, "neg": 0.48}, 1),
            served("middle one", {"pos": 0.7, "neg": 0.3}, 2),
        ],
    )
    sel = select_traffic(traffic, known=set(), size=2)
    assert list(sel.frame["text"]) == ["unsure one", "middle one"]
    assert list(sel.frame["priority"]) == [1, 2]
    assert set(sel.frame["reason"]) == {"production"}
    assert sel.counts["selected"] == 2 and sel.counts["candidates"] == 3
    flagged = select_traffic(traffic, set(), size=2, near_ood={text_id("sure one")})
    assert list(flagged.frame["text"]) == ["sure one", "unsure one"]
    assert flagged.counts["near_ood_selected"] == 1


def test_no_text_rows_are_skipped_and_counted(project):
    traffic = log_traffic(
        project,
        [
            served("secret text", {"pos": 0.5, "neg": 0.5}, 0, log_text=False),
            served("visible text", {"pos": 0.9, "neg": 0.1}, 1),
        ],
    )
    sel = select_traffic(traffic, set(), size=10)
    assert list(sel.frame["text"]) == ["visible text"]
    assert sel.counts["no_text"] == 1 and sel.counts["read"] == 2


def test_dedup_within_traffic_keeps_the_latest_answer(project):
    traffic = log_traffic(
        project,
        [
            served("Same  text", {"pos": 0.6, "neg": 0.4}, 0, model="run-1"),
            served("same text", {"pos": 0.8, "neg": 0.2}, 5, model="run-2"),
        ],
    )
    sel = select_traffic(traffic, set(), size=10)
    assert len(sel.frame) == 1 and sel.counts["duplicates"] == 1
    assert sel.frame.loc[0, "model"] == "run-2"
    assert sel.frame.loc[0, "id"] == text_id("same text")


def test_dedup_against_the_project(project):
    append_production_records(
        project,
        pd.DataFrame(
            {
                "id": [text_id("sent before")],
                "text": ["sent before"],
                "label": [None],
                "source": SOURCE,
                "source_row": [0],
                "metadata": "{}",
            }
        ),
    )
    pd.DataFrame({"id": [text_id("reviewed text")], "label": ["pos"]}).to_parquet(
        project.annotations_path
    )
    known = known_text_ids(project)
    assert {"a1", text_id("an ingested text"), text_id("sent before")} <= known
    traffic = log_traffic(
        project,
        [
            served("An ingested   TEXT", {"pos": 0.5, "neg": 0.5}, 0),  # same text id as a1
            served("sent before", {"pos": 0.5, "neg": 0.5}, 1),
            served("reviewed text", {"pos": 0.5, "neg": 0.5}, 2),
            served("brand new", {"pos": 0.9, "neg": 0.1}, 3),
        ],
    )
    sel = select_traffic(traffic, known, size=10)
    assert list(sel.frame["text"]) == ["brand new"]
    assert sel.counts["known"] == 3


def test_production_records_append_is_idempotent(project):
    traffic = log_traffic(
        project,
        [
            served("first served", {"pos": 0.6, "neg": 0.4}, 0),
            served("second served", {"pos": 0.55, "neg": 0.45}, 1),
        ],
    )
    rows = production_rows(select_traffic(traffic, set(), size=10).frame)
    assert append_production_records(project, rows) == (2, 2)
    assert append_production_records(project, rows) == (0, 2)
    assert append_production_records(project, pd.concat([rows, rows])) == (0, 2)
    stored = production_records(project)
    assert sorted(stored["id"]) == sorted([text_id("first served"), text_id("second served")])
    assert stored["label"].isna().all() and set(stored["source"]) == {SOURCE}
    meta = json.loads(stored.set_index("text").loc["first served", "metadata"])
    assert meta["model"] == "run-1" and meta["predicted_label"] == "pos"
    assert meta["predicted_prob"] == pytest.approx(0.6)
    assert meta["time"].startswith("2026-12-05T10:00")


def test_with_production_records_adds_only_unknown_ids(project):
    stage = pd.read_parquet(project.records_path("ingest"))
    append_production_records(
        project,
        pd.DataFrame(
            {
                "id": [text_id("fresh"), text_id("an ingested text")],
                "text": ["fresh", "an ingested text"],
                "label": [None, None],
                "source": SOURCE,
                "source_row": [0, 1],
                "metadata": "{}",
            }
        ),
    )
    merged = with_production_records(project, stage)
    assert list(merged["id"]) == ["a1", "a2", text_id("fresh")]
    assert merged["label"].isna().tolist() == [False, False, True]


def test_monitor_flags_say_how_the_selection_is_ranked(project):
    flagged, how = monitor_flags(project)
    assert flagged is None and "no monitor report" in how
    report = project.root / "monitor" / "m1"
    report.mkdir(parents=True)
    (report / "report.json").write_text("{}")
    flagged, how = monitor_flags(project)
    assert flagged is None and "no per-record output" in how
    pd.DataFrame({"text_hash": ["h1", "h2"], "near_ood": [True, False]}).to_parquet(
        report / "records.parquet"
    )
    flagged, how = monitor_flags(project)
    assert flagged == {"h1"} and "near-OOD first" in how


def test_a_reviewed_production_record_is_trained_on(tmp_path):
    from tests.helpers.labelled_project import make_project, synthetic_rows
    from tune.data import build_dataset
    from tune.options import DataOptions

    proj = Project.at(make_project(tmp_path / "p", synthetic_rows(60, seed=2)))
    build_dataset(proj, DataOptions())  # makes and saves the split first
    texts = {"reviewed": "a served text that a person labelled", "open": "a served text nobody saw"}
    rows = pd.DataFrame(
        {
            "id": [text_id(t) for t in texts.values()],
            "text": list(texts.values()),
            "label": [None, None],
            "source": SOURCE,
            "source_row": [0, 1],
            "metadata": "{}",
        }
    )
    append_production_records(proj, rows)
    pd.DataFrame({"id": [text_id(texts["reviewed"])], "label": ["neg"]}).to_parquet(
        proj.annotations_path
    )
    data = build_dataset(proj, DataOptions())
    train = data.train.set_index("id")
    assert train.loc[text_id(texts["reviewed"]), "label"] == "neg"
    assert text_id(texts["open"]) not in train.index
    every = set(data.train["id"]) | set(data.val["id"]) | set(data.test["id"])
    assert text_id(texts["open"]) not in every
    assert data.counts["reviewed"] == 1
