"""Which rows the score stage scores, and how cluster members get their scores.

With dedup output only representatives are scored (duplicates in different folds would leak and
inflate confidence); every other row carries its representative's predictions and gets its own
``label_quality`` against them. Both engines call these on their arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from thresher.errors import InputError


def scored_records(df) -> np.ndarray:
    """Which records the score stage scores (bool): dedup representatives, all of them without
    dedup output. ``tune crossfit`` predicts exactly these, for ``--probs-from``."""
    from thresher.records import representative_mask

    return representative_mask(df)


def representative_rows(rep: np.ndarray, clusters, ids) -> np.ndarray:
    """For every row, the position (in representative order) of the representative whose
    predictions it carries: its own for representatives, its cluster's for members."""
    import pandas as pd

    n = rep.shape[0]
    src = np.flatnonzero(rep)  # row of each representative, in representative order
    row_of = np.empty(n, dtype=np.int64)
    row_of[src] = np.arange(len(src))
    if not rep.all():
        by_cluster = {}
        for j, i in enumerate(src):
            if not pd.isna(clusters[i]):
                by_cluster[clusters[i]] = j
        for i in np.flatnonzero(~rep):
            cluster = clusters[i]
            if pd.isna(cluster) or cluster not in by_cluster:
                raise InputError(
                    f"record {ids[i]} is not a representative and its cluster has none; "
                    "rerun `thresher curate dedup --force`"
                )
            row_of[i] = by_cluster[cluster]
    return row_of


def expand_scores(
    rep: np.ndarray, row_of: np.ndarray, labels: Sequence[str | None], res: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``label_quality`` and ``label_issue`` for every row (``res``: the representatives'
    ``curate.noise.NoiseResult``): representatives keep theirs; a cluster member gets its own
    label's quality against its representative's predictions and is an issue when its label
    differs from the representative's and the ensemble predicts another label than the
    member's (same label as the representative: same verdict)."""
    from curate.noise import encode_labels, quality_scores

    probs = res.pred_probs[row_of]
    quality = res.label_quality[row_of].copy()
    issue = res.label_issue[row_of].copy()
    if not rep.all():
        if _known(labels, res.classes):
            y, _ = encode_labels(labels, res.classes)
        else:
            y = np.array([res.classes.index(v) if v in res.classes else -1 for v in labels])
        members = ~rep
        quality[members] = quality_scores(y[members], probs[members])
        src = np.flatnonzero(rep)
        rep_label = np.array([labels[src[j]] for j in row_of], dtype=object)
        own = np.array(labels, dtype=object)
        pred = np.array(res.predicted_label, dtype=object)[row_of]
        same = own == rep_label
        issue[members] = np.where(same[members], issue[members], pred[members] != own[members])
        issue[members & np.array([v is None for v in labels])] = False
    return quality, issue.astype(bool)


def _known(labels, classes) -> bool:
    return all(v is None or v in classes for v in labels)
