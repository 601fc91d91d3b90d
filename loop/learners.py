"""Learners the loop trains each round: a ``Learner`` protocol and two fast ones for CPU.

- ``EmbeddingLogReg`` ("fast"): sentence embeddings (``thresher.embeddings.embed_texts``, cached by
  text hash under the project) + logistic regression. Seconds per round on 10k records.
- ``TfidfLogReg`` ("tfidf"): TF-IDF word/bigram features + logistic regression; no model files,
  for tests and as a cheap baseline.

Any object with ``classes``, ``fit(texts, labels)`` and ``predict_proba(texts)`` plugs in (the
LoRA classifier from ``tune`` is one); ``embed(texts)`` is optional and feeds the diversity step.
To run in ``thresher round`` steps it also needs ``save(folder)`` and a classmethod
``load(folder)`` (plain files, no pickle: a project folder may come from someone else) and a
kind registered with ``loop.steps.register_learner``; the learners here save JSON + ``.npz``.
``predict_proba`` columns always follow ``classes`` (the full label set given up front), so a
round whose labelled set lacks a class still yields an (n, k) matrix (zeros for that class).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from loop.errors import LearnerError

log = logging.getLogger(__name__)

LEARNERS = ("fast", "tfidf")
HEAD = "head.npz"
META = "learner_state.json"


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

    def save(self, folder: Path) -> dict:
        """The fitted weights to ``folder/head.npz``; returns the settings for the JSON meta."""
        arrays = {}
        if self.model is not None:
            arrays = {
                "coef": self.model.coef_,
                "intercept": self.model.intercept_,
                "classes": self.model.classes_,
            }
        np.savez(Path(folder) / HEAD, **arrays)
        return {"n_classes": self.n_classes, "c": self.c, "seed": self.seed, "only": self.only}

    @classmethod
    def load(cls, folder: Path, meta: dict) -> _LogRegHead:
        """Inverse of ``save``: plain arrays (``allow_pickle=False``) into a LogisticRegression."""
        head = cls(int(meta["n_classes"]), float(meta["c"]), int(meta["seed"]))
        head.only = None if meta["only"] is None else int(meta["only"])
        with np.load(Path(folder) / HEAD, allow_pickle=False) as arrays:
            if "coef" in arrays:
                from sklearn.linear_model import LogisticRegression

                model = LogisticRegression(C=head.c, max_iter=2000, random_state=head.seed)
                model.coef_ = arrays["coef"]
                model.intercept_ = arrays["intercept"]
                model.classes_ = arrays["classes"]
                model.n_features_in_ = model.coef_.shape[1]
                head.model = model
        return head


def _read_meta(folder: Path, kind: str) -> dict:
    path = Path(folder) / META
    if not path.is_file():
        raise LearnerError(f"{path} not found; rerun the round's train step")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("kind") != kind:
        raise LearnerError(f"{path} holds a {meta.get('kind')!r} learner, not {kind!r}")
    return meta


def _write_meta(folder: Path, meta: dict) -> None:
    (Path(folder) / META).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


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

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized float32 embeddings (n, dim)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            from thresher.embeddings import embed_texts

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

    def save(self, folder: Path) -> None:
        """The head's weights and the settings, as ``.npz`` + JSON (the memo is not saved)."""
        head = self._head.save(folder)
        _write_meta(
            folder,
            {
                "kind": "fast",
                "classes": list(self.classes),
                "model": self.model_name,
                "cached": self.cache_dir is not None,
                "head": head,
            },
        )

    @classmethod
    def load(cls, folder: Path, cache_dir: Path | None = None) -> EmbeddingLogReg:
        """Inverse of ``save``; ``cache_dir``: the embedding cache to use when the saved learner
        had one (the project's, given by the caller: a saved file never names a folder)."""
        meta = _read_meta(folder, "fast")
        learner = cls(
            meta["classes"], model=meta["model"], cache_dir=cache_dir if meta["cached"] else None
        )
        learner._head = _LogRegHead.load(folder, meta["head"])
        return learner


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
    def _new_vectorizer(vocabulary: dict[str, int] | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(
            ngram_range=(1, 2), min_df=1, sublinear_tf=True, vocabulary=vocabulary
        )

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

    def save(self, folder: Path) -> None:
        """Vocabulary (JSON, in column order), idf weights and the head (``.npz``)."""
        head = self._head.save(folder)
        vocabulary = idf = None
        if self._vectorizer is not None:
            terms = self._vectorizer.vocabulary_
            vocabulary = sorted(terms, key=terms.__getitem__)
            idf = self._vectorizer.idf_
        np.savez(Path(folder) / "tfidf.npz", **({"idf": idf} if idf is not None else {}))
        _write_meta(
            folder,
            {
                "kind": "tfidf",
                "classes": list(self.classes),
                "frozen": self._frozen,
                "vocabulary": vocabulary,
                "head": head,
            },
        )

    @classmethod
    def load(cls, folder: Path) -> TfidfLogReg:
        """Inverse of ``save``: the same features and probabilities, no pickle."""
        meta = _read_meta(folder, "tfidf")
        learner = cls(meta["classes"])
        learner._head = _LogRegHead.load(folder, meta["head"])
        learner._frozen = bool(meta["frozen"])
        if meta["vocabulary"] is not None:
            vectorizer = cls._new_vectorizer({t: i for i, t in enumerate(meta["vocabulary"])})
            with np.load(Path(folder) / "tfidf.npz", allow_pickle=False) as arrays:
                vectorizer.idf_ = arrays["idf"]
            learner._vectorizer = vectorizer
        return learner


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
