import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from curate.ingest import IngestOptions, ingest
from curate.score import ScoreOptions, score
from tests.helpers.score_corpus import make_corpus
from thresher.cli import main
from thresher.errors import InputError, InvalidNameError, StageMissingError
from thresher.project import Project

FAST = ScoreOptions(embeddings=False, learners=("nb", "svm"), folds=4, repeats=1)
SCRIPT = '<script>alert("x")</script> <b>bold</b> she was great'
COLUMNS = {
    "label_quality",
    "label_issue",
    "predicted_label",
    "predicted_prob",
    "outlier_score",
    "near_ood",
    "bias_groups",
}


def _project(tmp_path, n=300, flip=0.1, seed=0, extra=()):
    texts, labels, _, flipped = make_corpus(n=n, flip=flip, seed=seed)
    rows = [
        {"text": t, "label": lab, "uid": f"r{i}"}
        for i, (t, lab) in enumerate(zip(texts, labels, strict=True))
    ]
    rows += list(extra)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    project = Project.at(tmp_path / "proj")
    ingest([src], project, IngestOptions(id_col="uid"))
    return project, flipped


def test_score_stage_outputs(tmp_path):
    extra = [
        {"text": SCRIPT, "label": "pos", "uid": "xss"},
        {"text": "unlabeled great superb", "uid": "u1"},
    ]
    project, flipped = _project(tmp_path, extra=extra)
    result = score(project, FAST)
    df = pd.read_parquet(project.records_path("score"))
    assert COLUMNS <= set(df.columns) and len(df) == 302
    assert df["label_quality"].dropna().between(0, 1).all()
    assert df["outlier_score"].between(0, 1).all() and df["predicted_prob"].between(0, 1).all()
    assert df["label_issue"].dtype == bool and df["near_ood"].dtype == bool
    unl = df[df["id"] == "u1"].iloc[0]
    assert (
        np.isnan(unl["label_quality"])
        and not unl["label_issue"]
        and unl["predicted_label"] == "pos"
    )
    assert list(df[df["id"] == "xss"].iloc[0]["bias_groups"]) == ["gender:female"]
    # Planted noise found through the whole stage.
    by_id = df.set_index("id")
    issue = by_id.loc[[f"r{i}" for i in range(300)], "label_issue"].to_numpy()
    precision = (issue & flipped).sum() / max(issue.sum(), 1)
    recall = (issue & flipped).sum() / flipped.sum()
    assert precision >= 0.75 and recall >= 0.75, (precision, recall)
    assert result.label_issues == int(df["label_issue"].sum())
    bias = json.loads((project.stage_dir("score") / "bias.json").read_text())
    assert {"groups", "terms", "data_driven_terms", "slices"} <= set(bias)
    manifest = project.read_manifest("score")
    assert manifest["classes"] == ["neg", "pos"]
    probs = np.stack(df["pred_probs"].to_numpy())
    assert np.allclose(probs.sum(axis=1), 1) and np.allclose(
        probs.max(axis=1), df["predicted_prob"]
    )
    assert manifest["seed"] == 0 and manifest["counts"]["scored"] == 302


def test_report_is_self_contained_and_escaped(tmp_path):
    project, _ = _project(
        tmp_path, n=200, flip=0.15, extra=[{"text": SCRIPT, "label": "neg", "uid": "xss"}]
    )
    score(project, FAST)
    html = (project.stage_dir("score") / "report.html").read_text()
    for section in ("summary", "labels", "label-quality", "issues", "duplicates", "bias", "map"):
        assert f'id="{section}"' in html
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") >= 4
    # `curate report` rebuilds it from the folder.
    (project.stage_dir("score") / "report.html").unlink()
    out = CliRunner().invoke(main, ["curate", "report", "-p", str(project.root), "--json"])
    assert out.exit_code == 0, out.output
    assert 'id="bias"' in (project.stage_dir("score") / "report.html").read_text()


def test_rerun_is_noop_and_force_redoes(tmp_path):
    project, _ = _project(tmp_path, n=120)
    score(project, FAST)
    assert score(project, FAST).noop
    assert not score(project, FAST, force=True).noop
    assert not score(
        project, ScoreOptions(embeddings=False, learners=("nb",), folds=4, repeats=1)
    ).noop


def test_dedup_input_scores_representatives_and_carries_clusters(tmp_path):
    project, _ = _project(tmp_path, n=200, flip=0.0)
    df = pd.read_parquet(project.records_path("ingest"))
    # Fake dedup output: record 1 duplicates record 0 with a conflicting label.
    dup = df.iloc[[0]].copy()
    dup["id"] = "dup-of-0"
    dup["label"] = "neg" if df.iloc[0]["label"] == "pos" else "pos"
    df = pd.concat([df, dup], ignore_index=True)
    df["dup_cluster"] = pd.array([0] + [None] * (len(df) - 2) + [0], dtype="Int64")
    df["dup_kind"] = ["exact"] + [None] * (len(df) - 2) + ["exact"]
    df["is_representative"] = [True] * (len(df) - 1) + [False]
    df["label_conflict"] = [True] + [False] * (len(df) - 2) + [True]
    project.stage_dir("dedup").mkdir()
    df.to_parquet(project.records_path("dedup"))
    result = score(project, FAST)
    out = pd.read_parquet(project.records_path("score")).set_index("id")
    assert result.scored == len(df) - 1 and result.records == len(df)
    rep, member = out.loc[df.iloc[0]["id"]], out.loc["dup-of-0"]
    assert member["dup_cluster"] == 0 and member["predicted_label"] == rep["predicted_label"]
    assert member["label_issue"] and member["label_quality"] < 0.5 and not rep["label_issue"]
    html = (project.stage_dir("score") / "report.html").read_text()
    assert "1 with members that disagree" in html


def test_fast_mode_replaces_emb_with_nb():
    from curate.score import resolve_learners

    assert resolve_learners(("emb", "svm"), embeddings=False) == ("nb", "svm")
    assert resolve_learners(("emb", "svm"), embeddings=True) == ("emb", "svm")
    assert resolve_learners(("nb", "emb"), embeddings=False) == ("nb",)


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(StageMissingError, match="curate ingest"):
        score(Project.at(tmp_path / "empty"), FAST)


def test_cli_score_fast_mode(tmp_path):
    project, _ = _project(tmp_path, n=150)
    args = ["curate", "score", "-p", str(project.root), "--no-embeddings", "--folds", "3", "--json"]
    out = CliRunner().invoke(main, [*args, "--learners", "nb,svm"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert (
        summary["folds"] == 3
        and summary["learners"] == ["nb", "svm"]
        and summary["label_issues"] > 0
    )
    out = CliRunner().invoke(
        main, ["curate", "score", "-p", str(project.root), "--no-embeddings", "--learners", "bogus"]
    )
    assert out.exit_code == 1 and "score.learners = 'bogus' (from flag --learners)" in out.output
    out = CliRunner().invoke(main, [*args, "--learners", "nb,svm", "--class-prior", "pos=1"])
    assert out.exit_code == 1 and "class prior 'pos=1'" in out.output
    assert len(out.output.strip().splitlines()) == 1
    out = CliRunner().invoke(main, [*args, "--learners", "nb,svm", "--class-prior", "uniform"])
    assert out.exit_code == 0, out.output
    manifest = json.loads((project.root / "score" / "manifest.json").read_text())
    assert manifest["config"]["class_prior"] == "uniform"


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    project, _ = _project(tmp_path, n=200, flip=0.15)
    score(project, FAST)
    shot = tmp_path / "shot.png"
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1280,2400",
        f"--screenshot={shot}",
    ]  # fmt: skip
    report = project.stage_dir("score") / "report.html"
    subprocess.run([browser, *flags, report.as_uri()], check=True, timeout=120, capture_output=True)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.std() > 10  # not blank
    dom = subprocess.run(
        [browser, *flags[:-1], "--dump-dom", report.as_uri()],
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    ).stdout
    for title in (
        "Label quality",
        "Top suspected label errors",
        "Bias: identity groups",
        "Embedding map",
    ):
        assert title in dom


@pytest.mark.parametrize("engine", ["local", "stream"])
def test_multiannotator_labels_from_review_are_scored(tmp_path, engine):
    from dataclasses import replace

    project, _ = _project(tmp_path, n=120, flip=0.0)
    df = pd.read_parquet(project.records_path("ingest"))
    rows = df.head(30)
    other = {"pos": "neg", "neg": "pos"}
    ann = pd.DataFrame(
        {
            "id": rows["id"],
            "annotator_labels": [
                json.dumps({"ann1": lab, "ann2": lab, "bad": other[lab] if i % 2 else lab})
                for i, lab in enumerate(rows["label"])
            ],
        }
    )
    (project.root / "review").mkdir()
    ann.to_parquet(project.root / "review" / "annotations.parquet")
    score(project, replace(FAST, engine=engine, batch_size=50))
    out = pd.read_parquet(project.records_path("score")).set_index("id")
    scored = out.loc[rows["id"]]
    assert (scored["consensus_label"] == rows.set_index("id")["label"]).all()
    assert scored["consensus_quality"].between(0, 1).all()
    assert out["consensus_label"].isna().sum() == len(out) - 30
    quality = json.loads((project.stage_dir("score") / "annotators.json").read_text())
    assert quality["annotator_quality"]["bad"] < quality["annotator_quality"]["ann1"]


def test_probs_from_tune_run_hook(tmp_path):
    texts, labels, true, flipped = make_corpus(n=150, flip=0.1, seed=4)
    project, _ = _project(tmp_path, n=150, flip=0.1, seed=4)
    ids = pd.read_parquet(project.records_path("ingest"))["id"]
    run_dir = project.root / "tune" / "run1"
    run_dir.mkdir(parents=True)
    good = np.array([t == "pos" for t in true])
    pd.DataFrame(
        {"id": ids, "prob_neg": np.where(good, 0.1, 0.9), "prob_pos": np.where(good, 0.9, 0.1)}
    ).to_parquet(run_dir / "predictions.parquet")
    opts = ScoreOptions(embeddings=False, learners=("nb",), repeats=1, probs_from="run1")
    result = score(project, opts)
    assert result.learners == ["external"]
    out = pd.read_parquet(project.records_path("score"))
    assert (out["label_issue"].to_numpy() == flipped).all()
    with pytest.raises(InputError, match="not found"):
        score(project, ScoreOptions(embeddings=False, probs_from="nope"), force=True)
    for name in ("../ingest", "/abs/run", ".."):  # a run name stays under DIR/tune
        with pytest.raises(InvalidNameError, match="--probs-from"):
            score(project, ScoreOptions(embeddings=False, probs_from=name), force=True)
    # The shape `thresher tune predict --out` writes: p_<label> columns, in a file.
    predict_out = tmp_path / "preds.parquet"
    pd.DataFrame(
        {"id": ids, "p_neg": np.where(good, 0.2, 0.8), "p_pos": np.where(good, 0.8, 0.2)}
    ).to_parquet(predict_out)
    opts = ScoreOptions(embeddings=False, learners=("nb",), repeats=1, probs_from=str(predict_out))
    score(project, opts, force=True)
    out = pd.read_parquet(project.records_path("score"))
    assert (out["label_issue"].to_numpy() == flipped).all()


@pytest.mark.parametrize("engine", ["local", "stream"])
def test_tune_test_labels_never_train_the_noise_models(tmp_path, engine):
    """Once tune has made its split, the test records' labels are scored but never learned
    from: changing them leaves every prediction as it was (and rescoring is not a no-op)."""
    from dataclasses import replace

    opts = replace(FAST, engine=engine)
    project, _ = _project(tmp_path)
    records = pd.read_parquet(project.records_path("ingest"))
    test_ids = records["id"].iloc[::5].astype(str).tolist()
    split = pd.DataFrame(
        {
            "id": records["id"].astype(str),
            "group": "g",
            "split": np.where(records["id"].isin(test_ids), "test", "train"),
        }
    )
    (project.root / "tune").mkdir()
    split.to_parquet(project.root / "tune" / "split.parquet", index=False)
    first = score(project, opts)
    assert not first.noop
    before = pd.read_parquet(project.records_path("score")).set_index("id")

    flipped = records.assign(
        label=np.where(
            records["id"].isin(test_ids),
            records["label"].map({"pos": "neg", "neg": "pos"}),
            records["label"],
        )
    )
    flipped.to_parquet(project.records_path("ingest"), index=False)
    score(project, opts, force=True)
    after = pd.read_parquet(project.records_path("score")).set_index("id").loc[before.index]
    assert np.allclose(after["predicted_prob"], before["predicted_prob"])
    assert (after["predicted_label"] == before["predicted_label"]).all()
    held = before.index.isin(test_ids)
    # ...while the flipped test labels themselves are judged against those predictions
    assert (after["label_quality"][held] != before["label_quality"][held]).mean() > 0.9
    assert after["label_issue"][held].mean() > before["label_issue"][held].mean()
