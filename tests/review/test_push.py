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


def _fake_bulk(fail):
    """A bulk-upsert endpoint (httpx.MockTransport handler); ``fail(batch_ids, try_no)`` picks
    the HTTP status of each try."""
    import httpx

    tries: dict[tuple, int] = {}
    stored: dict[str, dict] = {}

    def handler(request):
        items = json.loads(request.content)["items"]
        key = tuple(i["external_id"] for i in items)
        tries[key] = tries.get(key, 0) + 1
        status = fail(key, tries[key])
        if status != 200:
            return httpx.Response(status, json={"detail": "down"})
        stored.update({i["external_id"]: i for i in items})
        return httpx.Response(200, json={"items": items})

    return handler, tries, stored


def _send(tmp_path, monkeypatch, fail, n=10, **opts):
    import functools

    import httpx

    import review.push as push_module
    from review.client import RetryPolicy, open_client
    from review.push import PushOptions, send_batches
    from review.server import Connection

    handler, tries, stored = _fake_bulk(fail)
    monkeypatch.setattr(
        push_module,
        "open_client",
        functools.partial(open_client, transport=httpx.MockTransport(handler)),
    )
    ids = [f"r{i}" for i in range(n)]
    payloads = {rid: record_payload(_row(i), i + 1) for i, rid in enumerate(ids)}
    hashes = {rid: content_hash(p, None) for rid, p in payloads.items()}
    state = PushState.load(tmp_path)
    options = PushOptions(batch_size=3, retry=RetryPolicy(tries=3, backoff_s=0.0), **opts)
    out = send_batches(
        Connection("http://127.0.0.1:1", "key", external=True),
        "ds",
        ids,
        lambda rid: payloads[rid],
        hashes,
        state,
        options,
    )
    return out, tries, stored, PushState.load(tmp_path)


def test_batches_failing_once_each_all_arrive_and_are_journalled(tmp_path, monkeypatch):
    out, tries, stored, state = _send(tmp_path, monkeypatch, lambda key, k: 503 if k == 1 else 200)
    assert out.sent == 10 and out.failed == [] and out.error is None
    assert sorted(tries.values()) == [2, 2, 2, 2] and len(stored) == 10  # batches of 3, 3, 3, 1
    assert set(state.sent) == {f"r{i}" for i in range(10)}  # read back from the journal


def test_a_batch_failing_for_good_stops_the_rest_and_names_them(tmp_path, monkeypatch):
    out, tries, stored, state = _send(
        tmp_path, monkeypatch, lambda key, k: 500 if "r3" in key else 200, concurrency=1
    )
    assert tries[("r3", "r4", "r5")] == 3  # RetryPolicy(tries=3)
    assert out.sent == 3 and set(stored) == {"r0", "r1", "r2"} == set(state.sent)
    assert out.failed == [f"r{i}" for i in range(3, 10)]  # the failed batch and those after it
    assert out.error.startswith("bulk upsert of 3 records: HTTP 500 after 3 tries")
