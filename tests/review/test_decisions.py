"""review.decisions: one reading of the review, applied to Arrow data."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from review.decisions import ReviewDecisions, apply_to_batch, load_decisions
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
