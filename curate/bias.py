"""Bias scoring: identity-group slices, group/term ↔ label associations, per-slice noise rates.

Pure functions over lists/arrays. Directions:
- ``lift`` = P(label | slice) / P(label overall): > 1 the slice over-represents the label.
- ``p_value`` two-sided Fisher exact test on the 2x2 table (slice vs rest, label vs other);
  ``q_value`` Benjamini–Hochberg adjusted; ``significant`` = q_value < alpha.
- ``z`` (data-driven terms): log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi &
  Quinn 2008), divided by its standard deviation; high = the term predicts the label.

The lexicon and the group-term matcher are ``thresher.bias_terms`` (shared with the monitor).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from thresher.bias_terms import Matcher, default_lexicon
from thresher.bias_terms import load_lexicon as load_lexicon

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[a-z][a-z'\-]*[a-z]|[a-z]")


def bias_groups(texts: Sequence[str], lexicon: Mapping[str, list[str]] | None = None):
    """``bias_groups`` per record: the list of group names each text mentions."""
    matcher = Matcher(dict(lexicon if lexicon is not None else default_lexicon()))
    return [matcher.groups(t) for t in texts]


# --------------------------------------------------------------------------------------------
# Associations


@dataclass(frozen=True)
class Association:
    """One slice (a group or a lexicon term) × one label."""

    kind: str  # "group" | "term"
    name: str
    label: str
    count: int  # records in the slice with this label
    slice_size: int
    rate_in_slice: float  # P(label | slice)
    rate_in_rest: float  # P(label | not slice)
    lift: float  # P(label | slice) / P(label)
    p_value: float
    q_value: float = 1.0
    significant: bool = False


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """BH-adjusted q-values (monotone, capped at 1)."""
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(q, 1.0)
    return out


def _fisher(a: int, b: int, c: int, d: int) -> float:
    from scipy.stats import fisher_exact

    return float(fisher_exact([[a, b], [c, d]], alternative="two-sided")[1])


def associations(
    memberships: Sequence[Sequence[str]],
    labels: Sequence[str | None],
    *,
    kind: str = "group",
    min_count: int = 5,
    alpha: float = 0.05,
) -> list[Association]:
    """Slice ↔ label associations, sorted most notable first (significant, then smallest q, then
    largest |log lift|). ``memberships[i]`` lists the slices record ``i`` is in; unlabeled
    records are skipped; slices smaller than ``min_count`` are left out."""
    pairs = [(set(m), lab) for m, lab in zip(memberships, labels, strict=True) if lab is not None]
    label_counts = Counter(str(lab) for _, lab in pairs)
    slice_sizes: Counter[str] = Counter()
    joint: Counter[tuple[str, str]] = Counter()
    for slices, lab in pairs:
        for s in slices:
            slice_sizes[s] += 1
            joint[(s, str(lab))] += 1
    return associations_from_counts(
        label_counts, slice_sizes, joint, kind=kind, min_count=min_count, alpha=alpha
    )


def associations_from_counts(
    label_counts: Mapping[str, int],
    slice_sizes: Mapping[str, int],
    joint: Mapping[tuple[str, str], int],
    *,
    kind: str = "group",
    min_count: int = 5,
    alpha: float = 0.05,
) -> list[Association]:
    """``associations`` from accumulated counts over the labeled records (what a streaming pass
    sums batch by batch): records per label, labeled records per slice, and per (slice, label)."""
    n = int(sum(label_counts.values()))
    if n == 0:
        return []
    rows: list[Association] = []
    for s, size in sorted(slice_sizes.items()):
        if size < min_count or size == n:
            continue
        for lab, total in sorted(label_counts.items()):
            a = int(joint.get((s, lab), 0))
            b = size - a
            c = total - a
            d = n - size - c
            rows.append(
                Association(
                    kind=kind,
                    name=s,
                    label=str(lab),
                    count=a,
                    slice_size=size,
                    rate_in_slice=a / size,
                    rate_in_rest=c / (n - size),
                    lift=(a / size) / (total / n),
                    p_value=_fisher(a, b, c, d),
                )
            )
    q = benjamini_hochberg([r.p_value for r in rows])
    rows = [
        Association(**{**asdict(r), "q_value": float(qv), "significant": bool(qv < alpha)})
        for r, qv in zip(rows, q, strict=True)
    ]
    return sorted(rows, key=_notability)


def _notability(r: Association) -> tuple:
    over = r.lift > 1  # report the over-represented label of a slice first
    return (not r.significant, r.q_value, not over, -abs(math.log(max(r.lift, 1e-9))))


# --------------------------------------------------------------------------------------------
# Data-driven terms


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def log_odds_terms(
    texts: Sequence[str],
    labels: Sequence[str | None],
    *,
    top: int = 15,
    prior_scale: float = 500.0,
    min_count: int = 5,
) -> list[dict[str, Any]]:
    """Terms that predict each label: log-odds ratio with an informative Dirichlet prior
    (label vs all other labels; the prior is the corpus term distribution scaled to
    ``prior_scale`` pseudo-counts). Returns, per label, the ``top`` terms by z (high = predictive):
    ``{term, label, z, delta, count}``. Counts are documents containing the term."""
    by_label = word_doc_counts(texts, labels)
    return log_odds_from_counts(by_label, top=top, prior_scale=prior_scale, min_count=min_count)


def word_doc_counts(texts: Sequence[str], labels: Sequence[str | None]) -> dict[str, Counter[str]]:
    """Per label, how many of the labeled ``texts`` contain each word (one batch's share of
    ``log_odds_from_counts``' input; sum batches with ``merge_word_counts``)."""
    out: dict[str, Counter[str]] = {}
    for t, lab in zip(texts, labels, strict=True):
        if lab:
            out.setdefault(str(lab), Counter()).update(set(tokenize(t)))
    return out


def merge_word_counts(
    into: dict[str, Counter[str]], part: Mapping[str, Mapping[str, int]], cap: int | None = None
) -> dict[str, Counter[str]]:
    """Add ``part`` into ``into``. With ``cap``, when the vocabulary grows past twice ``cap``
    words, keep only the ``cap`` most frequent (memory stays bounded on huge corpora; counts of
    words dropped and seen again later restart from zero, so rare terms are approximate)."""
    for lab, counts in part.items():
        into.setdefault(str(lab), Counter()).update(counts)
    if cap and sum(len(c) for c in into.values()) > 2 * cap:
        vocab: Counter[str] = Counter()
        for counts in into.values():
            vocab.update(counts)
        if len(vocab) > 2 * cap:
            keep = {t for t, _ in vocab.most_common(cap)}
            for lab in list(into):
                into[lab] = Counter({t: c for t, c in into[lab].items() if t in keep})
    return into


def log_odds_from_counts(
    by_label: Mapping[str, Mapping[str, int]],
    *,
    top: int = 15,
    prior_scale: float = 500.0,
    min_count: int = 5,
) -> list[dict[str, Any]]:
    """``log_odds_terms`` from accumulated document counts per label (term → documents of that
    label containing it), e.g. summed batch by batch. Ties in z are broken by term."""
    vocab: Counter[str] = Counter()
    for counts in by_label.values():
        vocab.update(counts)
    terms = sorted(t for t, c in vocab.items() if c >= min_count)
    if not terms:
        return []
    total = np.array([vocab[t] for t in terms], dtype=float)
    alpha = prior_scale * total / total.sum()
    alpha0 = alpha.sum()
    out: list[dict[str, Any]] = []
    for lab, counts in sorted(by_label.items()):
        ya = np.array([counts.get(t, 0) for t in terms], dtype=float)
        yb = total - ya
        na, nb = ya.sum(), yb.sum()
        delta = np.log((ya + alpha) / (na + alpha0 - ya - alpha)) - np.log(
            (yb + alpha) / (nb + alpha0 - yb - alpha)
        )
        z = delta / np.sqrt(1 / (ya + alpha) + 1 / (yb + alpha))
        for i in np.lexsort((np.arange(len(terms)), -z))[:top]:
            out.append(
                {
                    "term": terms[i],
                    "label": lab,
                    "z": round(float(z[i]), 4),
                    "delta": round(float(delta[i]), 4),
                    "count": int(ya[i]),
                }
            )
    return out


# --------------------------------------------------------------------------------------------
# Per-slice summary


def slice_table(
    memberships: Sequence[Sequence[str]],
    labels: Sequence[str | None],
    label_issue: Sequence[bool] | None = None,
    label_quality: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Per slice: size, share of the data, label rates, label-noise rate (share of labeled records
    flagged as label issues) and mean label quality; plus an ``(all)`` row to compare against."""
    n = len(labels)
    classes = sorted({str(lab) for lab in labels if lab is not None})
    members: dict[str, list[int]] = {"(all)": list(range(n))}
    for i, m in enumerate(memberships):
        for s in m:
            members.setdefault(s, []).append(i)
    rows = []
    for s, idx in sorted(members.items(), key=lambda kv: (kv[0] != "(all)", -len(kv[1]), kv[0])):
        labeled = [i for i in idx if labels[i] is not None]
        counts = Counter(str(labels[i]) for i in labeled)
        row: dict[str, Any] = {
            "slice": s,
            "size": len(idx),
            "share": round(len(idx) / n, 6) if n else 0.0,
            "labeled": len(labeled),
            "label_rates": {
                c: round(counts[c] / len(labeled), 6) if labeled else None for c in classes
            },
        }
        if label_issue is not None and labeled:
            row["noise_rate"] = round(sum(bool(label_issue[i]) for i in labeled) / len(labeled), 6)
        if label_quality is not None and labeled:
            vals = [float(label_quality[i]) for i in labeled]
            row["mean_label_quality"] = round(float(np.nanmean(vals)), 6)
        rows.append(row)
    return rows


def membership_counts(
    rows: np.ndarray, names: np.ndarray, y: np.ndarray, classes: Sequence[str]
) -> tuple[Counter[str], Counter[str], Counter[tuple[str, str]]]:
    """Counts for ``associations_from_counts`` from a sparse membership (record ``rows[j]`` is in
    slice ``names[j]``; pairs unique) and label codes ``y`` (-1 = unlabeled) over ``classes``."""
    labeled = y >= 0
    label_counts = Counter(
        {classes[c]: int(v) for c, v in enumerate(np.bincount(y[labeled], minlength=len(classes)))}
    )
    keep = labeled[rows] if rows.size else np.zeros(0, dtype=bool)
    slice_sizes: Counter[str] = Counter()
    joint: Counter[tuple[str, str]] = Counter()
    for name, code in zip(names[keep].tolist(), y[rows[keep]].tolist(), strict=True):
        slice_sizes[name] += 1
        joint[(name, classes[code])] += 1
    return label_counts, slice_sizes, joint


def slice_table_sparse(
    rows: np.ndarray,
    names: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    label_issue: np.ndarray | None = None,
    label_quality: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """``slice_table`` from a sparse membership (record ``rows[j]`` is in slice ``names[j]``) and
    label codes ``y`` (-1 = unlabeled): memory grows with the matches, not the records."""
    n = int(y.shape[0])
    present = sorted({classes[c] for c in np.unique(y[y >= 0]).tolist()})
    members: dict[str, np.ndarray] = {"(all)": np.arange(n)}
    if rows.size:
        order = np.argsort(names, kind="stable")
        sorted_names = names[order]
        uniq, starts = np.unique(sorted_names, return_index=True)
        ends = list(starts[1:]) + [len(order)]
        for name, a, b in zip(uniq.tolist(), starts, ends, strict=True):
            members[str(name)] = np.sort(rows[order[a:b]])
    out = []
    for s, idx in sorted(members.items(), key=lambda kv: (kv[0] != "(all)", -len(kv[1]), kv[0])):
        labeled = idx[y[idx] >= 0]
        counts = np.bincount(y[labeled], minlength=len(classes))
        row: dict[str, Any] = {
            "slice": s,
            "size": int(len(idx)),
            "share": round(len(idx) / n, 6) if n else 0.0,
            "labeled": int(len(labeled)),
            "label_rates": {
                c: round(int(counts[classes.index(c)]) / len(labeled), 6) if len(labeled) else None
                for c in present
            },
        }
        if label_issue is not None and len(labeled):
            row["noise_rate"] = round(int(np.count_nonzero(label_issue[labeled])) / len(labeled), 6)
        if label_quality is not None and len(labeled):
            row["mean_label_quality"] = round(float(np.nanmean(label_quality[labeled])), 6)
        out.append(row)
    return out


@dataclass
class BiasReport:
    """What ``bias.json`` holds."""

    groups: list[dict[str, Any]]
    terms: list[dict[str, Any]]
    data_driven_terms: list[dict[str, Any]]
    slices: list[dict[str, Any]]
    alpha: float
    min_count: int
    lexicon_groups: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_bias(
    texts: Sequence[str],
    labels: Sequence[str | None],
    *,
    lexicon: Mapping[str, list[str]] | None = None,
    label_issue: Sequence[bool] | None = None,
    label_quality: Sequence[float] | None = None,
    alpha: float = 0.05,
    min_count: int = 5,
    top_terms: int = 15,
) -> tuple[list[list[str]], BiasReport]:
    """Everything bias scoring produces: ``bias_groups`` per record and the report."""
    matcher = Matcher(dict(lexicon if lexicon is not None else default_lexicon()))
    found = [matcher.groups_and_terms(t) for t in texts]
    groups = [g for g, _ in found]
    terms = [t for _, t in found]
    group_rows = associations(groups, labels, kind="group", min_count=min_count, alpha=alpha)
    term_rows = associations(terms, labels, kind="term", min_count=min_count, alpha=alpha)
    report = BiasReport(
        groups=[asdict(r) for r in group_rows],
        terms=[asdict(r) for r in term_rows],
        data_driven_terms=log_odds_terms(texts, labels, top=top_terms, min_count=min_count),
        slices=slice_table(groups, labels, label_issue, label_quality),
        alpha=alpha,
        min_count=min_count,
        lexicon_groups=len(matcher.lexicon),
    )
    return groups, report
