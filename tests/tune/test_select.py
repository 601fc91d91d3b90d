"""tune select: the rule, the names, the measures, and a selection over two tiny candidates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from thresher.errors import ThresherError
from tune.options import TuneOptions
from tune.select import (
    Candidate,
    SelectOptions,
    bootstrap_macro_f1,
    choose,
    run_name,
    select,
    worst_slice,
)

RECIPE = dict(max_steps=4, eval_steps=2, batch_size=8, lr=5e-3, eval_batch_size=32, max_length=32)
MEASURE = dict(latency_records=4, latency_passes=1, n_boot=200, isolate=False)


def _cand(run: str, f1: float, latency: float = 1.0, params: int = 1000) -> Candidate:
    return Candidate(
        base=run, run=run, macro_f1=f1, ci_low=f1 - 0.1, ci_high=f1 + 0.1, worst_slice_f1=None,
        ece=0.1, latency_ms=latency, latency_ms_b32=latency / 4, records_per_s=1000 / latency,
        peak_mem_mb=10.0, trainable_params=10, total_params=params, size_mb=1.0,
    )  # fmt: skip


# ---- the rule ---------------------------------------------------------------------------------


def test_rule_picks_the_best_macro_f1():
    chosen, why = choose([_cand("a", 0.70), _cand("b", 0.80, params=10**9), _cand("c", 0.60)])
    assert chosen == "b" and "best macro-F1" in why


def test_rule_tie_goes_to_the_smaller_model():
    big, small = _cand("big", 0.804, params=10**8), _cand("small", 0.800, params=10**6)
    chosen, why = choose([big, small])
    assert chosen == "small" and "fewer parameters" in why
    # just outside the margin the better one wins, however large
    chosen, _ = choose([_cand("big", 0.806, params=10**8), small])
    assert chosen == "big"


def test_rule_latency_cap_leaves_slow_candidates_out():
    fast, slow = _cand("fast", 0.70, latency=2.0), _cand("slow", 0.90, latency=50.0)
    assert choose([fast, slow])[0] == "slow"
    chosen, why = choose([fast, slow], max_latency_ms=10)
    assert chosen == "fast" and "latency cap" in why
    chosen, why = choose([fast, slow], max_latency_ms=1)
    assert chosen is None and "fast" in why  # names the fastest


def test_run_names_are_slugs_and_collisions_are_refused(tmp_path):
    assert run_name("minilm") == "select-minilm"
    assert run_name("HuggingFaceTB/SmolLM2-360M") == "select-huggingfacetb-smollm2-360m"
    folder = tmp_path / "My Model"
    folder.mkdir()
    assert run_name(str(folder)) == "select-my-model"
    with pytest.raises(ThresherError, match="both make the run"):
        select(Path("unused"), TuneOptions(), SelectOptions(bases=("org/m", "org-m")))
    with pytest.raises(ThresherError, match="empty"):
        select(Path("unused"), TuneOptions(), SelectOptions(bases=(" ",)))


# ---- measures ---------------------------------------------------------------------------------


def test_worst_slice_skips_small_slices_and_none():
    slices = {
        "(none)": {"n": 100, "macro_f1": 0.1},
        "tiny": {"n": 3, "macro_f1": 0.0},
        "women": {"n": 20, "macro_f1": 0.55},
        "men": {"n": 25, "macro_f1": 0.75},
    }
    assert worst_slice(slices, 10) == ("women", 0.55)
    assert worst_slice({"(none)": {"n": 50, "macro_f1": 0.2}}, 10) == (None, None)


def test_bootstrap_interval_brackets_the_score_and_narrows_with_more_records():
    rng = np.random.default_rng(0)

    def interval(n):
        gold = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.8, gold, 1 - gold)  # about 80 % right
        return bootstrap_macro_f1(gold, pred, 2, n_boot=400)

    low, high = interval(60)
    assert low < 0.8 < high
    wide, narrow = high - low, np.subtract(*interval(2000)[::-1])
    assert narrow < wide / 3


# ---- aliases ----------------------------------------------------------------------------------


def test_aliases_resolve_to_the_packaged_models():
    from thresher.assets import SMOLLM_GGUF, default_encoder_path, resolve_model
    from tune.modeling import resolve_base

    assert Path(resolve_model("minilm").path) == default_encoder_path()
    ref = resolve_base("smollm2-135m", "classify")  # a decoder as a classifier
    assert ref.gguf_file == SMOLLM_GGUF and (Path(ref.path) / SMOLLM_GGUF).is_file()
    assert resolve_model("smollm2-135m", "sft") == resolve_model(None, "sft")


# ---- a selection over two tiny candidates -----------------------------------------------------


def test_select_trains_measures_chooses_and_records(project, tiny_bert, tiny_llama):
    from thresher.project import Project

    recipe = TuneOptions(**RECIPE)
    sel = select(
        Project.at(project), recipe, SelectOptions(bases=(tiny_bert, tiny_llama), **MEASURE)
    )
    runs = [c.run for c in sel.candidates]
    assert runs == [run_name(tiny_bert), run_name(tiny_llama)]
    for c in sel.candidates:
        run_dir = project / "tune" / c.run
        assert (run_dir / "adapter").is_dir() and (run_dir / "metrics.json").exists()
        test_f1 = json.loads((run_dir / "metrics.json").read_text())["test"]["macro_f1"]
        assert c.macro_f1 == pytest.approx(test_f1, abs=1e-4)  # the run's own test score
        assert c.ci_low <= c.macro_f1 <= c.ci_high
        assert c.latency_ms > 0 and c.latency_ms_b32 > 0 and c.records_per_s > 0
        assert 0 < c.trainable_params < c.total_params
        assert c.adapter_mb > 0 and c.base_mb > 0 and c.size_mb >= c.base_mb
        assert not c.reused
    # the rule, applied to what was measured
    assert sel.chosen == choose(sel.candidates)[0]
    best = max(c.macro_f1 for c in sel.candidates)
    assert next(c for c in sel.candidates if c.run == sel.chosen).macro_f1 >= best - 0.005
    record = json.loads((sel.path / "selection.json").read_text())
    assert record["chosen"] == sel.chosen and record["rule"] == sel.rule and record["time"]
    assert [c["run"] for c in record["candidates"]] == runs
    page = (sel.path / "report.html").read_text()
    assert "data:image/png;base64," in page and sel.chosen in page and "<script" not in page
    # a rerun with the same options reuses both runs
    again = select(
        Project.at(project), recipe, SelectOptions(bases=(tiny_bert, tiny_llama), **MEASURE)
    )
    assert all(c.reused for c in again.candidates)
    assert [c.macro_f1 for c in again.candidates] == [c.macro_f1 for c in sel.candidates]


def test_cli_json_shape_and_table(project, tiny_bert, tiny_llama):
    from click.testing import CliRunner

    from thresher.cli import main

    args = ["tune", "select", "-p", str(project), "--bases", f"{tiny_bert},{tiny_llama}",
            "--max-steps", "3", "--batch-size", "8", "--max-length", "32",
            "--no-isolate", "--timing-records", "4"]  # fmt: skip
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"candidates", "chosen", "rule"}
    keys = {"base", "run", "macro_f1", "ci_low", "ci_high", "worst_slice_f1", "ece", "latency_ms",
            "latency_ms_b32", "records_per_s", "peak_mem_mb", "trainable_params", "total_params",
            "size_mb"}  # fmt: skip
    assert [set(c) for c in out["candidates"]] == [keys, keys]
    assert out["candidates"][1]["run"] == run_name(tiny_llama)
    assert out["chosen"] in {c["run"] for c in out["candidates"]}
    # the terminal table (runs reused now), and a latency cap no one meets is a user error
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "macro-F1" in res.output and f"chosen: {out['chosen']}" in res.output
    assert "up to date" in res.output
    res = CliRunner().invoke(main, [*args, "--max-latency-ms", "0.000001"])
    assert res.exit_code == 1 and "raise --max-latency-ms" in res.output


def test_search_records_trials_and_picks_by_validation(project, tiny_bert):
    from thresher.project import Project

    options = SelectOptions(bases=(tiny_bert,), trials=2, **MEASURE)
    sel = select(Project.at(project), TuneOptions(**RECIPE), options)
    (cand,) = sel.candidates
    assert len(cand.trials) == 2
    assert {t["params"]["lora_r"] for t in cand.trials} <= {4, 8, 16}
    done = [t for t in cand.trials if t["state"] == "complete"]
    best = max(done, key=lambda t: (t["val_macro_f1"], -t["number"]))
    assert cand.run == best["run"] and best["chosen"]
    for t in done:  # each trial is a run whose own validation score was the trial's value
        metrics = json.loads((project / "tune" / t["run"] / "metrics.json").read_text())
        assert t["val_macro_f1"] == pytest.approx(metrics["val"]["macro_f1"])
        assert t["intermediate"]  # evaluations were reported to the pruner
    record = json.loads((sel.path / "selection.json").read_text())
    assert len(record["candidates"][0]["trials"]) == 2
    assert not list(project.glob("**/*.db")) and not list(project.glob("tune/.work/*"))


@pytest.mark.slow
def test_smollm2_trains_as_a_classifier(tmp_path):
    """The packaged SmolLM2 GGUF as a sequence classifier: pad token set, 2 steps, predicts."""
    from tests.helpers.labelled_project import make_project, synthetic_rows
    from tune.predict import predict_proba, unload_run
    from tune.train import train

    root = make_project(tmp_path / "proj", synthetic_rows(40, seed=2))
    opts = TuneOptions(base="smollm2-135m", run="smol", max_steps=2, batch_size=4, max_length=24)
    run_dir = train(root, opts)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"] == "classify" and config["base"]["gguf_file"]
    probs = predict_proba(run_dir, ["great superb film", "dull tedious mess"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    unload_run(run_dir)
