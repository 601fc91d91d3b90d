"""Cross-fitting: out-of-fold probabilities from tuned models, fed to the score stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.helpers.labelled_project import make_project, synthetic_rows
from thresher.errors import ThresherError
from thresher.project import Project
from tune.crossfit import CrossfitOptions, assign_folds, crossfit, crossfit_records
from tune.data import build_dataset
from tune.options import DataOptions, TuneOptions


def test_assign_folds_is_stratified_and_seeded():
    labels = ["a"] * 30 + ["b"] * 12
    folds = assign_folds(labels, 3, seed=1)
    assert sorted(set(folds)) == [0, 1, 2]
    for k in range(3):
        in_fold = np.asarray(labels)[folds == k]
        assert (in_fold == "a").sum() == 10 and (in_fold == "b").sum() == 4
    assert (assign_folds(labels, 3, seed=1) == folds).all()
    assert (assign_folds(labels, 3, seed=2) != folds).any()


def test_records_roles_follow_split_review_and_labels(tmp_path):
    rows = synthetic_rows(60, seed=3) + [{"text": "no label here at all", "label": ""}]
    root = make_project(tmp_path / "p", rows)
    project = Project.at(root)
    build_dataset(project, DataOptions(seed=0))  # makes the split: test records are held
    split = pd.read_parquet(root / "tune" / "split.parquet")
    test_ids = set(split["id"][split["split"] == "test"])
    ingest = pd.read_parquet(project.records_path("ingest"))
    relabel_id, discard_id = [i for i in ingest["id"] if i not in test_ids][:2]
    old = ingest.set_index("id").loc[relabel_id, "label"]
    new = "neg" if old == "pos" else "pos"
    (root / "review").mkdir()
    pd.DataFrame(
        {
            "id": [relabel_id, discard_id],
            "label": [new, None],
            "n_annotators": [2, 0],
            "discarded_by": [[], ["ann1", "ann2"]],
        }
    ).to_parquet(root / "review" / "annotations.parquet")

    records = crossfit_records(project).set_index("id")
    assert records.loc[discard_id, "role"] == "discarded"  # scored by score, so predicted
    assert pd.isna(records.loc[discard_id, "label"])  # but never trained on
    assert records.loc[relabel_id, "label"] == new
    assert set(records.index[records["role"] == "held"]) == test_ids
    assert (records["role"] == "unlabelled").sum() == 1
    assert records.loc[records["role"] == "unlabelled", "label"].isna().all()
    assert len(records) == len(ingest)


def test_too_few_records_per_label_is_one_line(tmp_path):
    rows = synthetic_rows(40, seed=0)
    rows = [r for r in rows if r["label"] == "pos"] + [r for r in rows if r["label"] == "neg"][:5]
    root = make_project(tmp_path / "p", rows)
    with pytest.raises(ThresherError, match=r"label 'neg' has 5 trainable records.*--folds 3"):
        crossfit(Project.at(root), TuneOptions(), CrossfitOptions(folds=3))
    with pytest.raises(ThresherError, match="--name '../out' is not a valid name"):
        crossfit(Project.at(root), TuneOptions(), CrossfitOptions(folds=2, name="../out"))
    one = make_project(tmp_path / "q", [r for r in rows if r["label"] == "pos"])
    with pytest.raises(ThresherError, match="two or more labels"):
        crossfit(Project.at(one), TuneOptions(), CrossfitOptions(folds=3))


def _recipe(tiny_bert: str) -> TuneOptions:
    return TuneOptions(
        base=tiny_bert, max_steps=90, batch_size=8, max_length=32, lr=5e-3, eval_steps=30,
        eval_batch_size=32, seed=0,
    )  # fmt: skip


@pytest.mark.slow
def test_crossfit_scores_out_of_fold_resumes_and_feeds_the_score_stage(tmp_path, tiny_bert):
    from click.testing import CliRunner

    from thresher.cli import main

    clean = synthetic_rows(150, seed=5)
    noisy = synthetic_rows(150, seed=5, flip=0.15)
    flipped = {r["text"] for r, c in zip(noisy, clean, strict=True) if r["label"] != c["label"]}
    root = make_project(tmp_path / "p", noisy)
    project = Project.at(root)
    build_dataset(project, DataOptions(seed=0))
    opts = CrossfitOptions(folds=3)

    # killed in fold 1, then rerun: fold 0 is reused, the result equals an uninterrupted run's
    class Killed(Exception):
        pass

    def kill_in_fold_1(info):
        if info["fold"] == 1 and info["step"] == 5:
            raise Killed

    with pytest.raises(Killed):
        crossfit(project, _recipe(tiny_bert), opts, progress=kill_in_fold_1)
    fold0 = root / "tune" / ".folds" / "crossfit" / "fold-0" / "manifest.json"
    fold0_stamp = fold0.stat().st_mtime_ns
    result = crossfit(project, _recipe(tiny_bert), opts)
    assert fold0.stat().st_mtime_ns == fold0_stamp  # reused, not retrained
    assert not result.noop and result.folds == 3

    out = pd.read_parquet(root / "tune" / "crossfit" / "predictions.parquet")
    ingest = pd.read_parquet(project.records_path("ingest"))
    assert sorted(out["id"]) == sorted(ingest["id"])  # every record the score stage scores
    assert np.allclose(out[["p_neg", "p_pos"]].sum(axis=1), 1, atol=1e-4)
    oof = out[out["split"] == "oof"]
    assert (out["split"] == "held").sum() == result.averaged > 0
    # out of fold for real: no fold model trained (or early-stopped) on a record it scored
    for k in range(3):
        fold_dir = root / "tune" / ".folds" / "crossfit" / f"fold-{k}"
        seen = set(pd.read_parquet(fold_dir / "train_data.parquet")["id"])
        seen |= set(pd.read_parquet(fold_dir / "predictions.parquet").query("split == 'val'")["id"])
        assert not seen & set(oof["id"][oof["fold"] == k])
    # and informative: records whose label was flipped get a low probability for that label
    text = dict(zip(ingest["id"], ingest["text"], strict=True))
    given = np.where(oof["label"] == "pos", oof["p_pos"], oof["p_neg"])
    is_flip = oof["id"].map(text).isin(flipped).to_numpy()
    assert given[is_flip].mean() < 0.5 < given[~is_flip].mean()

    # a rerun changes nothing; an uninterrupted run from scratch gives the same probabilities
    again = crossfit(project, _recipe(tiny_bert), opts)
    assert again.noop and again.out_of_fold == result.out_of_fold
    fresh = crossfit(project, _recipe(tiny_bert), opts, force=True)
    assert not fresh.noop
    redo = pd.read_parquet(root / "tune" / "crossfit" / "predictions.parquet")
    assert np.allclose(redo["p_pos"], out["p_pos"], atol=1e-5)

    # the CLI: another name, its own folds; --json carries the summary
    res = CliRunner().invoke(
        main,
        ["tune", "crossfit", "-p", str(root), "--folds", "2", "--name", "cf2", "--base", tiny_bert,
         "--max-steps", "6", "--batch-size", "8", "--max-length", "32", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["folds"] == 2 and summary["out_of_fold"] == result.out_of_fold
    assert (root / "tune" / "cf2" / "predictions.parquet").exists()
    assert not (root / "tune" / "cf2" / "metrics.json").exists()  # never a "latest run"

    # the score stage flags label errors from these probabilities
    res = CliRunner().invoke(
        main, ["curate", "score", "-p", str(root), "--probs-from", "crossfit", "--json"]
    )
    assert res.exit_code == 0, res.output
    scored = pd.read_parquet(project.records_path("score"))
    flagged = set(scored["text"][scored["label_issue"].astype(bool)])
    assert len(flagged & flipped) / max(1, len(flagged)) >= 0.6
    assert len(flagged & flipped) / len(flipped) >= 0.5
    summary = json.loads((root / "score" / "manifest.json").read_text())
    assert summary["config"]["probs_from"] == "crossfit"


def test_crossfit_names_leaving_the_tune_folder_are_refused_untouched(tmp_path):
    """`--name ../ingest` would have replaced the project's ingest stage with the cross-fit."""
    from click.testing import CliRunner

    from tests.helpers.names import HOSTILE
    from thresher.cli import main

    root = make_project(tmp_path / "p", synthetic_rows(40, seed=0))
    victim = tmp_path / "abs" / "folder"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("keep")

    def tree():
        return {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    before = tree()
    for name in [*HOSTILE, "../ingest", str(victim)]:
        out = CliRunner().invoke(main, ["tune", "crossfit", "-p", str(root), "--name", name])
        assert out.exit_code == 1 and len(out.output.strip().splitlines()) == 1, (name, out.output)
        assert "--name" in out.output and "is not a valid name" in out.output
    assert tree() == before
