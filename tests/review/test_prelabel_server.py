"""Starting without labels, against the real embedded Argilla server (session fixture ``argilla``
in tests/conftest.py): an unlabelled project → prelabel --push → the suggestions are in Argilla →
two simulated annotators answer → pull measures the pre-labeller like an annotator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate.score import ScoreOptions, score
from loop.demo_annotators import annotate
from review.prelabel import prelabel, push_prelabels, read_prelabels
from review.pull import PullOptions, fetch_records, pull
from review.push import PushOptions, PushState
from review.users import add_user
from tests.review.test_prelabel import GOLD, prelabel_options, unlabelled_project

pytestmark = pytest.mark.integration

DATASET = "prelabel-server-test"
EXTRA = [
    {"id": "w0", "text": "she gave a wonderful performance and I loved her in it"},
    {"id": "w1", "text": "her new film is dull and boring, a waste of her talent"},
]


def test_prelabel_push_annotate_pull_server(argilla, tmp_path):
    conn = argilla.conn()
    project = unlabelled_project(tmp_path, extra=EXTRA)
    gold = {**GOLD, "w0": "pos", "w1": "neg"}
    # score on unlabelled input: noise skipped, bias slices kept (for the per-slice agreement)
    scored = score(project, ScoreOptions(embeddings=False, learners=("nb", "svm"), folds=2))
    assert scored.skipped
    result = prelabel(project, prelabel_options(project))
    assert result.method == "zero-shot" and result.records == 22
    options = PushOptions(labels=("neg", "pos"), dataset=DATASET, vectors=False)
    pushed = push_prelabels(project, conn, options)
    assert pushed["sent"] == 22 and pushed["failed"] == 0

    # the pre-labels are the records' suggestions, with their scores and the model as agent
    pre = read_prelabels(project)
    state = PushState.load(project.root / "review")
    records = fetch_records(conn, state.dataset_id)
    assert len(records) == 22
    for rec in records:
        (suggestion,) = rec["suggestions"]
        label, prob, model = pre[rec["external_id"]]
        assert suggestion["value"] == label and suggestion["score"] == pytest.approx(prob)
        assert suggestion["agent"] == model and suggestion["type"] == "model"
        assert not rec.get("responses")  # a suggestion is not an answer

    # two people answer (the gold label, sometimes another)
    for k in (1, 2):
        user = add_user(conn, f"prelabel-annotator-{k}", paths=argilla.paths)
        key = json.loads(Path(user.credentials_file).read_text())["api_key"]
        n, _ = annotate(conn.url, key, DATASET, gold, ["neg", "pos"], disagreement=0.1, seed=k)
        assert n == 22

    out = pull(project, conn, PullOptions(dataset=DATASET))
    assert {a["annotator"] for a in out.annotators} == {
        "prelabel-annotator-1",
        "prelabel-annotator-2",
    }  # the pre-labeller is measured, never an annotator of the consensus
    agreement = json.loads((project.root / "review" / "agreement.json").read_text())
    pl = agreement["prelabeller"]
    assert pl == json.loads(json.dumps(out.prelabeller))
    assert pl["model"] == [result.model]
    assert pl["n"] == out.consensus and pl["n"] >= 15
    # it agrees with the people as often as its own labels agree with the consensus
    consensus = {r["id"]: r["label"] for r in _annotations(project) if r["label"] is not None}
    expected = sum(pre[i][0] == c for i, c in consensus.items()) / len(consensus)
    assert pl["accuracy"] == pytest.approx(expected, abs=1e-4)
    assert pl["accuracy"] >= 0.6
    assert "gender:female" in pl["by_slice"] and pl["by_slice"]["gender:female"]["n"] >= 1


def _annotations(project):
    import pyarrow.parquet as pq

    return pq.read_table(project.annotations_path).to_pylist()
