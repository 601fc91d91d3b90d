"""``thresher monitor`` end to end on a small project: a run folder written by hand (the honest
minimal input: config.json, train_data.parquet, predictions.parquet) and traffic written with
``thresher.traffic.write_traffic_file``, one day per scenario, with the real MiniLM embeddings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from loop.monitor_slices import slice_shifts
from loop.traffic_round import monitor_flags
from tests.loop.conftest import planted_corpus
from thresher.assets import write_demo_corpus
from thresher.bias_terms import mentions
from thresher.cli import main
from thresher.project import Project
from thresher.records import text_id
from thresher.traffic import read_traffic, write_traffic_file

RUN = "run1"
LABELS = ["fresh", "rotten"]
DAY = datetime(2026, 12, 1, tzinfo=UTC)
N = 60  # texts per traffic window


def _served(rng, gold, confident=True):
    """What a served model answers: its label and probabilities (confident ones mostly right)."""
    if confident:
        prob = rng.beta(8, 2, size=len(gold)).clip(0.5, 1.0)
        labels = list(gold)
    else:
        prob = 0.5 + 0.3 * rng.beta(2, 3, size=len(gold))
        labels = list(rng.choice(LABELS, size=len(gold)))
    probs = [
        {lab: float(p if lab == y else 1 - p) for lab in LABELS}
        for y, p in zip(labels, prob, strict=True)
    ]
    return labels, prob, probs


def _write_run(project: Project, train, held, rng) -> None:
    run_dir = project.stage_dir("tune") / RUN
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"run": RUN, "labels": LABELS}))
    train.assign(id=[text_id(t) for t in train["text"]]).to_parquet(
        run_dir / "train_data.parquet", index=False
    )
    labels, prob, probs = _served(rng, held["label"])
    pd.DataFrame(
        {
            "id": [text_id(t) for t in held["text"]],
            "text": held["text"],
            "split": ["val", "test"] * (len(held) // 2),
            "gold": held["label"],
            "predicted": labels,
            "prob": prob,
            "probs": [np.array([p[x] for x in LABELS], "float32") for p in probs],
        }
    ).to_parquet(run_dir / "predictions.parquet", index=False)


def _write_traffic(project: Project, day: datetime, texts, gold, rng, confident, log_text=True):
    labels, prob, probs = _served(rng, gold, confident)
    rows = [
        {
            "time": day + timedelta(minutes=i),
            "request_id": f"r{day:%d}-{i}",
            "model": RUN,
            "text_hash": text_id(t),
            "text": t if log_text else None,
            "label": y,
            "prob": float(p),
            "probs": list(ps.items()),
        }
        for i, (t, y, p, ps) in enumerate(zip(texts, labels, prob, probs, strict=True))
    ]
    write_traffic_file(project.traffic_dir, rows)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Day 1: held-out reviews (in distribution); day 2: other texts, answered with low
    confidence (shifted); day 3: the shifted texts again, logged without text; day 4: half
    held-out reviews, half the other texts (a partly shifted window)."""
    root = tmp_path_factory.mktemp("monitor")
    demo = pd.read_csv(write_demo_corpus(root / "rt.csv")).sample(n=220, random_state=0)
    demo = demo.reset_index(drop=True)[["text", "label"]]
    train, held, same = demo[:100], demo[100:160], demo[160:220]
    project = Project.at(root / "proj")
    rng = np.random.default_rng(0)
    _write_run(project, train, held, rng)
    _write_traffic(project, DAY, same["text"].tolist(), same["label"], rng, True)
    other, _ = planted_corpus(n=N, seed=1)
    gold = list(rng.choice(LABELS, size=N))
    _write_traffic(project, DAY + timedelta(days=1), other, gold, rng, False)
    _write_traffic(project, DAY + timedelta(days=2), other, gold, rng, False, log_text=False)
    half = N // 2
    mixed = same["text"].tolist()[:half] + other[:half]
    _write_traffic(project, DAY + timedelta(days=3), mixed, gold, rng, True)
    return project


def _monitor(project: Project, day: int, *extra: str):
    since = DAY + timedelta(days=day)
    args = ["monitor", "-p", str(project.root), "--json", "--min-n", "30"]
    args += [
        "--since",
        f"{since:%Y-%m-%dT%H:%MZ}",
        "--until",
        f"{since + timedelta(days=1):%Y-%m-%d}",
    ]
    result = CliRunner().invoke(main, args + list(extra))
    summary = json.loads(result.output) if result.exit_code in (0, 3) else None
    return result, summary


def test_in_distribution_traffic_is_quiet(project):
    result, summary = _monitor(project, 0)
    assert result.exit_code == 0, result.output
    assert summary["drift"] is False and summary["n"] == N
    assert set(summary["tests"]) == {"embedding", "label_distribution", "confidence", "near_ood"}
    assert all(t["p_value"] > summary["threshold"] for t in summary["tests"].values())
    assert summary["threshold"] == pytest.approx(0.05 / 4)


def test_shifted_traffic_exits_3_and_writes_the_report(project):
    result, summary = _monitor(project, 1)
    assert result.exit_code == 3, result.output
    assert summary["drift"] is True
    tests = summary["tests"]
    assert tests["embedding"]["drift"] and tests["near_ood"]["drift"]
    assert tests["confidence"]["drift"]
    assert {"statistic", "p_value", "drift"} <= set(tests["embedding"])
    html_path = project.root / summary["report"].split(str(project.root) + "/")[1]
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") >= 4
    assert "http" not in page.replace("http-equiv", "")
    stored = json.loads((html_path.parent / "report.json").read_text())
    assert stored["drift"] is True and stored["tests"].keys() == tests.keys()


def test_traffic_without_text_runs_the_label_and_confidence_tests(project):
    result, summary = _monitor(project, 2)
    assert result.exit_code == 3, result.output
    assert set(summary["tests"]) == {"label_distribution", "confidence"}
    assert summary["threshold"] == pytest.approx(0.05 / 2)
    assert any("--no-log-text" in note for note in summary["notes"])


def test_since_until_select_the_window(project):
    # The whole log (four days) holds 4 * N texts.
    result = CliRunner().invoke(main, ["monitor", "-p", str(project.root), "--json"])
    assert json.loads(result.output)["n"] == 4 * N
    _, summary = _monitor(project, 0)
    assert summary["n"] == N
    assert summary["window"]["since"] == "2026-12-01T00:00:00Z"


def test_too_little_traffic_gives_no_decision(project):
    result, summary = _monitor(project, 1, "--min-n", "500")
    assert result.exit_code == 0, result.output
    assert summary["drift"] is False and summary["tests"] == {}
    assert any("no decision" in note for note in summary["notes"])


def test_no_traffic_in_the_window_is_a_user_error(project):
    result = CliRunner().invoke(main, ["monitor", "-p", str(project.root), "--since", "2027-01-01"])
    assert result.exit_code == 1
    assert str(project.traffic_dir) in result.output
    assert "thresher serve" in result.output and "--since/--until" in result.output
    bad = CliRunner().invoke(main, ["monitor", "-p", str(project.root), "--since", "yesterday"])
    assert bad.exit_code == 1 and "ISO 8601" in bad.output


def test_slice_mention_shift_reads_the_score_stage(tmp_path):
    project = Project.at(tmp_path)
    score = project.stage_dir("score")
    score.mkdir(parents=True)
    groups = [{"name": "gender:female"}, {"name": "gender:male"}]
    (score / "bias.json").write_text(json.dumps({"groups": groups}))
    reference = [["gender:female"]] * 10 + [["gender:male"]] * 10 + [[]] * 180
    pd.DataFrame({"bias_groups": reference}).to_parquet(project.records_path("score"))
    traffic = ["She said her film was fine."] * 60 + ["A film about a man."] * 10 + ["ok"] * 30
    rows, notes = slice_shifts(project, traffic, alpha=0.05)
    by_slice = {r["slice"]: r for r in rows}
    assert notes == []
    assert by_slice["gender:female"]["shifted"] and by_slice["gender:female"]["statistic"] > 0
    assert not by_slice["gender:male"]["shifted"]
    assert by_slice["gender:male"]["threshold"] == pytest.approx(0.025)


def test_mentions_follow_the_word_boundary_rules():
    terms = ["man", "muslim*", "african american"]
    texts = ["A manual", "Muslims pray", "an African  American poet", "the man,", "non-man"]
    assert mentions(texts, terms) == [False, True, True, True, False]


def _records(summary) -> pd.DataFrame:
    return pq.read_table(summary["records"]).to_pandas()


def test_records_flag_the_out_of_domain_texts_of_a_shifted_window(project):
    result, summary = _monitor(project, 3)
    assert result.exit_code == 3, result.output
    records = _records(summary)
    assert Path(summary["records"]).parent == Path(summary["report"]).parent
    assert list(records.columns) == [
        "time", "request_id", "text_hash", "label", "prob", "near_ood", "ood_distance"
    ]  # fmt: skip
    window = read_traffic(project.traffic_dir, DAY + timedelta(days=3), DAY + timedelta(days=4))
    assert records["request_id"].tolist() == window["request_id"].tolist()
    assert records["text_hash"].tolist() == window["text_hash"].tolist()
    planted = set(window["text_hash"][N // 2 :])
    is_planted = records["text_hash"].isin(planted)
    planted_rate = records.loc[is_planted, "near_ood"].mean()
    reviews_rate = records.loc[~is_planted, "near_ood"].mean()
    assert planted_rate >= reviews_rate + 0.5, (planted_rate, reviews_rate)
    distance = records.groupby(is_planted)["ood_distance"].median()
    assert distance[True] > distance[False]
    # The flags are the near-OOD test's own count above its threshold.
    near_ood = summary["tests"]["near_ood"]
    assert int(records["near_ood"].sum()) == near_ood["details"]["above"]
    threshold = near_ood["details"]["threshold"]
    assert (records["near_ood"] == (records["ood_distance"] > threshold)).all()


def test_records_without_logged_text_have_no_near_ood_evidence(project):
    _, summary = _monitor(project, 2)
    records = _records(summary)
    assert len(records) == N
    assert records["near_ood"].isna().all() and records["ood_distance"].isna().all()
    assert records["label"].notna().all() and records["prob"].between(0, 1).all()


def test_round_from_traffic_reads_the_flags_of_the_latest_report(project):
    _, summary = _monitor(project, 3)
    records = _records(summary)
    flagged, ranking = monitor_flags(project)
    expected = set(records.loc[records["near_ood"].astype(bool), "text_hash"])
    assert expected and flagged == expected
    assert ranking.startswith("near-OOD first") and Path(summary["records"]).parent.name in ranking
