"""Two-sample drift tests over arrays: served traffic against a reference (the training set).

Pure functions: validate, then compute. Every test returns a ``DriftTest`` whose ``p_value`` is
small when the traffic differs from the reference in the direction the test looks at:

- ``embedding_mmd``: squared maximum mean discrepancy between two embedding samples (RBF kernel,
  median-heuristic bandwidth); high = the samples differ; permutation p-value.
- ``label_shift``: chi-square test of the predicted-label counts (traffic vs reference); the
  statistic is chi-square, high = the label mix moved; ``psi`` reported beside it.
- ``confidence_drop``: one-sided Mann-Whitney U that traffic max-probabilities are *lower*.
- ``near_ood_share``: share of traffic whose k-NN cosine distance to the training embeddings is
  above the 95th percentile of the reference distances (the monitor uses leave-one-out training
  distances); one-sided test that it exceeds 5 % (beta-binomial: exact with the threshold
  estimated from the reference).
- ``mention_shift``: two-proportion z-test of a slice's mention rate (either direction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from thresher.errors import ThresherError


@dataclass(frozen=True)
class DriftTest:
    """One test's result. ``p_value`` small = evidence of drift; ``details`` are test-specific."""

    name: str
    statistic: float
    p_value: float
    n_reference: int
    n_traffic: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _matrix(x, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or len(arr) < 2:
        raise ThresherError(f"{what}: expected a 2-D array with at least 2 rows, got {arr.shape}")
    return arr


def _subsample(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= limit else x[np.sort(rng.choice(len(x), limit, replace=False))]


def embedding_mmd(
    reference,
    traffic,
    *,
    permutations: int = 200,
    max_per_side: int = 2000,
    seed: int = 0,
) -> DriftTest:
    """MMD² (biased V-statistic) with an RBF kernel whose bandwidth is the median pairwise
    distance of the pooled sample. High = the two samples differ. The p-value is the share of
    label permutations with an MMD² at least as large (with the +1 correction, so never 0).
    Each side is subsampled to ``max_per_side`` rows with ``seed``."""
    rng = np.random.default_rng(seed)
    ref = _subsample(_matrix(reference, "reference embeddings"), max_per_side, rng)
    cur = _subsample(_matrix(traffic, "traffic embeddings"), max_per_side, rng)
    if ref.shape[1] != cur.shape[1]:
        raise ThresherError(f"embedding sizes differ: {ref.shape[1]} vs {cur.shape[1]}")
    pooled = np.vstack([ref, cur])
    sq = np.square(pooled).sum(axis=1)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * pooled @ pooled.T, 0.0)
    upper = dist2[np.triu_indices(len(pooled), k=1)]
    bandwidth2 = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    kernel = np.exp(-dist2 / bandwidth2)
    n_ref, n_cur = len(ref), len(cur)
    # MMD² = wᵀKw with w = +1/n_ref on reference rows and -1/n_cur on traffic rows.
    base = np.concatenate([np.full(n_ref, 1.0 / n_ref), np.full(n_cur, -1.0 / n_cur)])
    weights = np.empty((len(base), permutations + 1))
    weights[:, 0] = base
    for j in range(1, permutations + 1):
        weights[:, j] = rng.permutation(base)
    stats = np.einsum("ij,ij->j", weights, kernel @ weights)
    observed = float(stats[0])
    p_value = (1 + int(np.sum(stats[1:] >= observed))) / (permutations + 1)
    details = {"bandwidth": float(np.sqrt(bandwidth2)), "permutations": permutations}
    return DriftTest("embedding", observed, p_value, n_ref, n_cur, details)


def psi(reference_share, traffic_share, eps: float = 1e-4) -> float:
    """Population stability index Σ (t - r) ln(t / r) over categories; 0 = same mix, higher =
    more shift (> 0.2 is the conventional alarm). Shares are floored at ``eps``."""
    r = np.maximum(np.asarray(reference_share, dtype=np.float64), eps)
    t = np.maximum(np.asarray(traffic_share, dtype=np.float64), eps)
    return float(np.sum((t - r) * np.log(t / r)))


def label_shift(
    reference_labels: Sequence[str], traffic_labels: Sequence[str], labels: Sequence[str]
) -> DriftTest:
    """Chi-square test of homogeneity on the 2 × K table of predicted-label counts (reference
    vs traffic). High statistic / low p = the predicted-label mix moved. ``psi`` in details."""
    from scipy.stats import chi2_contingency

    if len(reference_labels) == 0 or len(traffic_labels) == 0:
        raise ThresherError("label shift needs predicted labels on both sides")
    classes = list(dict.fromkeys([*labels, *sorted(set(reference_labels) | set(traffic_labels))]))
    ref_counts = np.array([sum(1 for y in reference_labels if y == c) for c in classes], float)
    cur_counts = np.array([sum(1 for y in traffic_labels if y == c) for c in classes], float)
    seen = (ref_counts + cur_counts) > 0
    table = np.vstack([ref_counts[seen], cur_counts[seen]])
    if table.shape[1] < 2:
        statistic, p_value = 0.0, 1.0
    else:
        statistic, p_value, _, _ = chi2_contingency(table, correction=False)
    ref_share = ref_counts / ref_counts.sum()
    cur_share = cur_counts / cur_counts.sum()
    details = {
        "psi": psi(ref_share, cur_share),
        "labels": classes,
        "reference_share": [float(v) for v in ref_share],
        "traffic_share": [float(v) for v in cur_share],
    }
    return DriftTest(
        "label_distribution",
        float(statistic),
        float(p_value),
        len(reference_labels),
        len(traffic_labels),
        details,
    )


def confidence_drop(reference_conf, traffic_conf) -> DriftTest:
    """One-sided Mann-Whitney U that traffic confidences (max probability) are lower than the
    reference's. The statistic is the traffic's U; the details give the common-language effect
    ``p_traffic_lower`` = P(traffic < reference) (0.5 = no shift, higher = lower confidence)."""
    from scipy.stats import mannwhitneyu

    ref = np.asarray(reference_conf, dtype=np.float64)
    cur = np.asarray(traffic_conf, dtype=np.float64)
    if len(ref) == 0 or len(cur) == 0:
        raise ThresherError("confidence drop needs probabilities on both sides")
    result = mannwhitneyu(cur, ref, alternative="less")
    details = {
        "p_traffic_lower": 1.0 - float(result.statistic) / (len(cur) * len(ref)),
        "reference_median": float(np.median(ref)),
        "traffic_median": float(np.median(cur)),
    }
    return DriftTest(
        "confidence", float(result.statistic), float(result.pvalue), len(ref), len(cur), details
    )


def knn_distance(
    queries, index, k: int = 5, exclude_self: bool = False, chunk: int = 4096
) -> np.ndarray:
    """Mean cosine distance (1 - cosine) of each query row to its ``k`` nearest ``index`` rows
    (rows L2-normalized here). High = far from the training data. ``exclude_self`` drops exact
    matches (distance ≈ 0), for queries that are themselves in the index. Queries are taken
    ``chunk`` rows at a time, so memory stays at ``chunk`` × len(index) distances. An index above
    ``thresher.neighbours.EXACT_MAX_ROWS`` rows is searched through an ANN index instead (when
    usearch is installed; float16 memmaps are read a block at a time)."""
    from thresher.neighbours import use_ann

    if use_ann(len(index)):
        return _ann_knn_distance(queries, index, k, exclude_self)
    q = _unit(np.asarray(queries, dtype=np.float64))
    x = _unit(np.asarray(index, dtype=np.float64))
    k = max(1, min(k, x.shape[0] - (1 if exclude_self else 0)))
    out = np.empty(len(q))
    for start in range(0, len(q), chunk):
        dist = 1.0 - q[start : start + chunk] @ x.T
        if exclude_self:
            dist[dist < 1e-9] = np.inf
        out[start : start + chunk] = np.partition(dist, k - 1, axis=1)[:, :k].mean(axis=1)
    return out


SELF_DISTANCE = 1e-6  # ann path: an index row this close to the query is the query itself
SELF_MARGIN = 8  # ann path: extra neighbours fetched to make up for dropped exact matches


def _ann_knn_distance(queries, index, k: int, exclude_self: bool) -> np.ndarray:
    """``knn_distance`` through ``thresher.neighbours`` (float32 exact distances of the ANN
    candidates; exact matches dropped up to ``SELF_MARGIN`` per query)."""
    from thresher.neighbours import cosine_knn

    n = len(index)
    k = max(1, min(k, n - (1 if exclude_self else 0)))
    fetch = min(n, k + SELF_MARGIN) if exclude_self else k
    dist, _ = cosine_knn(index, fetch, queries=queries, method="ann")
    dist = dist.astype(np.float64)
    if exclude_self:
        dist[dist < SELF_DISTANCE] = np.inf
        dist = np.sort(dist, axis=1)
        # a query with more than SELF_MARGIN exact copies keeps its farthest fetched neighbours
        finite = np.isfinite(dist)
        farthest = np.maximum(np.where(finite, dist, -np.inf).max(axis=1, keepdims=True), 0.0)
        dist = np.where(finite, dist, farthest)
    return dist[:, :k].mean(axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def near_ood_share(reference_distances, traffic_distances, *, quantile: float = 0.95) -> DriftTest:
    """Share of traffic with a k-NN distance above the ``quantile`` of ``reference_distances``
    (distances of texts from the training distribution: held-out texts, or training texts
    leave-one-out); one-sided test that the share exceeds ``1 - quantile``. High share /
    low p = more traffic far from anything the model was trained on.

    The threshold is the reference's r-th smallest distance, r = ⌈quantile·(m+1)⌉ of m. Under
    no drift (traffic exchangeable with the reference) the chance a traffic text lies above it is
    Beta(m+1-r, r), so the count above is beta-binomial: an exact p-value that accounts for the
    threshold being estimated (a plain binomial at 5 % over-alarms when m is small)."""
    from scipy.stats import betabinom

    ref = np.sort(np.asarray(reference_distances, dtype=np.float64))
    cur = np.asarray(traffic_distances, dtype=np.float64)
    if len(ref) == 0 or len(cur) == 0:
        raise ThresherError("near-OOD share needs distances on both sides")
    m = len(ref)
    r = min(m, max(1, int(np.ceil(quantile * (m + 1)))))
    threshold = float(ref[r - 1])
    above = int(np.sum(cur > threshold))
    p_value = float(betabinom.sf(above - 1, len(cur), m + 1 - r, r))
    details = {
        "threshold": threshold,
        "above": above,
        "expected_share": (m + 1 - r) / (m + 1),
    }
    return DriftTest("near_ood", above / len(cur), min(1.0, p_value), m, len(cur), details)


def mention_shift(ref_hits: int, ref_n: int, cur_hits: int, cur_n: int, name: str) -> DriftTest:
    """Two-proportion z-test (pooled variance, two-sided) of a slice's mention rate; the
    statistic is z (positive = the traffic mentions the slice more often)."""
    from scipy.stats import norm

    if ref_n <= 0 or cur_n <= 0:
        raise ThresherError(f"slice {name!r}: mention shift needs records on both sides")
    p_ref, p_cur = ref_hits / ref_n, cur_hits / cur_n
    pooled = (ref_hits + cur_hits) / (ref_n + cur_n)
    se = np.sqrt(pooled * (1 - pooled) * (1 / ref_n + 1 / cur_n))
    z = 0.0 if se == 0 else (p_cur - p_ref) / se
    p_value = float(2 * norm.sf(abs(z)))
    details = {"reference_rate": p_ref, "traffic_rate": p_cur}
    return DriftTest(name, float(z), p_value, ref_n, cur_n, details)


def bonferroni(p_values: Sequence[float], alpha: float) -> tuple[float, list[bool]]:
    """The per-test threshold ``alpha / m`` and which p-values fall below it (family-wise error
    rate ≤ alpha for any dependence between the tests)."""
    m = max(1, len(p_values))
    threshold = alpha / m
    return threshold, [p < threshold for p in p_values]
