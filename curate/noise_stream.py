"""Streaming label-noise scoring: exact K-fold naive Bayes from sufficient statistics.

Pure functions over batches; nothing here holds more than one batch of texts or features.

- Features (``featurize``): word 1-2 grams and char_wb 2-5 grams, hashed (stateless, so every
  batch and every worker gets the same columns without a fitted vocabulary), ``log1p`` term
  frequencies, each view L2-normalised per record.
- Folds (``fold_ids``): a keyed hash of the record id, so the split is the same whatever the order
  or batching of the input (input files are often sorted by class: a hash split is shuffled).
- Pass 1 (``batch_counts``): per fold and class, the summed feature vectors and record counts:
  multinomial naive Bayes' sufficient statistics. Sums are associative, so batches can be summed
  in any order and on any number of workers (Ray's ``map_batches`` + a reduce on the driver).
- The out-of-sample model of fold ``f`` is ``total - fold f``: exact K-fold cross-validation
  without retraining. Unlabeled records are predicted by the model of all labeled records.
- Pass 2 (``NBModel.scores``): each record's log-likelihoods under its fold's model, for a small
  grid of smoothing values ``alphas``; ``calibrate`` fits a multinomial logistic map (temperature
  and class offsets: k + k*k numbers) on those out-of-sample scores and keeps the ``alpha`` with
  the lowest log loss. The (n, k) probabilities then go through the same cleanlab scoring as the
  in-memory path (``curate.noise.quality_scores`` / ``issue_mask``).

Score directions as in ``curate.noise``: ``label_quality`` low = the label is likely wrong.
Memory: the model is ``8 * (folds + 1) * classes * 2 * n_features`` bytes (2**19 features per
view, 5 folds, 2 classes: ~100 MB); per record the driver keeps ``8 * classes * len(alphas)``
bytes of scores.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

VIEW_FEATURES = 2**19  # hashed columns per view (word, char): 2**20 in all
# NB smoothing grid; each run keeps the value with the lowest out-of-sample log loss.
ALPHAS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
LEARNER = "nb_hashed"


# --------------------------------------------------------------------------------------------
# Features and folds


CHAR_NGRAMS = (2, 5)
_PRIME = np.uint64(1099511628211)
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


@lru_cache(maxsize=4)
def _word_vectorizer(n_features: int):
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        ngram_range=(1, 2), n_features=n_features, alternate_sign=False, norm=None
    )


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads the polynomial hash over all 64 bits."""
    h = h ^ (h >> _S33)
    h = h * _MIX1
    h = h ^ (h >> _S33)
    h = h * _MIX2
    return h ^ (h >> _S33)


def char_ngrams(texts: Sequence[str], n_features: int, ngrams: tuple[int, int] = CHAR_NGRAMS):
    """Hashed character n-gram counts inside word boundaries (scikit-learn's ``char_wb``: each
    word padded with one space, n-grams never span two words), computed for the whole batch at
    once with numpy over code points (about 20x faster than the per-document analyzer). CSR
    (n, n_features) float64 counts; the same text gives the same row anywhere."""
    import scipy.sparse as sp

    words = [" ".join(t.replace("\x00", " ").lower().split()) for t in texts]
    docs = [f" {w} " if w else "" for w in words]
    if not docs:
        return sp.csr_matrix((0, n_features))
    cp = np.frombuffer("\x00".join(docs).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    sep = cp == 0
    space = cp == 32
    doc = np.cumsum(sep)
    rows, cols = [], []
    lo, hi = ngrams
    with np.errstate(over="ignore"):
        for n in range(lo, hi + 1):
            m = cp.shape[0] - n + 1
            if m <= 0:
                continue
            h = np.full(m, np.uint64(n))
            bad = np.zeros(m, dtype=bool)
            for j in range(n):
                h = h * _PRIME + cp[j : j + m]
                bad |= sep[j : j + m]
                if 0 < j < n - 1:
                    bad |= space[j : j + m]  # an inner space: the n-gram spans two words
            keep = ~bad
            rows.append(doc[:m][keep])
            cols.append((_mix(h[keep]) % np.uint64(n_features)).astype(np.int64))
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    return sp.csr_matrix((np.ones(r.shape[0]), (r, c)), shape=(len(docs), n_features))


def featurize(texts: Sequence[str], n_features: int = VIEW_FEATURES):
    """(n, 2 * n_features) CSR float64: [word 1-2 gram view | char_wb 2-5 gram view], hashed,
    log1p counts, each view L2-normalised. Stateless: the same text gives the same row in any
    batch, process or machine."""
    import scipy.sparse as sp
    from sklearn.preprocessing import normalize

    texts = list(texts)
    if not texts:
        return sp.csr_matrix((0, 2 * n_features))
    word = _word_vectorizer(n_features).transform(texts)
    char = char_ngrams(texts, n_features)
    views = [normalize(v.log1p(), copy=False) for v in (word, char)]
    return sp.hstack(views, format="csr")


def fold_ids(ids: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Fold (0..folds-1) of each record: a keyed BLAKE2b hash of its id, independent of input
    order and batching; about 1/folds of every class lands in each fold."""
    key = str(seed).encode()[:64]
    out = np.empty(len(ids), dtype=np.int64)
    for i, rid in enumerate(ids):
        digest = hashlib.blake2b(str(rid).encode(), digest_size=8, key=key).digest()
        out[i] = int.from_bytes(digest, "little") % folds
    return out


# --------------------------------------------------------------------------------------------
# Pass 1: sufficient statistics


@dataclass
class CountPart:
    """One batch's sufficient statistics, sparse: ``counts.flat[keys] += values``; ``docs`` (K, k)
    labeled records per fold and class."""

    keys: np.ndarray  # int64 flat indices into a (K, k, D) array, unique
    values: np.ndarray  # float64
    docs: np.ndarray  # (K, k) int64


def batch_counts(X, y: np.ndarray, fold: np.ndarray, folds: int, n_classes: int) -> CountPart:
    """Per fold and class, the summed feature rows of the batch's labeled records (y >= 0)."""
    import scipy.sparse as sp

    labeled = np.flatnonzero(y >= 0)
    groups = fold[labeled] * n_classes + y[labeled]
    docs = np.bincount(groups, minlength=folds * n_classes).reshape(folds, n_classes)
    if labeled.size == 0:
        return CountPart(np.zeros(0, np.int64), np.zeros(0), docs.astype(np.int64))
    indicator = sp.csr_matrix(
        (np.ones(labeled.size), (groups, np.arange(labeled.size))),
        shape=(folds * n_classes, labeled.size),
    )
    summed = (indicator @ X[labeled]).tocoo()
    keys = summed.row.astype(np.int64) * X.shape[1] + summed.col.astype(np.int64)
    return CountPart(keys, summed.data.astype(np.float64), docs.astype(np.int64))


@dataclass
class NBStats:
    """Summed sufficient statistics over all batches so far (the reduce side of pass 1)."""

    counts: np.ndarray  # (K, k, D) float64 feature mass per fold and class
    docs: np.ndarray  # (K, k) int64 labeled records per fold and class

    @classmethod
    def zeros(cls, folds: int, n_classes: int, n_columns: int) -> NBStats:
        return cls(
            np.zeros((folds, n_classes, n_columns)), np.zeros((folds, n_classes), dtype=np.int64)
        )

    def add(self, part: CountPart) -> None:
        flat = self.counts.reshape(-1)
        flat[part.keys] += part.values  # keys are unique within a part
        self.docs += part.docs


@dataclass
class NBModel:
    """Out-of-sample multinomial NB models: fold ``f`` is trained on every fold but ``f``; index
    ``folds`` (used for fold -1, the unlabeled records) on all labeled records."""

    fold_counts: np.ndarray  # (K, k, D)
    total: np.ndarray  # (k, D)
    mass: np.ndarray  # (K + 1, k) summed feature mass of each model's training data
    docs: np.ndarray  # (K + 1, k) training records per class of each model
    alphas: tuple[float, ...] = ALPHAS

    @classmethod
    def from_stats(cls, stats: NBStats, alphas: Sequence[float] = ALPHAS) -> NBModel:
        total = stats.counts.sum(axis=0)
        mass_total = total.sum(axis=1)
        mass = np.vstack([mass_total - stats.counts.sum(axis=2), mass_total[None, :]])
        docs_total = stats.docs.sum(axis=0)
        docs = np.vstack([docs_total - stats.docs, docs_total[None, :]])
        return cls(stats.counts, total, np.maximum(mass, 0.0), docs, tuple(alphas))

    @property
    def folds(self) -> int:
        return int(self.fold_counts.shape[0])

    def log_prior(self, f: int) -> np.ndarray:
        """(k,) add-one smoothed log class prior of fold ``f``'s model (-1: all-data model)."""
        docs = self.docs[self.folds if f < 0 else f].astype(np.float64)
        return np.log(docs + 1.0) - np.log(docs.sum() + docs.shape[0])

    def scores(self, X, fold: np.ndarray) -> np.ndarray:
        """(n, len(alphas), k) log P(class) + sum_j x_j log P(j | class) of each record under
        the model that did not see it (``fold`` -1: the all-data model). Only the batch's
        non-zero columns are touched, so a batch costs O(its non-zeros), not O(D)."""
        n_classes, n_columns = self.total.shape
        out = np.zeros((X.shape[0], len(self.alphas), n_classes))
        if X.shape[0] == 0:
            return out
        present = np.zeros(n_columns, dtype=bool)  # faster than np.unique on millions of ids
        present[X.indices] = True
        cols = np.flatnonzero(present)
        Xc = X[:, cols].tocsr()
        total = self.total[:, cols]
        for f in np.unique(fold).tolist():
            rows = np.flatnonzero(fold == f)
            m = self.folds if f < 0 else f
            train = total if f < 0 else np.maximum(total - self.fold_counts[f][:, cols], 0.0)
            prior = self.log_prior(f)
            Xf = Xc[rows]
            for a, alpha in enumerate(self.alphas):
                denom = np.log(self.mass[m] + n_columns * alpha)
                log_theta = np.log(train + alpha) - denom[:, None]
                out[rows, a, :] = np.asarray(Xf @ log_theta.T) + prior
        return out


# --------------------------------------------------------------------------------------------
# Calibration


@dataclass
class Calibration:
    """The chosen smoothing and the probabilities it gives (rows sum to 1)."""

    probs: np.ndarray  # (n, k)
    alpha: float
    log_loss: dict[float, float] = field(default_factory=dict)  # per alpha, on labeled records


def _fit_map(Z: np.ndarray, y: np.ndarray, n_classes: int, max_fit: int, seed: int):
    from sklearn.linear_model import LogisticRegression

    rows = np.flatnonzero(y >= 0)
    if rows.size > max_fit:  # a seeded sample is plenty for k + k*k parameters
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_fit, replace=False))
    lr = LogisticRegression(C=1.0, max_iter=1000)
    lr.fit(Z[rows], y[rows])
    return lr


def _expand_probs(lr, Z: np.ndarray, n_classes: int) -> np.ndarray:
    probs = np.zeros((Z.shape[0], n_classes))
    probs[:, lr.classes_] = lr.predict_proba(Z)
    probs = np.clip(probs, 1e-9, None)
    return probs / probs.sum(axis=1, keepdims=True)


def calibrate(
    scores: np.ndarray, y: np.ndarray, *, alphas: Sequence[float] = ALPHAS, max_fit: int = 200_000,
    seed: int = 0,
) -> Calibration:  # fmt: skip
    """Probabilities from out-of-sample NB scores (n, A, k): per smoothing value, a multinomial
    logistic map on the centred log-likelihoods (raw NB posteriors are near 0/1 on long n-gram
    vectors); keeps the smoothing with the lowest log loss on the labeled records."""
    from sklearn.metrics import log_loss

    n_classes = scores.shape[2]
    labeled = y >= 0
    best: tuple[float, float, np.ndarray] | None = None
    losses: dict[float, float] = {}
    for a, alpha in enumerate(alphas):
        Z = scores[:, a, :] - scores[:, a, :].mean(axis=1, keepdims=True)
        lr = _fit_map(Z, y, n_classes, max_fit, seed)
        probs = _expand_probs(lr, Z, n_classes)
        loss = float(log_loss(y[labeled], probs[labeled], labels=list(range(n_classes))))
        losses[float(alpha)] = round(loss, 6)
        if best is None or loss < best[0]:
            best = (loss, float(alpha), probs)
    assert best is not None
    log.info("stream NB: alpha %g (log loss %.4f)", best[1], best[0])
    return Calibration(probs=best[2], alpha=best[1], log_loss=losses)


def label_codes(labels, classes: Sequence[str]) -> np.ndarray:
    """Label values (None = unlabeled) → codes over ``classes`` (-1 = unlabeled or unknown)."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([-1 if v is None else index.get(str(v), -1) for v in labels], dtype=np.int64)
