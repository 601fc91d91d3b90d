"""SFT on free instruction/response pairs: the data, the loss metrics, eval against the base
model, and the one-line errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.helpers.labelled_project import POS, make_project
from thresher.cli import main
from thresher.errors import ThresherError
from thresher.project import Project
from tune import TuneOptions, evaluate_run, train
from tune.data import EmptyDataError
from tune.options import DataOptions
from tune.pairs import bootstrap_loss_diff, build_pairs_dataset, pairs_metrics

FAST = {"batch_size": 8, "lr": 5e-3, "eval_batch_size": 32, "max_length": 32}


def pair_rows(n: int, seed: int = 0, missing_every: int = 0) -> list[dict[str, str]]:
    """'name a good word' → one of four words: a response the model can learn in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        word = POS[i % 4]
        rows.append(
            {
                "text": f"question {i}: say the word {word} {rng.randint(0, 9)}",
                "response": "" if missing_every and i % missing_every == 0 else word,
            }
        )
    return rows


def test_pairs_dataset_reads_the_response_from_meta(tmp_path):
    project = make_project(tmp_path / "p", pair_rows(60, missing_every=10))
    data = build_pairs_dataset(Project.at(project), DataOptions(response_column="response"))
    assert data.pairs and data.labels == []
    assert data.counts["no_response"] == 6
    total = len(data.train) + len(data.val) + len(data.test)
    assert total == 54 and data.counts["held_out_duplicates"] == 0
    row = data.train.iloc[0]
    assert row["label"] in row["text"]  # the response is the word named in the instruction
    split = pd.read_parquet(project / "tune" / "split.parquet")
    assert set(split["id"]) >= set(data.train["id"]) | set(data.test["id"])
    with pytest.raises(EmptyDataError, match="no record .* has a 'answer' response"):
        build_pairs_dataset(Project.at(project), DataOptions(response_column="answer"))


def test_pairs_metrics_and_bootstrap():
    nll, tokens = np.array([2.0, 6.0]), np.array([1, 3])
    m = pairs_metrics(nll, tokens)
    assert m["loss"] == pytest.approx(2.0) and m["perplexity"] == pytest.approx(np.exp(2.0))
    better = bootstrap_loss_diff(nll * 0.5, nll, tokens, n_boot=200)
    assert better["diff"] == pytest.approx(-1.0) and better["ci_high"] < 0


def test_pairs_need_the_sft_task(tmp_path, tiny_llama):
    project = make_project(tmp_path / "p", pair_rows(40))
    opts = TuneOptions(base=tiny_llama, max_steps=1, data=DataOptions(response_column="response"))
    with pytest.raises(ThresherError, match="--task sft"):
        train(project, opts)


@pytest.mark.slow
def test_pairs_round_trip_beats_the_base_model(tmp_path, tiny_llama):
    project = make_project(tmp_path / "p", pair_rows(160))
    result = CliRunner().invoke(
        main,
        [
            "tune", "train", "-p", str(project), "--base", tiny_llama, "--task", "sft",
            "--response-col", "response", "--max-steps", "30", "--batch-size", "8",
            "--lr", "0.005", "--max-length", "32", "--run", "pairs", "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # the progress bar goes to stderr
    run = project / "tune" / "pairs"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0 and summary["loss"] == metrics["test"]["loss"]
    assert metrics["test"]["perplexity"] == pytest.approx(np.exp(metrics["test"]["loss"]))
    assert "best_val_loss" in metrics["train"]
    preds = pd.read_parquet(run / "predictions.parquet")
    assert {"nll", "tokens", "gold"} <= set(preds.columns) and (preds["tokens"] > 0).all()
    errors = pd.read_parquet(run / "errors.parquet")
    assert 0 < len(errors) < len(preds) and errors["loss"].is_monotonic_decreasing

    evaluated = evaluate_run(run, n_boot=200)
    assert evaluated["comparison"]["against"].startswith("base model")
    assert evaluated["loss"] < evaluated["baseline"]["loss"]  # learned the four answers
    assert evaluated["comparison"]["ci_high"] < 0

    cli = CliRunner().invoke(main, ["tune", "predict", "-p", str(project), "--run", "pairs"])
    assert cli.exit_code == 1 and "instruction/response pairs" in cli.output
    assert cli.output.count("\n") == 1
