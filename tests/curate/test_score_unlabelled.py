"""The score stage on input without labels: the noise step is skipped and said so, the rest runs."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from curate.ingest import IngestOptions, ingest
from curate.noise import noise_skip_reason
from curate.report import build_report
from curate.score import ScoreOptions, score
from tests.helpers.score_corpus import make_corpus
from thresher.cli import main
from thresher.errors import InputError
from thresher.project import Project

FAST = ScoreOptions(embeddings=False, learners=("nb", "svm"), folds=4, repeats=1)


def _project(tmp_path, labels=None, n=120):
    texts, _, _, _ = make_corpus(n=n, flip=0.0, seed=1)
    rows = [{"text": t, "uid": f"r{i}"} for i, t in enumerate(texts)]
    rows.append({"text": "she was wonderful in a dull film", "uid": "g"})
    rows.append({"text": "zzzz qqqq xxxx wwww", "uid": "odd"})
    if labels:
        for row, lab in zip(rows, labels, strict=False):
            row["label"] = lab
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    project = Project.at(tmp_path / "proj")
    ingest([src], project, IngestOptions(id_col="uid"))
    return project


def test_skip_reason_only_below_two_classes():
    assert noise_skip_reason([None, None]).startswith("label noise skipped: no labels")
    assert "only class 'a'" in noise_skip_reason(["a", None, "a"])
    assert noise_skip_reason(["a", "b", None]) is None


def test_score_unlabelled_skips_noise_keeps_the_rest(tmp_path, caplog):
    project = _project(tmp_path)
    with caplog.at_level("WARNING"):
        result = score(project, FAST)
    assert [r.message for r in caplog.records if "label noise skipped" in r.message]
    assert len(result.skipped) == 1 and result.skipped[0].startswith("label noise skipped")
    assert result.label_issues == 0 and result.labeled == 0 and result.scored == 122
    df = pd.read_parquet(project.records_path("score"))
    assert len(df) == 122
    assert df["label_quality"].isna().all() and not df["label_issue"].any()
    assert df["predicted_label"].isna().all()
    # outliers, near-OOD and bias slices still run
    assert df["outlier_score"].between(0, 1).all()
    by_id = df.set_index("id")
    assert by_id.loc["odd", "outlier_score"] < np.median(df["outlier_score"])
    assert list(by_id.loc["g", "bias_groups"]) == ["gender:female"]
    bias = json.loads((project.stage_dir("score") / "bias.json").read_text())
    slices = {row["slice"]: row for row in bias["slices"]}
    assert slices["gender:female"]["size"] >= 1 and slices["gender:female"]["share"] > 0
    manifest = project.read_manifest("score")
    assert manifest["summary"]["skipped"] == result.skipped
    assert manifest["scoring"]["label noise"].startswith("skipped")
    html = (project.stage_dir("score") / "report.html").read_text()
    assert "Skipped" in html and "label noise skipped" in html
    # the report rebuilt from the folder says it too
    build_report(project)
    assert "label noise skipped" in (project.stage_dir("score") / "report.html").read_text()


def test_score_one_class_skips_noise(tmp_path):
    project = _project(tmp_path, labels=["pos"] * 10)
    result = score(project, FAST)
    assert "only class 'pos'" in result.skipped[0]
    assert result.labeled == 10


def test_labelled_input_skips_nothing(tmp_path):
    project = _project(tmp_path, labels=["pos", "neg"] * 61)
    assert score(project, FAST).skipped == []


def test_score_cli_json_unlabelled(tmp_path):
    project = _project(tmp_path)
    res = CliRunner().invoke(
        main,
        ["curate", "score", "-p", str(project.root), "--no-embeddings", "--folds", "4", "--json"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["skipped"] and out["skipped"][0].startswith("label noise skipped")


def test_stream_engine_unlabelled_says_use_local(tmp_path):
    project = _project(tmp_path)
    with pytest.raises(InputError, match="--engine local"):
        score(project, ScoreOptions(embeddings=False, engine="stream", batch_size=50))
