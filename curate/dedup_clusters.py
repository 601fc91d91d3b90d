"""Dedup's per-row cluster facts (``Clusters``) and the pure numpy rules both engines share.

``curate.dedup`` (the local engine) and ``curate.dedup_ray`` (the whole search on Ray Data) both
number clusters with ``dense_cluster_ids``, so their outputs are identical; the local engine also
picks representatives and label conflicts here (the Ray engine applies the same rules per cluster
on its workers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Clusters:
    """Per-row cluster facts (arrays of length n)."""

    dup_cluster: np.ndarray  # int64, -1 = unique
    exact_dup: np.ndarray  # bool: another row has the same normalised text
    is_representative: np.ndarray  # bool
    label_conflict: np.ndarray  # bool
    semantic_cluster: np.ndarray | None  # int64, -1 = none
    n_clusters: int
    n_exact_clusters: int
    n_near_clusters: int
    n_conflicts: int
    n_semantic: int | None


def dense_cluster_ids(comp: np.ndarray) -> tuple[np.ndarray, int]:
    """Component labels (smallest member index) → 0..C-1 for components of size ≥ 2, numbered in
    the order of their first row; -1 for singletons. Also the number of clusters C."""
    sizes = np.bincount(comp, minlength=len(comp))
    in_cluster = sizes[comp] >= 2
    roots = np.flatnonzero(sizes >= 2)
    lookup = np.full(len(comp), -1, dtype=np.int64)
    lookup[roots] = np.arange(len(roots))
    dense = np.full(len(comp), -1, dtype=np.int64)
    dense[in_cluster] = lookup[comp[in_cluster]]
    return dense, len(roots)


def label_conflicts(cluster: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows whose cluster (-1 = none) holds ≥ 2 distinct non-null label codes (-1 = null); and
    how many clusters do."""
    sel = (cluster >= 0) & (codes >= 0)
    if not sel.any():
        return np.zeros(len(cluster), bool), 0
    n_codes = int(codes.max()) + 1
    pairs = np.unique(cluster[sel] * n_codes + codes[sel]) // n_codes
    n_labels = np.bincount(pairs, minlength=int(cluster.max()) + 1)
    bad = n_labels >= 2
    rows = np.zeros(len(cluster), bool)
    rows[cluster >= 0] = bad[cluster[cluster >= 0]]
    return rows, int(bad.sum())


def choose_representatives(
    cluster: np.ndarray, codes: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """``is_representative`` per row: singletons are; in a cluster, the row with the majority
    label (ties → smallest label code, i.e. alphabetical; null labels do not vote; a cluster with
    no labels ignores this step), then the longest text, then the smallest row index."""
    n = len(cluster)
    rep = cluster < 0
    members = np.flatnonzero(~rep)
    if len(members) == 0:
        return rep
    n_clusters = int(cluster.max()) + 1
    majority = np.full(n_clusters, -1, dtype=np.int64)
    labelled = members[codes[members] >= 0]
    if len(labelled):
        n_codes = int(codes.max()) + 1
        counts = np.bincount(
            cluster[labelled] * n_codes + codes[labelled], minlength=n_clusters * n_codes
        ).reshape(n_clusters, n_codes)
        has = counts.sum(axis=1) > 0
        majority[has] = np.argmax(counts[has], axis=1)  # argmax: first (smallest) code on ties
    maj = majority[cluster[members]]
    eligible = (maj < 0) | (codes[members] == maj)
    # Sort members by cluster, eligible first, longest first, earliest first; take the first.
    order = np.lexsort((members, -lengths[members], ~eligible, cluster[members]))
    sorted_clusters = cluster[members][order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_clusters[1:] != sorted_clusters[:-1]
    rep[members[order[first]]] = True
    assert rep.sum() == n - len(members) + n_clusters
    return rep
