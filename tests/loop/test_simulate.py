"""The simulator end to end on a tiny planted set with the TF-IDF learner."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from loop.errors import LearnerError, SimulationError
from loop.learners import TfidfLogReg, make_learner
from loop.simulate import SimulateOptions, aulc, labels_per_point, oracle_labels, simulate
from thresher.cli import main


def test_aulc_is_the_mean_height_of_the_curve():
    assert aulc([10, 20, 30], [0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert aulc([10, 20], [0.0, 1.0]) == pytest.approx(0.5)
    assert aulc([10, 30, 40], [0.0, 1.0, 1.0]) == pytest.approx((10 + 10) / 30)


def test_labels_per_f1_point_is_the_cost_of_the_curve():
    # 50 → 250 labels, macro-F1 0.60 → 0.70: 200 labels for 10 points
    assert labels_per_point([50, 150, 250], [0.60, 0.66, 0.70]) == 20.0
    assert labels_per_point([50, 150], [0.70, 0.69]) is None  # no gain: no price
    assert labels_per_point([50], [0.7]) is None


def test_oracle_noise_flips_the_asked_fraction_to_other_labels():
    y = np.arange(3000) % 3
    noisy = oracle_labels(y, 3, 0.2, seed=1)
    assert 0.17 < np.mean(noisy != y) < 0.23
    assert ((noisy >= 0) & (noisy < 3)).all()
    assert (oracle_labels(y, 3, 0.0, seed=1) == y).all()


def test_learners_keep_the_full_class_list(make_planted):
    texts, labels = make_planted(30)
    learner = make_learner("tfidf", ["food", "sport", "tech"], pool_texts=texts)
    probs = learner.fit(texts[:6], ["sport"] * 6).predict_proba(texts[:4])
    assert probs.shape == (4, 3) and (probs[:, 1] == 1.0).all()  # one class seen: all on it
    probs = learner.fit(texts, labels).predict_proba(texts)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert isinstance(learner, TfidfLogReg)
    with pytest.raises(LearnerError, match="not in the class list"):
        learner.fit(texts[:2], ["sport", "opera"])
    with pytest.raises(LearnerError, match="unknown learner"):
        make_learner("svm", ["a", "b"])


def test_two_round_simulation_end_to_end(planted):
    texts, labels = planted
    opts = SimulateOptions(
        rounds=2,
        size=12,
        seed_size=9,
        strategies=("margin", "entropy+kmeans", "random"),
        seeds=2,
        learner="tfidf",
        diversity_factor=3,
    )
    result = simulate(texts, labels, opts)
    assert result.classes == ("food", "sport", "tech")
    assert result.test_size == 48 and result.pool_size == 192
    # strategies × seeds × (seed point + 2 rounds)
    assert len(result.curves) == 3 * 2 * 3
    for p in result.curves:
        assert p.n_labels == 9 + 12 * p.round
        assert 0.0 <= p.macro_f1 <= 1.0
        assert (p.kappa is None) == (p.round == 0)  # kappa needs the round before
        assert p.kappa is None or -1.0 <= p.kappa <= 1.0
        assert 1 / 3 <= p.stop_confidence <= 1.0
    assert set(result.aulc) == {"margin", "entropy+kmeans", "random"}
    assert all(len(v) == 2 for v in result.aulc_per_seed.values())
    assert result.full_macro_f1 > 0.8  # the planted signal is learnable
    summary = result.to_dict()
    assert summary["best_vs_random"]["seeds"] == 2
    for name in ("margin", "entropy+kmeans"):  # paired by seed: per-seed differences
        diffs = np.subtract(result.aulc_per_seed[name], result.aulc_per_seed["random"])
        pair = summary["vs_random"][name]
        assert pair["gain"] == pytest.approx(diffs.mean(), abs=1e-6)
        assert pair["seeds_won"] == int((diffs > 0).sum()) and pair["seeds"] == 2
    assert set(summary["labels_per_f1_point"]) == set(result.aulc)
    stop = summary["stopping"]["margin"]
    assert set(stop) == {"stabilizing_predictions", "confidence", "budget", "recommended"}
    assert stop["budget"]["stopped"] == 0  # no budget set
    assert stop["budget"]["labels"] == 9 + 12 * 2 and stop["budget"]["labels_saved"] == 192 - 33
    # same seed → same numbers
    assert simulate(texts, labels, opts).aulc == result.aulc


def test_bad_sizes_are_user_errors(planted):
    texts, labels = planted
    with pytest.raises(SimulationError, match="lower --rounds or --size"):
        simulate(texts, labels, SimulateOptions(rounds=20, size=50, learner="tfidf"))
    with pytest.raises(SimulationError, match="at least 2 labels"):
        simulate(texts, ["a"] * len(texts), SimulateOptions(rounds=1, size=5, learner="tfidf"))


def test_simulate_command_writes_the_stage_and_is_a_noop_on_rerun(tmp_path, planted):
    texts, labels = planted
    src = tmp_path / "data.csv"
    with open(src, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels, strict=True))
    project = tmp_path / "proj"
    runner = CliRunner()
    res = runner.invoke(main, ["curate", "ingest", str(src), "-p", str(project), "--json"])
    assert res.exit_code == 0, res.output
    args = [
        "simulate",
        "-p",
        str(project),
        "--rounds",
        "2",
        "--size",
        "10",
        "--seeds",
        "2",
        "--strategies",
        "margin,random",
        "--learner",
        "tfidf",
        "--cold-start",
        "random",
        "--json",
    ]
    res = runner.invoke(main, args[:-1])  # the report a person reads
    assert res.exit_code == 0, res.output
    assert "vs random, " in res.output and "labels per F1 point: " in res.output
    assert "first labels: random" in res.output
    res = runner.invoke(main, [*args, "--force"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert set(summary["aulc"]) == {"margin", "random"} and not summary["noop"]
    out = project / "simulate"
    for name in ("curves.csv", "learning_curves.png", "summary.json", "manifest.json"):
        assert (out / name).exists(), name
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(out / "curves.csv")))
    assert len(rows) == 2 * 2 * 3
    again = json.loads(runner.invoke(main, args).output)
    assert again["noop"] and again["aulc"] == summary["aulc"]
    bad = runner.invoke(main, [*args[:-1], "--strategies", "nope"])
    assert bad.exit_code == 1 and "unknown strategy 'nope'" in bad.output


def test_a_coverage_cold_start_seeds_every_strategy_but_random(planted):
    texts, labels = planted
    base = SimulateOptions(rounds=1, size=12, seed_size=9, strategies=("margin", "random"),
                           seeds=1, learner="tfidf")  # fmt: skip
    plain = simulate(texts, labels, base)
    covered = simulate(
        texts, labels, SimulateOptions(**{**base.__dict__, "cold_start": "coverage"})
    )
    assert covered.aulc_per_seed["random"] == plain.aulc_per_seed["random"]
    assert [p.n_labels for p in covered.curves] == [p.n_labels for p in plain.curves]
    with pytest.raises(SimulationError):
        SimulateOptions(cold_start="kmeans").validate(1000)


def test_simulate_defaults_to_a_coverage_start_and_five_seeds(tmp_path):
    from loop.cli import _simulate_options
    from thresher.config import load_config

    opts = _simulate_options(load_config(tmp_path))
    assert opts.cold_start == "coverage" and opts.seeds == 5 and opts.strategies[0] == "margin"
