"""The built-in round steps wired into the runner: two rounds with an oracle annotator."""

from __future__ import annotations

import pandas as pd
import pytest

from loop.learners import make_learner
from loop.rounds import RoundRunner
from loop.steps import (
    eval_step,
    file_push_step,
    oracle_pull_step,
    predict_step,
    rebuild_step,
    select_step,
    train_step,
)
from thresher.project import Project


def _hashed(texts, ctx):
    """Cheap bag-of-words vectors, so the diversity step needs no model files in tests."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=256).transform(list(texts)).toarray()


def _steps(frame, gold, strategy="margin", threshold=0.6):
    return {
        "pull": oracle_pull_step(gold),
        "rebuild": rebuild_step(lambda ctx: frame, test_fraction=0.25),
        "train": train_step(lambda classes, ctx: make_learner("tfidf", classes)),
        "eval": eval_step(),
        "predict": predict_step(),
        "select": select_step(
            strategy, 10, rereview_size=3, rereview_threshold=threshold, embed=_hashed
        ),
        "push": file_push_step(),
    }


@pytest.mark.parametrize("strategy", ["margin", "entropy+kmeans"])
def test_two_rounds_with_an_oracle(tmp_path, planted, strategy):
    texts, labels = planted
    ids = [f"r{i}" for i in range(len(texts))]
    gold = dict(zip(ids, labels, strict=True))
    # a labelled seed (every 4th row) and an unlabelled pool
    frame = pd.DataFrame(
        {
            "id": ids,
            "text": texts,
            "label": [lab if i % 4 == 0 else None for i, lab in enumerate(labels)],
        }
    )
    project = Project.at(tmp_path)
    runner = RoundRunner(project, _steps(frame, gold, strategy), options={"strategy": strategy})
    first = runner.run()
    assert first.outputs("pull") == {"annotations": 0, "new": 0}
    rebuild = first.outputs("rebuild")
    assert rebuild["labeled"] == 60 and rebuild["pool"] == 180
    assert first.outputs("eval")["n_test"] == rebuild["test"] > 0
    sel = pd.read_parquet(tmp_path / "rounds/1/select/selection.parquet")
    uncertain = sel[~sel["reason"].isin(["model-error", "conflict"])]
    assert len(uncertain) == 10 and set(uncertain["id"]) <= set(frame.loc[frame.label.isna(), "id"])
    assert sel["priority"].tolist() == list(range(1, len(sel) + 1))
    assert first.outputs("push")["sent"] == len(sel)

    second = runner.run(new=True)
    assert second.round == 2
    assert second.outputs("pull")["new"] == len(sel)
    # the pool shrank by the newly labelled rows; the test split stayed exactly the same
    assert second.outputs("rebuild")["pool"] == 180 - len(uncertain)
    lab1 = pd.read_parquet(tmp_path / "rounds/1/rebuild/labeled.parquet")
    lab2 = pd.read_parquet(tmp_path / "rounds/2/rebuild/labeled.parquet")
    assert set(lab1.loc[lab1.split == "test", "id"]) == set(lab2.loc[lab2.split == "test", "id"])
    assert second.outputs("train")["n_train"] > first.outputs("train")["n_train"]


def test_flagged_label_issues_go_back_for_review(tmp_path, planted):
    texts, labels = planted
    ids = [f"r{i}" for i in range(len(texts))]
    frame = pd.DataFrame(
        {
            "id": ids,
            "text": texts,
            "label": [lab if i % 2 == 0 else None for i, lab in enumerate(labels)],
            "label_issue": [i in (4, 8) for i in range(len(texts))],
        }
    )
    gold = dict(zip(ids, labels, strict=True))
    # threshold 1.0: no model-error picks, so the re-review rows are exactly the flagged ones
    result = RoundRunner(Project.at(tmp_path), _steps(frame, gold, threshold=1.0)).run()
    sel = pd.read_parquet(tmp_path / "rounds/1/select/selection.parquet")
    flagged = sel[sel["reason"] == "conflict"]
    assert set(flagged["id"]) == {"r4", "r8"}  # both labelled (even rows), both flagged
    assert result.outputs("select")["by_reason"]["uncertain"] == 10


def _context(root):
    from loop.rounds import StepContext

    work = root / "rounds" / "1" / "rebuild"
    work.mkdir(parents=True)
    return StepContext(Project.at(root), 1, "rebuild", work.parent, work, {}, {}, None)


def test_rebuild_holds_out_a_stratified_test_split_and_keeps_it(tmp_path):
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(100)],
            "text": [f"t{i}" for i in range(100)],
            "label": ["a" if i % 4 else "b" for i in range(100)],
        }
    )
    ctx = _context(tmp_path / "a")
    out = rebuild_step(lambda ctx: frame, test_fraction=0.2, seed=0)(ctx)
    labeled = pd.read_parquet(ctx.work_dir / "labeled.parquet")
    test = labeled[labeled["split"] == "test"]
    assert out["test"] == 20 and (test["label"] == "b").sum() == 5
    shuffled = frame.sample(frac=1, random_state=1)
    ctx2 = _context(tmp_path / "b")
    rebuild_step(lambda ctx: shuffled, test_fraction=0.2, seed=0)(ctx2)
    again = pd.read_parquet(ctx2.work_dir / "labeled.parquet")
    assert set(again.loc[again["split"] == "test", "id"]) == set(test["id"])


@pytest.mark.parametrize("classes", [("food", "sport", "tech"), ("food", "sport")])
def test_tfidf_learner_saves_plain_files_and_loads_the_same_model(tmp_path, planted, classes):
    import numpy as np

    from loop.learners import TfidfLogReg
    from loop.steps import load_learner, save_learner

    texts, labels = planted
    rows = [(t, lab) for t, lab in zip(texts, labels, strict=True) if lab in classes]
    learner = make_learner("tfidf", list(classes), pool_texts=[t for t, _ in rows])
    learner.fit([t for t, _ in rows[:90]], [lab for _, lab in rows[:90]])
    save_learner(learner, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "head.npz", "learner.json", "learner_state.json", "tfidf.npz"
    ]  # fmt: skip
    again = load_learner(tmp_path)
    assert isinstance(again, TfidfLogReg) and again.classes == learner.classes
    held = [t for t, _ in rows[90:]]
    np.testing.assert_allclose(again.predict_proba(held), learner.predict_proba(held), atol=1e-12)
    np.testing.assert_allclose(again.embed(held), learner.embed(held))


def test_one_class_seed_round_trips(tmp_path):
    from loop.steps import load_learner, save_learner

    learner = make_learner("tfidf", ["a", "b"]).fit(["xx yy", "yy zz"], ["b", "b"])
    save_learner(learner, tmp_path)
    assert load_learner(tmp_path).predict_proba(["xx"]).tolist() == [[0.0, 1.0]]


class _Plant:
    """Unpickling this creates ``marker``: the side effect of a planted pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_planted_in_a_round_folder_is_never_loaded(tmp_path):
    import pickle

    from loop.errors import LearnerError
    from loop.steps import load_learner

    marker = tmp_path / "pwned"
    folder = tmp_path / "rounds" / "1" / "train"
    folder.mkdir(parents=True)
    (folder / "learner.pkl").write_bytes(pickle.dumps(_Plant(str(marker))))
    pickle.loads((folder / "learner.pkl").read_bytes()).close()  # the plant is live ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(LearnerError, match="learner.pkl is a pickle") as err:
        load_learner(folder)  # ... and load_learner does not run it
    assert "\n" not in str(err.value) and not marker.exists()


def test_a_class_named_in_learner_json_is_never_imported(tmp_path, monkeypatch):
    import sys

    from loop.errors import LearnerError
    from loop.steps import load_learner

    marker = tmp_path / "pwned"
    (tmp_path / "planted_learner_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "class Evil:\n    load = classmethod(lambda cls, folder: cls())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "train"
    folder.mkdir()
    for meta in ({"class": "planted_learner_mod:Evil"}, {"kind": "planted_learner_mod:Evil"}):
        (folder / "learner.json").write_text(__import__("json").dumps(meta))
        with pytest.raises(LearnerError, match="unknown learner kind") as err:
            load_learner(folder)
        assert "\n" not in str(err.value)
    assert not marker.exists() and "planted_learner_mod" not in sys.modules


def test_a_learner_without_save_is_refused_and_a_registered_one_round_trips(tmp_path):
    import numpy as np

    from loop.errors import LearnerError
    from loop.steps import _REGISTERED, load_learner, register_learner, save_learner

    class Constant:
        classes = ("a", "b")

        def fit(self, texts, labels):
            return self

        def predict_proba(self, texts):
            return np.tile([0.25, 0.75], (len(texts), 1))

    with pytest.raises(LearnerError, match="register_learner"):
        save_learner(Constant(), tmp_path)

    class Saved(Constant):
        def save(self, folder):
            (folder / "constant.txt").write_text("ok")

        @classmethod
        def load(cls, folder):
            assert (folder / "constant.txt").read_text() == "ok"
            return cls()

    register_learner("constant", Saved)
    try:
        save_learner(Saved(), tmp_path)
        assert load_learner(tmp_path).predict_proba(["x"]).tolist() == [[0.25, 0.75]]
    finally:
        _REGISTERED.pop("constant")


def test_fast_learner_loads_with_the_callers_cache_never_a_saved_folder(tmp_path):
    """The saved file records only whether a cache was used; the folder comes from the caller
    (the round's project), so a project file cannot point the cache elsewhere."""
    import json

    import numpy as np

    from loop.learners import EmbeddingLogReg
    from loop.steps import load_learner, save_learner

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 8)), np.arange(30) % 3
    for cache in (tmp_path / "theirs", None):
        learner = EmbeddingLogReg(["a", "b", "c"], cache_dir=cache)
        learner._head.fit(x, y)  # the head alone: no embedding model needed
        folder = tmp_path / f"train-{cache is None}"
        folder.mkdir()
        save_learner(learner, folder)
        assert str(tmp_path) not in (folder / "learner_state.json").read_text()
        assert json.loads((folder / "learner.json").read_text()) == {"kind": "fast"}
        again = load_learner(folder, tmp_path / "ours")
        assert again.cache_dir == (tmp_path / "ours" if cache else None)
        np.testing.assert_allclose(again._head.predict_proba(x), learner._head.predict_proba(x))


def test_each_round_checks_the_stopping_rules_on_the_same_stop_set(tmp_path, planted):
    from loop.stopping import StoppingOptions, cohen_kappa

    texts, labels = planted
    ids = [f"r{i}" for i in range(len(texts))]
    gold = dict(zip(ids, labels, strict=True))
    frame = pd.DataFrame(
        {
            "id": ids,
            "text": texts,
            "label": [g if i % 4 == 0 else None for i, g in enumerate(labels)],
        }
    )
    steps = _steps(frame, gold)
    steps["predict"] = predict_step(StoppingOptions(stop_set=40, window=1, kappa=0.0, budget=90))
    project = Project.at(tmp_path)
    runner = RoundRunner(project, steps, options={"strategy": "margin", "seed": 3})
    first = runner.run().outputs("predict")["stopping"]
    assert first["stop_set"] == 40 and first["kappas"] == [None]
    assert first["recommendation"] == "continue"  # one round: nothing to compare yet
    stop_ids = (tmp_path / "rounds" / "stop_set.json").read_text()
    second = runner.run(new=True).outputs("predict")["stopping"]
    assert (tmp_path / "rounds" / "stop_set.json").read_text() == stop_ids
    before = pd.read_parquet(tmp_path / "rounds/1/predict/stop_set.parquet")
    after = pd.read_parquet(tmp_path / "rounds/2/predict/stop_set.parquet")
    assert before["id"].tolist() == after["id"].tolist()
    expected = cohen_kappa(before["predicted_label"], after["predicted_label"])
    assert second["kappas"][0] is None
    assert second["kappas"][1] == pytest.approx(expected, abs=1e-6)
    budget = {c["rule"]: c for c in second["checks"]}["budget"]
    assert budget["value"] > 60 and budget["met"] == (budget["value"] >= 90)
    assert second["recommendation"] == "stop"  # kappa >= 0 once (window 1), or the budget


def test_a_round_without_labels_picks_for_coverage_then_trains_once_labelled(tmp_path, planted):
    """No labels yet: no model to rank by, so round 1 spreads its picks over the embeddings
    (reason coverage, no suggestion); once the oracle labelled them, round 2 trains."""
    texts, labels = planted
    ids = [f"r{i}" for i in range(len(texts))]
    gold = dict(zip(ids, labels, strict=True))
    frame = pd.DataFrame({"id": ids, "text": texts, "label": [None] * len(texts)})
    project = Project.at(tmp_path)
    steps = _steps(frame, gold)
    steps["select"] = select_step("margin", 24, embed=_hashed)
    runner = RoundRunner(project, steps, options={"strategy": "margin"})
    first = runner.run()
    assert first.outputs("train") == {"n_train": 0, "classes": [], "cold_start": True}
    assert first.outputs("eval")["macro_f1"] is None
    assert first.outputs("select") == {
        "selected": 24,
        "by_reason": {"coverage": 24},
        "strategy": "coverage",
    }
    sel = pd.read_parquet(tmp_path / "rounds/1/select/selection.parquet")
    assert sel["suggestion"].isna().all() and sel["id"].is_unique
    # the planted corpus has three topics: 24 coverage picks reach all of them
    assert {gold[i] for i in sel["id"]} == set(labels)
    second = runner.run(new=True)
    assert second.outputs("train")["n_train"] > 0 and "cold_start" not in second.outputs("train")
    assert second.outputs("select")["strategy"] == "margin"
