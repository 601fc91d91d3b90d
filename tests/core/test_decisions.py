"""thresher.decisions: one reading of the review, applied to Arrow data."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from thresher.decisions import ReviewDecisions, apply_to_batch, load_decisions
from thresher.project import Project


def test_load_decisions_absent_partial_and_full(tmp_path):
    project = Project.at(tmp_path)
    assert load_decisions(project) == ReviewDecisions()
    assert not load_decisions(project).present
    (tmp_path / "review").mkdir()
    path = tmp_path / "review" / "annotations.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "label": ["x", None]}), path)
    partial = load_decisions(project)  # a hand-written id, label table discards nothing
    assert partial.present and partial.labels == {"a": "x"} and partial.discarded == frozenset()
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b", "c"],
                "label": ["x", None, None],
                "n_annotators": [1, 0, 2],
                "discarded_by": [["u"], ["u", "v"], []],
            }
        ),
        path,
    )
    full = load_decisions(project)
    assert full.labels == {"a": "x"} and full.discarded == frozenset({"b"})


def test_apply_adds_label_when_the_stage_has_none():
    decisions = ReviewDecisions.from_rows([{"id": "b", "label": "y"}])
    applied = apply_to_batch(pa.table({"id": ["a", "b"], "text": ["A", "B"]}), decisions)
    assert applied.batch.to_pylist() == [
        {"id": "a", "text": "A", "label": None, "original_label": None, "label_source": "original"},
        {"id": "b", "text": "B", "label": "y", "original_label": None, "label_source": "reviewed"},
    ]
    assert (applied.reviewed, applied.relabelled, applied.dropped_discarded) == (1, 1, 0)


# clusters: 1 = {a rep, b, c}, 2 = {d rep, e}, 3 = {f rep, g}, h outside any cluster, i rep of 4
CLUSTERS = pa.table(
    {
        "id": ["a", "b", "c", "d", "e", "f", "g", "h", "i"],
        "dup_cluster": pa.chunked_array([[1, 1, 1, 2], [2, 3, 3, None, 4]], pa.int64()),
        "is_representative": [True, False, False, True, False, True, False, True, True],
    }
)


def test_a_new_representative_takes_its_reviewed_duplicates_decision():
    decisions = ReviewDecisions(
        labels={"b": "x", "c": "x", "e": "y"}, discarded=frozenset({"g"}), present=True
    )
    carried = decisions.carried_to_representatives(CLUSTERS)
    assert carried.labels == {"b": "x", "c": "x", "e": "y", "a": "x", "d": "y"}
    assert carried.discarded == frozenset({"g", "f"})
    assert carried.carried == frozenset({"a", "d", "f"})
    assert carried.carried_to_representatives(CLUSTERS) == carried  # idempotent
    as_pandas = decisions.carried_to_representatives(CLUSTERS.to_pandas())
    assert as_pandas == carried


def test_own_decisions_ties_and_mixed_members_are_not_overridden():
    decisions = ReviewDecisions(
        labels={"a": "own", "b": "x", "e": "y", "g": "z"},
        discarded=frozenset({"c"}),
        present=True,
    )
    carried = decisions.carried_to_representatives(CLUSTERS)
    assert carried.labels["a"] == "own"  # the representative's own review wins
    assert carried.labels["d"] == "y" and carried.labels["f"] == "z"
    assert "a" not in carried.discarded and carried.carried == frozenset({"d", "f"})
    tie = ReviewDecisions(labels={"b": "x", "c": "y"}, present=True)
    assert tie.carried_to_representatives(CLUSTERS) is tie  # a tie decides nothing
    labelled_and_discarded = ReviewDecisions(
        labels={"b": "x"}, discarded=frozenset({"c"}), present=True
    )
    out = labelled_and_discarded.carried_to_representatives(CLUSTERS)
    assert out.labels["a"] == "x" and "a" not in out.discarded
    no_clusters = CLUSTERS.drop_columns(["dup_cluster", "is_representative"])
    assert decisions.carried_to_representatives(no_clusters) is decisions


def test_load_decisions_carries_to_the_dedup_stage_representatives(tmp_path):
    project = Project.at(tmp_path)
    for stage in ("review", "dedup"):
        (tmp_path / stage).mkdir()
    pq.write_table(
        pa.table({"id": ["b"], "label": ["x"]}), tmp_path / "review" / "annotations.parquet"
    )
    pq.write_table(
        CLUSTERS.append_column("text", pa.array(["t"] * 9)), project.records_path("dedup")
    )
    decisions = load_decisions(project)
    assert decisions.labels == {"b": "x", "a": "x"} and decisions.carried == frozenset({"a"})
