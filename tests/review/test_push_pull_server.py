"""Against the real embedded Argilla server (session fixture ``argilla`` in tests/conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pyarrow.parquet as pq
import pytest

from review.client import RetryPolicy
from review.pull import PullOptions, pull, reviewed_labels
from review.push import PushError, PushOptions, push
from review.server import PROCESSES, _read_pid, server_status, server_up
from review.users import add_user
from tests.helpers.scored_project import LABELS, fake_embed, make_project
from thresher.project import Project

pytestmark = pytest.mark.integration


def _http(conn, key=None):
    return httpx.Client(
        base_url=conn.url, headers={"X-Argilla-Api-Key": key or conn.api_key}, timeout=60
    )


def _server_records(conn, dataset_id):
    """(external ids listed from the database, total the search engine reports)."""
    ids, offset = [], 0
    with _http(conn) as http:
        while True:
            page = http.get(
                f"/api/v1/datasets/{dataset_id}/records", params={"offset": offset, "limit": 1000}
            ).json()["items"]
            ids.extend(r["external_id"] for r in page)
            if len(page) < 1000:
                break
            offset += 1000
        total = http.post(
            f"/api/v1/datasets/{dataset_id}/records/search", json={"query": {}}, params={"limit": 1}
        ).json()["total"]
    return ids, total


def _opts(**kw):
    base = dict(labels=LABELS, vector_dims=8, embedding_model="fake-8", batch_size=100)
    base.update(kw)
    return PushOptions(**base)


def test_server_status_and_owner_file_is_private(argilla):
    status = server_status(argilla.paths)
    assert status.running and status.username == "owner"
    assert set(status.pids) == set(PROCESSES)
    assert os.stat(status.api_key_file).st_mode & 0o777 == 0o600
    key = json.loads(open(status.api_key_file).read())["api_key"]
    for log in argilla.paths.logs.glob("*.log"):
        assert key not in log.read_text(errors="replace"), log  # never in a log


def test_push_repush_and_change(argilla, tmp_path):
    conn = argilla.conn()
    project = Project.at(make_project(tmp_path / "proj", 240))
    first = push(project, conn, _opts(dataset="idem"), embed=fake_embed())
    assert (first.sent, first.unchanged, first.failed) == (240, 0, 0)
    t0 = time.perf_counter()
    again = push(project, conn, _opts(dataset="idem"), embed=fake_embed())
    assert (again.sent, again.unchanged) == (0, 240)
    assert time.perf_counter() - t0 < 5
    # change five texts: exactly those are sent, as updates (same ids)
    table = pq.read_table(project.records_path("score")).to_pylist()
    for row in table[:5]:
        row["text"] += " (edited)"
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(table), project.records_path("score"))
    changed = push(project, conn, _opts(dataset="idem"), embed=fake_embed())
    assert (changed.sent, changed.unchanged) == (5, 235)
    ids, total = _server_records(conn, first.dataset_id)
    assert len(ids) == len(set(ids)) == 240 and total == 240
    with _http(conn) as http:
        rec = http.post(
            f"/api/v1/datasets/{first.dataset_id}/records/search",
            json={"query": {"text": {"q": "edited"}}},
            params={"include": ["suggestions"], "limit": 10},
        ).json()
    assert rec["total"] == 5
    # priority is metadata: rank 1 is the first label conflict
    assert all("priority" in item["record"]["metadata"] for item in rec["items"])


def test_similarity_search(argilla, tmp_path):
    import argilla as rg

    conn = argilla.conn()
    project = Project.at(make_project(tmp_path / "sim", 60))
    embed = fake_embed()
    push(project, conn, _opts(dataset="sim"), embed=embed)
    target = pq.read_table(project.records_path("score")).to_pylist()[17]
    client = rg.Argilla(api_url=conn.url, api_key=conn.api_key)
    dataset = client.datasets("sim", workspace="thresher")
    query = rg.Query(
        similar=rg.Similar(name="embedding", value=embed([target["text"]])[0].tolist())
    )
    hits = list(dataset.records(query=query, limit=3))
    record, score = hits[0]
    assert record.id == target["id"] and score == pytest.approx(1.0, abs=1e-4)
    assert hits[1][1] <= score


def test_annotators_owner_on_behalf_and_pull(argilla, tmp_path):
    conn = argilla.conn()
    project = Project.at(make_project(tmp_path / "ann", 30))
    result = push(project, conn, _opts(dataset="ann"), embed=fake_embed())
    ds = result.dataset_id
    users = {n: add_user(conn, n, workspace="thresher", paths=argilla.paths) for n in ("a1", "a2")}
    owner_made = add_user(conn, "a3", workspace="thresher", paths=argilla.paths)
    outsider = add_user(conn, "outsider", workspace="elsewhere", paths=argilla.paths)
    assert oct(os.stat(users["a1"].credentials_file).st_mode & 0o777) == "0o600"
    with _http(conn) as http:
        listed = http.get(f"/api/v1/datasets/{ds}/records", params={"limit": 50}).json()["items"]
    uuid_of = {r["external_id"]: r["id"] for r in listed}
    chosen = sorted(uuid_of)[:6]
    plan = {  # a1 and a2 agree except on r000005; a3 (through the owner) breaks that tie
        "a1": ["pos", "pos", "neg", "neg", "pos", "pos"],
        "a2": ["pos", "pos", "neg", "neg", "pos", "neg"],
        "a3": [None, None, None, None, None, "neg"],
    }
    for name in ("a1", "a2"):
        key = json.loads(open(users[name].credentials_file).read())["api_key"]
        with _http(conn, key) as http:
            # an annotator has no owner routes, only their own (/me) ones
            assert http.get(f"/api/v1/datasets/{ds}/records").status_code == 403
            found = http.post(
                f"/api/v1/me/datasets/{ds}/records/search",
                json={"query": {}},
                params={"limit": 50},
            )
            assert found.status_code == 200 and found.json()["total"] == 30
            items = [
                {
                    "record_id": uuid_of[rid],
                    "status": "submitted",
                    "values": {"label": {"value": lab}},
                }
                for rid, lab in zip(chosen, plan[name], strict=True)
            ]
            if name == "a1":
                items.append(
                    {
                        "record_id": uuid_of[sorted(uuid_of)[7]],
                        "status": "discarded",
                        "values": {"note": {"value": "not a review"}},
                    }
                )
            resp = http.post("/api/v1/me/responses/bulk", json={"items": items})
            assert resp.status_code == 200
            assert all(not i.get("error") for i in resp.json()["items"]), resp.text
    # the owner submits on a3's behalf (a record upsert carrying a3's response)
    with _http(conn) as http:
        resp = http.put(
            f"/api/v1/datasets/{ds}/records/bulk",
            json={
                "items": [
                    {
                        "id": uuid_of[chosen[5]],
                        "responses": [
                            {
                                "values": {"label": {"value": "neg"}},
                                "status": "submitted",
                                "user_id": owner_made.id,
                            }
                        ],
                    }
                ]
            },
        )
        assert resp.status_code == 200, resp.text
    okey = json.loads(open(outsider.credentials_file).read())["api_key"]
    with _http(conn, okey) as http:  # workspace B cannot read workspace A's dataset
        assert (
            http.post(f"/api/v1/me/datasets/{ds}/records/search", json={"query": {}}).status_code
            == 403
        )
        assert ds not in {d["id"] for d in http.get("/api/v1/me/datasets").json()["items"]}

    t0 = time.perf_counter()
    pulled = pull(project, conn, PullOptions(dataset="ann"))
    assert time.perf_counter() - t0 < 30
    assert (pulled.records, pulled.annotated, pulled.submitted) == (30, 6, 13)
    assert (pulled.discarded, pulled.ties, pulled.consensus) == (1, 0, 6)
    # 6 items: five with two equal labels, one with (pos, neg, neg): by hand alpha =
    # 1 - (n-1) * D_o / sum n_c n_k with n=13, n_pos=6, n_neg=7, D_o = 2*2*1/2 = 2
    assert pulled.alpha == pytest.approx(1 - 12 * 2 / (2 * 6 * 7))
    table = pq.read_table(project.root / "review" / "annotations.parquet").to_pylist()
    by_id = {r["id"]: r for r in table}
    assert by_id[chosen[5]]["label"] == "neg" and by_id[chosen[5]]["disagreement"]
    assert json.loads(by_id[sorted(uuid_of)[7]]["notes"]) == {"a1": "not a review"}
    assert by_id[chosen[0]]["cleanlab_label"] == "pos"
    labels = reviewed_labels(project)
    assert labels == {rid: lab for rid, lab in zip(chosen, plan["a2"][:5] + ["neg"], strict=True)}
    curated = pq.read_table(project.root / "review" / "curated.parquet").to_pylist()
    assert len(curated) == 29  # the record discarded by its only reviewer is dropped
    assert sum(r["label_source"] == "reviewed" for r in curated) == 6


def _kill_server(paths):
    for name in PROCESSES:
        info = _read_pid(paths, name)
        if info:
            try:
                os.killpg(info[0], signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_sigkill_mid_push_then_restart_and_resume(argilla, tmp_path):
    n = 3000
    conn = argilla.conn()
    project = Project.at(make_project(tmp_path / "fault", n, seed=1))
    journal = project.root / "review" / "push_journal.jsonl"
    opts = _opts(dataset="fault", batch_size=100, retry=RetryPolicy(tries=2, backoff_s=0.2))
    errors: list[Exception] = []

    def run():
        try:
            push(project, conn, opts, embed=fake_embed())
        except PushError as err:  # one line naming how to resume, never a raw HTTP error
            errors.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    _kill_server(argilla.paths)
    worker.join(timeout=300)
    assert not worker.is_alive()
    assert errors, "the push should have failed when the server died"
    assert "to resume" in str(errors[0]) and "\n" not in str(errors[0])
    sent_before = len(json.loads((project.root / "review" / "push_state.json").read_text())["sent"])
    assert 0 < sent_before < n

    server_up(argilla.options, argilla.paths)  # restart: same data, search reindexed
    conn = argilla.conn()
    resumed = push(project, conn, opts, embed=fake_embed())
    assert resumed.failed == 0 and resumed.unchanged == sent_before
    assert resumed.sent == n - sent_before
    ids, total = _server_records(conn, resumed.dataset_id)
    assert len(ids) == n and len(set(ids)) == n and total == n
