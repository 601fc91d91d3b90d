"""The curated set and the split: stratified, seeded, fixed across rounds, no cluster leakage."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.helpers.labelled_project import make_project, synthetic_rows
from thresher.errors import ThresherError
from thresher.project import Project
from tune.data import EmptyDataError, build_dataset
from tune.options import DataOptions


def _write_stage(project: Project, stage: str, frame: pd.DataFrame) -> None:
    project.stage_dir(stage).mkdir(parents=True, exist_ok=True)
    frame.to_parquet(project.records_path(stage), index=False)


def _with_clusters(project: Project, size: int = 4) -> pd.DataFrame:
    """Fake dedup output: every block of ``size`` consecutive records is one near-dup cluster."""
    frame = pd.read_parquet(project.records_path("ingest"))
    cluster = [i // size if (i // size) % 3 == 0 else None for i in range(len(frame))]
    frame["dup_cluster"] = pd.array(cluster, dtype="Int64")
    frame["is_representative"] = [c is None or i % size == 0 for i, c in enumerate(cluster)]
    frame["dup_kind"] = ["near" if c is not None else None for c in cluster]
    _write_stage(project, "dedup", frame)
    return frame


def test_split_is_stratified_and_saved(project):
    data = build_dataset(Project.at(project), DataOptions())
    split = pd.read_parquet(project / "tune" / "split.parquet")
    assert set(split["split"]) == {"train", "val", "test"}
    assert len(data.test) == pytest.approx(0.15 * 160, abs=2)
    for part in (data.train, data.val, data.test):
        share = (part["label"] == "pos").mean()
        assert 0.4 <= share <= 0.6  # both classes kept in every split
    again = build_dataset(Project.at(project), DataOptions(seed=99))  # saved split wins
    assert list(again.test["id"]) == list(data.test["id"])


def test_test_split_never_shares_a_cluster_with_train(project):
    proj = Project.at(project)
    clusters = _with_clusters(proj)
    data = build_dataset(proj, DataOptions())
    cluster_of = dict(zip(clusters["id"], clusters["dup_cluster"], strict=True))
    train_c = {cluster_of[i] for i in data.train["id"] if pd.notna(cluster_of[i])}
    test_c = {cluster_of[i] for i in data.test["id"] if pd.notna(cluster_of[i])}
    assert train_c and test_c and not train_c & test_c
    # curated train keeps representatives only; raw keeps every member
    raw = build_dataset(proj, DataOptions(mode="raw"))
    assert len(raw.train) > len(data.train)
    assert data.counts["dropped_duplicates"] == len(raw.train) - len(data.train)
    assert list(raw.test["id"]) == list(data.test["id"])  # same test records in both modes


def test_new_records_keep_the_test_split_fixed(tmp_path):
    rows = synthetic_rows(100, seed=2)
    root = make_project(tmp_path / "p", rows)
    first = build_dataset(Project.at(root), DataOptions())
    make_project(root, rows + synthetic_rows(140, seed=7)[100:])  # a later round adds 40 records
    second = build_dataset(Project.at(root), DataOptions())
    assert list(second.test["id"]) == list(first.test["id"])
    assert list(second.val["id"]) == list(first.val["id"])
    assert len(second.train) == len(first.train) + 40


def test_reviewed_labels_and_label_issues(project):
    proj = Project.at(project)
    frame = pd.read_parquet(proj.records_path("ingest"))
    frame["label_issue"] = [i % 10 == 0 for i in range(len(frame))]
    _write_stage(proj, "score", frame)
    flagged = set(frame["id"][frame["label_issue"]])
    reviewed_id = frame["id"][0]  # flagged, but a reviewer settled it
    flip = {"pos": "neg", "neg": "pos"}[frame["label"][0]]
    (project / "review").mkdir()
    pd.DataFrame({"id": [reviewed_id], "label": [flip]}).to_parquet(
        project / "review" / "annotations.parquet"
    )
    data = build_dataset(proj, DataOptions())
    everything = pd.concat([data.train, data.val, data.test])
    row = everything[everything["id"] == reviewed_id]
    assert list(row["label"]) == [flip]
    kept_flagged = set(data.train["id"]) & (flagged - {reviewed_id})
    assert not kept_flagged and data.counts["label_issues"] > 0
    down = build_dataset(proj, DataOptions(label_issues="downweight", issue_weight=0.25))
    weights = down.train.set_index("id")["weight"]
    assert set(weights[weights < 1].index) == set(down.train["id"]) & (flagged - {reviewed_id})
    assert (weights[weights < 1] == 0.25).all()
    raw = build_dataset(proj, DataOptions(mode="raw"))
    assert set(raw.train["id"]) & flagged  # raw ignores scoring and review


def test_records_every_reviewer_discarded_leave_every_split(project):
    proj = Project.at(project)
    before = build_dataset(proj, DataOptions())  # makes and saves the split
    gone = [before.train["id"][0], before.val["id"][0], before.test["id"][0]]
    kept = before.train["id"][1]  # discarded by one reviewer, labelled by another: stays
    (project / "review").mkdir()
    pd.DataFrame(
        {
            "id": [*gone, kept],
            "label": [None, None, None, "pos"],
            "n_annotators": [0, 0, 0, 1],
            "discarded_by": [["ann"], ["ann", "bob"], ["bob"], ["bob"]],
        }
    ).to_parquet(project / "review" / "annotations.parquet")
    after = build_dataset(proj, DataOptions())
    assert after.counts["discarded"] == 3
    for name in ("train", "val", "test"):
        part, old = getattr(after, name), getattr(before, name)
        assert not set(part["id"]) & set(gone)
        assert len(part) == len(old) - 1
    assert after.train.set_index("id")["label"][kept] == "pos"
    raw = build_dataset(proj, DataOptions(mode="raw"))
    assert gone[0] in set(raw.train["id"])  # raw trains on every record, as ingested
    assert list(raw.test["id"]) == list(after.test["id"])  # same evaluation records


def test_no_labels_is_a_one_line_error(tmp_path):
    root = make_project(tmp_path / "p", [{"text": f"text {i}", "label": ""} for i in range(30)])
    with pytest.raises(EmptyDataError, match="no labelled training records"):
        build_dataset(Project.at(root), DataOptions())


def test_one_class_is_an_error(tmp_path):
    root = make_project(tmp_path / "p", [{"text": f"text {i}", "label": "a"} for i in range(30)])
    with pytest.raises(EmptyDataError, match="one label only"):
        build_dataset(Project.at(root), DataOptions())


def test_everything_flagged_empties_the_curated_set(project):
    proj = Project.at(project)
    frame = pd.read_parquet(proj.records_path("ingest")).assign(label_issue=True)
    _write_stage(proj, "score", frame)
    with pytest.raises(EmptyDataError, match="curated"):
        build_dataset(proj, DataOptions())


def _scored(project: Project) -> pd.DataFrame:
    """Fake score output: every 10th record flagged, predicted the other label with a
    probability that alternates between 0.95 and 0.6; one flag predicts its own label."""
    frame = pd.read_parquet(project.records_path("ingest"))
    other = {"pos": "neg", "neg": "pos"}
    frame["label_issue"] = [i % 10 == 0 for i in range(len(frame))]
    frame["predicted_label"] = [
        other[lab] if flag else lab
        for lab, flag in zip(frame["label"], frame["label_issue"], strict=True)
    ]
    frame.loc[10, "predicted_label"] = frame.loc[10, "label"]  # flagged, yet predicts its label
    frame["predicted_prob"] = [0.95 if i % 20 == 0 else 0.6 for i in range(len(frame))]
    _write_stage(project, "score", frame)
    return frame


def test_relabel_changes_exactly_the_confident_flags(project):
    proj = Project.at(project)
    frame = _scored(proj).set_index("id")
    keep = build_dataset(proj, DataOptions(label_issues="keep"))
    data = build_dataset(proj, DataOptions(label_issues="relabel", issue_min_prob=0.9))
    assert list(data.train["id"]) == list(keep.train["id"])  # nothing dropped
    before = keep.train.set_index("id")["label"]
    after = data.train.set_index("id")["label"]
    changed = set(after.index[after != before])
    confident = frame.index[
        frame["label_issue"]
        & (frame["predicted_prob"] >= 0.9)
        & (frame["predicted_label"] != frame["label"])
    ]
    expected = set(confident) & set(data.train["id"])
    assert changed == expected and expected
    assert (after[list(changed)] == frame.loc[list(changed), "predicted_label"]).all()
    assert data.counts["relabelled"] == len(expected)
    # without a threshold every flag that predicts another label is relabelled
    every = build_dataset(proj, DataOptions(label_issues="relabel"))
    flags = frame.index[frame["label_issue"] & (frame["predicted_label"] != frame["label"])]
    assert every.counts["relabelled"] == len(set(flags) & set(every.train["id"]))
    assert every.counts["relabelled"] > data.counts["relabelled"]
    # val and test keep their labels unless curate_val
    assert every.val.equals(keep.val) and every.test.equals(keep.test)


def test_issue_min_prob_and_curate_val(project):
    proj = Project.at(project)
    frame = _scored(proj).set_index("id")
    confident = set(frame.index[frame["label_issue"] & (frame["predicted_prob"] >= 0.9)])
    flagged = set(frame.index[frame["label_issue"]])
    data = build_dataset(proj, DataOptions(issue_min_prob=0.9))
    assert set(data.train["id"]) & confident == set()
    assert set(data.train["id"]) & (flagged - confident)  # unconfident flags are kept
    plain = build_dataset(proj, DataOptions())
    assert set(plain.val["id"]) & flagged  # val untouched by default
    cur = build_dataset(proj, DataOptions(curate_val=True))
    assert set(cur.val["id"]) == set(plain.val["id"]) - flagged
    assert cur.counts["val_label_issues"] == len(set(plain.val["id"]) & flagged)
    assert list(cur.test["id"]) == list(plain.test["id"])  # the test split is never curated
    rel = build_dataset(proj, DataOptions(label_issues="relabel", curate_val=True))
    assert list(rel.val["id"]) == list(plain.val["id"])
    moved = rel.val.set_index("id")["label"] != plain.val.set_index("id")["label"]
    assert rel.counts["val_relabelled"] == int(moved.sum()) > 0
    assert rel.test.equals(plain.test)


def test_relabel_needs_predicted_labels(project):
    proj = Project.at(project)
    frame = pd.read_parquet(proj.records_path("ingest"))
    frame["label_issue"] = [i % 10 == 0 for i in range(len(frame))]
    _write_stage(proj, "score", frame)
    with pytest.raises(ThresherError, match="predicted_label"):
        build_dataset(proj, DataOptions(label_issues="relabel"))
    with pytest.raises(ThresherError, match="predicted_prob"):
        build_dataset(proj, DataOptions(issue_min_prob=0.5))
    with pytest.raises(ThresherError, match="label_issues policy"):
        build_dataset(proj, DataOptions(label_issues="flip"))


def test_curation_options_come_from_the_config(project):
    from thresher.config import load_config
    from tune.options import options_from_config

    config = load_config(project)
    default = options_from_config(config).data
    assert (default.label_issues, default.issue_min_prob, default.curate_val) == (
        DataOptions().label_issues,
        DataOptions().issue_min_prob,
        DataOptions().curate_val,
    )  # the config template and the dataclass agree
    cli = config.with_overrides(
        {"tune.label_issues": "relabel", "tune.issue_min_prob": 0.7, "tune.curate_val": True}
    )
    data = options_from_config(cli).data
    assert (data.label_issues, data.issue_min_prob, data.curate_val) == ("relabel", 0.7, True)
