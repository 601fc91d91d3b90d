"""The streaming score engines: exact sufficient statistics, order-independent folds, planted
noise, and the same outputs/contract as the in-memory engine."""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from curate import noise_stream as ns
from curate.ingest import IngestOptions, ingest
from curate.score import ScoreOptions, resolve_engine, score
from tests.helpers.score_corpus import make_corpus
from thresher.cli import main
from thresher.errors import InputError
from thresher.project import Project

STREAM = ScoreOptions(embeddings=False, learners=("nb", "svm"), folds=4, repeats=1,
                      engine="stream", batch_size=50)  # fmt: skip
LOCAL = ScoreOptions(embeddings=False, learners=("nb", "svm"), folds=4, repeats=1, engine="local")
F = 2**12  # small hashed space for the pure-function tests


def _write_project(tmp_path, rows, name="proj"):
    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    project = Project.at(tmp_path / name)
    ingest([src], project, IngestOptions(id_col="uid"))
    return project


def _rows(n=300, flip=0.1, seed=0):
    texts, labels, _, flipped = make_corpus(n=n, flip=flip, seed=seed)
    rows = [
        {"text": t, "label": lab, "uid": f"r{i}"}
        for i, (t, lab) in enumerate(zip(texts, labels, strict=True))
    ]
    return rows, flipped


def _stream_scores(texts, y, fold, batch, folds=5, k=2, alphas=ns.ALPHAS):
    stats = ns.NBStats.zeros(folds, k, 2 * F)
    for i in range(0, len(texts), batch):
        X = ns.featurize(texts[i : i + batch], F)
        stats.add(ns.batch_counts(X, y[i : i + batch], fold[i : i + batch], folds, k))
    model = ns.NBModel.from_stats(stats, alphas)
    parts = [
        model.scores(ns.featurize(texts[i : i + batch], F), fold[i : i + batch])
        for i in range(0, len(texts), batch)
    ]
    return stats, model, np.concatenate(parts)


def test_streamed_statistics_are_exact_whatever_the_batch_size():
    from sklearn.naive_bayes import MultinomialNB

    rows, _ = _rows(n=400)
    texts = [r["text"] for r in rows]
    y = np.array([0 if r["label"] == "neg" else 1 for r in rows])
    fold = ns.fold_ids([r["uid"] for r in rows], 5)
    s7, m7, sc7 = _stream_scores(texts, y, fold, batch=7)
    s1k, _, sc1k = _stream_scores(texts, y, fold, batch=1000)
    assert np.allclose(s7.counts, s1k.counts, rtol=1e-12, atol=1e-12)
    assert (s7.docs == s1k.docs).all()
    assert np.allclose(sc7, sc1k, rtol=1e-10, atol=1e-10)
    p7 = ns.calibrate(sc7, y).probs
    p1k = ns.calibrate(sc1k, y).probs
    assert np.allclose(p7, p1k, atol=1e-8)
    # Fold f's model (total - fold f) is exactly a naive Bayes fitted on the other folds alone.
    X = ns.featurize(texts, F)
    for f in range(5):
        train, test = fold != f, np.flatnonzero(fold == f)
        for a, alpha in enumerate(m7.alphas):
            nb = MultinomialNB(alpha=alpha).fit(X[train], y[train])
            expected = X[test] @ nb.feature_log_prob_.T + m7.log_prior(f)
            assert np.allclose(sc7[test, a, :], expected, rtol=1e-9, atol=1e-9)


def test_char_ngrams_match_scikit_learn_char_wb_counts():
    from sklearn.feature_extraction.text import CountVectorizer

    texts = ["The film was great!", "  dull,  DULL   plot ", "a", "", "über café naïve"]
    ours = ns.char_ngrams(texts, 2**20)
    sk = CountVectorizer(analyzer="char_wb", ngram_range=(2, 5)).fit_transform(texts)
    for i in range(len(texts)):  # the same n-gram counts per text (hashing collisions aside)
        assert sorted(ours[i].data) == sorted(sk[i].data), texts[i]
    # Stateless: a text gives the same row alone or inside any batch.
    alone = ns.featurize(["The film was great!"], F).toarray()
    batched = ns.featurize(["x y", "The film was great!", "zzz"], F)[1].toarray()
    assert np.array_equal(alone, batched)


def test_folds_are_stable_and_balanced():
    ids = [f"id{i}" for i in range(5000)]
    fold = ns.fold_ids(ids, 5, seed=0)
    assert (fold == ns.fold_ids(list(reversed(ids)), 5, seed=0)[::-1]).all()
    assert np.bincount(fold, minlength=5).min() > 900
    assert not (fold == ns.fold_ids(ids, 5, seed=1)).all()


def test_stream_engine_finds_planted_noise(tmp_path):
    rows, flipped = _rows(n=600)
    rows.append({"text": "unlabeled she was great and superb", "uid": "u1"})
    project = _write_project(tmp_path, rows)
    result = score(project, STREAM)
    assert result.engine == "stream" and result.learners == [ns.LEARNER]
    df = pd.read_parquet(project.records_path("score")).set_index("id")
    issue = df.loc[[f"r{i}" for i in range(600)], "label_issue"].to_numpy()
    precision = (issue & flipped).sum() / max(issue.sum(), 1)
    recall = (issue & flipped).sum() / flipped.sum()
    assert precision >= 0.85 and recall >= 0.65, (precision, recall)
    unl = df.loc["u1"]
    assert np.isnan(unl["label_quality"]) and not unl["label_issue"]
    assert unl["predicted_label"] == "pos" and list(unl["bias_groups"]) == ["gender:female"]
    assert df["outlier_score"].isna().all() and df["near_ood"].isna().all()
    probs = np.stack(df["pred_probs"].to_numpy())
    assert np.allclose(probs.sum(axis=1), 1)
    assert np.allclose(probs.max(axis=1), df["predicted_prob"])
    manifest = project.read_manifest("score")
    assert manifest["config"]["engine"] == "stream" and manifest["scoring"]["engine"] == "stream"
    assert manifest["classes"] == ["neg", "pos"] and manifest["counts"]["scored"] == 601
    html = (project.stage_dir("score") / "report.html").read_text()
    worst = df[df["label_issue"]].sort_values("label_quality").iloc[0]
    assert worst["text"] in html and 'id="bias"' in html
    assert score(project, STREAM).noop


def test_input_order_does_not_change_scores(tmp_path):
    rows, _ = _rows(n=300, seed=2)
    by_class = sorted(rows, key=lambda r: r["label"])  # input files are often sorted by class
    rng = np.random.default_rng(0)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    outs = []
    for name, data in (("sorted", by_class), ("shuffled", shuffled)):
        project = _write_project(tmp_path, data, name)
        score(project, STREAM)
        outs.append(pd.read_parquet(project.records_path("score")).set_index("id").sort_index())
    a, b = outs
    assert np.allclose(a["label_quality"], b["label_quality"], atol=1e-8)
    assert (a["label_issue"] == b["label_issue"]).all()


def test_stream_and_local_engines_write_the_same_columns_via_cli(tmp_path):
    rows, _ = _rows(n=200)
    project = _write_project(tmp_path, rows)
    schemas, bias = {}, {}
    for engine in ("local", "stream"):
        args = ["curate", "score", "-p", str(project.root), "--no-embeddings", "--folds", "4"]
        out = CliRunner().invoke(main, [*args, "--engine", engine, "--json"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.output)["engine"] == engine
        schemas[engine] = pq.read_schema(project.records_path("score"))
        bias[engine] = json.loads((project.stage_dir("score") / "bias.json").read_text())
    local, stream = schemas["local"], schemas["stream"]
    assert local.names == stream.names
    for name in local.names:  # pandas round-trips strings as large_string; same logical type
        assert str(local.field(name).type).replace("large_", "") == str(
            stream.field(name).type
        ).replace("large_", ""), name
    # Group/term associations and data-driven terms depend on texts and labels only: identical.
    for key in ("groups", "terms", "data_driven_terms"):
        assert bias["local"][key] == bias["stream"][key], key


def test_both_engines_report_the_same_outputs_and_manifest_fields(tmp_path):
    """One writer (curate.score_outputs) reports for both engines: the same files (the map is
    the local engine's alone), manifest keys, counts, summary fields and annotator qualities."""
    rows, _ = _rows(n=120)
    project = _write_project(tmp_path, rows)
    ann = pd.DataFrame(
        {"id": [r["uid"] for r in rows[:20]],
         "annotator_labels": [json.dumps({"a": r["label"], "b": r["label"]}) for r in rows[:20]]}
    )  # fmt: skip
    (project.root / "review").mkdir()
    ann.to_parquet(project.root / "review" / "annotations.parquet")
    seen = {}
    for opts in (LOCAL, STREAM):
        result = score(project, opts)
        folder = project.stage_dir("score")
        manifest = json.loads((folder / "manifest.json").read_text())
        annotators = json.loads((folder / "annotators.json").read_text())
        seen[opts.engine] = (
            sorted(p.name for p in folder.iterdir() if p.name != "map.parquet"),
            sorted(manifest), manifest["counts"], manifest["summary"], sorted(annotators),
        )  # fmt: skip
        assert manifest["summary"]["engine"] == result.engine == opts.engine
        assert manifest["counts"]["rows_in"] == result.records == len(rows)
        assert (folder / "map.parquet").exists() == (opts.engine == "local")
    (files_l, keys_l, counts_l, summary_l, ann_l) = seen["local"]
    (files_s, keys_s, counts_s, summary_s, ann_s) = seen["stream"]
    assert files_l == files_s and "annotators.json" in files_l and "report.html" in files_l
    assert keys_l == keys_s and ann_l == ann_s == ["annotator_quality"]
    assert list(counts_l) == list(counts_s) and list(summary_l) == list(summary_s)


def test_degenerate_inputs_match_the_local_engine(tmp_path):
    one_class = [{"text": f"text {i}", "label": "pos", "uid": f"a{i}"} for i in range(20)]
    project = _write_project(tmp_path, one_class, "one")
    # one class: the local engine scores without the noise step and says so; the stream
    # engine's passes need two classes, so it asks for the local engine
    result = score(project, LOCAL)
    assert result.skipped and "label noise" in result.skipped[0]
    with pytest.raises(InputError, match="--engine local"):
        score(project, STREAM)
    tiny = [{"text": f"good text {i}", "label": "pos", "uid": f"b{i}"} for i in range(20)]
    tiny.append({"text": "bad", "label": "neg", "uid": "b-neg"})
    project = _write_project(tmp_path, tiny, "tiny")
    for opts in (LOCAL, STREAM):
        with pytest.raises(InputError, match="at least 2 labeled records"):
            score(project, opts)
    with pytest.raises(InputError, match="local engine"):
        score(project, ScoreOptions(engine="stream", probs_from="run1"))


def test_dedup_members_carry_their_representative(tmp_path):
    rows, _ = _rows(n=200, flip=0.0)
    project = _write_project(tmp_path, rows)
    df = pd.read_parquet(project.records_path("ingest"))
    dup = df.iloc[[0]].copy()
    dup["id"] = "dup-of-0"
    dup["label"] = "neg" if df.iloc[0]["label"] == "pos" else "pos"
    df = pd.concat([df, dup], ignore_index=True)
    df["dup_cluster"] = pd.array([0] + [None] * (len(df) - 2) + [0], dtype="Int64")
    df["is_representative"] = [True] * (len(df) - 1) + [False]
    df["label_conflict"] = [True] + [False] * (len(df) - 2) + [True]
    project.stage_dir("dedup").mkdir()
    df.to_parquet(project.records_path("dedup"))
    result = score(project, STREAM)
    out = pd.read_parquet(project.records_path("score")).set_index("id")
    assert result.scored == len(df) - 1 and result.records == len(df)
    rep, member = out.loc[df.iloc[0]["id"]], out.loc["dup-of-0"]
    assert member["predicted_label"] == rep["predicted_label"]
    assert member["label_issue"] and member["label_quality"] < 0.5 and not rep["label_issue"]
    html = (project.stage_dir("score") / "report.html").read_text()
    assert "1 with members that disagree" in html


def test_auto_engine_switches_on_size():
    assert resolve_engine(ScoreOptions(stream_above=100), 100) == "local"
    assert resolve_engine(ScoreOptions(stream_above=100), 101) == "stream"
    assert resolve_engine(ScoreOptions(engine="ray"), 5) == "ray"
    with pytest.raises(InputError, match="engine"):
        resolve_engine(ScoreOptions(engine="spark"), 5)


def test_word_counts_stay_bounded():
    from curate.bias import merge_word_counts

    into: dict = {}
    for i in range(50):
        merge_word_counts(into, {"pos": Counter({f"w{i}": 1, "common": 1})}, cap=10)
    vocab = set(into["pos"])
    assert len(vocab) <= 20 and "common" in vocab and into["pos"]["common"] == 50


@pytest.mark.slow
def test_ray_engine_gives_the_same_scores_as_stream(tmp_path):
    ray = pytest.importorskip("ray")
    rows, _ = _rows(n=240, seed=3)
    project = _write_project(tmp_path, rows)
    score(project, STREAM)
    stream = pd.read_parquet(project.records_path("score")).set_index("id")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = score(project, ScoreOptions(**{**STREAM.__dict__, "engine": "ray"}))
    finally:
        ray.shutdown()
    assert result.engine == "ray"
    out = pd.read_parquet(project.records_path("score")).set_index("id").loc[stream.index]
    assert np.allclose(out["label_quality"], stream["label_quality"], atol=1e-9)
    assert (out["label_issue"] == stream["label_issue"]).all()


def test_bad_class_prior_fails_before_the_passes_with_the_local_message(tmp_path, monkeypatch):
    from dataclasses import replace

    from curate import score_stream as ss

    rows, _ = _rows(n=120)
    project = _write_project(tmp_path, rows)
    messages = []
    for opts in (LOCAL, STREAM):
        monkeypatch.setattr(ss.LocalRunner, "pass1", lambda self: pytest.fail("pass 1 ran"))
        with pytest.raises(InputError, match="class prior") as err:
            score(project, replace(opts, class_prior="nosuchlabel=1"))
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_stream_engine_with_embeddings_gives_the_local_engines_outlier_scores(tmp_path):
    """With embeddings the stream engine embeds the representatives into a float16 file and
    scores outliers as the in-memory engine does: same scores (float16 rounding aside), and
    planted off-topic texts flagged near-OOD by both."""
    rows, _ = _rows(n=240, seed=3)
    planted = [
        "SELECT * FROM users WHERE id = 42; DROP TABLE accounts;",
        "Preheat the oven to 220 C and knead the dough for ten minutes.",
        "The quarterly VAT return is due on the seventh of the second month.",
    ]
    rows += [{"text": t, "label": "pos", "uid": f"ood{i}"} for i, t in enumerate(planted)]
    project = _write_project(tmp_path, rows)
    frames = {}
    for engine in ("local", "stream"):
        opts = ScoreOptions(embeddings=True, learners=("nb", "svm"), folds=4, repeats=1,
                            engine=engine, batch_size=64)  # fmt: skip
        result = score(project, opts)
        assert result.engine == engine
        frames[engine] = pd.read_parquet(project.records_path("score")).set_index("id").sort_index()
        assert not (project.stage_dir("score") / "embeddings.f16.npy").exists()
    local, stream = frames["local"], frames["stream"]
    assert stream["outlier_score"].notna().all()
    np.testing.assert_allclose(stream["outlier_score"], local["outlier_score"], atol=5e-3)
    assert (stream["near_ood"] == local["near_ood"]).mean() >= 0.98
    ood = [f"ood{i}" for i in range(len(planted))]
    assert stream.loc[ood, "near_ood"].all() and local.loc[ood, "near_ood"].all()
    assert stream["near_ood"].sum() < 0.2 * len(stream)
    manifest = project.read_manifest("score")
    assert manifest["counts"]["near_ood"] == int(stream["near_ood"].sum())
