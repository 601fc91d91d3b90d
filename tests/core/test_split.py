"""The split rule: stratified, seeded, order-free, by duplicate cluster; fixed once saved."""

from __future__ import annotations

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.labelled_project import synthetic_rows
from thresher.project import Project
from thresher.split import (
    SplitSpec,
    ensure_split,
    held_out_ids,
    make_split,
    stratified_split,
)


def test_split_does_not_depend_on_row_order():
    rows = synthetic_rows(80)
    frame = pd.DataFrame(rows).assign(id=[f"r{i}" for i in range(80)])
    a = make_split(frame, frame["label"], SplitSpec(seed=3))
    b = make_split(frame.sample(frac=1, random_state=0), frame["label"], SplitSpec(seed=3))
    assert a.sort_values("id").equals(b.sort_values("id"))


@settings(max_examples=25, deadline=None)
@given(
    clusters=st.lists(st.integers(0, 12), min_size=20, max_size=60),
    seed=st.integers(0, 5),
)
def test_no_cluster_straddles_splits(clusters, seed):
    n = len(clusters)
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "label": ["a" if i % 3 else "b" for i in range(n)],
            "dup_cluster": pd.array([c if c < 8 else None for c in clusters], dtype="Int64"),
        }
    )
    split = make_split(frame, frame["label"], SplitSpec(seed=seed))
    merged = split.merge(frame, on="id")
    per_cluster = merged.dropna(subset=["dup_cluster"]).groupby("dup_cluster")["split"].nunique()
    assert (per_cluster == 1).all()
    assert len(split) == n


def test_stratified_split_keeps_label_shares_and_size():
    keys = list(range(200))
    labels = ["a" if k % 4 else "b" for k in keys]  # 25 % b
    rest, held = stratified_split(keys, labels, 0.2, seed=1)
    assert len(held) == 40 and sorted(rest + held) == keys
    assert sum(labels[k] == "b" for k in held) == 10
    assert stratified_split(keys, labels, 0.2, seed=1) == (rest, held)
    assert stratified_split(keys, labels, 0.2, seed=2)[1] != held


def test_stratified_split_falls_back_to_random_when_a_label_is_single():
    rest, held = stratified_split(["x", "y", "z", "w"], ["a", "a", "a", "b"], 0.5, seed=0)
    assert len(held) == 2 and set(rest) | set(held) == {"x", "y", "z", "w"}


def test_no_val_split_when_val_fraction_is_zero():
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(50)], "label": ["a", "b"] * 25})
    split = make_split(frame, frame["label"], SplitSpec(val_fraction=0.0, test_fraction=0.2))
    assert split["split"].value_counts().to_dict() == {"train": 40, "test": 10}


def test_saved_split_is_reused_and_new_duplicates_of_test_are_held(tmp_path):
    project = Project.at(tmp_path)
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(40)],
            "label": ["a", "b"] * 20,
            "dup_cluster": pd.array(list(range(40)), dtype="Int64"),
        }
    )
    first = ensure_split(project, frame, frame["label"], SplitSpec(seed=0))
    assert project.split_path.exists() and project.split_path.with_suffix(".json").exists()
    test_cluster = int(first.loc[first["split"] == "test", "group"].iloc[0][2:])
    later = pd.concat(
        [
            frame,
            pd.DataFrame(
                {
                    "id": ["new-dup", "new-unique"],
                    "label": ["a", "a"],
                    "dup_cluster": pd.array([test_cluster, None], dtype="Int64"),
                }
            ),
        ],
        ignore_index=True,
    )
    second = ensure_split(project, later, later["label"], SplitSpec(seed=99))
    side = dict(zip(second["id"], second["split"], strict=True))
    assert side["new-dup"] == "held" and side["new-unique"] == "train"
    assert second.iloc[: len(first)].equals(first)  # the saved split wins over the new seed
    assert "new-dup" not in held_out_ids(project)  # only what was saved counts
    assert held_out_ids(project) == frozenset(first.loc[first["split"] == "test", "id"])


def test_held_out_ids_is_empty_before_a_split(tmp_path):
    assert held_out_ids(Project.at(tmp_path)) == frozenset()
