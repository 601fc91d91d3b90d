import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from review.argilla_launcher import _apply_script
from review.pull import stage_rows_of, summarize, write_curated


def _resp(user, status, label=None, note=None):
    values = {}
    if label is not None:
        values["label"] = {"value": label}
    if note is not None:
        values["note"] = {"value": note}
    return {"user_id": user, "status": status, "values": values or None}


def test_summarize_consensus_ties_notes_discards_and_agreement():
    names = {"u1": "ann", "u2": "bob", "u3": "cat"}
    records = [
        {
            "external_id": "a",
            "fields": {"text": "A"},
            "responses": [_resp("u1", "submitted", "pos"), _resp("u2", "submitted", "pos")],
        },
        {
            "external_id": "b",
            "fields": {"text": "B"},
            "responses": [
                _resp("u1", "submitted", "pos"),
                _resp("u2", "submitted", "neg"),
                _resp("u3", "draft", "neg"),
            ],
        },
        {
            "external_id": "c",
            "fields": {"text": "C"},
            "responses": [_resp("u3", "discarded", note="not English")],
        },
        {"external_id": "d", "fields": {"text": "D"}, "responses": []},
    ]
    pred = {"a": {"label": "neg", "predicted_label": "pos", "predicted_prob": 0.9}}
    rows, summary = summarize(records, names, pred)
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"a", "b", "c"}  # d has no response; drafts do not count
    assert by_id["a"]["label"] == "pos" and by_id["a"]["agreement"] == 1.0
    assert by_id["a"]["given_label"] == "neg"
    assert by_id["b"]["label"] is None and by_id["b"]["tie"] and by_id["b"]["disagreement"]
    assert json.loads(by_id["b"]["annotator_labels"]) == {"ann": "pos", "bob": "neg"}
    assert by_id["c"]["discarded_by"] == ["cat"] and by_id["c"]["n_annotators"] == 0
    assert json.loads(by_id["c"]["notes"]) == {"cat": "not English"}
    # items (pos,pos), (pos,neg): o_pp=2+... alpha by hand: n_pos=3, n_neg=1, n=4,
    # D_o = 2 (one disagreeing pair, both orders), sum n_c n_k (c!=k) = 6 -> 1 - 3*2/6 = 0
    assert summary["alpha"] == pytest.approx(0.0)
    assert summary["ties"] == 1 and summary["consensus"] == 1 and summary["discarded"] == 1
    stats = {a["annotator"]: a for a in summary["annotators"]}
    assert stats["ann"]["agreement_with_consensus"] == 1.0 and stats["ann"]["n_with_consensus"] == 1


def test_merge_keeps_original_label_and_drops_all_discarded(tmp_path):
    table = pa.table({"id": ["a", "b", "c"], "text": ["A", "B", "C"], "label": ["neg", "pos", "x"]})
    pq.write_table(table, tmp_path / "stage.parquet", row_group_size=2)
    rows = [
        {"id": "a", "label": "pos", "n_annotators": 2, "discarded_by": []},
        {"id": "b", "label": None, "n_annotators": 2, "discarded_by": []},
        {"id": "c", "label": None, "n_annotators": 0, "discarded_by": ["cat"]},
    ]
    write_curated(tmp_path / "stage.parquet", rows, tmp_path / "curated.parquet")
    out = pq.read_table(tmp_path / "curated.parquet").to_pylist()
    assert [r["id"] for r in out] == ["a", "b"]
    assert out[0] | {} == {
        "id": "a",
        "text": "A",
        "label": "pos",
        "original_label": "neg",
        "label_source": "reviewed",
    }
    assert out[1]["label"] == "pos" and out[1]["label_source"] == "original"


def test_launcher_script_updates_match_the_painless_scripts():
    doc = {"id": "r", "responses": [{"id": 1, "v": "old"}, {"id": 2}], "suggestions": {"label": 1}}
    upsert = {
        "source": "... ctx._source.responses.add(params.response)",
        "params": {"response": {"id": 1, "v": "new"}},
    }
    assert _apply_script(doc, upsert)["responses"] == [{"id": 2}, {"id": 1, "v": "new"}]
    delete = {
        "source": "for ... ctx._source.responses.remove(i);",
        "params": {"response": {"id": 2}},
    }
    assert _apply_script(doc, delete)["responses"] == [{"id": 1, "v": "old"}]
    assert _apply_script({"responses": None}, upsert)["responses"] == [{"id": 1, "v": "new"}]
    gone = _apply_script(doc, 'ctx._source["suggestions"].remove("label")')
    assert gone["suggestions"] == {} and doc["suggestions"] == {"label": 1}
    with pytest.raises(ValueError):
        _apply_script(doc, {"source": "ctx._source.x = 1", "params": {}})


def test_stage_rows_are_read_for_the_reviewed_ids_only(tmp_path):
    table = pa.table({"id": [f"r{i}" for i in range(10)], "label": ["x"] * 10})
    pq.write_table(table, tmp_path / "stage.parquet", row_group_size=3)
    rows = stage_rows_of(tmp_path / "stage.parquet", {"r1", "r7", "missing"})
    assert rows == {"r1": {"id": "r1", "label": "x"}, "r7": {"id": "r7", "label": "x"}}


class FlakyArgilla:
    """A fake Argilla (httpx.MockTransport handler) that answers 503 to the first try of every
    request (every page of records included), then the data."""

    def __init__(self, records, users):
        self.records, self.users = records, users
        self.seen: list[str] = []

    def __call__(self, request):
        import httpx

        key = str(request.url)
        first = key not in self.seen
        self.seen.append(key)
        if first:
            return httpx.Response(503, json={"detail": "busy"})
        path = request.url.path
        if path == "/api/v1/me/datasets":
            return httpx.Response(
                200, json={"items": [{"id": "ds", "name": "proj", "workspace_id": "w"}]}
            )
        if path == "/api/v1/me/workspaces":
            return httpx.Response(200, json={"items": [{"id": "w", "name": "thresher"}]})
        if path == "/api/v1/users":
            return httpx.Response(200, json={"items": self.users})
        if path == "/api/v1/datasets/ds/records":
            offset = int(request.url.params["offset"])
            limit = int(request.url.params["limit"])
            return httpx.Response(200, json={"items": self.records[offset : offset + limit]})
        return httpx.Response(404, json={"detail": "no such route"})


def test_pull_completes_over_a_server_that_fails_once_per_page(tmp_path, monkeypatch):
    import functools

    import httpx

    import review.pull as pull_module
    from review.client import RetryPolicy, open_client
    from review.server import Connection
    from thresher.project import Project

    records = [
        {
            "external_id": f"r{i}",
            "fields": {"text": f"T{i}"},
            "responses": [
                _resp("u1", "submitted", "pos"),
                _resp("u2", "submitted", "pos" if i % 3 else "neg"),
            ],
        }
        for i in range(7)
    ]
    fake = FlakyArgilla(records, [{"id": "u1", "username": "ann"}, {"id": "u2", "username": "bob"}])
    monkeypatch.setattr(pull_module, "PAGE", 3)  # 7 records: pages of 3, 3, 1
    monkeypatch.setattr(
        pull_module,
        "open_client",
        functools.partial(
            open_client, transport=httpx.MockTransport(fake), retry=RetryPolicy(backoff_s=0.0)
        ),
    )
    (tmp_path / "proj").mkdir()
    project = Project.at(tmp_path / "proj")
    conn = Connection("http://127.0.0.1:1", "key", external=True)
    result = pull_module.pull(project, conn, pull_module.PullOptions())
    pages = [u for u in set(fake.seen) if "/records" in u]
    assert len(pages) == 3 and all(fake.seen.count(u) == 2 for u in set(fake.seen))
    assert result.records == 7 and result.annotated == 7 and result.disagreements == 3
    table = pq.read_table(tmp_path / "proj" / "review" / "annotations.parquet")
    assert sorted(table.column("id").to_pylist()) == [f"r{i}" for i in range(7)]


def _two_annotator_records(n=12, disagree=(2, 5, 9)):
    records = []
    for i in range(n):
        truth = "pos" if i % 2 else "neg"
        other = "neg" if truth == "pos" else "pos"
        records.append(
            {
                "external_id": f"r{i}",
                "fields": {"text": f"T{i}"},
                "responses": [
                    _resp("u1", "submitted", truth),
                    _resp("u2", "submitted", other if i in disagree else truth),
                ],
            }
        )
    return records


def test_summary_reports_each_annotator_against_the_other_not_a_flattering_consensus():
    names = {"u1": "ann", "u2": "bob"}
    records = _two_annotator_records()
    # probabilities over the score stage's classes, one of which nobody used in review
    classes = ["neg", "neu", "pos"]
    pred = {
        f"r{i}": {"pred_probs": [0.1, 0.1, 0.8] if i % 2 else [0.8, 0.1, 0.1]} for i in range(12)
    }
    rows, summary = summarize(records, names, pred, model_classes=classes)
    stats = {a["annotator"]: a for a in summary["annotators"]}
    for name in ("ann", "bob"):
        a = stats[name]
        assert a["agreement_with_consensus"] == 1.0  # the consensus only exists where they agree
        assert a["n_with_others"] == 12 and a["agreement_with_others"] == pytest.approx(9 / 12)
        assert a["pairwise_agreement"] == a["agreement_with_others"]
        assert 0.0 <= a["crowdlab_quality"] <= 1.0
    assert summary["crowdlab_note"] is None
    # ann always gave the label the model believes: CROWDLAB rates her above bob
    assert stats["ann"]["crowdlab_quality"] > stats["bob"]["crowdlab_quality"]
    assert all(r["cleanlab_label"] in {"neg", "pos"} for r in rows)


def test_crowdlab_quality_is_absent_and_said_so_without_model_probabilities():
    names = {"u1": "ann", "u2": "bob"}
    rows, summary = summarize(_two_annotator_records(), names, {"r0": {"label": "neg"}})
    assert all(a["crowdlab_quality"] is None for a in summary["annotators"])
    assert "thresher curate score" in summary["crowdlab_note"]
    assert all(r["cleanlab_label"] is None for r in rows)
    one = [{**r, "responses": r["responses"][:1]} for r in _two_annotator_records()]
    _, summary = summarize(one, names, {})
    assert summary["crowdlab_note"] == "CROWDLAB needs at least two annotators"
    assert math.isnan(summary["annotators"][0]["agreement_with_others"])


def test_pull_command_prints_agreement_with_the_others(tmp_path, monkeypatch):
    import functools

    import httpx
    from click.testing import CliRunner

    import review.pull as pull_module
    import review.server as server_module
    from review.client import RetryPolicy, open_client
    from review.server import Connection
    from thresher.cli import main

    users = [{"id": "u1", "username": "ann"}, {"id": "u2", "username": "bob"}]
    fake = FlakyArgilla(_two_annotator_records(), users)
    monkeypatch.setattr(
        pull_module,
        "open_client",
        functools.partial(
            open_client, transport=httpx.MockTransport(fake), retry=RetryPolicy(backoff_s=0.0)
        ),
    )
    conn = Connection("http://127.0.0.1:1", "key", external=True)
    monkeypatch.setattr(server_module, "connection", lambda *a, **k: conn)
    (tmp_path / "proj").mkdir()
    out = CliRunner().invoke(main, ["review", "pull", "-p", str(tmp_path / "proj")])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "  ann: 12 labelled; agrees with the others 0.750 on 12 records (kappa 0.500)" in lines
    assert any(
        line.startswith("  bob: 12 labelled; agrees with the others 0.750") for line in lines
    )
    assert not any("consensus 1.000" in line for line in lines)
    assert any(
        line.startswith("CROWDLAB annotator quality: n/a (no model probabilities") for line in lines
    )
    saved = json.loads((tmp_path / "proj" / "review" / "agreement.json").read_text())
    assert saved["annotators"][0]["agreement_with_consensus"] == 1.0  # kept for compatibility
    assert saved["annotators"][0]["agreement_with_others"] == 0.75
    assert saved["annotators"][0]["crowdlab_quality"] is None and saved["crowdlab_note"]
