"""Label-noise scoring: out-of-sample probabilities from an ensemble of cheap learners + cleanlab.

Pure functions over arrays (cleanlab style): validation first, then the computation.

Score directions (all in [0, 1]):
- ``label_quality``: low = the given label is likely wrong (cleanlab ``normalized_margin``).
- ``predicted_prob``: the ensemble's probability of ``predicted_label`` (high = confident).
- ``outlier_score``: low = the text is atypical for the data set (Datalab-style kNN score).

Recipe (chosen by measurement on Rotten Tomatoes with 12 % planted flips; docs/score.md):
1. Out-of-fold probabilities from K *shuffled* stratified folds (input files are often sorted by
   class), averaged over ``repeats`` differently shuffled splits, for each learner: logistic
   regression on sentence embeddings and a calibrated linear SVM on word + char TF-IDF (fast mode
   without embeddings: naive Bayes on word + char n-grams + the SVM).
2. Average the learners' probabilities (their errors differ, so the average is more accurate).
3. ``label_quality`` = cleanlab ``normalized_margin``; ``label_issue`` = the records with the lowest
   quality, as many as ``issue_count`` (between cleanlab's two confident-joint estimates of the
   number of wrong labels: the records another label out-votes by 0.2; benchmarks/label_issues.py).
4. Optional second pass (``second_pass``) retrains without the first pass's issues; it raised
   accuracy but lowered AUPRC on that benchmark, so it is off by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thresher.errors import InputError

log = logging.getLogger(__name__)

TEXT_LEARNERS = ("nb", "svm", "lr")
EMBEDDING_LEARNERS = ("emb",)
ALL_LEARNERS = TEXT_LEARNERS + EMBEDDING_LEARNERS
# Chosen by measurement (docs/score.md): the embedding view + the TF-IDF SVM view.
DEFAULT_LEARNERS = ("emb", "svm")
FAST_LEARNERS = ("svm", "nb")
RANKINGS = ("normalized_margin", "self_confidence", "confidence_weighted_entropy")


@dataclass(frozen=True)
class NoiseOptions:
    """How label noise is scored (resolved from the config by the caller).

    ``learners``: any of ``nb`` (naive Bayes, word + char n-grams), ``svm`` (calibrated linear
    SVM, TF-IDF), ``lr`` (logistic regression, TF-IDF), ``emb`` (logistic regression on sentence
    embeddings; needs ``embeddings``). ``repeats`` averages the out-of-fold probabilities of
    that many differently shuffled K-fold splits (less variance from one unlucky split).
    ``second_pass`` retrains without first-pass issues.
    """

    folds: int = 5
    repeats: int = 2
    learners: tuple[str, ...] = DEFAULT_LEARNERS
    second_pass: bool = False
    ranking: str = "normalized_margin"
    filter_by: str = "low_quality"
    seed: int = 0
    class_prior: str = "observed"  # see adjust_to_prior


@dataclass
class NoiseResult:
    """Per-record scores (arrays of length n) and what produced them."""

    classes: list[str]
    pred_probs: np.ndarray  # (n, k) out-of-sample ensemble probabilities, rows sum to 1
    label_quality: np.ndarray  # float, NaN for unlabeled rows; low = likely mislabeled
    label_issue: np.ndarray  # bool, False for unlabeled rows
    predicted_label: list[str | None]  # None when the noise step was skipped
    predicted_prob: np.ndarray
    folds: int
    learners: tuple[str, ...]
    first_pass_issues: int = 0
    learner_probs: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Validation


def encode_labels(
    labels: Sequence[str | None], classes: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Labels → int codes (-1 for unlabeled) and the sorted class names."""
    present = sorted({str(v) for v in labels if v is not None})
    names = list(classes) if classes else present
    index = {name: i for i, name in enumerate(names)}
    unknown = [v for v in present if v not in index]
    if unknown:
        raise InputError(f"labels {unknown[:5]} are not among the classes {names}")
    y = np.array([-1 if v is None else index[str(v)] for v in labels], dtype=np.int64)
    return y, names


def noise_skip_reason(labels: Sequence[str | None]) -> str | None:
    """Why label-noise scoring cannot run on ``labels`` (None = unlabelled), or None when it can.

    It needs at least 2 classes with labels; unlabelled (or one-class) input is not an error for
    the score stage, which skips this step and says so (the other steps need no labels)."""
    present = {str(v) for v in labels if v is not None}
    if len(present) >= 2:
        return None
    found = "no labels" if not present else f"only class {sorted(present)[0]!r} has labels"
    return (
        f"label noise skipped: {found}, it needs at least 2 classes with labels "
        "(label some records, e.g. `thresher review prelabel`, then rescore)"
    )


def skipped_noise_result(n: int) -> NoiseResult:
    """The ``NoiseResult`` of a skipped noise step: no classes, no predictions, every
    ``label_quality`` NaN and no ``label_issue``."""
    return NoiseResult(
        classes=[],
        pred_probs=np.zeros((n, 0)),
        label_quality=np.full(n, np.nan),
        label_issue=np.zeros(n, dtype=bool),
        predicted_label=[None] * n,
        predicted_prob=np.full(n, np.nan),
        folds=0,
        learners=(),
    )


def effective_folds(y: np.ndarray, folds: int) -> int:
    """The fold count to use: ``folds`` capped by the smallest class; errors on degenerate data."""
    labeled = y[y >= 0]
    counts = np.bincount(labeled) if labeled.size else np.zeros(0, dtype=int)
    present = counts[counts > 0]
    if present.size < 2:
        raise InputError(
            f"label-noise scoring needs at least 2 classes with labels; found {present.size} "
            "(label more records or check the label column)"
        )
    if folds < 2:
        raise InputError(f"--folds must be at least 2, got {folds}")
    smallest = int(present.min())
    if smallest < 2:
        raise InputError(
            "every class needs at least 2 labeled records for cross-validation; "
            f"the smallest class has {smallest} (drop or merge tiny classes)"
        )
    if smallest < folds:
        log.warning("smallest class has %d records: using %d folds", smallest, smallest)
    return min(folds, smallest)


# --------------------------------------------------------------------------------------------
# Features and learners


@dataclass
class TextFeatures:
    """Sparse TF-IDF features, fitted once on all texts (unsupervised, so no label leakage)."""

    tfidf: Any  # word (1-2) + char_wb (2-5) TF-IDF, sublinear tf, L2-normalized
    counts: Any  # word (1-2) + char_wb (2-5) raw counts, for naive Bayes


def text_features(texts: Sequence[str]) -> TextFeatures:
    """Word and character n-gram features for the text learners."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

    texts = [t if t.strip() else "_empty_" for t in texts]
    min_df = 2 if len(texts) >= 50 else 1
    word = CountVectorizer(ngram_range=(1, 2), min_df=min_df, lowercase=True)
    char = CountVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=min_df, lowercase=True)
    counts = sp.hstack([word.fit_transform(texts), char.fit_transform(texts)]).tocsr()
    word_tfidf = TfidfTransformer(sublinear_tf=True).fit_transform(
        counts[:, : len(word.vocabulary_)]
    )
    char_tfidf = TfidfTransformer(sublinear_tf=True).fit_transform(
        counts[:, len(word.vocabulary_) :]
    )
    tfidf = sp.hstack([word_tfidf, char_tfidf]).tocsr() / np.sqrt(2.0)
    return TextFeatures(tfidf=sp.csr_matrix(tfidf), counts=counts)


def make_learner(name: str, y_train: np.ndarray, seed: int):
    """A fresh scikit-learn classifier for learner ``name``, fitted on labels like ``y_train``
    (calibration folds shrink for tiny classes; below 2 records a class gets no calibration)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import ComplementNB
    from sklearn.svm import LinearSVC

    cv = int(min(3, np.bincount(y_train)[np.unique(y_train)].min()))
    if cv < 2 and name in ("nb", "svm"):
        return ComplementNB(alpha=0.5) if name == "nb" else LogisticRegression(max_iter=2000)
    if name == "nb":
        # Raw naive-Bayes probabilities are near 0/1 on long n-gram vectors; sigmoid calibration
        # keeps the ranking and stops NB from dominating the average.
        return CalibratedClassifierCV(ComplementNB(alpha=0.5), cv=cv, method="sigmoid")
    if name == "svm":
        return CalibratedClassifierCV(LinearSVC(C=0.5, random_state=seed), cv=cv)
    if name == "lr":
        return LogisticRegression(C=4.0, max_iter=2000)
    if name == "emb":
        return LogisticRegression(C=1.0, max_iter=2000)
    raise ValueError(f"unknown learner {name!r}; choose from {', '.join(ALL_LEARNERS)}")


def _matrix_for(name: str, feats: TextFeatures | None, embeddings: np.ndarray | None):
    if name == "nb":
        return feats.counts if feats is not None else None
    if name in ("svm", "lr"):
        return feats.tfidf if feats is not None else None
    return embeddings


def _predict(name: str, model, X, n_classes: int) -> np.ndarray:
    probs = model.predict_proba(X)
    out = np.zeros((X.shape[0], n_classes))
    out[:, model.classes_] = probs
    return out


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled stratified folds over the labeled rows (indices into ``y``)."""
    from sklearn.model_selection import StratifiedKFold

    labeled = np.flatnonzero(y >= 0)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(labeled[tr], labeled[te]) for tr, te in skf.split(labeled, y[labeled])]


def out_of_fold_probs(
    name: str,
    X,
    y: np.ndarray,
    n_classes: int,
    splits: list[tuple[np.ndarray, np.ndarray]],
    *,
    exclude: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(n, k) probabilities where every labeled row is predicted by a model that never saw it,
    and unlabeled rows get the average of the fold models. ``exclude`` (bool, n) drops rows from
    training only (they are still predicted)."""
    n = y.shape[0]
    probs = np.zeros((n, n_classes))
    unlabeled = np.flatnonzero(y < 0)
    for train, test in splits:
        if exclude is not None:
            kept = train[~exclude[train]]
            # Never train on fewer than two classes: fall back to the full fold.
            train = kept if np.unique(y[kept]).size == np.unique(y[train]).size else train
        model = make_learner(name, y[train], seed)
        model.fit(X[train], y[train])
        probs[test] = _predict(name, model, X[test], n_classes)
        if unlabeled.size:
            probs[unlabeled] += _predict(name, model, X[unlabeled], n_classes) / len(splits)
    return probs


def ensemble_probs(
    y: np.ndarray,
    n_classes: int,
    learners: Sequence[str],
    splits: list[tuple[np.ndarray, np.ndarray]],
    feats: TextFeatures | None,
    embeddings: np.ndarray | None,
    *,
    exclude: np.ndarray | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Average of the learners' out-of-fold probabilities; also each learner's own."""
    per: dict[str, np.ndarray] = {}
    for name in learners:
        X = _matrix_for(name, feats, embeddings)
        if X is None:
            raise ValueError(f"learner {name!r} needs {'embeddings' if name == 'emb' else 'texts'}")
        per[name] = out_of_fold_probs(name, X, y, n_classes, splits, exclude=exclude, seed=seed)
        if progress is not None:
            progress(name)
    mean = np.mean(list(per.values()), axis=0)
    mean = np.clip(mean, 1e-6, None)
    return mean / mean.sum(axis=1, keepdims=True), per


# --------------------------------------------------------------------------------------------
# Class prior (label shift)


def parse_class_prior(value: str | None, classes: Sequence[str]) -> np.ndarray | None:
    """The true class shares to assume, from ``observed`` (None: the labels' own shares, no
    change), ``uniform``, or ``label=share,...`` naming every class (shares > 0, normalized)."""
    value = (value or "observed").strip()
    if value == "observed":
        return None
    if value == "uniform":
        return np.full(len(classes), 1.0 / len(classes))
    shares: dict[str, float] = {}
    for part in value.split(","):
        name, sep, share = part.partition("=")
        try:
            shares[name.strip()] = float(share) if sep else float("nan")
        except ValueError:
            shares[name.strip()] = float("nan")
    bad = [n for n, v in shares.items() if n not in classes or not v > 0]
    missing = [c for c in classes if c not in shares]
    if bad or missing:
        raise InputError(
            f"class prior {value!r}: use observed, uniform or label=share for every class "
            f"({', '.join(f'{c}=...' for c in classes)}), shares > 0"
        )
    prior = np.array([shares[c] for c in classes])
    return prior / prior.sum()


def label_shares(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Each class's share of the labelled records (``y >= 0``); zeros when none is labelled."""
    labeled = y[y >= 0]
    return np.bincount(labeled, minlength=n_classes) / max(1, labeled.size)


def adjust_to_prior(probs: np.ndarray, y: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    """Out-of-sample probabilities re-weighted from the labels' observed class shares to
    ``prior`` (label shift, one step of Saerens et al. 2002): p'(k|x) ∝ p(k|x) · prior_k /
    observed_k. When label noise runs mostly one way (annotators who over-use one class), the
    learners absorb the skew: every record leans to the over-used class, argmax never disagrees
    with it, and its mislabelled records cannot be flagged. A prior closer to the true shares
    undoes that. ``None`` returns ``probs`` unchanged. Rows sum to 1."""
    if prior is None:
        return probs
    observed = label_shares(y, probs.shape[1])
    weights = np.where(observed > 0, prior / np.maximum(observed, 1e-12), 1.0)
    out = probs * weights
    return out / out.sum(axis=1, keepdims=True)


def never_predicted(
    y: np.ndarray, pred: np.ndarray, classes: Sequence[str], min_share: float = 0.05
) -> list[tuple[str, float]]:
    """(class, label share) of the classes that hold at least ``min_share`` of the labels but are
    never the predicted label: the learners have absorbed a skew (often one-way label noise)."""
    shares = label_shares(y, len(classes))
    predicted = set(np.unique(pred[y >= 0]).tolist())
    return [
        (str(classes[k]), float(shares[k]))
        for k in range(len(classes))
        if shares[k] >= min_share and k not in predicted
    ]


# --------------------------------------------------------------------------------------------
# cleanlab scores


def quality_scores(y: np.ndarray, pred_probs: np.ndarray, ranking: str = "normalized_margin"):
    """cleanlab label-quality scores in [0, 1] (low = likely mislabeled); NaN where y < 0."""
    from cleanlab.rank import get_label_quality_scores

    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; choose from {', '.join(RANKINGS)}")
    out = np.full(y.shape[0], np.nan)
    labeled = y >= 0
    if labeled.any():
        out[labeled] = get_label_quality_scores(y[labeled], pred_probs[labeled], method=ranking)
    return np.clip(out, 0.0, 1.0)


# The issue set's margin (chosen by measurement, docs/score.md "The issue set"): a record counts
# towards it when another label out-votes the given one by at least 0.2 of probability, i.e. its
# normalized-margin quality is below 0.4.
ISSUE_QUALITY = 0.4


def issue_count(y: np.ndarray, pred_probs: np.ndarray) -> int:
    """How many records the ``low_quality`` issue set flags (``y`` all labelled, classes 0..k-1).

    cleanlab's two estimates of the number of label errors bracket it: the confident joint's
    off-diagonal count (too low where the model is accurate: a flipped record counts only when
    its true class's probability beats that class's mean, about half of them) and the calibrated
    confident joint's (too high where it is not: the model's own errors are scaled up with the
    flips). Within that bracket it is the number of records whose normalized-margin quality is
    below ``ISSUE_QUALITY``; never fewer than the off-diagonal count."""
    from cleanlab.count import num_label_issues
    from cleanlab.rank import get_label_quality_scores

    low = int(num_label_issues(y, pred_probs, estimation_method="off_diagonal"))
    high = int(num_label_issues(y, pred_probs, estimation_method="off_diagonal_calibrated"))
    margin = get_label_quality_scores(y, pred_probs, method="normalized_margin")
    return max(low, min(int((margin < ISSUE_QUALITY).sum()), high))


def issue_mask(
    y: np.ndarray,
    pred_probs: np.ndarray,
    filter_by: str = "low_quality",
    ranking: str = "normalized_margin",
) -> np.ndarray:
    """The issue set (bool, n); False for unlabeled rows.

    ``low_quality`` (default): the ``issue_count`` records with the lowest ``label_quality``
    (``ranking``), never one whose given label is also the predicted one. Measured on four real
    corpora with planted flips (``benchmarks/label_issues.py``, 36 runs) its F1 is 0.03 below the
    best cutoff of the ranking on average (the off-diagonal count alone: 0.04; cleanlab's
    ``find_label_issues`` filters: 0.04-0.10). Any of cleanlab's ``filter_by`` values
    (``prune_by_noise_rate``, ``both``, ``confident_learning``, ...) uses ``find_label_issues``
    instead."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    out = np.zeros(y.shape[0], dtype=bool)
    labeled = np.flatnonzero(y >= 0)
    if labeled.size == 0:
        return out
    present = np.unique(y[labeled])
    # cleanlab wants classes 0..k-1 all present: remap to the present ones.
    remap = {c: i for i, c in enumerate(present)}
    yl = np.array([remap[c] for c in y[labeled]])
    pl = pred_probs[labeled][:, present]
    pl = pl / pl.sum(axis=1, keepdims=True)
    if len(present) < 2:
        return out
    if filter_by == "low_quality":
        count = issue_count(yl, pl)
        quality = get_label_quality_scores(yl, pl, method=ranking)
        flagged = np.zeros(len(yl), dtype=bool)
        flagged[np.argsort(quality, kind="stable")[:count]] = True
        # Never flag a record whose given label is also the predicted one.
        flagged &= pl.argmax(axis=1) != yl
        out[labeled] = flagged
    else:
        out[labeled] = find_label_issues(yl, pl, filter_by=filter_by, n_jobs=1)
    return out


def score_label_noise(
    texts: Sequence[str],
    labels: Sequence[str | None],
    opts: NoiseOptions = NoiseOptions(),  # noqa: B008 - frozen dataclass
    *,
    embeddings: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    pred_probs: np.ndarray | None = None,
    holdout: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
) -> NoiseResult:
    """Score every record's label. ``labels`` may hold None (unlabeled: predictions only).

    ``holdout`` (bool, n): records whose labels no model may learn from (e.g. a test split): they
    are predicted like unlabeled records and their labels are scored against those predictions.

    ``pred_probs`` (n, k), e.g. from a fine-tuned model, replaces the ensemble when given (it must
    be out of sample). Raises ``InputError`` on degenerate input (one class, tiny classes, length
    mismatch)."""
    y, names, y_fit, folds = _checked_labels(texts, labels, opts, embeddings, classes, holdout)
    per: dict[str, np.ndarray] = {}
    first_issues = 0
    if pred_probs is not None:
        probs = _normalized_external(pred_probs, len(texts), len(names))
    else:
        ensemble = _RepeatedEnsemble.build(
            texts, y_fit, len(names), folds, opts, embeddings, progress
        )
        probs, per = ensemble.probs()
        if opts.second_pass:
            flagged = issue_mask(y, probs, opts.filter_by, opts.ranking)
            first_issues = int(flagged.sum())
            log.info("first pass flagged %d records; retraining without them", first_issues)
            if 0 < first_issues:
                probs, per = ensemble.probs(exclude=flagged)
    return noise_result(
        y,
        probs,
        names,
        ranking=opts.ranking,
        filter_by=opts.filter_by,
        folds=folds,
        learners=tuple(opts.learners) if pred_probs is None else ("external",),
        class_prior=opts.class_prior,
        first_pass_issues=first_issues,
        learner_probs=per,
    )


def _checked_labels(
    texts: Sequence[str],
    labels: Sequence[str | None],
    opts: NoiseOptions,
    embeddings: np.ndarray | None,
    classes: Sequence[str] | None,
    holdout: np.ndarray | None,
) -> tuple[np.ndarray, list[str], np.ndarray, int]:
    """Validation for ``score_label_noise``: (label codes, class names, the codes the models may
    learn from (held-out rows -1), fold count). Raises ``InputError``."""
    if len(texts) != len(labels):
        raise InputError(f"{len(texts)} texts but {len(labels)} labels")
    y, names = encode_labels(labels, classes)
    y_fit = y if holdout is None else np.where(np.asarray(holdout, dtype=bool), -1, y)
    folds = effective_folds(y_fit, opts.folds)
    if "emb" in opts.learners and embeddings is None:
        raise InputError(
            "learner 'emb' needs embeddings; pass them or drop 'emb' (--no-embeddings)"
        )
    if embeddings is not None and embeddings.shape[0] != len(texts):
        raise InputError(f"{embeddings.shape[0]} embeddings for {len(texts)} texts")
    return y, names, y_fit, folds


def _normalized_external(pred_probs: np.ndarray, n: int, k: int) -> np.ndarray:
    """Given probabilities, shape-checked, rows rescaled to sum to 1."""
    if pred_probs.shape != (n, k):
        raise InputError(f"pred_probs has shape {pred_probs.shape}, expected {(n, k)}")
    return pred_probs / pred_probs.sum(axis=1, keepdims=True)


@dataclass
class _RepeatedEnsemble:
    """The learners' out-of-fold probabilities, averaged over ``repeats`` differently shuffled
    K-fold splits of the labels they may learn (``y_fit``)."""

    y_fit: np.ndarray
    n_classes: int
    learners: tuple[str, ...]
    split_sets: list[list[tuple[np.ndarray, np.ndarray]]]
    feats: TextFeatures | None
    embeddings: np.ndarray | None
    seed: int
    progress: Callable[[str], None] | None

    @classmethod
    def build(
        cls,
        texts: Sequence[str],
        y_fit: np.ndarray,
        n_classes: int,
        folds: int,
        opts: NoiseOptions,
        embeddings: np.ndarray | None,
        progress: Callable[[str], None] | None,
    ) -> _RepeatedEnsemble:
        learners = tuple(opts.learners)
        feats = text_features(texts) if set(learners) & set(TEXT_LEARNERS) else None
        split_sets = [
            stratified_folds(y_fit, folds, opts.seed + r) for r in range(max(1, opts.repeats))
        ]
        return cls(y_fit, n_classes, learners, split_sets, feats, embeddings, opts.seed, progress)

    def probs(self, exclude: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(n, k) ensemble probabilities and each learner's own; ``exclude`` (bool, n): rows
        left out of training (still predicted)."""
        runs = [
            ensemble_probs(
                self.y_fit,
                self.n_classes,
                self.learners,
                splits,
                self.feats,
                self.embeddings,
                exclude=exclude,
                seed=self.seed,
                progress=self.progress,
            )
            for splits in self.split_sets
        ]
        mean = np.mean([p for p, _ in runs], axis=0)
        each = {name: np.mean([d[name] for _, d in runs], axis=0) for name in self.learners}
        return mean, each


def noise_result(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    ranking: str,
    filter_by: str,
    folds: int,
    learners: tuple[str, ...],
    class_prior: str = "observed",
    **extra,
) -> NoiseResult:
    """Label quality, the issue set and the predicted label from out-of-sample ``probs``
    (the last step of every engine), after ``adjust_to_prior`` to ``class_prior``."""
    probs = adjust_to_prior(probs, y, parse_class_prior(class_prior, classes))
    pred = probs.argmax(axis=1)
    for name, share in never_predicted(y, pred, classes):
        log.warning(
            "no record is predicted %r although %.0f%% of the labels are: its label errors cannot "
            "be told from the rest; if annotators over-used another class, rescore with "
            "--class-prior uniform (or label=share,...)",
            name,
            100 * share,
        )
    return NoiseResult(
        classes=list(classes),
        pred_probs=probs,
        label_quality=quality_scores(y, probs, ranking),
        label_issue=issue_mask(y, probs, filter_by, ranking),
        predicted_label=[classes[i] for i in pred],
        predicted_prob=probs[np.arange(len(pred)), pred],
        folds=folds,
        learners=learners,
        **extra,
    )


# --------------------------------------------------------------------------------------------
# Outliers (Datalab-style, on embeddings or any dense features)


OUTLIER_THRESHOLD = 0.37037  # Datalab's default for feature-based outliers
KNN_BLOCK_CELLS = 2**24  # similarity cells per block of knn_cosine_distances (64 MiB of float32)


def knn_cosine_distances(features: np.ndarray, k: int) -> np.ndarray:
    """Cosine distances from every row to its ``k`` nearest other rows, ascending, shape (n, k).

    ``thresher.neighbours.cosine_knn``: exact blocked float32 matmul up to
    ``EXACT_MAX_ROWS`` rows (memory O(n·k) plus one block of ``KNN_BLOCK_CELLS``), an ANN index
    above it when usearch is installed (exact distances, recall@10 ≥ 0.95). ``features`` may be
    a float16 memmap. A zero vector is at distance 1 from every row. A row is never its own
    neighbour; an identical row is, at distance 0."""
    from thresher.neighbours import cosine_knn

    dist, _ = cosine_knn(features, k, exclude_self=True, block_cells=KNN_BLOCK_CELLS)
    return dist


def outlier_scores(features: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Datalab-style kNN outlier scores in (0, 1] (low = atypical) and a near-OOD flag.

    Score: ``exp(-d / median(d))`` with ``d`` the mean cosine distance to the ``k`` nearest
    neighbours. Flag: ``d > Q3 + (1/t - 1) * IQR`` with Datalab's default ``t``."""
    n = features.shape[0]
    if n < 3:
        return np.ones(n), np.zeros(n, dtype=bool)
    d = knn_cosine_distances(features, min(k, n - 1)).mean(axis=1, dtype=np.float64)
    scale = max(float(np.median(d)), 1e-12)
    scores = np.exp(-d / scale)
    q1, q3 = np.percentile(d, [25, 75])
    flag = d > q3 + (1 / OUTLIER_THRESHOLD - 1) * (q3 - q1)
    return scores, flag


# --------------------------------------------------------------------------------------------
# Several labels per record


@dataclass
class MultiAnnotatorResult:
    """Consensus per record and quality per annotator (CROWDLAB, cleanlab.multiannotator)."""

    consensus_label: list[str]
    consensus_quality: np.ndarray  # 0..1, low = the consensus is doubtful
    annotator_agreement: np.ndarray  # 0..1, share of annotators agreeing with the consensus
    annotator_quality: dict[str, float]  # 0..1, low = the annotator's labels are often wrong


def score_multiannotator(
    annotations: Sequence[dict[str, str]],
    pred_probs: np.ndarray,
    classes: Sequence[str],
) -> MultiAnnotatorResult:
    """Score records labelled by several annotators: ``annotations[i]`` maps annotator → label
    for record ``i``; ``pred_probs`` are out-of-sample model probabilities over ``classes``."""
    import pandas as pd
    from cleanlab.multiannotator import get_label_quality_multiannotator

    if len(annotations) != pred_probs.shape[0]:
        raise InputError(f"{len(annotations)} annotation rows for {pred_probs.shape[0]} records")
    index = {c: i for i, c in enumerate(classes)}
    annotators = sorted({a for row in annotations for a in row})
    if not annotators:
        raise InputError("no annotator labels to score")
    frame = pd.DataFrame(np.nan, index=range(len(annotations)), columns=annotators)
    for i, row in enumerate(annotations):
        for who, label in row.items():
            if label not in index:
                raise InputError(f"record {i}: annotator {who!r} gave unknown label {label!r}")
            frame.loc[i, who] = index[label]
    if frame.notna().sum(axis=1).min() < 1:
        raise InputError("every record passed to multi-annotator scoring needs at least one label")
    out = get_label_quality_multiannotator(frame, pred_probs, verbose=False)
    quality = out["label_quality"]
    stats = out["annotator_stats"]
    return MultiAnnotatorResult(
        consensus_label=[classes[int(c)] for c in quality["consensus_label"]],
        consensus_quality=quality["consensus_quality_score"].to_numpy(dtype=float),
        annotator_agreement=quality["annotator_agreement"].to_numpy(dtype=float),
        annotator_quality={str(who): float(q) for who, q in stats["annotator_quality"].items()},
    )
