"""Agreement between annotators and consensus labels: pure functions over label tables.

A label table is a list of items, each a list of the labels its annotators gave (``None`` or a
missing entry means the annotator did not label the item). Labels are any hashable values.

Score directions: every agreement score here is *higher = more agreement*. Krippendorff's alpha
and Fleiss' kappa are 1 for perfect agreement, about 0 for chance-level agreement and below 0 for
systematic disagreement; ``nan`` when undefined (fewer than two labels per item, or one category).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Label = Hashable


def _present(values: Sequence[Label | None]) -> list[Label]:
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def krippendorff_alpha_nominal(items: Sequence[Sequence[Label | None]]) -> float:
    """Krippendorff's alpha for nominal data (1 = perfect, 0 = chance, < 0 = worse than chance).

    Items with fewer than two labels are not pairable and are ignored. ``nan`` when fewer than two
    pairable labels remain or only one category is used (expected disagreement is zero).
    """
    coincidences: Counter[tuple[Label, Label]] = Counter()
    for values in items:
        present = _present(values)
        m = len(present)
        if m < 2:
            continue
        counts = Counter(present)
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                pairs = n_c * (n_k - 1) if c == k else n_c * n_k
                if pairs:
                    coincidences[(c, k)] += pairs / (m - 1)
    totals: Counter[Label] = Counter()
    for (c, _k), o in coincidences.items():
        totals[c] += o
    n = sum(totals.values())
    if n < 2:
        return math.nan
    observed = sum(o for (c, k), o in coincidences.items() if c != k)
    expected = (n * n - sum(v * v for v in totals.values())) / (n - 1)
    if expected == 0:
        return math.nan
    return 1.0 - observed / expected


def fleiss_kappa(items: Sequence[Sequence[Label | None]]) -> float:
    """Fleiss' kappa, generalised to a varying number of raters per item.

    Per item i with n_i >= 2 labels: P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)); category shares
    p_j are pooled over those items; kappa = (mean P_i - sum p_j^2) / (1 - sum p_j^2).
    ``nan`` when no item has two labels or only one category is used.
    """
    per_item: list[float] = []
    pooled: Counter[Label] = Counter()
    for values in items:
        present = _present(values)
        n_i = len(present)
        if n_i < 2:
            continue
        counts = Counter(present)
        per_item.append((sum(c * c for c in counts.values()) - n_i) / (n_i * (n_i - 1)))
        pooled.update(counts)
    if not per_item:
        return math.nan
    total = sum(pooled.values())
    p_e = sum((c / total) ** 2 for c in pooled.values())
    if p_e >= 1.0:
        return math.nan
    p_bar = sum(per_item) / len(per_item)
    return (p_bar - p_e) / (1.0 - p_e)


@dataclass(frozen=True)
class Consensus:
    """Majority consensus of one item.

    ``label`` is None when nobody labelled the item or the top labels tie (``tie`` is then True for
    a tie). ``agreement`` is the share of the item's labels equal to the majority label (0..1,
    higher = more agreement); ``disagreement`` is True when annotators gave different labels.
    """

    label: Label | None
    n_annotators: int
    agreement: float
    tie: bool
    disagreement: bool


def majority_consensus(values: Sequence[Label | None]) -> Consensus:
    """Majority label of one item; ties are flagged and give no label."""
    present = _present(values)
    if not present:
        return Consensus(None, 0, math.nan, False, False)
    counts = Counter(present).most_common()
    top = counts[0][1]
    tie = len(counts) > 1 and counts[1][1] == top
    return Consensus(
        label=None if tie else counts[0][0],
        n_annotators=len(present),
        agreement=top / len(present),
        tie=tie,
        disagreement=len(counts) > 1,
    )


@dataclass(frozen=True)
class AnnotatorStats:
    """One annotator against the consensus: how many items they labelled, how many of those have
    a consensus (no tie), and the share of those where they match it (0..1, higher = better).
    ``cohen_kappa`` is their chance-corrected agreement with the consensus (nan if undefined).
    The consensus includes the annotator's own label, so this flatters them (with two annotators
    it is always 1): ``agreement_with_others`` is the honest figure."""

    annotator: str
    n_labelled: int
    n_with_consensus: int
    agreement_with_consensus: float
    cohen_kappa: float


def cohen_kappa(a: Sequence[Label], b: Sequence[Label]) -> float:
    """Cohen's kappa of two equally long label sequences (nan when chance agreement is 1)."""
    n = len(a)
    if n == 0 or n != len(b):
        return math.nan
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb.get(k, 0) for k in ca) / (n * n)
    if p_e >= 1.0:
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


def label_agreement(
    gold: Sequence[Label], pred: Sequence[Label], labels: Sequence[Label]
) -> dict[str, Any]:
    """How far ``pred`` (e.g. a pre-labeller's labels) agrees with ``gold`` (e.g. the people's
    consensus), item by item: ``n``, ``accuracy``, ``macro_f1`` over ``labels`` and Cohen's
    ``kappa`` (all higher = more agreement; None when there are no items or kappa is undefined)."""
    from thresher.metrics import accuracy, macro_f1

    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    if not gold:
        return {"n": 0, "accuracy": None, "macro_f1": None, "kappa": None}
    index = {lab: i for i, lab in enumerate(labels)}
    for lab in (*gold, *pred):
        index.setdefault(lab, len(index))
    g = [index[v] for v in gold]
    p = [index[v] for v in pred]
    kappa = cohen_kappa(list(gold), list(pred))
    return {
        "n": len(g),
        "accuracy": round(float(accuracy(g, p)), 4),
        "macro_f1": round(float(macro_f1(g, p, len(index))), 4),
        "kappa": None if math.isnan(kappa) else round(float(kappa), 4),
    }


def prelabeller_agreement(
    prelabels: Mapping[Any, Label],
    consensus: Mapping[Any, Label | None],
    slices: Mapping[Any, Sequence[str]],
    labels: Sequence[Label],
) -> dict[str, Any]:
    """A non-human annotator (the pre-labeller) against the people's consensus: ``label_agreement``
    over the items with both a pre-label and a consensus (ties skipped), and the same per bias
    slice (``slices``: item → the slices it belongs to, e.g. the identity groups it mentions).
    It is measured like an annotator but never takes part in the consensus."""
    ids = [i for i, c in consensus.items() if c is not None and i in prelabels]
    out = label_agreement([consensus[i] for i in ids], [prelabels[i] for i in ids], labels)
    members: dict[str, list[Any]] = {}
    for i in ids:
        for name in slices.get(i) or ():
            members.setdefault(str(name), []).append(i)
    out["by_slice"] = {
        name: label_agreement([consensus[i] for i in m], [prelabels[i] for i in m], labels)
        for name, m in sorted(members.items())
    }
    return out


def annotator_agreement(
    by_annotator: Mapping[str, Mapping[Any, Label]], consensus: Mapping[Any, Label | None]
) -> list[AnnotatorStats]:
    """Per-annotator agreement with the consensus label.

    ``by_annotator``: annotator → {item id → label}; ``consensus``: item id → label (None = tie or
    unlabelled, such items are skipped)."""
    stats = []
    for name in sorted(by_annotator):
        labels = by_annotator[name]
        pairs = [(lab, consensus[i]) for i, lab in labels.items() if consensus.get(i) is not None]
        mine = [p[0] for p in pairs]
        theirs = [p[1] for p in pairs]
        match = sum(x == y for x, y in pairs)
        stats.append(
            AnnotatorStats(
                annotator=name,
                n_labelled=len(labels),
                n_with_consensus=len(pairs),
                agreement_with_consensus=match / len(pairs) if pairs else math.nan,
                cohen_kappa=cohen_kappa(mine, theirs),
            )
        )
    return stats


@dataclass(frozen=True)
class OthersAgreement:
    """One annotator against the OTHER annotators (leave-one-out), which stays honest where a
    consensus that includes the annotator's own label cannot (with two annotators the consensus
    exists only where they agree, so both would agree with it 100 %).

    On every record the annotator labelled that at least one other annotator labelled too, the
    annotator's label is compared with the majority label of the others; records where the
    others tie are left out. ``n_with_others`` counts the compared records,
    ``agreement_with_others`` is the share that match (0..1, higher = better) and
    ``kappa_with_others`` Cohen's kappa of the same pairs (nan if undefined).
    ``pairwise_agreement`` is the share of (record, other annotator) pairs with the same label,
    over ``n_pairs`` pairs. With two annotators both figures are their plain agreement with each
    other on the records both labelled."""

    annotator: str
    n_with_others: int
    agreement_with_others: float
    kappa_with_others: float
    n_pairs: int
    pairwise_agreement: float


def agreement_with_others(by_annotator: Mapping[str, Mapping[Any, Label]]) -> list[OthersAgreement]:
    """Leave-one-out agreement of each annotator (see ``OthersAgreement``), sorted by name.

    ``by_annotator``: annotator → {item id → label} (``None``/nan labels are ignored)."""
    by_item: dict[Any, dict[str, Label]] = {}
    for name, labels in by_annotator.items():
        for item, label in labels.items():
            if _present([label]):
                by_item.setdefault(item, {})[name] = label
    out = []
    for name in sorted(by_annotator):
        mine: list[Label] = []
        theirs: list[Label] = []
        pairs = same = 0
        for labels in by_item.values():
            if name not in labels or len(labels) < 2:
                continue
            own = labels[name]
            others = [lab for who, lab in labels.items() if who != name]
            pairs += len(others)
            same += sum(lab == own for lab in others)
            majority = majority_consensus(others).label
            if majority is not None:
                mine.append(own)
                theirs.append(majority)
        matched = sum(x == y for x, y in zip(mine, theirs, strict=True))
        out.append(
            OthersAgreement(
                annotator=name,
                n_with_others=len(mine),
                agreement_with_others=matched / len(mine) if mine else math.nan,
                kappa_with_others=cohen_kappa(mine, theirs),
                n_pairs=pairs,
                pairwise_agreement=same / pairs if pairs else math.nan,
            )
        )
    return out


def cleanlab_consensus(
    items: Sequence[Sequence[Label | None]],
    annotators: Sequence[str],
    pred_probs,
    classes: Sequence[Label],
) -> dict[str, Any] | None:
    """cleanlab's multi-annotator consensus (CROWDLAB) where model probabilities exist.

    ``items[i][a]`` is annotator ``annotators[a]``'s label of item i; ``pred_probs`` (n, K) are the
    model's probabilities over ``classes``. Returns ``{"consensus_label": [...],
    "consensus_quality_score": [...] (0..1, higher = more trustworthy), "annotator_quality":
    {name: score}}`` for the items with at least one label, or None when cleanlab cannot score
    (for example fewer than two annotators or no item with a label)."""
    import logging

    import numpy as np
    import pandas as pd

    log = logging.getLogger(__name__)
    index = {c: k for k, c in enumerate(classes)}
    rows = [i for i, values in enumerate(items) if _present(values)]
    if not rows or len(annotators) < 2:
        return None
    table = pd.DataFrame(
        [[index.get(v, np.nan) if v is not None else np.nan for v in items[i]] for i in rows],
        columns=list(annotators),
        dtype="float64",
    )
    keep = table.columns[table.notna().any(axis=0)]
    table = table[keep]
    if table.shape[1] < 2:
        return None
    probs = np.asarray(pred_probs, dtype="float64")[rows]
    try:
        from cleanlab.multiannotator import get_label_quality_multiannotator

        result = get_label_quality_multiannotator(table, probs, verbose=False)
    except (ValueError, AssertionError) as err:
        log.warning("cleanlab multi-annotator consensus skipped: %s", err)
        return None
    quality = result["label_quality"]
    consensus = [None] * len(items)
    score = [math.nan] * len(items)
    for pos, i in enumerate(rows):
        consensus[i] = classes[int(quality["consensus_label"].iloc[pos])]
        score[i] = float(quality["consensus_quality_score"].iloc[pos])
    stats = result["annotator_stats"]
    return {
        "consensus_label": consensus,
        "consensus_quality_score": score,
        "annotator_quality": {str(k): float(v) for k, v in stats["annotator_quality"].items()},
    }
