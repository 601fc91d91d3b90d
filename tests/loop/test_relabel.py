"""Re-label or label new (loop/relabel.py), the select step's use of it, and the re-label
dataset's name and merge on pull. Offline; the server round trip is in test_relabel_server.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loop.relabel import (
    LOW_AGREEMENT,
    LOW_QUALITY,
    MODEL_DISPUTES,
    NEW,
    RELABEL,
    RelabelError,
    annotator_table,
    decide,
    relabel_reasons,
)
from loop.rounds import StepContext
from loop.steps import select_step
from review.pull import merge_relabels, summarize
from review.push import PushError, relabel_dataset_name, relabel_round
from thresher.project import Project

CLASSES = ["neg", "pos"]


def _planted_rows(n=60, seed=0):
    """n labelled records two annotators agree on, the model agreeing at 0.9-0.99; record
    ``split``: the annotators disagree and the model is unsure; record ``sure``: three
    annotators agree and the model is at 0.999. A pool of 30 at 0.55-0.99."""
    rng = np.random.default_rng(seed)
    rows, probs = [], []
    for i in range(n):
        lab = CLASSES[i % 2]
        rows.append((f"l{i}", {"ann": lab, "bob": lab}))
        p = rng.uniform(0.9, 0.99)
        probs.append([p, 1 - p] if lab == "neg" else [1 - p, p])
    rows.append(("split", {"ann": "neg", "bob": "pos"}))
    probs.append([0.52, 0.48])
    rows.append(("sure", {"ann": "pos", "bob": "pos", "cy": "pos"}))
    probs.append([0.001, 0.999])
    pool_p = rng.uniform(0.55, 0.99, size=30)
    pool = np.stack([pool_p, 1 - pool_p], axis=1)
    return rows, np.array(probs), [f"u{i}" for i in range(30)], pool


def _planted():
    rows, probs, pool_ids, pool = _planted_rows()
    return annotator_table(rows, CLASSES), probs, pool_ids, pool


def test_a_planted_low_agreement_record_is_relabelled_and_a_confident_one_is_not():
    table, probs, pool_ids, pool = _planted()
    assert table.multi and table.annotators == ("ann", "bob", "cy")
    d = decide(table, probs, pool_ids, pool, 8)
    assert len(d.ids) == 8 and len(set(d.ids)) == 8
    assert "split" in d.relabel_ids
    assert d.reasons[d.ids.index("split")] == LOW_AGREEMENT
    assert "sure" not in d.ids
    assert d.counts() == {RELABEL: len(d.relabel_ids), NEW: 8 - len(d.relabel_ids)}
    assert d.counts()[NEW] >= 1  # the pool's unsure records compete in the same budget
    # lowest ActiveLab score first; the new picks are the pool's least confident records
    assert list(d.scores) == sorted(d.scores)
    least_sure = [pool_ids[i] for i in np.argsort(pool.max(axis=1))[: d.counts()[NEW]]]
    assert sorted(d.new_ids) == sorted(least_sure)
    assert d.by_reason(RELABEL)[LOW_AGREEMENT] >= 1


def test_budget_bounds_and_a_pool_only_or_labelled_only_round():
    table, probs, pool_ids, pool = _planted()
    assert decide(table, probs, pool_ids, pool, 0).ids == ()
    everything = decide(table, probs, pool_ids, pool, 10_000)
    assert len(everything.ids) == len(table.ids) + len(pool_ids)
    only_lab = decide(table, probs, [], np.zeros((0, 2)), 3)
    assert only_lab.counts() == {RELABEL: 3, NEW: 0} and only_lab.ids[0] == "split"
    empty = annotator_table([], CLASSES)
    only_pool = decide(empty, np.zeros((0, 2)), pool_ids, pool, 3)
    assert only_pool.counts() == {RELABEL: 0, NEW: 3}


def test_reasons_low_agreement_then_model_disputes_then_low_quality():
    table = annotator_table(
        [
            ("a", {"x": "neg", "y": "pos"}),
            ("b", {"x": "neg", "y": "neg"}),
            ("c", {"x": "pos"}),
            ("d", {"x": "pos", "z": "ufo"}),  # a label outside the classes is ignored
        ],
        CLASSES,
    )
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6], [0.45, 0.55]])
    assert relabel_reasons(table, probs) == [
        LOW_AGREEMENT,
        MODEL_DISPUTES,
        LOW_QUALITY,
        LOW_QUALITY,
    ]
    assert table.annotators == ("x", "y")  # "z" gave no usable label
    assert not annotator_table([("c", '{"x": "pos"}')], CLASSES).multi  # JSON text works too


def test_bad_inputs_are_named():
    table, probs, pool_ids, pool = _planted()
    with pytest.raises(RelabelError, match="budget"):
        decide(table, probs, pool_ids, pool, -1)
    with pytest.raises(RelabelError, match="probability rows"):
        decide(table, probs[:-1], pool_ids, pool, 3)
    with pytest.raises(RelabelError, match="class counts"):
        decide(table, probs, pool_ids, np.full((30, 3), 1 / 3), 3)


@settings(max_examples=25, deadline=None)
@given(
    n_lab=st.integers(1, 12),
    n_pool=st.integers(0, 12),
    budget=st.integers(0, 30),
    seed=st.integers(0, 10_000),
)
def test_decision_is_distinct_bounded_and_deterministic(n_lab, n_pool, budget, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_lab):
        given_labels = {a: CLASSES[int(rng.integers(2))] for a in ("a", "b") if rng.random() < 0.8}
        rows.append((f"l{i}", given_labels or {"a": "neg"}))
    table = annotator_table(rows, CLASSES)
    lab = rng.dirichlet([1, 1], size=n_lab)
    pool = rng.dirichlet([1, 1], size=n_pool)
    ids = [f"u{i}" for i in range(n_pool)]
    first = decide(table, lab, ids, pool, budget)
    assert len(first.ids) == min(budget, n_lab + n_pool) == len(set(first.ids))
    assert all(0.0 <= s <= 1.0 for s in first.scores)
    assert decide(table, lab, ids, pool, budget) == first


# --- the select step -----------------------------------------------------------------------


def _round(tmp_path, *, annotators=True):
    """A round folder whose pull, rebuild and predict steps are done (the planted set)."""
    rows, probs, pool_ids, pool = _planted_rows()
    rdir = tmp_path / "rounds" / "1"
    for step in ("pull", "rebuild", "predict"):
        (rdir / step).mkdir(parents=True)
    given_by = dict(rows)
    labels = {rid: max(g.values(), key=list(g.values()).count) for rid, g in given_by.items()}
    if annotators:
        pd.DataFrame(
            {"id": list(given_by), "annotator_labels": [json.dumps(g) for g in given_by.values()]}
        ).to_parquet(rdir / "pull" / "annotator_labels.parquet", index=False)
    lab_ids = list(given_by)
    pd.DataFrame(
        {"id": lab_ids, "text": lab_ids, "label": [labels[i] for i in lab_ids], "split": "train"}
    ).to_parquet(rdir / "rebuild" / "labeled.parquet", index=False)
    pd.DataFrame({"id": pool_ids, "text": pool_ids}).to_parquet(
        rdir / "rebuild" / "pool.parquet", index=False
    )
    preds = pd.DataFrame(
        {
            "id": lab_ids + pool_ids,
            "split": ["labeled"] * len(lab_ids) + ["pool"] * len(pool_ids),
            "label": [labels[i] for i in lab_ids] + [None] * len(pool_ids),
            "probs": list(probs) + list(pool),
        }
    )
    preds.to_parquet(rdir / "predict" / "predictions.parquet", index=False)
    (rdir / "predict" / "classes.json").write_text(json.dumps(CLASSES))
    work = rdir / ".select.tmp"
    work.mkdir()
    project = Project.at(tmp_path)
    return StepContext(project, 1, "select", rdir, work, {}, {"train": {}}, None)


def test_select_splits_the_budget_and_says_why(tmp_path):
    ctx = _round(tmp_path)
    out = select_step("margin", 8, rereview_size=5, relabel="auto")(ctx)
    sel = pd.read_parquet(ctx.work_dir / "selection.parquet")
    info = out["relabel"]
    assert info["active"] and info["relabel"] + info["new"] == 8 == out["selected"]
    assert out["kinds"] == {RELABEL: info["relabel"], NEW: info["new"]}
    row = sel.set_index("id").loc["split"]
    assert (row["kind"], row["reason"]) == (RELABEL, LOW_AGREEMENT)
    assert "sure" not in set(sel["id"])
    assert set(sel.loc[sel["kind"] == NEW, "reason"]) == {"uncertain"}
    assert sel["activelab"].between(0, 1).all() and sel["priority"].tolist() == list(range(1, 9))
    assert info["by_reason"][LOW_AGREEMENT] >= 1 and "lowest scores" in info["why"]


def test_select_without_annotator_data_or_when_off_keeps_the_strategy(tmp_path):
    for name, kwargs in (("none", {"annotators": False}), ("off", {})):
        ctx = _round(tmp_path / name, **kwargs)
        mode = "off" if name == "off" else "auto"
        out = select_step("margin", 8, relabel=mode)(ctx)
        assert not out["relabel"]["active"] and out["kinds"] == {RELABEL: 0, NEW: 8}
    with pytest.raises(Exception, match="loop.relabel"):
        select_step("margin", 8, relabel="sometimes")(_round(tmp_path / "bad"))


# --- the re-label dataset: its name, and pull's merge --------------------------------------


def test_relabel_dataset_name_round_trips_and_is_validated():
    assert relabel_dataset_name("films", 3) == "films-relabel-3"
    assert relabel_round("films", "films-relabel-3") == 3
    assert relabel_round("films", "films") is None
    assert relabel_round("films", "films-relabel-03") is None
    assert relabel_round("films", "other-relabel-3") is None
    with pytest.raises(PushError):
        relabel_dataset_name("x" * 200, 2)
    with pytest.raises(PushError):
        relabel_dataset_name("films", 0)


def _resp(user, status, label=None):
    values = {"label": {"value": label}} if label else {}
    return {"user_id": user, "status": status, "values": values}


def test_pull_merges_a_second_annotation_by_another_and_by_the_same_annotator():
    main = [
        {
            "external_id": "a",
            "fields": {"text": "A"},
            "responses": [_resp("u1", "submitted", "pos"), _resp("u2", "submitted", "neg")],
        },
        {
            "external_id": "b",
            "fields": {"text": "B"},
            "responses": [_resp("u1", "submitted", "pos"), _resp("u2", "submitted", "neg")],
        },
        {
            "external_id": "c",
            "fields": {"text": "C"},
            "responses": [_resp("u1", "submitted", "pos")],
        },
    ]
    relabel_round_2 = [
        {
            "external_id": "a",
            "fields": {"text": "A"},
            "responses": [_resp("u3", "submitted", "neg")],
        },
        {
            "external_id": "b",
            "fields": {"text": "B"},
            "responses": [_resp("u1", "submitted", "neg")],
        },
        {"external_id": "c", "fields": {"text": "C"}, "responses": []},
    ]
    merged = merge_relabels(main, [relabel_round_2])
    assert len(merged) == 3 and len(main[0]["responses"]) == 2  # the input is not changed
    rows, summary = summarize(merged, {"u1": "ann", "u2": "bob", "u3": "cy"}, {})
    by_id = {r["id"]: r for r in rows}
    # another annotator breaks the tie
    assert by_id["a"]["label"] == "neg" and by_id["a"]["n_annotators"] == 3
    # the same annotator changed their mind: one answer each, now unanimous
    assert by_id["b"]["label"] == "neg" and by_id["b"]["n_annotators"] == 2
    assert json.loads(by_id["b"]["annotator_labels"]) == {"ann": "neg", "bob": "neg"}
    assert by_id["c"]["label"] == "pos"  # not answered again: unchanged
    assert summary["ties"] == 0


def test_out_of_fold_probabilities_dispute_a_planted_wrong_label(make_planted):
    from loop.learners import make_learner
    from loop.steps import out_of_fold_probs

    texts, labels = make_planted(120, seed=4, signal=3)
    classes = sorted(set(labels))
    wrong = list(labels)
    wrong[7] = next(c for c in classes if c != labels[7])  # planted: a wrong human label

    def factory(cls, ctx):
        return make_learner("tfidf", cls, seed=0)

    ctx = StepContext(None, 1, "select", None, None, {}, {}, None)
    probs = out_of_fold_probs(factory, folds=5)(ctx, texts, wrong, classes)
    assert probs.shape == (120, 3) and np.allclose(probs.sum(axis=1), 1.0)
    # record 7 was predicted by models that never saw its wrong label
    assert classes[int(probs[7].argmax())] == labels[7]
    agree = np.mean([classes[int(p.argmax())] == y for p, y in zip(probs, labels, strict=True)])
    assert agree > 0.8
    # a fold that would train on one class: no out-of-fold probabilities
    assert out_of_fold_probs(factory)(ctx, texts[:6], ["a"] * 5 + ["b"], ["a", "b"]) is None


def test_select_uses_out_of_fold_probabilities_when_given(tmp_path):
    ctx = _round(tmp_path)
    seen = {}

    def oof(ctx, texts, labels, classes):
        seen["n"] = len(texts)
        return np.tile([0.05, 0.95], (len(texts), 1))  # a model sure of "pos" everywhere

    out = select_step("margin", 8, relabel="auto", out_of_fold=oof)(ctx)
    assert seen["n"] == 62 and out["relabel"]["labelled_probabilities"] == "out-of-fold"
    again = _round(tmp_path / "again")
    in_sample = select_step("margin", 8, relabel="auto")(again)
    assert in_sample["relabel"]["labelled_probabilities"] == "in-sample"
    # the scores came from the probabilities given (ActiveLab calibrates on the labelled ones)
    scored = [pd.read_parquet(c.work_dir / "selection.parquet")["activelab"] for c in (ctx, again)]
    assert not np.allclose(scored[0].to_numpy(), scored[1].to_numpy(), atol=1e-3)
