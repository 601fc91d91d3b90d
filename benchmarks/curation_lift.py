"""Curation lift: the same LoRA recipe trained on the raw set vs the curated set, with planted
label noise, scored on a clean test split.

1. Ingest a stratified subsample of the demo corpus; the project's split is made on clean labels.
2. Flip ``--flip`` of the train+val labels (the test split stays clean) and re-ingest (same ids).
3. Label issues: ``--detector score`` (default) runs the real score stage
   (``curate.score.score`` with default ``ScoreOptions``: emb+svm ensemble, 2x5 shuffled folds)
   on the noisy project; ``--detector inline`` keeps the earlier weak stand-in (cleanlab on 5-fold
   out-of-sample logistic-regression probabilities over MiniLM embeddings, or TF-IDF with
   ``--features tfidf``). Either writes ``DIR/score/records.parquet`` with ``label_issue``, which
   ``tune/data.py`` reads when building the curated set.
4. ``--data raw`` and ``--data curated`` runs (identical options, ``--steps`` gives both the same
   number of optimizer steps), test macro-F1 of each, and the
   paired bootstrap CI of curated - raw.

    python benchmarks/curation_lift.py [--size 2000] [--flip 0.2] [--steps 88]
        [--detector score|inline] [--policies exclude downweight]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402
from tune_cpu import demo_project  # noqa: E402


def flip_train_labels(project: Path, rate: float, seed: int) -> set[str]:
    """Re-ingest the project's input with ``rate`` of train/val labels flipped; returns the ids."""
    import numpy as np
    import pandas as pd

    from curate.ingest import IngestOptions, ingest
    from thresher.project import Project
    from tune.data import build_dataset
    from tune.options import DataOptions

    proj = Project.at(project)
    build_dataset(proj, DataOptions())  # makes the split on clean labels
    split = pd.read_parquet(project / "tune" / "split.parquet")
    records = pd.read_parquet(proj.records_path("ingest"))
    trainval = set(split["id"][split["split"].isin(["train", "val"])])
    rng = np.random.default_rng(seed)
    candidates = records[records["id"].isin(trainval)]
    flipped = candidates.sample(frac=rate, random_state=int(rng.integers(1 << 31)))
    other = {"fresh": "rotten", "rotten": "fresh"}
    records.loc[flipped.index, "label"] = records.loc[flipped.index, "label"].map(other)
    src = project.parent / "noisy.csv"
    records[["text", "label"]].to_csv(src, index=False)
    ingest([src], proj, IngestOptions(labels=("fresh", "rotten")), force=True)
    return set(flipped["id"])


def score_inline(
    project: Path, seed: int, features: str = "embed", filter_by: str = "prune_by_noise_rate"
) -> str:
    """DIR/score/records.parquet with label_issue from cleanlab on 5-fold out-of-sample
    logistic-regression probabilities over MiniLM embeddings (``embed``) or TF-IDF (``tfidf``)."""
    import numpy as np
    import pandas as pd
    from cleanlab.filter import find_label_issues
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from thresher.project import Project

    proj = Project.at(project)
    records = pd.read_parquet(proj.records_path("ingest"))
    labelled = records["label"].notna()
    classes = sorted(records["label"][labelled].unique())
    y = records["label"][labelled].map({c: i for i, c in enumerate(classes)}).to_numpy()
    texts = records["text"][labelled].tolist()
    if features == "embed":
        from curate.embeddings import embed_texts

        x = embed_texts(texts, cache_dir=project / ".cache" / "embeddings")
    else:
        x = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts)
    probs = cross_val_predict(
        LogisticRegression(max_iter=2000, C=4.0), x, y, cv=5, method="predict_proba"
    )
    issues = find_label_issues(y, probs, filter_by=filter_by)
    records["label_issue"] = False
    records.loc[labelled[labelled].index, "label_issue"] = issues
    records["label_quality"] = np.nan
    records.loc[labelled[labelled].index, "label_quality"] = probs[np.arange(len(y)), y]
    proj.stage_dir("score").mkdir(parents=True, exist_ok=True)
    records.to_parquet(proj.records_path("score"), index=False)
    name = "MiniLM embeddings" if features == "embed" else "TF-IDF"
    return f"inline cleanlab ({name} + logreg, 5-fold out-of-sample probs, {filter_by})"


def score_stage(project: Path, seed: int) -> str:
    """DIR/score/records.parquet from the real score stage (default options)."""
    from curate.score import ScoreOptions, score
    from thresher.project import Project

    opts = ScoreOptions(seed=seed)
    res = score(Project.at(project), opts, force=True)
    return (
        f"score stage (curate.score, learners {'+'.join(res.learners)}, "
        f"{opts.repeats}x{res.folds} folds, default options)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--flip", type=float, default=0.2)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument(
        "--steps", type=int, default=0, help="same optimizer steps for both (0: --epochs each)"
    )
    parser.add_argument(
        "--detector",
        choices=["score", "inline"],
        default="score",
        help="label issues from the real score stage or the inline cleanlab stand-in",
    )
    parser.add_argument(
        "--features", choices=["embed", "tfidf"], default="embed", help="--detector inline only"
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        default=["exclude"],
        choices=["exclude", "downweight", "keep"],
        help="label_issues policies of the curated runs (each one run)",
    )
    parser.add_argument("--issue-weight", type=float, default=0.3)
    parser.add_argument(
        "--filter-by", default="prune_by_noise_rate", help="cleanlab find_label_issues filter_by"
    )
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import pandas as pd

    from tune import TuneOptions, evaluate_run, train
    from tune.options import DataOptions

    with tempfile.TemporaryDirectory() as tmp:
        project = demo_project(Path(tmp), args.size, args.seed)
        flipped = flip_train_labels(project, args.flip, args.seed)
        if args.detector == "score":
            scorer = score_stage(project, args.seed)
        else:
            scorer = score_inline(project, args.seed, args.features, args.filter_by)
        score = pd.read_parquet(project / "score" / "records.parquet")
        flagged = set(score["id"][score["label_issue"]])
        split = pd.read_parquet(project / "tune" / "split.parquet")
        trainval = set(split["id"][split["split"].isin(["train", "val"])])
        flagged_tv = flagged & trainval
        runs, seconds = {}, {}
        variants = [("raw", "raw", "keep")] + [
            (f"curated-{policy}", "curated", policy) for policy in args.policies
        ]
        for name, mode, policy in variants:
            t0 = time.perf_counter()
            runs[name] = train(
                project,
                TuneOptions(
                    run=name,
                    epochs=args.epochs,
                    max_steps=args.steps,
                    batch_size=16,
                    max_length=64,
                    lr=args.lr,
                    seed=args.seed,
                    data=DataOptions(
                        mode=mode,
                        seed=args.seed,
                        label_issues=policy,
                        issue_weight=args.issue_weight,
                    ),
                ),
            )
            seconds[name] = round(time.perf_counter() - t0, 1)
        raw = evaluate_run(runs["raw"], n_boot=200)
        by_policy = {}
        for policy in args.policies:
            run = runs[f"curated-{policy}"]
            res = evaluate_run(run, against=str(runs["raw"]), n_boot=1000)
            by_policy[policy] = {
                "test_macro_f1": res["macro_f1"],
                "lift_points": round(100 * (res["macro_f1"] - raw["macro_f1"]), 2),
                "lift_ci95_points": [
                    round(100 * res["comparison"]["ci_low"], 2),
                    round(100 * res["comparison"]["ci_high"], 2),
                ],
                "counts": json.loads((run / "metrics.json").read_text())["data"],
            }
        cur = evaluate_run(runs[f"curated-{args.policies[0]}"], n_boot=10)
        first = by_policy[args.policies[0]]
        counts = first["counts"]
    out = {
        "benchmark": "curation_lift",
        "corpus": f"demo (Rotten Tomatoes), {args.size} rows",
        "flip_rate_train_val": args.flip,
        "flipped": len(flipped),
        "detector": args.detector,
        "label_issue_scorer": scorer,
        "flagged_train_val": len(flagged_tv),
        "label_issue_precision": round(len(flagged_tv & flipped) / max(1, len(flagged_tv)), 4),
        "label_issue_recall": round(len(flagged_tv & flipped) / max(1, len(flipped)), 4),
        "curated_counts": counts,
        "epochs": args.epochs if not args.steps else None,
        "steps": args.steps or None,
        "raw_test_macro_f1": raw["macro_f1"],
        "curated_policy": args.policies[0],
        "curated_test_macro_f1": first["test_macro_f1"],
        "lift_points": first["lift_points"],
        "lift_ci95_points": first["lift_ci95_points"],
        "by_policy": by_policy,
        "target_points": 3.0,
        "tfidf_baseline_raw_macro_f1": raw["baseline"]["tfidf_logreg"]["macro_f1"],
        "tfidf_baseline_curated_macro_f1": cur["baseline"]["tfidf_logreg"]["macro_f1"],
        "train_seconds": seconds,
        "test_n": cur["n"],
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
