import json
import math

from hypothesis import given
from hypothesis import strategies as st

from review.push import (
    PushState,
    changed_ids,
    content_hash,
    priority_order,
    record_payload,
)


def _row(i, **kw):
    base = {"id": f"r{i}", "text": f"text {i}", "label": "pos", "source": "a.csv"}
    base.update(kw)
    return base


def test_priority_conflicts_then_low_quality_then_uncertainty():
    rows = [
        _row(0, label_quality=0.9, predicted_prob=0.99),
        _row(1, label_quality=0.2, predicted_prob=0.9),
        _row(2, label_quality=0.9, predicted_prob=0.55, label_conflict=True),
        _row(3, label_quality=0.5, predicted_prob=0.6),
        _row(4),  # unscored: last
        _row(5, label_quality=0.5, predicted_prob=0.51),  # same quality as 3, less certain
    ]
    assert priority_order(rows) == [2, 1, 5, 3, 0, 4]
    assert priority_order(rows, "label_quality") == [1, 3, 5, 0, 2, 4]


@given(st.lists(st.one_of(st.floats(0, 1), st.just(float("nan"))), min_size=1, max_size=40))
def test_priority_is_a_permutation_with_quality_ascending(qualities):
    rows = [_row(i, label_quality=q) for i, q in enumerate(qualities)]
    order = priority_order(rows)
    assert sorted(order) == list(range(len(rows)))
    seen = [qualities[i] for i in order if not math.isnan(qualities[i])]
    assert seen == sorted(seen)
    nan_positions = [k for k, i in enumerate(order) if math.isnan(qualities[i])]
    assert nan_positions == list(range(len(seen), len(rows)))


def test_payload_metadata_and_suggestion():
    p = record_payload(
        _row(
            7,
            label_quality=0.25,
            dup_cluster=3,
            label_conflict=True,
            bias_groups=["b", "a"],
            predicted_label="neg",
            predicted_prob=0.8,
        ),
        priority=4,
    )
    assert p["external_id"] == "r7" and p["fields"] == {"text": "text 7"}
    assert p["metadata"] == {
        "priority": 4,
        "source": "a.csv",
        "given_label": "pos",
        "label_quality": 0.25,
        "dup_cluster": 3,
        "label_conflict": "true",
        "bias_groups": ["a", "b"],
    }
    assert p["suggestion"] == {"value": "neg", "agent": "thresher", "score": 0.8}
    bare = record_payload(_row(8, dup_cluster=None, label_quality=float("nan")), priority=1)
    assert "dup_cluster" not in bare["metadata"] and "label_quality" not in bare["metadata"]
    assert "suggestion" not in bare


def test_only_changed_records_are_sent():
    a = record_payload(_row(1), 1)
    b = record_payload(_row(2), 2)
    hashes = {"r1": content_hash(a, "m"), "r2": content_hash(b, "m")}
    assert changed_ids(hashes, {}) == (["r1", "r2"], [])
    assert changed_ids(hashes, dict(hashes)) == ([], ["r1", "r2"])
    edited = dict(hashes, r2=content_hash(record_payload(_row(2, text="new"), 2), "m"))
    assert changed_ids(edited, hashes) == (["r2"], ["r1"])
    # a new priority or another embedding model is a change too
    assert content_hash(record_payload(_row(1), 5), "m") != hashes["r1"]
    assert content_hash(a, "other") != hashes["r1"]


def test_state_resumes_from_the_journal_and_resets_on_another_dataset(tmp_path):
    state = PushState.load(tmp_path)
    state.reset("http://s", "ds", "id-1")
    state.save()  # push saves the (server, dataset) header before sending
    state.record_batch({"r1": "h1", "r2": "h2"})
    # a crash before the final save, in the middle of writing a journal line
    with (tmp_path / "push_journal.jsonl").open("a") as fh:
        fh.write('{"dataset_id": "id-1", "sent": {"r3"')
    resumed = PushState.load(tmp_path)
    assert resumed.sent == {"r1": "h1", "r2": "h2"}
    resumed.reset("http://s", "ds", "id-1")  # same dataset: kept
    assert resumed.sent == {"r1": "h1", "r2": "h2"}
    resumed.reset("http://s", "ds", "id-2")  # dataset recreated: everything is sent again
    assert resumed.sent == {}
    resumed.save()
    assert json.loads((tmp_path / "push_state.json").read_text())["dataset_id"] == "id-2"
    assert not (tmp_path / "push_journal.jsonl").exists()
