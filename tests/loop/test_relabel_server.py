"""A re-label through the real embedded Argilla server (session fixture ``argilla`` in
tests/conftest.py): a record two annotators already answered is pushed by the round's push step
to the per-round re-label dataset, where it is pending for them again; one annotator answers it
through the client; pull merges that answer into the record's annotations."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from loop.demo_annotators import my_queue
from loop.review_steps import push_step, submitted_probe
from loop.rounds import StepContext
from review.client import ArgillaClient
from review.pull import PullOptions, pull
from review.push import PushOptions, push, relabel_dataset_name
from review.users import add_user
from tests.helpers.scored_project import LABELS, fake_embed, make_project
from thresher.project import Project

pytestmark = pytest.mark.integration

DATASET = "relabel-srv"


def _opts():
    return PushOptions(
        dataset=DATASET, labels=LABELS, vector_dims=8, embedding_model="fake-8", limit=6
    )


def _key(user):
    return json.loads(open(user.credentials_file).read())["api_key"]


def _pending(conn, key, dataset):
    """External ids pending in the queue of ``key``'s user in ``dataset`` → Argilla ids."""
    with ArgillaClient(conn.url, key) as client:
        _, todo = my_queue(client, dataset, "thresher")
    return {r["external_id"]: r["id"] for r in todo}


def _submit(conn, key, dataset, answers):
    """Submit ``answers`` ({external id: label}) as the user of ``key`` (each must be pending)."""
    uuid_of = _pending(conn, key, dataset)
    items = [
        {"record_id": uuid_of[rid], "status": "submitted", "values": {"label": {"value": lab}}}
        for rid, lab in answers.items()
    ]
    with ArgillaClient(conn.url, key) as client:
        out = client.post("/api/v1/me/responses/bulk", "submit", json={"items": items})
    assert not [x for x in out["items"] if x.get("error")], out


def _select_ctx(project, selection):
    """Round 1 with its select and predict steps done: ``selection`` rows to push."""
    rdir = project.root / "rounds" / "1"
    for step in ("select", "predict"):
        (rdir / step).mkdir(parents=True)
    selection.to_parquet(rdir / "select" / "selection.parquet", index=False)
    (rdir / "predict" / "classes.json").write_text(json.dumps(list(LABELS)))
    work = rdir / ".push.tmp"
    work.mkdir()
    return StepContext(project, 1, "push", rdir, work, {}, {}, None)


def test_a_relabel_is_pending_again_and_pull_merges_its_answer(argilla, tmp_path):
    conn = argilla.conn()
    project = Project.at(make_project(tmp_path / "rl", 20))
    first = push(project, conn, _opts(), embed=fake_embed())
    a1, a2 = (add_user(conn, n, workspace="thresher", paths=argilla.paths) for n in ("rl1", "rl2"))
    assert first.sent == 6
    # both annotate the six records; they disagree on `target`
    queue = sorted(_pending(conn, _key(a1), DATASET))
    target = queue[0]
    _submit(conn, _key(a1), DATASET, {rid: "pos" for rid in queue})
    _submit(conn, _key(a2), DATASET, {rid: ("neg" if rid == target else "pos") for rid in queue})
    assert _pending(conn, _key(a1), DATASET) == {}  # answered: nothing pending
    before = pull(project, conn, PullOptions(dataset=DATASET))
    assert before.ties == 1 and before.relabel_datasets == []
    probe = submitted_probe(lambda: conn)
    assert probe(project) == {"submitted": 12}

    # the round's push: one re-label (the tie) and one new record
    records = pq.read_table(project.root / "score" / "records.parquet")["id"].to_pylist()
    new_id = next(i for i in sorted(records) if i not in queue)
    selection = pd.DataFrame(
        {
            "id": [target, new_id],
            "text": ["T", "N"],
            "reason": ["low-agreement", "uncertain"],
            "priority": [1, 2],
            "score": [0.5, 0.4],
            "suggestion": ["pos", "neg"],
            "suggestion_score": [0.55, 0.6],
            "round": 1,
            "kind": ["relabel", "new"],
            "activelab": [0.5, 0.52],
        }
    )
    ctx = _select_ctx(project, selection)
    out = push_step(lambda: conn, _opts(), embed=fake_embed())(ctx)
    name = relabel_dataset_name(DATASET, 2)
    assert out["relabel_dataset"] == name and out["relabel_sent"] == 1 and out["new_sent"] == 1
    assert out["sent"] == 2 and out["round"] == 2

    # pending again for a1 (who answered it in the project's dataset) in the re-label dataset
    with ArgillaClient(conn.url, _key(a1)) as client:
        _, todo = my_queue(client, name, "thresher")
    assert [r["external_id"] for r in todo] == [target]
    assert todo[0]["metadata"]["reason"] == "low-agreement" and todo[0]["metadata"]["round"] == 2
    assert list(_pending(conn, _key(a2), name)) == [target]
    # the new record went to the project's dataset
    assert list(_pending(conn, _key(a1), DATASET)) == [new_id]

    # a1 answers the re-label (changes their mind): the tie is broken on pull
    _submit(conn, _key(a1), name, {target: "neg"})
    assert probe(project) == {"submitted": 13}
    after = pull(project, conn, PullOptions(dataset=DATASET))
    assert after.relabel_datasets == [name] and after.ties == 0
    rows = {r["id"]: r for r in pq.read_table(project.annotations_path).to_pylist()}
    assert json.loads(rows[target]["annotator_labels"]) == {"rl1": "neg", "rl2": "neg"}
    assert rows[target]["label"] == "neg" and rows[target]["n_annotators"] == 2
    # the push state of the project's dataset is untouched by the re-label push
    state = json.loads((project.root / "review" / "push_state.json").read_text())
    assert state["dataset"] == DATASET and state["dataset_id"] == first.dataset_id
