"""Offline parts of the Argilla-backed round steps: annotations → labels/issues, the records a
round starts from (reviewed vs all labels, ties left out), conflicts appended to the selection,
the demo annotators' answers, and the wiring refusing bad options before any step runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loop.demo_annotators import answer
from loop.errors import LearnerError, RoundStateError, UnknownStrategyError
from loop.review_steps import annotations_frame, records_for_round, with_conflicts
from loop.round_wiring import build_runner, learner_factory
from loop.rounds import StepContext
from thresher.config import load_config
from thresher.errors import ConfigError
from thresher.project import Project


def _ann(rows):
    cols = ["id", "label", "n_annotators", "disagreement", "cleanlab_label", "text"]
    return pd.DataFrame(rows, columns=cols)


def test_annotations_frame_drops_ties_and_flags_disagreements():
    ann = _ann(
        [
            ("a", "pos", 2, False, "pos", "t"),
            ("b", None, 2, True, None, "t"),  # tie
            ("c", "neg", 3, True, "neg", "t"),  # 2 vs 1
            ("d", "neg", 2, False, "pos", "t"),  # cleanlab doubts the consensus
        ]
    )
    out = annotations_frame(ann)
    assert out["id"].tolist() == ["a", "c", "d"]
    assert out["label_issue"].tolist() == [False, True, True]
    empty = annotations_frame(_ann([]))
    assert list(empty.columns) == ["id", "label", "label_issue"] and empty.empty


def _ctx(tmp_path, round_dir=None):
    project = Project.at(tmp_path / "p")
    (project.root / "ingest").mkdir(parents=True)
    pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "text": ["ta", "tb", "tc", "td"],
            "label": ["pos", "neg", "pos", "neg"],
        }
    ).to_parquet(project.root / "ingest" / "records.parquet")
    rdir = tmp_path / "p" / "rounds" / "1"
    (rdir / "pull").mkdir(parents=True)
    pd.DataFrame({"id": ["a"], "label": ["neg"], "label_issue": [True]}).to_parquet(
        rdir / "pull" / "annotations.parquet"
    )
    pd.DataFrame({"id": ["b"], "text": ["tb"]}).to_parquet(rdir / "pull" / "conflicts.parquet")
    work = rdir / ".select.tmp"
    work.mkdir()
    return StepContext(project, 1, "select", rdir, work, {}, {}, None)


def test_records_for_round_reviewed_vs_all(tmp_path):
    ctx = _ctx(tmp_path)
    reviewed = records_for_round("reviewed")(ctx)
    assert reviewed["id"].tolist() == ["a", "c", "d"]  # the tie "b" is out
    assert reviewed["label"].isna().all()  # the input labels are not used
    assert reviewed["label_issue"].tolist() == [True, False, False]
    everything = records_for_round("all")(ctx)
    assert everything["label"].tolist() == ["pos", "pos", "neg"]
    with pytest.raises(RoundStateError):
        records_for_round("some")


def test_records_every_reviewer_discarded_leave_the_round(tmp_path):
    ctx = _ctx(tmp_path)
    pd.DataFrame({"id": ["d"]}).to_parquet(ctx.round_dir / "pull" / "discarded.parquet")
    for labels in ("reviewed", "all"):
        assert records_for_round(labels)(ctx)["id"].tolist() == ["a", "c"]


def test_with_conflicts_appends_ties_after_the_selection(tmp_path):
    ctx = _ctx(tmp_path)

    def select(c):
        pd.DataFrame(
            {
                "id": ["c"],
                "text": ["tc"],
                "reason": ["uncertain"],
                "priority": [1],
                "score": [0.5],
                "suggestion": ["pos"],
                "suggestion_score": [0.5],
                "round": [1],
            }
        ).to_parquet(c.work_dir / "selection.parquet", index=False)
        return {"selected": 1, "by_reason": {"uncertain": 1}, "strategy": "margin"}

    out = with_conflicts(select, 5)(ctx)
    sel = pd.read_parquet(ctx.work_dir / "selection.parquet")
    assert sel["id"].tolist() == ["c", "b"] and sel["priority"].tolist() == [1, 2]
    assert sel["reason"].tolist() == ["uncertain", "conflict"] and pd.isna(
        sel["suggestion"].iloc[1]
    )
    assert out["selected"] == 2 and out["by_reason"] == {"uncertain": 1, "conflict": 1}
    assert with_conflicts(select, 0)(ctx)["selected"] == 1


def test_demo_answer_flip_rate():
    rng = np.random.default_rng(0)
    answers = [answer("pos", ["neg", "pos"], rng, 0.15) for _ in range(4000)]
    rate = sum(a != "pos" for a in answers) / len(answers)
    assert 0.13 < rate < 0.17
    assert answer("pos", ["pos"], rng, 1.0) == "pos"  # no other label to flip to


def test_build_runner_refuses_bad_options_before_running(tmp_path):
    project = Project.at(tmp_path / "p")
    project.root.mkdir()
    bad = load_config(project.root).with_overrides({"loop.strategy": "nope"})
    with pytest.raises(UnknownStrategyError):
        build_runner(project, bad, connect=lambda: None)
    with pytest.raises(ConfigError, match=r"loop.learner = 'svm'"):  # the typed config first
        load_config(project.root).with_overrides({"loop.learner": "svm"})
    with pytest.raises(LearnerError):
        learner_factory(load_config(project.root), project, "svm")
    assert not (project.root / "rounds").exists()
