"""Re-label or label new: where a round's next annotations are worth most (ActiveLab).

A round has ``budget`` annotations to spend. Each can go to a record people already labelled
(one more opinion where they disagreed, where the consensus is weak, or where the model disputes
it) or to a new record from the pool. cleanlab's ActiveLab
(``cleanlab.multiannotator.get_active_learning_scores``; Goh & Mueller, 2023) scores both kinds
on one scale, 0..1, **low = one more label is worth more**: for a labelled record, CROWDLAB's
consensus quality pulled towards 1/K by how little support (annotators and the model) it has; for
a pool record, the model's temperature-scaled top probability pulled the same way. ``decide``
takes the lowest ``budget`` scores across both sets and says, per chosen record, whether it is a
re-label or a new one and why.

Pure: arrays in, a ``RelabelDecision`` out; the round's select step (``loop.steps``) does the
I/O. The model's probabilities on labelled records should be out-of-sample (a model trained on
them leans towards their labels, so re-labels are proposed less often than they should be):
the select step passes ``loop.steps.out_of_fold_probs`` where the learner is cheap to refit.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from loop.errors import StrategyError
from loop.strategies import check_probs

log = logging.getLogger(__name__)

MODES = ("auto", "off")
RELABEL, NEW = "relabel", "new"
# why a labelled record is worth another annotation (first that applies)
LOW_AGREEMENT = "low-agreement"  # its annotators gave different labels
MODEL_DISPUTES = "model-disputes-label"  # the model's top class is not the consensus
LOW_QUALITY = "low-consensus-quality"  # agreed, but weakly supported (one annotator, unsure model)
UNCERTAIN = "uncertain"  # a pool record the model is unsure of
RELABEL_REASONS = (LOW_AGREEMENT, MODEL_DISPUTES, LOW_QUALITY)


class RelabelError(StrategyError):
    """The re-label decision could not be made from these inputs."""


@dataclass(frozen=True)
class AnnotatorTable:
    """Who labelled what: ``labels[i, a]`` is annotator ``annotators[a]``'s label of record
    ``ids[i]`` as a class index, NaN where they gave none. Every row has at least one label."""

    ids: tuple[str, ...]
    annotators: tuple[str, ...]
    labels: np.ndarray

    @property
    def multi(self) -> bool:
        """True when some record has labels from two or more annotators (agreement exists)."""
        return bool(len(self.ids)) and bool((np.isfinite(self.labels).sum(axis=1) >= 2).any())


def annotator_table(
    rows: Iterable[tuple[str, Mapping[str, str] | str | None]], classes: Sequence[str]
) -> AnnotatorTable:
    """The table from ``(record id, {annotator: label})`` pairs (the mapping may be the JSON
    text of pull's ``annotator_labels`` column). Labels outside ``classes`` are ignored; records
    left without a label are dropped."""
    index = {str(c): k for k, c in enumerate(classes)}
    parsed: list[tuple[str, dict[str, int]]] = []
    for rid, given in rows:
        if isinstance(given, str):
            given = json.loads(given) if given else {}
        known = {str(a): index[str(v)] for a, v in (given or {}).items() if str(v) in index}
        if known:
            parsed.append((str(rid), known))
    annotators = tuple(sorted({a for _, known in parsed for a in known}))
    column = {a: j for j, a in enumerate(annotators)}
    labels = np.full((len(parsed), len(annotators)), np.nan)
    for i, (_, known) in enumerate(parsed):
        for a, k in known.items():
            labels[i, column[a]] = k
    return AnnotatorTable(tuple(rid for rid, _ in parsed), annotators, labels)


@dataclass(frozen=True)
class RelabelDecision:
    """The chosen records, lowest ActiveLab score (most worth an annotation) first.

    ``kinds[i]``: ``relabel`` or ``new``; ``reasons[i]``: ``low-agreement``,
    ``model-disputes-label`` or ``low-consensus-quality`` for a re-label, ``uncertain`` for a
    new record; ``scores[i]``: its ActiveLab score (0..1, low = worth more)."""

    ids: tuple[str, ...]
    kinds: tuple[str, ...]
    reasons: tuple[str, ...]
    scores: tuple[float, ...]

    @property
    def relabel_ids(self) -> list[str]:
        return [i for i, k in zip(self.ids, self.kinds, strict=True) if k == RELABEL]

    @property
    def new_ids(self) -> list[str]:
        return [i for i, k in zip(self.ids, self.kinds, strict=True) if k == NEW]

    def counts(self) -> dict[str, int]:
        """``{"relabel": n, "new": n}``."""
        kinds = Counter(self.kinds)
        return {RELABEL: kinds[RELABEL], NEW: kinds[NEW]}

    def by_reason(self, kind: str = RELABEL) -> dict[str, int]:
        """How many chosen records of ``kind`` have each reason."""
        pairs = zip(self.kinds, self.reasons, strict=True)
        return dict(Counter(r for k, r in pairs if k == kind))


def relabel_reasons(table: AnnotatorTable, probs: np.ndarray) -> list[str]:
    """Why each labelled record would be worth another annotation: ``low-agreement`` when its
    annotators disagree, else ``model-disputes-label`` when the model's top class is not their
    label, else ``low-consensus-quality``."""
    out = []
    for row, p in zip(table.labels, probs, strict=True):
        given = row[np.isfinite(row)].astype(int)
        counts = Counter(given.tolist())
        if len(counts) > 1:
            out.append(LOW_AGREEMENT)
        elif int(np.argmax(p)) != int(given[0]):
            out.append(MODEL_DISPUTES)
        else:
            out.append(LOW_QUALITY)
    return out


def activelab_scores(
    table: AnnotatorTable, labeled_probs: np.ndarray, pool_probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's ActiveLab scores (0..1, low = one more label is worth more) of the labelled
    records (rows of ``table``, probabilities aligned) and the pool records."""
    from cleanlab.multiannotator import get_active_learning_scores

    has_labeled = len(table.ids) > 0
    has_pool = len(pool_probs) > 0
    if not has_labeled and not has_pool:
        return np.zeros(0), np.zeros(0)
    printed = io.StringIO()
    try:
        # cleanlab prints and warns its notes ("annotators do not agree on any example"): logged
        with contextlib.redirect_stdout(printed), warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            lab, pool = get_active_learning_scores(
                table.labels if has_labeled else None,
                labeled_probs if has_labeled else None,
                pool_probs if has_pool else None,
            )
    except (ValueError, AssertionError) as err:
        raise RelabelError(f"ActiveLab could not score these annotations: {err}") from err
    for note in [printed.getvalue().strip(), *(str(w.message) for w in notes)]:
        if note:
            log.debug("cleanlab: %s", note)
    return np.asarray(lab, dtype=np.float64), np.asarray(pool, dtype=np.float64)


def decide(
    table: AnnotatorTable,
    labeled_probs: np.ndarray,
    pool_ids: Sequence[str],
    pool_probs: np.ndarray,
    budget: int,
) -> RelabelDecision:
    """Spend ``budget`` annotations: the ``budget`` lowest ActiveLab scores over the labelled
    records of ``table`` (``labeled_probs``: the model's (n × K) probabilities, rows aligned
    with ``table.ids``) and the pool (``pool_ids``, ``pool_probs``). Ties go to the new record,
    then to the earlier position. Deterministic."""
    if not isinstance(budget, int | np.integer) or budget < 0:
        raise RelabelError(f"budget must be a non-negative integer, got {budget!r}")
    k = None
    parts = []
    for name, probs, n in (
        ("labelled", labeled_probs, len(table.ids)),
        ("pool", pool_probs, len(pool_ids)),
    ):
        arr = np.zeros((0, 2)) if n == 0 and len(probs) == 0 else check_probs(probs)
        if len(arr) != n:
            raise RelabelError(f"{len(arr)} {name} probability rows for {n} records")
        if n and k is not None and arr.shape[1] != k:
            raise RelabelError("labelled and pool probabilities have different class counts")
        k = arr.shape[1] if n else k
        parts.append(arr)
    labeled_probs, pool_probs = parts
    if len(table.ids) and np.nanmax(table.labels) >= labeled_probs.shape[1]:
        raise RelabelError("an annotator label is not one of the model's classes")
    lab_scores, pool_scores = activelab_scores(table, labeled_probs, pool_probs)
    reasons = relabel_reasons(table, labeled_probs) if len(table.ids) else []
    scores = np.concatenate([lab_scores, pool_scores])
    is_new = np.concatenate([np.zeros(len(lab_scores), bool), np.ones(len(pool_scores), bool)])
    position = np.arange(len(scores))
    # rounded so float noise does not reorder ties differently on different machines
    order = np.lexsort((position, ~is_new, np.round(scores, 10)))[:budget]
    ids, kinds, why = [], [], []
    for pos in order:
        if is_new[pos]:
            ids.append(str(pool_ids[pos - len(lab_scores)]))
            kinds.append(NEW)
            why.append(UNCERTAIN)
        else:
            ids.append(table.ids[pos])
            kinds.append(RELABEL)
            why.append(reasons[pos])
    chosen = tuple(float(s) if math.isfinite(s) else 0.0 for s in scores[order])
    return RelabelDecision(tuple(ids), tuple(kinds), tuple(why), chosen)
