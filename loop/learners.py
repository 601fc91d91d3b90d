"""Learners the loop trains each round: a ``Learner`` protocol and two fast ones for CPU.

- ``EmbeddingLogReg`` ("fast"): sentence embeddings (``curate.embeddings.embed_texts``, cached by
  text hash under the project) + logistic regression. Seconds per round on 10k records.
- ``TfidfLogReg`` ("tfidf"): TF-IDF word/bigram features + logistic regression; no model files,
  for tests and as a cheap baseline.

Any object with ``classes``, ``fit(texts, labels)`` and ``predict_proba(texts)`` plugs in (the
LoRA classifier from ``tune`` is one); ``embed(texts)`` is optional and feeds the diversity step.
``predict_proba`` columns always follow ``classes`` (the full label set given up front), so a
round whose labelled set lacks a class still yields an (n, k) matrix (zeros for that class).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from loop.errors import LearnerError

log = logging.getLogger(__name__)

LEARNERS = ("fast", "tfidf")


@runtime_checkable
class Learner(Protocol):
    """What the loop needs from a model: fit on labelled texts, class probabilities out."""

    classes: tuple[str, ...]

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> Learner: ...

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


def _check_fit(classes: Sequence[str], texts: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    if len(texts) != len(labels):
        raise LearnerError(f"{len(texts)} texts but {len(labels)} labels")
    if not len(texts):
        raise LearnerError("no labelled texts to train on; label a seed set first")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(lab) for lab in labels if lab not in index})
    if unknown:
        raise LearnerError(f"labels {unknown[:5]} are not in the class list {list(classes)}")
    return np.array([index[lab] for lab in labels], dtype=np.int64)


class _LogRegHead:
    """Logistic regression whose probabilities are spread onto the full class list."""

    def __init__(self, n_classes: int, c: float, seed: int) -> None:
        self.n_classes = n_classes
        self.c = c
        self.seed = seed
        self.model = None
        self.only: int | None = None

    def fit(self, x, y: np.ndarray) -> None:
        seen = np.unique(y)
        if len(seen) == 1:  # LR needs two classes; a one-class seed predicts that class
            self.only, self.model = int(seen[0]), None
            return
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        self.only = None
        self.model = LogisticRegression(C=self.c, max_iter=2000, random_state=self.seed)
        # lbfgs on a few thousand rows is slower with BLAS threads (3x here, on a busy CPU).
        with threadpool_limits(limits=1, user_api="blas"):
            self.model.fit(x, y)

    def predict_proba(self, x) -> np.ndarray:
        n = x.shape[0]
        out = np.zeros((n, self.n_classes), dtype=np.float64)
        if self.only is not None:
            out[:, self.only] = 1.0
            return out
        if self.model is None:
            raise LearnerError("the learner is not trained yet; call fit first")
        out[:, self.model.classes_] = self.model.predict_proba(x)
        return out


class EmbeddingLogReg:
    """Sentence embeddings + logistic regression (the "fast" learner).

    Embeddings are memoized in memory per text and cached on disk (``cache_dir``), so repeated
    rounds and simulations embed each text once."""

    def __init__(
        self,
        classes: Sequence[str],
        *,
        model: str | None = "default",
        cache_dir: Path | None = None,
        c: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.classes = tuple(classes)
        self.model_name = model
        self.cache_dir = cache_dir
        self._head = _LogRegHead(len(self.classes), c, seed)
        self._memo: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        # the in-memory embedding memo is a cache, not model state: keep pickles small
        return {**self.__dict__, "_memo": {}}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized float32 embeddings (n, dim)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            from curate.embeddings import embed_texts

            vectors = embed_texts(missing, self.model_name, cache_dir=self.cache_dir)
            self._memo.update(zip(missing, vectors, strict=True))
        if not len(texts):
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> EmbeddingLogReg:
        y = _check_fit(self.classes, texts, labels)
        self._head.fit(self.embed(texts), y)
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self._head.predict_proba(self.embed(texts))


class TfidfLogReg:
    """TF-IDF (words + bigrams, sublinear tf) + logistic regression (the "tfidf" learner).

    ``vocabulary_texts`` (e.g. the whole pool) fixes the vocabulary once; otherwise it is
    refitted on each call's training texts."""

    def __init__(
        self,
        classes: Sequence[str],
        *,
        vocabulary_texts: Sequence[str] | None = None,
        c: float = 10.0,
        seed: int = 0,
    ) -> None:
        self.classes = tuple(classes)
        self._head = _LogRegHead(len(self.classes), c, seed)
        self._vectorizer = None
        self._frozen = False
        if vocabulary_texts is not None:
            self._vectorizer = self._new_vectorizer().fit(list(vocabulary_texts))
            self._frozen = True

    @staticmethod
    def _new_vectorizer():
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> TfidfLogReg:
        y = _check_fit(self.classes, texts, labels)
        if not self._frozen:
            self._vectorizer = self._new_vectorizer().fit(list(texts))
        self._head.fit(self._vectorizer.transform(list(texts)), y)
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if self._vectorizer is None:
            raise LearnerError("the learner is not trained yet; call fit first")
        return self._head.predict_proba(self._vectorizer.transform(list(texts)))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Dense L2-normalized TF-IDF rows, for the diversity step on small data."""
        if self._vectorizer is None:
            raise LearnerError("the learner has no vocabulary yet; call fit first")
        return self._vectorizer.transform(list(texts)).toarray().astype(np.float32)


def make_learner(
    name: str,
    classes: Sequence[str],
    *,
    pool_texts: Sequence[str] | None = None,
    embedding_model: str | None = "default",
    cache_dir: Path | None = None,
    seed: int = 0,
) -> Learner:
    """Build a learner by name: ``fast`` (embeddings + LR) or ``tfidf`` (TF-IDF + LR)."""
    if len(set(classes)) < 2:
        raise LearnerError(f"need at least 2 classes, got {list(classes)}")
    if name == "fast":
        return EmbeddingLogReg(classes, model=embedding_model, cache_dir=cache_dir, seed=seed)
    if name == "tfidf":
        return TfidfLogReg(classes, vocabulary_texts=pool_texts, seed=seed)
    raise LearnerError(f"unknown learner {name!r}; use one of {', '.join(LEARNERS)}")
