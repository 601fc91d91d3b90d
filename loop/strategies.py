"""Query strategies: given the model's probabilities on the pool, which rows to label next.

The interface is tiny (as in small-text): a strategy is a callable

    strategy(probs, n, *, embeddings=None, labeled_embeddings=None, seed=0) -> positions

where ``probs`` is an (n_pool, k) array of class probabilities, and the result is an int array of
at most ``n`` distinct row positions into the pool, the most wanted first. The loop owns all state
(which ids are labelled, which round this is); strategies are pure and deterministic for a seed.

Uncertainty scores are pure functions over ``probs``; **high = more uncertain** for all three
(least-confidence ``1 - max p``; margin ``1 - (p1 - p2)``; entropy normalized to 0..1). Ties are
broken deterministically: by the least-confidence score, then by the lower row position.

A diversity step (``"margin+kmeans"``, ``"entropy+coreset"``, ``"margin+badge"``) takes the
``factor * n`` most uncertain rows and keeps ``n`` of them spread over embedding space, so a batch
is not n near-copies. ``"badge"`` (Ash et al., ICLR 2020) runs its step over the whole pool:
k-means++ seeding on the rows' gradient embeddings, which are long for uncertain rows and point
in different directions for different content, so one step trades uncertainty for diversity.
``rereview`` picks *labelled* rows whose label a confident model disputes.

Add your own with ``register_strategy("name", fn)`` (or as a decorator); ``get_strategy(name)``
resolves names, including ``name+kmeans`` / ``name+coreset``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from loop.errors import (
    EmptyPoolError,
    InvalidPredictionsError,
    MissingEmbeddingsError,
    StrategyError,
    UnknownStrategyError,
)

# Scores are rounded before ranking so float noise (0.3000000004 vs 0.3) does not break ties
# differently on different machines.
_DECIMALS = 10
DIVERSITY_METHODS = ("kmeans", "coreset", "badge")


class Strategy(Protocol):
    """Given pool probabilities (n_pool × k), return up to ``n`` row positions, best first."""

    def __call__(
        self,
        probs: np.ndarray,
        n: int,
        *,
        embeddings: np.ndarray | None = None,
        labeled_embeddings: np.ndarray | None = None,
        seed: int = 0,
    ) -> np.ndarray: ...


def check_probs(probs: Any, *, atol: float = 1e-3) -> np.ndarray:
    """Validate an (n, k≥2) probability matrix (finite, non-negative, rows sum to 1)."""
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2:
        raise InvalidPredictionsError(f"probabilities must be 2-D (n × k), got shape {arr.shape}")
    if arr.shape[0] and arr.shape[1] < 2:
        raise InvalidPredictionsError(f"need at least 2 classes, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidPredictionsError("probabilities contain NaN or infinity")
    if (arr < -1e-9).any():
        raise InvalidPredictionsError("probabilities contain negative values")
    sums = arr.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
    if bad.size:
        raise InvalidPredictionsError(
            f"row {int(bad[0])} of the probabilities sums to {sums[bad[0]]:.4f}, not 1"
        )
    return arr


def _check_n(n: int, pool: int) -> int:
    if not isinstance(n, int | np.integer) or n <= 0:
        raise StrategyError(f"batch size must be a positive integer, got {n!r}")
    if pool == 0:
        raise EmptyPoolError("the unlabelled pool is empty: nothing left to select")
    return min(int(n), pool)


def least_confidence_scores(probs: np.ndarray) -> np.ndarray:
    """``1 - max_c p_c`` per row, in [0, 1 - 1/k]; high = more uncertain."""
    return 1.0 - np.asarray(probs).max(axis=1)


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """``1 - (p_top1 - p_top2)`` per row, in [0, 1]; high = more uncertain (small margin)."""
    top2 = -np.partition(-np.asarray(probs), 1, axis=1)[:, :2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy normalized by ``log k``, in [0, 1]; high = more uncertain."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1) / np.log(p.shape[1])


def rank_by_score(scores: np.ndarray, *tiebreak: np.ndarray) -> np.ndarray:
    """Positions sorted by ``scores`` descending; ties by each ``tiebreak`` (descending), then by
    position ascending. Deterministic."""
    keys = [np.arange(len(scores))]
    keys += [-np.round(t, _DECIMALS) for t in reversed(tiebreak)]
    keys.append(-np.round(scores, _DECIMALS))
    return np.lexsort(keys)


@dataclass(frozen=True)
class Uncertainty:
    """Rank the pool by an uncertainty score (high first); ties by least-confidence, position."""

    score: Callable[[np.ndarray], np.ndarray]
    name: str

    def __call__(
        self,
        probs: np.ndarray,
        n: int,
        *,
        embeddings: np.ndarray | None = None,
        labeled_embeddings: np.ndarray | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        probs = check_probs(probs)
        n = _check_n(n, len(probs))
        order = rank_by_score(self.score(probs), least_confidence_scores(probs))
        return order[:n]


@dataclass(frozen=True)
class RandomSampling:
    """Uniform sample without replacement (the baseline every strategy is measured against)."""

    name: str = "random"

    def __call__(
        self,
        probs: np.ndarray,
        n: int,
        *,
        embeddings: np.ndarray | None = None,
        labeled_embeddings: np.ndarray | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        pool = len(np.asarray(probs))
        n = _check_n(n, pool)
        return np.random.default_rng(seed).permutation(pool)[:n]


@dataclass(frozen=True)
class Diverse:
    """Take the ``factor * n`` rows ``base`` ranks first, keep ``n`` spread over embeddings.

    ``kmeans``: cluster the candidates into n groups, keep each group's most uncertain member.
    ``coreset``: greedy k-center over the candidates, starting from the labelled set's embeddings
    when given (else from the most uncertain candidate). ``badge``: k-means++ seeding over the
    candidates' gradient embeddings (``badge_pick``). ``factor <= 0``: every pool row is a
    candidate. Output is ordered by ``base``'s rank."""

    base: Strategy
    method: str = "kmeans"
    factor: int = 10
    name: str = ""

    def __call__(
        self,
        probs: np.ndarray,
        n: int,
        *,
        embeddings: np.ndarray | None = None,
        labeled_embeddings: np.ndarray | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        probs = check_probs(probs)
        n = _check_n(n, len(probs))
        if embeddings is None:
            raise MissingEmbeddingsError(
                f"strategy {self.name or self.method!r} needs embeddings of the pool"
            )
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(probs):
            raise MissingEmbeddingsError(
                f"embeddings have shape {emb.shape}, expected ({len(probs)}, dim)"
            )
        wanted = len(probs) if self.factor <= 0 else min(len(probs), max(n, self.factor * n))
        candidates = self.base(probs, wanted, seed=seed)
        if len(candidates) <= n:
            return candidates
        if self.method == "kmeans":
            keep = _kmeans_pick(emb[candidates], n, seed)
        elif self.method == "coreset":
            keep = _coreset_pick(emb[candidates], n, labeled_embeddings)
        elif self.method == "badge":
            keep = badge_pick(probs[candidates], emb[candidates], n, seed)
        else:
            raise UnknownStrategyError(
                f"unknown diversity method {self.method!r}; use one of {DIVERSITY_METHODS}"
            )
        return candidates[np.sort(keep)]


def _kmeans_pick(points: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Index (into ``points``, ranked best first) of each k-means cluster's best-ranked member."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    # One thread: on a busy machine OpenMP/BLAS threads made this 17x slower (20 s vs 1.1 s).
    with threadpool_limits(limits=1):
        labels = KMeans(n_clusters=n, n_init=3, random_state=seed).fit_predict(points)
    # points are in rank order, so the first occurrence of each cluster is its most uncertain.
    _, first = np.unique(labels, return_index=True)
    if len(first) < n:  # duplicate points can leave clusters empty: top up by rank
        rest = np.setdiff1d(np.arange(len(points)), first)[: n - len(first)]
        first = np.concatenate([first, rest])
    return first


def coverage_pick(embeddings: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` rows that cover the embedding space, for a first round with no model to rank by:
    k-means into ``n`` clusters, each cluster's member nearest its centre, biggest cluster
    first. Mini-batch k-means above 20,000 rows (full k-means below)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    points = np.asarray(embeddings, dtype=np.float32)
    n = _check_n(n, len(points))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n >= len(points):
        return np.arange(len(points))
    with threadpool_limits(limits=1):
        if len(points) > 20_000:
            model = MiniBatchKMeans(n_clusters=n, n_init=3, random_state=seed, batch_size=4096)
        else:
            model = KMeans(n_clusters=n, n_init=3, random_state=seed)
        labels = model.fit_predict(points)
    dist = np.sum((points - model.cluster_centers_[labels]) ** 2, axis=1)
    picked = []
    for cluster in np.argsort(-np.bincount(labels, minlength=n), kind="stable"):
        members = np.flatnonzero(labels == cluster)
        if len(members):
            picked.append(int(members[np.argmin(dist[members])]))
    if len(picked) < n:  # duplicate points can leave clusters empty: top up in order
        rest = np.setdiff1d(np.arange(len(points)), picked)[: n - len(picked)]
        picked.extend(rest.tolist())
    return np.asarray(picked, dtype=np.int64)


def badge_pick(probs: np.ndarray, embeddings: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """BADGE's batch: ``n`` row positions chosen by k-means++ seeding over the gradient
    embeddings ``g_i = (p_i - onehot(argmax p_i)) ⊗ x_i`` (the gradient of a linear head's
    cross-entropy at the predicted label, for features ``x``; exact for the fast learner).

    The first pick is the longest gradient (the most uncertain row, scaled by ``|x|``); each next
    one is drawn with probability proportional to its squared distance to the nearest pick, with a
    generator seeded by ``seed``. With ``r = p - onehot``,
    ``|g_i - g_j|² = |r_i|²|x_i|² + |r_j|²|x_j|² - 2(r_i·r_j)(x_i·x_j)``, so the (n × k·dim)
    matrix is never built. When every distance is 0
    (e.g. a one-class model), the rest are filled in row order (callers pass rows ranked best
    first). Picks are returned in the order chosen."""
    p = np.asarray(probs, dtype=np.float64)
    x = np.asarray(embeddings, dtype=np.float64)
    rows = len(p)
    n = min(int(n), rows)
    r = p.copy()
    r[np.arange(rows), p.argmax(axis=1)] -= 1.0
    sq = np.round((r * r).sum(axis=1) * (x * x).sum(axis=1), _DECIMALS)
    rng = np.random.default_rng(seed)
    chosen = [int(np.argmax(sq))]  # argmax: the first (best-ranked) on ties
    taken = np.zeros(rows, dtype=bool)
    taken[chosen[0]] = True

    def dist(c: int) -> np.ndarray:
        return np.maximum(sq + sq[c] - 2.0 * (r @ r[c]) * (x @ x[c]), 0.0)

    d = dist(chosen[0])
    while len(chosen) < n:
        weights = np.where(taken, 0.0, np.round(d, _DECIMALS))
        total = weights.sum()
        if total <= 0.0:
            rest = np.flatnonzero(~taken)[: n - len(chosen)]
            chosen.extend(rest.tolist())
            break
        nxt = int(rng.choice(rows, p=weights / total))
        chosen.append(nxt)
        taken[nxt] = True
        d = np.minimum(d, dist(nxt))
    return np.asarray(chosen, dtype=np.int64)


def _coreset_pick(points: np.ndarray, n: int, labeled: np.ndarray | None) -> np.ndarray:
    """Greedy k-center: repeatedly take the candidate farthest from everything chosen so far."""
    chosen: list[int] = []
    if labeled is not None and len(labeled):
        lab = np.asarray(labeled, dtype=np.float32)
        dist = np.min(_sqdist(points, lab), axis=1)
    else:
        chosen.append(0)
        dist = _sqdist(points, points[:1])[:, 0]
    while len(chosen) < n:
        masked = dist.copy()
        masked[chosen] = -np.inf
        nxt = int(np.argmax(np.round(masked, _DECIMALS)))  # argmax: first (best-ranked) on ties
        chosen.append(nxt)
        dist = np.minimum(dist, _sqdist(points, points[nxt : nxt + 1])[:, 0])
    return np.asarray(chosen)


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


# --- re-review of labelled rows -------------------------------------------------------------


@dataclass(frozen=True)
class ReReview:
    """Labelled rows to send back for review, best first, each with its reason.

    ``reasons``: ``model-error`` (a confident model disagrees with the label) or ``conflict``
    (flagged upstream, e.g. cleanlab ``label_issue`` or a duplicate cluster's ``label_conflict``).
    ``scores``: the model's probability of its own prediction for model-error rows, and
    ``1 - p(given label)`` for conflict rows; high = more likely the label is wrong."""

    positions: np.ndarray
    reasons: tuple[str, ...]
    scores: np.ndarray


def rereview(
    probs: np.ndarray,
    labels: np.ndarray,
    n: int | None = None,
    *,
    threshold: float = 0.9,
    flagged: np.ndarray | None = None,
) -> ReReview:
    """Select labelled rows whose human label a confident model disputes.

    ``labels`` are column indices into ``probs`` (−1: unknown, never selected). A row is a
    ``model-error`` when ``argmax p != label`` and ``max p >= threshold``; rows in ``flagged``
    (bool mask) not already chosen follow as ``conflict``. ``n`` caps the count (None: all)."""
    probs = check_probs(probs)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(probs),):
        raise StrategyError(f"labels have shape {labels.shape}, expected ({len(probs)},)")
    if (labels >= probs.shape[1]).any():
        raise StrategyError(f"a label index is ≥ the number of classes ({probs.shape[1]})")
    if not 0.0 < threshold <= 1.0:
        raise StrategyError(f"threshold must be in (0, 1], got {threshold}")
    known = labels >= 0
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    p_given = np.where(known, probs[np.arange(len(probs)), np.maximum(labels, 0)], 1.0)
    errors = np.flatnonzero(known & (pred != labels) & (conf >= threshold))
    errors = errors[rank_by_score(conf[errors], -p_given[errors])]
    positions = [errors]
    reasons = ["model-error"] * len(errors)
    scores = [conf[errors]]
    if flagged is not None:
        mask = np.asarray(flagged, dtype=bool)
        if mask.shape != (len(probs),):
            raise StrategyError(f"flagged has shape {mask.shape}, expected ({len(probs)},)")
        mask = mask & known
        mask[errors] = False
        extra = np.flatnonzero(mask)
        extra = extra[rank_by_score(1.0 - p_given[extra])]
        positions.append(extra)
        reasons += ["conflict"] * len(extra)
        scores.append(1.0 - p_given[extra])
    pos = np.concatenate(positions).astype(np.int64)
    sc = np.concatenate(scores)
    if n is not None:
        pos, sc, reasons = pos[:n], sc[:n], reasons[:n]
    return ReReview(pos, tuple(reasons), sc)


# --- registry -------------------------------------------------------------------------------

_REGISTRY: dict[str, Strategy] = {
    "least-confidence": Uncertainty(least_confidence_scores, "least-confidence"),
    "margin": Uncertainty(margin_scores, "margin"),
    "entropy": Uncertainty(entropy_scores, "entropy"),
    "random": RandomSampling(),
    # BADGE over the whole pool (factor 0): margin only orders the candidates for ties
    "badge": Diverse(Uncertainty(margin_scores, "margin"), "badge", factor=0, name="badge"),
}


def register_strategy(name: str, strategy: Strategy | None = None, *, replace: bool = False):
    """Register ``strategy`` under ``name`` (usable as a decorator when ``strategy`` is None)."""
    if "+" in name or not name:
        raise StrategyError(f"strategy names must be non-empty and without '+': {name!r}")

    def _add(fn: Strategy) -> Strategy:
        if name in _REGISTRY and not replace:
            raise StrategyError(f"a strategy named {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return _add if strategy is None else _add(strategy)


def available_strategies() -> list[str]:
    """Registered names (a diversity suffix ``+kmeans`` / ``+coreset`` / ``+badge`` works on any
    of them)."""
    return sorted(_REGISTRY)


def get_strategy(spec: str, *, factor: int = 10) -> Strategy:
    """Resolve ``name`` or ``name+kmeans`` / ``name+coreset`` / ``name+badge`` to a strategy."""
    name, _, method = spec.strip().partition("+")
    if name not in _REGISTRY:
        raise UnknownStrategyError(
            f"unknown strategy {name!r}; available: {', '.join(available_strategies())}"
            " (optionally with +kmeans, +coreset or +badge)"
        )
    base = _REGISTRY[name]
    if not method:
        return base
    if method not in DIVERSITY_METHODS:
        raise UnknownStrategyError(
            f"unknown diversity step {method!r} in {spec!r}; use +kmeans, +coreset or +badge"
        )
    return Diverse(base, method, factor=factor, name=spec)


def reason_of(spec: str) -> str:
    """The Argilla ``reason`` metadata for rows a strategy picked: uncertain, diverse or random."""
    if "+" in spec:
        return "diverse"
    return "random" if spec.strip() == "random" else "uncertain"
