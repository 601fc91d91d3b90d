"""Promotion and the production registry, on run folders written by hand (the files
``evaluate_run`` reads), so "better" and "worse" are planted, not hoped for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from thresher.cli import main
from thresher.errors import ThresherError
from thresher.project import Project, file_sha256
from tune.evaluate import find_run
from tune.promote import PromotionRefused, promote
from tune.registry import production_run, read_registry

LABELS = ["neg", "pos"]
N_TEST = 200


def _texts(n: int, offset: int = 0) -> list[str]:
    return [f"text number {i} is {'good' if i % 2 else 'bad'}" for i in range(offset, offset + n)]


def write_run(tune_dir: Path, name: str, accuracy: float, seed: int = 0) -> Path:
    """A finished classifier run whose test predictions are right with probability
    ``accuracy`` (the same 200 test records for every run)."""
    rng = np.random.default_rng(seed)
    run = tune_dir / name
    run.mkdir(parents=True)
    gold = np.arange(N_TEST) % 2
    right = rng.random(N_TEST) < accuracy
    pred = np.where(right, gold, 1 - gold)
    probs = np.where(pred[:, None] == np.arange(2), 0.8, 0.2).astype("float32")
    pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(N_TEST)],
            "text": _texts(N_TEST),
            "split": "test",
            "gold": [LABELS[g] for g in gold],
            "predicted": [LABELS[p] for p in pred],
            "prob": probs.max(axis=1),
            "probs": list(probs),
            "slice": [[] for _ in range(N_TEST)],
        }
    ).to_parquet(run / "predictions.parquet", index=False)
    pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(40)],
            "text": _texts(40, offset=1000 + seed * 100),
            "label": [LABELS[i % 2] for i in range(40)],
            "weight": 1.0,
        }
    ).to_parquet(run / "train_data.parquet", index=False)
    (run / "label_map.json").write_text(json.dumps({"labels": LABELS}))
    (run / "config.json").write_text(
        json.dumps({"run": name, "task": "classify", "base": {"name": "tiny"}, "options": {}})
    )
    acc = float((pred == gold).mean())
    (run / "metrics.json").write_text(
        json.dumps({"test": {"macro_f1": acc, "accuracy": acc, "n": N_TEST}})
    )
    return run


def write_pairs_run(tune_dir: Path, name: str, nll_per_token: float, seed: int = 0) -> Path:
    """A finished instruction/response run with answer loss about ``nll_per_token``."""
    rng = np.random.default_rng(seed)
    run = tune_dir / name
    run.mkdir(parents=True)
    tokens = np.full(N_TEST, 10)
    nll = tokens * (nll_per_token + rng.normal(0, 0.05, N_TEST))
    pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(N_TEST)],
            "text": _texts(N_TEST),
            "gold": "an answer",
            "slice": [[] for _ in range(N_TEST)],
            "split": "test",
            "nll": nll,
            "tokens": tokens,
        }
    ).to_parquet(run / "predictions.parquet", index=False)
    options = {"data": {"response_column": "response"}}
    (run / "config.json").write_text(
        json.dumps({"run": name, "task": "sft", "base": {"name": "tiny"}, "options": options})
    )
    (run / "metrics.json").write_text(
        json.dumps({"test": {"loss": nll_per_token, "perplexity": 1.0, "n": N_TEST}})
    )
    return run


@pytest.fixture()
def project(tmp_path) -> Project:
    return Project.at(tmp_path / "proj")


def tune_dir(project: Project) -> Path:
    return project.root / "tune"


def test_first_promotion_needs_no_comparison_and_is_recorded(project):
    run = write_run(tune_dir(project), "good", 0.95)
    result = promote(project, run)
    assert result.promoted and not result.noop and result.previous is None
    assert result.comparison is None
    registry = read_registry(tune_dir(project))
    assert registry["production"] == "good"
    (entry,) = registry["history"]
    assert entry["run"] == "good" and entry["previous"] is None and entry["forced"] is False
    assert entry["by"] and entry["promoted_at"].endswith("Z")
    assert entry["metrics"]["n"] == N_TEST and entry["metrics"]["macro_f1"] > 0.85
    assert entry["data_fingerprint"] == file_sha256(run / "train_data.parquet")
    assert entry["base"] == {"name": "tiny"}
    assert production_run(tune_dir(project)) == run
    assert find_run(tune_dir(project), "production") == run


def test_promoting_production_again_is_a_noop(project):
    run = write_run(tune_dir(project), "good", 0.95)
    promote(project, run)
    again = promote(project, run)
    assert again.noop and not again.promoted
    assert len(read_registry(tune_dir(project))["history"]) == 1


def test_a_better_run_replaces_production_with_the_comparison(project):
    promote(project, write_run(tune_dir(project), "ok", 0.7, seed=1))
    result = promote(project, write_run(tune_dir(project), "better", 0.95, seed=2))
    assert result.promoted and result.previous == "ok"
    cmp = result.comparison
    assert cmp["against"] == "ok" and cmp["metric"] == "macro_f1"
    assert cmp["ci_low"] > 0 and not cmp["significantly_worse"]
    assert [e["run"] for e in read_registry(tune_dir(project))["history"]] == ["ok", "better"]


def test_a_worse_run_is_refused_and_force_promotes_it(project):
    promote(project, write_run(tune_dir(project), "good", 0.95, seed=1))
    bad = write_run(tune_dir(project), "bad", 0.55, seed=2)
    with pytest.raises(PromotionRefused, match="bad is significantly worse than production good"):
        promote(project, bad)
    assert read_registry(tune_dir(project))["production"] == "good"
    forced = promote(project, bad, force=True)
    assert forced.promoted and forced.comparison["significantly_worse"]
    registry = read_registry(tune_dir(project))
    assert registry["production"] == "bad"
    assert registry["history"][-1]["forced"] is True
    assert registry["history"][-1]["previous"] == "good"


def test_pairs_runs_compare_by_answer_loss(project):
    promote(project, write_pairs_run(tune_dir(project), "sft-good", 1.0, seed=1))
    worse = write_pairs_run(tune_dir(project), "sft-worse", 2.0, seed=2)
    with pytest.raises(PromotionRefused, match="answer loss"):
        promote(project, worse)
    better = promote(project, write_pairs_run(tune_dir(project), "sft-better", 0.5, seed=3))
    assert better.promoted and better.comparison["metric"] == "loss"
    assert better.comparison["ci_high"] < 0


def test_a_classifier_and_a_pairs_run_are_not_compared_without_force(project):
    promote(project, write_run(tune_dir(project), "clf", 0.9))
    sft = write_pairs_run(tune_dir(project), "sft", 1.0)
    with pytest.raises(PromotionRefused, match="not the same kind of run"):
        promote(project, sft)
    assert "error" in promote(project, sft, force=True).comparison


def test_production_without_a_promotion_is_a_one_line_error(project):
    write_run(tune_dir(project), "good", 0.95)
    with pytest.raises(ThresherError, match=r"no production model; run `thresher tune promote"):
        find_run(tune_dir(project), "production")


def test_a_run_outside_the_project_cannot_be_promoted(project, tmp_path):
    other = write_run(tmp_path / "elsewhere", "stray", 0.95)
    with pytest.raises(ThresherError, match="not a run of this project"):
        promote(project, other)


def test_cli_refuses_a_worse_run_in_one_line_and_eval_against_production(project):
    runner = CliRunner()
    root = str(project.root)
    write_run(tune_dir(project), "good", 0.95, seed=1)
    write_run(tune_dir(project), "bad", 0.55, seed=2)
    first = runner.invoke(main, ["tune", "promote", "-p", root, "--run", "good", "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["run"] == "good"

    refused = runner.invoke(main, ["tune", "promote", "-p", root, "--run", "bad"])
    assert refused.exit_code == 1
    message = refused.output.strip()
    assert len(message.splitlines()) == 1
    assert "bad" in message and "good" in message and "95% CI" in message
    assert "--force" in message

    noop = runner.invoke(main, ["tune", "promote", "-p", root, "--run", "production"])
    assert noop.exit_code == 0 and "already is the production model" in noop.output

    ev = runner.invoke(
        main, ["tune", "eval", "-p", root, "--run", "bad", "--against", "production", "--json"]
    )
    assert ev.exit_code == 0, ev.output
    result = json.loads(ev.output)
    assert result["comparison"]["against"] == "good" and result["comparison"]["ci_high"] < 0

    forced = runner.invoke(main, ["tune", "promote", "-p", root, "--run", "bad", "--force"])
    assert forced.exit_code == 0 and "forced although significantly worse" in forced.output
    assert read_registry(tune_dir(project))["history"][-1]["forced"] is True


@pytest.mark.parametrize("name", ["production", "baseline"])
def test_train_refuses_a_reserved_run_name_in_one_line(project, name):
    """``--run production`` would write DIR/tune/production/, which every --run/--against
    production call would then shadow or be shadowed by."""
    done = CliRunner().invoke(main, ["tune", "train", "-p", str(project.root), "--run", name])
    assert done.exit_code == 1
    message = done.output.strip()
    assert "\n" not in message and f"--run {name} is reserved" in message
    assert not (project.root / "tune" / name).exists()
