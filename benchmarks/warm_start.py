"""Active-learning rounds with the LoRA learner: warm start (round k begins from round k-1's
adapter and head, ``loop.warm_start: true``) vs cold start (from the base model), same labels,
same recipe, in one process.

Per seed: the demo corpus shuffled; a fixed clean test set (``--test``); the labelled set grows
by random sampling (``--sizes``, cumulative). Each round trains ``loop.lora.LoraLearner`` twice
on the same labels, cold and warm (warm chains through the rounds), with the product's default
``tune`` recipe (``--max-length`` shortened for CPU), and scores the test set.

    python benchmarks/warm_start.py [--sizes 200 400 800] [--seeds 0 1 2] [--out FILE]

Reports per round: test macro-F1 of both, the difference (warm − cold, points), train seconds,
and the optimizer step of the best validation score (early stopping)."""

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


def run_seed(seed: int, sizes: list[int], n_test: int, opts, work: Path) -> list[dict]:
    import pandas as pd

    from thresher.assets import write_demo_corpus
    from tune.evaluate import macro_f1

    corpus = pd.read_csv(write_demo_corpus(work / "demo.csv")).sample(frac=1, random_state=seed)
    test, pool = corpus.iloc[:n_test], corpus.iloc[n_test:]
    classes = sorted(corpus["label"].unique())
    gold = test["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    rows, warm_from = [], None
    for k, size in enumerate(sizes, start=1):
        texts, labels = pool["text"].iloc[:size].tolist(), pool["label"].iloc[:size].tolist()
        row = {"seed": seed, "round": k, "labelled": size}
        for name in ("cold", "warm"):
            start = warm_from if name == "warm" else None
            folder = work / f"s{seed}" / name / str(k)
            learner, metrics = _fit(classes, opts, texts, labels, folder, start)
            pred = learner.predict_proba(test["text"].tolist()).argmax(axis=1)
            row[name] = {
                "test_macro_f1": round(macro_f1(gold, pred, len(classes)), 4),
                "train_seconds": metrics["seconds"],
                "steps": metrics["steps"],
                "best_step": metrics["best_step"],
                "started_from_adapter": learner.started_from is not None,
            }
            if name == "warm":
                warm_from = folder
        row["warm_minus_cold_points"] = round(
            100 * (row["warm"]["test_macro_f1"] - row["cold"]["test_macro_f1"]), 2
        )
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 400, 800])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
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
        rows = [r for s in args.seeds for r in run_seed(s, args.sizes, args.test, opts, Path(tmp))]
    summary = {}
    for k in range(1, len(args.sizes) + 1):
        per = [r for r in rows if r["round"] == k]
        diffs = np.array([r["warm_minus_cold_points"] for r in per])

        def mean(variant: str, key: str, digits: int) -> float:
            return round(float(np.mean([r[variant][key] for r in per])), digits)  # noqa: B023

        summary[f"round_{k}"] = {
            "labelled": per[0]["labelled"],
            "cold_macro_f1_mean": mean("cold", "test_macro_f1", 4),
            "warm_macro_f1_mean": mean("warm", "test_macro_f1", 4),
            "warm_minus_cold_points_mean": round(float(diffs.mean()), 2),
            "warm_minus_cold_points_sd": round(float(diffs.std(ddof=1)), 2)
            if len(per) > 1
            else None,
            "cold_train_seconds_mean": mean("cold", "train_seconds", 1),
            "warm_train_seconds_mean": mean("warm", "train_seconds", 1),
        }
    recipe = {"epochs": opts.epochs, "lr": opts.lr, "batch_size": opts.batch_size,
              "max_length": opts.max_length, "patience": opts.patience}  # fmt: skip
    emit(
        {"benchmark": "warm_start", "corpus": "demo (Rotten Tomatoes)", "test_records": args.test,
         "sampling": "random, cumulative", "recipe": recipe, "summary": summary, "rounds": rows},
        args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
