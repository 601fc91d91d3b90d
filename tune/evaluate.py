"""Evaluation: "is it better than what we had?"

Metrics of a run's predictions (``thresher.metrics``, per label and per slice), then
``evaluate_run``, which scores a run's test predictions against the baselines (majority class;
TF-IDF + logistic regression trained on the run's own training set) or another run, with a
paired bootstrap confidence interval of the macro-F1 difference.

Directions: accuracy, F1 higher = better (0..1); ECE lower = better (0..1).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thresher.errors import ThresherError
from thresher.metrics import accuracy, expected_calibration_error, macro_f1, per_class_f1
from tune.runtime import read_run_config, trained_on_pairs

log = logging.getLogger(__name__)


def classification_metrics(gold, probs, labels: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro_f1, per_class_f1 {label: f1}, ece and n for predictions ``argmax(probs)``."""
    import numpy as np

    probs = np.asarray(probs, dtype=float).reshape(len(gold), len(labels))
    pred = probs.argmax(axis=1)
    f1s = per_class_f1(gold, pred, len(labels))
    return {
        "n": int(len(gold)),
        "accuracy": accuracy(gold, pred),
        "macro_f1": macro_f1(gold, pred, len(labels)),
        "per_class_f1": {label: f1s[i] for i, label in enumerate(labels)},
        "ece": expected_calibration_error(probs, gold),
    }


def slice_metrics(
    gold, probs, slices: Sequence[Sequence[str]], labels: Sequence[str], min_size: int = 1
) -> dict[str, dict[str, Any]]:
    """Metrics per bias group (a record can be in several; ``(none)`` = mentions no group), with
    the slice size ``n``. Slices smaller than ``min_size`` are left out."""
    import numpy as np

    gold, probs = np.asarray(gold), np.asarray(probs)
    members: dict[str, list[int]] = {}
    for i, groups in enumerate(slices):
        for g in list(groups) or ["(none)"]:
            members.setdefault(str(g), []).append(i)
    out = {}
    for group, idx in sorted(members.items()):
        if len(idx) < min_size:
            continue
        m = classification_metrics(gold[idx], probs[idx], labels)
        out[group] = {k: m[k] for k in ("n", "accuracy", "macro_f1", "ece")}
    return out


def bootstrap_diff(
    gold, pred_a, pred_b, n_classes: int, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Paired bootstrap of macro-F1(a) - macro-F1(b) over the same examples: the observed
    difference, a ``level`` percentile interval, and the share of resamples where a ≤ b."""
    import numpy as np

    gold, pred_a, pred_b = map(np.asarray, (gold, pred_a, pred_b))
    observed = macro_f1(gold, pred_a, n_classes) - macro_f1(gold, pred_b, n_classes)
    rng = np.random.default_rng(seed)
    n = len(gold)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        diffs[i] = macro_f1(gold[idx], pred_a[idx], n_classes) - macro_f1(
            gold[idx], pred_b[idx], n_classes
        )
    alpha = (1 - level) / 2
    return {
        "diff": float(observed),
        "ci_low": float(np.quantile(diffs, alpha)),
        "ci_high": float(np.quantile(diffs, 1 - alpha)),
        "p_not_better": float((diffs <= 0).mean()),
        "n_boot": n_boot,
        "level": level,
    }


def baseline_probs(
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    test_texts: Sequence[str],
    n_classes: int,
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Class probabilities on ``test_texts`` of the majority class and TF-IDF (1-2 grams) +
    logistic regression trained on the same training set."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_labels = np.asarray(train_labels)
    majority = np.bincount(train_labels, minlength=n_classes).argmax()
    maj = np.zeros((len(test_texts), n_classes))
    maj[:, majority] = 1.0
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    x_train = vec.fit_transform(train_texts)
    clf = LogisticRegression(max_iter=2000, C=4.0, random_state=seed)
    clf.fit(x_train, train_labels, sample_weight=None if weights is None else np.asarray(weights))
    tfidf = np.zeros((len(test_texts), n_classes))
    tfidf[:, clf.classes_] = clf.predict_proba(vec.transform(test_texts))
    return {"majority": maj, "tfidf_logreg": tfidf}


def error_table(frame, probs, labels: Sequence[str], low_confidence: float):
    """Wrong or low-confidence predictions (what goes back to annotators): ``id, text, gold,
    predicted, prob, slice`` (+ split when present), least confident first."""
    import numpy as np
    import pandas as pd

    probs = np.asarray(probs)
    pred = probs.argmax(axis=1)
    prob = probs.max(axis=1)
    gold = frame["label"].to_numpy()
    predicted = np.asarray(labels, dtype=object)[pred]
    keep = (predicted != gold) | (prob < low_confidence)
    out = pd.DataFrame(
        {
            "id": frame["id"].to_numpy()[keep],
            "text": frame["text"].to_numpy()[keep],
            "gold": gold[keep],
            "predicted": predicted[keep],
            "prob": prob[keep],
            "slice": [",".join(s) for s, k in zip(frame["slice"], keep, strict=True) if k],
        }
    )
    if "split" in frame.columns:
        out["split"] = frame["split"].to_numpy()[keep]
    return out.sort_values("prob").reset_index(drop=True)


# ---- a run against baselines or another run ---------------------------------------------------


def latest_run(tune_dir: Path) -> Path:
    """The most recently finished run under ``DIR/tune`` (one with a metrics.json)."""
    runs = [p.parent for p in tune_dir.glob("*/metrics.json") if not p.parent.name.startswith(".")]
    if not runs:
        raise ThresherError(f"no finished run under {tune_dir}; run `thresher tune train` first")
    return max(runs, key=lambda p: (p / "metrics.json").stat().st_mtime)


def find_run(tune_dir: Path, run: str | None, what: str = "--run") -> Path:
    """A finished run (one with a config.json): the latest when ``run`` is None, the production
    run of the registry when ``run`` is ``production`` (``tune/registry.py``), ``tune_dir/run``
    when ``run`` is a valid name (``thresher.names``), else ``run`` as a folder path.

    A name never reaches outside ``tune_dir``; a folder is used only when it is a finished run,
    so ``--run ../ingest`` is refused instead of read (or written: eval adds eval.json)."""
    from thresher.names import NAME_RULE, is_valid_name
    from tune.registry import PRODUCTION, production_run

    tune_dir = Path(tune_dir)
    if run is None:
        return latest_run(tune_dir)
    if run == PRODUCTION:
        return production_run(tune_dir)
    if not run or "\x00" in run:
        raise ThresherError(f"{what} {run!r} is neither a run name nor a folder; {NAME_RULE}")
    if is_valid_name(run):
        path = tune_dir / run
        if not (path / "config.json").is_file():
            raise ThresherError(f"no finished run {run!r} under {tune_dir}; see `ls {tune_dir}`")
        return path
    path = Path(run)
    if not (path / "config.json").is_file():
        raise ThresherError(
            f"{what} {run!r} is neither a run name ({NAME_RULE}) nor a finished run's folder"
        )
    return path


def _test_predictions(run_dir: Path):
    import numpy as np
    import pandas as pd

    path = run_dir / "predictions.parquet"
    if not path.exists():
        raise ThresherError(
            f"{path} not found; the run did not finish (rerun `thresher tune train`)"
        )
    frame = pd.read_parquet(path)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    labels = json.loads((run_dir / "label_map.json").read_text())["labels"]
    return (
        test,
        np.stack(test["probs"].to_numpy()) if len(test) else np.zeros((0, len(labels))),
        labels,
    )


def _is_pairs_run(run_dir: Path) -> bool:
    return (run_dir / "config.json").exists() and trained_on_pairs(read_run_config(run_dir))


def evaluate_run(
    run_dir: str | Path, against: str = "baseline", n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Test metrics of a run, per-slice metrics, baselines, and the bootstrap CI of the macro-F1
    difference against the TF-IDF baseline (``against="baseline"``) or another run's folder."""
    import pandas as pd

    run_dir = Path(run_dir)
    if _is_pairs_run(run_dir):
        from tune.pairs import evaluate_pairs_run

        return evaluate_pairs_run(run_dir, against, n_boot, seed)
    test, probs, labels = _test_predictions(run_dir)
    if len(test) == 0:
        raise ThresherError(f"{run_dir}: the test split is empty; add labelled data and retrain")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(test["gold"]) - set(index))
    if unknown:
        raise ThresherError(f"{run_dir}: test labels {unknown} are not in the run's label map")
    gold = test["gold"].map(index).to_numpy()
    result = classification_metrics(gold, probs, labels)
    result["run"] = run_dir.name
    result["slices"] = slice_metrics(gold, probs, list(test["slice"]), labels)
    train = pd.read_parquet(run_dir / "train_data.parquet")
    train = train[train["label"].isin(index)]
    base = baseline_probs(
        train["text"].tolist(),
        train["label"].map(index).to_numpy(),
        test["text"].tolist(),
        len(labels),
        seed=seed,
    )
    result["baseline"] = {name: classification_metrics(gold, p, labels) for name, p in base.items()}
    pred = probs.argmax(axis=1)
    if against == "baseline":
        other_pred, other_name = base["tfidf_logreg"].argmax(axis=1), "tfidf_logreg"
        cmp = bootstrap_diff(gold, pred, other_pred, len(labels), n_boot, seed)
    else:
        other_dir, a, b, other_probs = _shared_test_rows(run_dir, test, labels, against)
        other_pred, other_name = other_probs[b].argmax(axis=1), other_dir.name
        cmp = bootstrap_diff(gold[a], pred[a], other_pred, len(labels), n_boot, seed)
        cmp["n_shared"] = int(len(a))
        result["other_run"] = classification_metrics(gold[a], other_probs[b], labels)
    result["comparison"] = {"against": other_name, **cmp}
    from thresher.project import atomic_write_json

    atomic_write_json(run_dir / "eval.json", result)
    log.info(
        "eval %s: macro-F1 %.4f vs %s %+.4f",
        run_dir.name,
        result["macro_f1"],
        other_name,
        cmp["diff"],
    )
    return _round(result)


def _shared_test_rows(run_dir: Path, test, labels: list[str], against: str):
    """The run ``against`` names (a folder, or a run next to ``run_dir``) and the test records
    both scored: (its folder, their rows in ``test``, their rows in its test predictions, its
    test probabilities)."""
    other_dir = Path(against) if Path(against).exists() else run_dir.parent / against
    other, other_probs, other_labels = _test_predictions(other_dir)
    if list(other_labels) != list(labels):
        raise ThresherError(f"{other_dir} has labels {other_labels}, {run_dir} has {labels}")
    joined = (
        test[["id"]].reset_index().merge(other[["id"]].reset_index(), on="id", suffixes=("", "_o"))
    )
    if joined.empty:
        raise ThresherError(f"{run_dir} and {other_dir} share no test records")
    return other_dir, joined["index"].to_numpy(), joined["index_o"].to_numpy(), other_probs


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj
