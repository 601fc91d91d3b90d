"""The built-in round steps wired into the runner: two rounds with an oracle annotator."""

from __future__ import annotations

import pandas as pd
import pytest

from loop.learners import make_learner
from loop.rounds import RoundRunner
from loop.steps import (
    eval_step,
    file_push_step,
    in_test_split,
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


def test_test_split_is_stable_and_sized():
    ids = [f"id-{i}" for i in range(4000)]
    mask = in_test_split(ids, 0.2)
    assert 0.17 < mask.mean() < 0.23
    assert (in_test_split(ids[::-1], 0.2) == mask[::-1]).all()
