"""Small labelled sets with the LoRA learner: warm vs cold start across active-learning
rounds, with and without the recipe's step floor (``tune.min_steps``), in one process.

Per seed: the demo corpus shuffled; a fixed clean test set (``--test``); the labelled set grows
by random sampling (``--sizes``, cumulative). Each round trains ``loop.lora.LoraLearner`` once
per variant on the same labels, with the product's default ``tune`` recipe (``--max-length``
shortened for CPU), and scores the test set. Variants:
- ``warm``: the product's default (round k starts from round k-1's adapter and head,
  ``loop.warm_start: true``; at least ``min_steps`` = 150 optimizer steps);
- ``cold``: from the base model every round, same floor;
- ``warm@0`` / ``cold@0``: the same with ``min_steps: 0`` (3 epochs only, the recipe before).

    python benchmarks/warm_start.py [--sizes 200 400 800] [--seeds 0 1 2]
        [--variants warm cold warm@0 cold@0] [--out FILE]

Reports per round and variant: test macro-F1, train seconds, steps, the optimizer step of the
best validation score (early stopping); the summary adds each variant's mean and its lift over
``cold@0`` (points)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402


def _fit(classes, opts, texts, labels, folder: Path, warm_from: Path | None):
    from loop.lora import LoraLearner
    from loop.steps import save_learner

    learner = LoraLearner(classes, opts, warm_start=warm_from).fit(texts, labels)
    folder.mkdir(parents=True)
    save_learner(learner, folder)
    metrics = json.loads((learner.run_dir / "metrics.json").read_text())["train"]
    return learner, metrics


def run_seed(
    seed: int, sizes: list[int], n_test: int, opts, variants: list[str], work: Path
) -> list[dict]:
    import pandas as pd

    from thresher.assets import write_demo_corpus
    from thresher.metrics import macro_f1

    corpus = pd.read_csv(write_demo_corpus(work / "demo.csv")).sample(frac=1, random_state=seed)
    test, pool = corpus.iloc[:n_test], corpus.iloc[n_test:]
    classes = sorted(corpus["label"].unique())
    gold = test["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    rows, warm_from = [], dict.fromkeys(variants)
    for k, size in enumerate(sizes, start=1):
        texts, labels = pool["text"].iloc[:size].tolist(), pool["label"].iloc[:size].tolist()
        row = {"seed": seed, "round": k, "labelled": size}
        for name in variants:
            kind, _, floor = name.partition("@")
            recipe = replace(opts, min_steps=int(floor)) if floor else opts
            start = warm_from[name] if kind == "warm" else None
            folder = work / f"s{seed}" / name / str(k)
            learner, metrics = _fit(classes, recipe, texts, labels, folder, start)
            pred = learner.predict_proba(test["text"].tolist()).argmax(axis=1)
            row[name] = {
                "test_macro_f1": round(macro_f1(gold, pred, len(classes)), 4),
                "train_seconds": metrics["seconds"],
                "steps": metrics["steps"],
                "best_step": metrics["best_step"],
                "started_from_adapter": learner.started_from is not None,
            }
            warm_from[name] = folder
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 400, 800])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["warm", "cold", "warm@0", "cold@0"])
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import numpy as np

    from thresher.config import load_config
    from tune.options import options_from_config

    with tempfile.TemporaryDirectory(prefix="thresher-warm-") as tmp:
        opts = replace(options_from_config(load_config(tmp)), max_length=args.max_length)
        rows = [
            r
            for s in args.seeds
            for r in run_seed(s, args.sizes, args.test, opts, args.variants, Path(tmp))
        ]
    summary = {}
    for k in range(1, len(args.sizes) + 1):
        per = [r for r in rows if r["round"] == k]
        entry: dict = {"labelled": per[0]["labelled"]}
        for name in args.variants:
            f1 = np.array([r[name]["test_macro_f1"] for r in per])
            entry[name] = {
                "test_macro_f1_mean": round(float(f1.mean()), 4),
                "train_seconds_mean": round(
                    float(np.mean([r[name]["train_seconds"] for r in per])), 1
                ),
                "steps_mean": round(float(np.mean([r[name]["steps"] for r in per])), 1),
            }
            if "cold@0" in args.variants and name != "cold@0":
                lift = 100 * (f1 - np.array([r["cold@0"]["test_macro_f1"] for r in per]))
                entry[name]["lift_vs_cold@0_points_mean"] = round(float(lift.mean()), 2)
                entry[name]["lift_vs_cold@0_points_sd"] = (
                    round(float(lift.std(ddof=1)), 2) if len(per) > 1 else None
                )
        summary[f"round_{k}"] = entry
    recipe = {"epochs": opts.epochs, "min_steps": opts.min_steps, "lr": opts.lr,
              "batch_size": opts.batch_size, "max_length": opts.max_length,
              "patience": opts.patience}  # fmt: skip
    emit(
        {"benchmark": "warm_start", "corpus": "demo (Rotten Tomatoes)", "test_records": args.test,
         "sampling": "random, cumulative", "recipe": recipe, "summary": summary, "rounds": rows},
        args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
