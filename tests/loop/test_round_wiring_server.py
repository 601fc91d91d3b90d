"""Two real rounds against the embedded Argilla server (session fixture ``argilla`` in
tests/conftest.py): push → two simulated annotators with their own accounts → round 1 (pull,
train, select, push round 2) → annotators label round 2 → round 2. Plus a crash at the push step
resumed with the real steps, and the ``thresher round`` CLI on a tiny set with the tfidf learner.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from loop import demo_annotators
from loop.round_wiring import build_runner
from loop.rounds import read_round
from review.client import open_client
from review.push import PushOptions, push
from thresher.config import load_config
from thresher.project import Project

pytestmark = pytest.mark.integration

CLASSES = ("food", "sport", "tech")


def embed384(texts):
    out = np.empty((len(texts), 384), dtype="float32")
    for k, text in enumerate(texts):
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")
        v = np.random.default_rng(seed).normal(size=384)
        out[k] = v / np.linalg.norm(v)
    return out


def _project(root, make_planted, n):
    texts, labels = make_planted(n, seed=3)
    (root / "ingest").mkdir(parents=True)
    pd.DataFrame(
        {
            "id": [f"p{i:04d}" for i in range(n)],
            "text": texts,
            "label": labels,
            "source": "planted",
        }
    ).to_parquet(root / "ingest" / "records.parquet", index=False)
    return Project.at(root)


def _config(project, dataset, **loop):
    over = {
        "review.dataset": dataset,
        "labels": list(CLASSES),
        "loop.learner": "tfidf",
        "loop.size": 20,
        "loop.rereview_size": 5,
        "loop.rereview_threshold": 0.5,
    }
    over.update({f"loop.{k}": v for k, v in loop.items()})
    return load_config(project.root).with_overrides(over)


def _round_records(conn, dataset_id, k):
    """Records of the dataset whose metadata round is k (owner key)."""
    with open_client(conn) as client:
        out = client.post(
            f"/api/v1/datasets/{dataset_id}/records/search",
            "search round records",
            idempotent=True,
            json={
                "query": {},
                "filters": {
                    "and": [
                        {
                            "type": "range",
                            "scope": {"entity": "metadata", "metadata_property": "round"},
                            "ge": k,
                            "le": k,
                        }
                    ]
                },
            },
            params={"limit": 500},
        )
        return [item["record"] for item in out["items"]]


def test_two_real_rounds_and_resume(argilla, tmp_path, make_planted):
    conn = argilla.conn()
    project = _project(tmp_path / "loop2", make_planted, 150)
    first = push(
        project,
        conn,
        PushOptions(dataset="loop2", labels=CLASSES, limit=45, vector_dims=384),
        embed=embed384,
    )
    assert first.sent == 45
    reports = demo_annotators.run(
        project, conn, annotators=2, disagreement=0.1, seed=1, paths=argilla.paths
    )
    assert [r.submitted for r in reports] == [45, 45]
    assert [r.annotator for r in reports] == ["demo-annotator-1", "demo-annotator-2"]

    config = _config(project, "loop2")
    runner = build_runner(project, config, connect=argilla.conn, embed=embed384)
    r1 = runner.run()
    assert (r1.round, r1.status, r1.noop) == (1, "done", False)
    assert r1.ran == ["pull", "rebuild", "train", "eval", "predict", "select", "push"]
    pulled = r1.outputs("pull")
    # two annotators: a disagreement is a tie (no consensus, back in the pool)
    assert pulled["submitted"] == 90 and pulled["ties"] <= 15
    assert pulled["annotations"] == 45 - pulled["ties"]
    rebuilt = r1.outputs("rebuild")
    # reviewed labels only: the other 105 input labels are the pool
    assert rebuilt["labeled"] == pulled["annotations"]
    assert r1.outputs("eval")["n_test"] == rebuilt["test"] > 0
    sel = pd.read_parquet(project.root / "rounds" / "1" / "select" / "selection.parquet")
    # two annotators: ActiveLab splits the 20 annotations between re-labels and new records
    split = r1.outputs("select")["relabel"]
    assert split["active"] and split["relabel"] + split["new"] == 20 and split["new"] >= 1
    assert sel["reason"].eq("uncertain").sum() == split["new"]
    # ties (no consensus) are neither trained on nor pooled: they go back as `conflict`
    assert sel["reason"].eq("conflict").sum() == min(5, pulled["ties"])
    assert rebuilt["pool"] == 150 - 45
    assert r1.outputs("push")["sent"] == len(sel) and r1.outputs("push")["round"] == 2
    manifest = read_round(project, 1)
    assert all(manifest["steps"][s]["seconds"] >= 0 for s in manifest["order"])

    # in Argilla: the round-2 records carry round, reason, priority and the model's suggestion;
    # new records go to the project's dataset, answered ones to the round's re-label dataset
    new = sel[sel["kind"] == "new"]
    in_argilla = _round_records(conn, first.dataset_id, 2)
    assert {r["external_id"] for r in in_argilla} == set(new["id"])
    meta = {r["external_id"]: r["metadata"] for r in in_argilla}
    for row in new.itertuples():
        assert meta[row.id]["reason"] == row.reason and meta[row.id]["priority"] == row.priority
    with open_client(conn) as client:
        found = client.get("/api/v1/me/datasets", "list datasets")["items"]
    relabel_id = next(d["id"] for d in found if d["name"] == "loop2-relabel-2")
    relabelled = _round_records(conn, relabel_id, 2)
    assert {r["external_id"] for r in relabelled} == set(sel.loc[sel["kind"] == "relabel", "id"])
    # upserts by id: tie records (already in Argilla) are updated, new pool records added
    annotated = set(pd.read_parquet(project.root / "review" / "annotations.parquet")["id"])
    assert len(annotated) == 45
    with open_client(conn) as client:
        total = client.post(
            f"/api/v1/datasets/{first.dataset_id}/records/search",
            "count records",
            idempotent=True,
            json={"query": {}},
            params={"limit": 1},
        )["total"]
    assert total == len(annotated | set(new["id"]))

    # nothing new annotated: a rerun is a no-op
    again = build_runner(project, config, connect=argilla.conn, embed=embed384).run()
    assert again.noop and again.round == 1

    # people label round 2; the next `round` picks it up by itself (probe changed)
    reports = demo_annotators.run(
        project, conn, annotators=2, disagreement=0.1, seed=2, round=2, paths=argilla.paths
    )
    # the new ones, and the ties sent back in the round's re-label dataset
    assert [r.submitted for r in reports] == [len(new) + len(relabelled)] * 2

    def broken():
        raise ConnectionError("server gone")  # the push step of round 2 crashes

    crashing = build_runner(project, config, connect=argilla.conn, embed=embed384)
    from loop.review_steps import push_step
    from loop.round_wiring import push_options

    crashing.steps[-1] = ("push", push_step(broken, push_options(config), embed=embed384))
    with pytest.raises(ConnectionError):
        crashing.run()
    m2 = read_round(project, 2)
    assert m2["status"] == "running" and m2["steps"]["push"]["status"] == "failed"

    r2 = build_runner(project, config, connect=argilla.conn, embed=embed384).run()
    assert r2.round == 2 and r2.ran == ["push"]
    assert r2.skipped == ["pull", "rebuild", "train", "eval", "predict", "select"]
    assert r2.manifest["steps"]["push"]["attempts"] == 2
    assert r2.outputs("pull")["annotations"] > pulled["annotations"]
    assert r2.outputs("rebuild")["pool"] < rebuilt["pool"]
    # the test split is fixed: the same ids as round 1
    lab1 = pd.read_parquet(project.root / "rounds" / "1" / "rebuild" / "labeled.parquet")
    lab2 = pd.read_parquet(project.root / "rounds" / "2" / "rebuild" / "labeled.parquet")
    assert set(lab1.loc[lab1.split == "test", "id"]) == set(lab2.loc[lab2.split == "test", "id"])
    assert len(_round_records(conn, first.dataset_id, 3)) == r2.outputs("push")["new_sent"]


def test_round_cli_tiny_tfidf(argilla, tmp_path, make_planted, monkeypatch):
    from thresher.cli import main

    monkeypatch.setenv("THRESHER_HOME", str(argilla.paths.home))
    project = _project(tmp_path / "tiny", make_planted, 60)
    (project.root / "thresher.yaml").write_text(
        "labels: [food, sport, tech]\nreview:\n  dataset: tiny-cli\n  vectors: false\n"
        "loop:\n  learner: tfidf\n  size: 10\n"
    )
    conn = argilla.conn()
    push(project, conn, PushOptions(dataset="tiny-cli", labels=CLASSES, limit=24, vectors=False))
    demo_annotators.run(project, conn, annotators=2, disagreement=0.0, paths=argilla.paths)
    runner = CliRunner()
    out = runner.invoke(main, ["round", "-p", str(project.root), "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["round"] == 1 and summary["outputs"]["pull"]["annotations"] == 24
    assert summary["outputs"]["select"]["selected"] >= 10
    assert summary["outputs"]["push"]["round"] == 2
    assert set(summary["timings"]) == {
        "pull",
        "rebuild",
        "train",
        "eval",
        "predict",
        "select",
        "push",
    }
    # a finished round without new labels is a no-op; --next forces round 2
    out = runner.invoke(main, ["round", "-p", str(project.root), "--json"])
    assert json.loads(out.output)["noop"] is True
    out = runner.invoke(main, ["round", "-p", str(project.root), "--strategy", "nope"])
    assert out.exit_code == 1 and "nope" in out.output


@pytest.mark.slow
def test_round_cli_lora_learner(argilla, tmp_path, make_planted, monkeypatch):
    """`--learner lora`: tune's LoRA classifier trains in the round (a few CPU steps)."""
    pytest.importorskip("tune.train")
    from thresher.cli import main

    monkeypatch.setenv("THRESHER_HOME", str(argilla.paths.home))
    project = _project(tmp_path / "lora", make_planted, 60)
    (project.root / "thresher.yaml").write_text(
        "labels: [food, sport, tech]\nreview:\n  dataset: lora-cli\n  vectors: false\n"
        "loop:\n  size: 10\ntune:\n  max_steps: 4\n  batch_size: 16\n"
    )
    conn = argilla.conn()
    push(project, conn, PushOptions(dataset="lora-cli", labels=CLASSES, limit=40, vectors=False))
    demo_annotators.run(project, conn, annotators=2, disagreement=0.0, paths=argilla.paths)
    out = CliRunner().invoke(
        main, ["round", "-p", str(project.root), "--learner", "lora", "--json"]
    )
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout[out.stdout.index("{") :])  # stderr: library warnings
    assert summary["outputs"]["train"]["n_train"] > 0
    assert (project.root / "rounds" / "1" / "train" / "run" / "adapter").is_dir()
    assert summary["outputs"]["push"]["sent"] >= 10
