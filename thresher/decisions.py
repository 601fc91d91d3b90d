"""What reviewers decided, read once from ``DIR/review/annotations.parquet``, applied everywhere.

``thresher review pull`` writes one row per reviewed record: ``id, label`` (majority consensus,
null on a tie), ``n_annotators`` (submitted labels) and ``discarded_by`` (who discarded it). Two
decisions come out of it, and pull's ``curated.parquet``, ``curate export`` and ``tune`` all
apply them the same way:

* ``labels``: id → consensus label, where reviewers reached one. It wins over the input label.
  A tie (null) decides nothing: the input label stays.
* ``discarded``: ids every reviewer discarded (``n_annotators == 0`` and ``discarded_by`` not
  empty). Such records leave the curated set. A file without those two columns (e.g. a
  hand-written ``id, label`` table) discards nothing.

A record is reviewed as the representative of its duplicate cluster. When a later dedup run
(new data, another threshold) makes another member the representative, the decision moves with
the cluster: ``carried_to_representatives`` gives the new representative its reviewed members'
majority label (a tie decides nothing), or discards it when its reviewed members were all
discarded; a representative with a decision of its own keeps it. ``load_decisions`` does this
with the clusters of ``DIR/dedup`` whenever that stage exists.

``apply_to_batch`` applies both to an Arrow batch or table: discarded rows are dropped,
``label`` becomes the consensus where there is one, ``original_label`` keeps the input label
and ``label_source`` says ``reviewed`` or ``original``. Only pandas/pyarrow, imported lazily.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from thresher.project import Project
from thresher.records import representative_mask

log = logging.getLogger(__name__)
REVIEWED, ORIGINAL = "reviewed", "original"
CLUSTER_COLUMNS = ("id", "dup_cluster", "is_representative")


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class ReviewDecisions:
    """``labels``: id → consensus label; ``discarded``: ids every reviewer discarded.
    ``present``: a review file exists (then exports add ``original_label``/``label_source``).
    ``carried``: representatives whose decision came from a reviewed duplicate."""

    labels: dict[str, str] = field(default_factory=dict)
    discarded: frozenset[str] = frozenset()
    present: bool = False
    carried: frozenset[str] = frozenset()

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> ReviewDecisions:
        """Decisions from annotation rows (dicts with ``id, label`` and optionally
        ``n_annotators, discarded_by``); a row without those two discards nothing."""
        labels: dict[str, str] = {}
        discarded: set[str] = set()
        for row in rows:
            rid = str(row["id"])
            label = row.get("label")
            if not _is_null(label):
                labels[rid] = str(label)
            by = row.get("discarded_by")
            n = row.get("n_annotators")
            if by is not None and len(by) > 0 and not _is_null(n) and int(n) == 0:
                discarded.add(rid)
        return cls(labels=labels, discarded=frozenset(discarded), present=True)

    def best_labels(self, ids, given):
        """The one "best label" rule: each record's reviewed consensus where reviewers reached
        one, else its ``given`` label (pandas Series aligned with ``ids``; None = unlabelled).
        Discarded records keep a label here; ``discarded_mask`` says which to leave out."""
        import pandas as pd

        given = given if isinstance(given, pd.Series) else pd.Series(given, dtype=object)
        ids = pd.Series(list(ids), index=given.index, dtype=object).astype(str)
        return ids.map(self.labels).where(ids.isin(self.labels.keys()), given)

    def discarded_mask(self, ids):
        """True for the records every reviewer discarded (pandas Series aligned with ``ids``)."""
        import pandas as pd

        return pd.Series(ids).astype(str).isin(self.discarded)

    def carried_to_representatives(self, table) -> ReviewDecisions:
        """These decisions plus the ones the representatives of ``table`` (pandas or Arrow with
        ``id, dup_cluster, is_representative``) inherit from their reviewed duplicates (see the
        module docstring). Unchanged when ``table`` has no clusters or no member was reviewed."""
        import pyarrow as pa
        import pyarrow.compute as pc

        decided = set(self.labels) | self.discarded
        if hasattr(table, "iloc"):
            cols = [c for c in CLUSTER_COLUMNS if c in table.columns]
            table = pa.Table.from_pandas(table[cols], preserve_index=False)
        if not decided or "dup_cluster" not in table.column_names:
            return self
        ids = pc.cast(table.column("id"), pa.string())
        is_rep = pa.array(representative_mask(table))
        clustered = pc.is_valid(table.column("dup_cluster"))
        members = pc.and_(
            pc.and_(clustered, pc.invert(is_rep)),
            pc.is_in(ids, pa.array(sorted(decided), pa.string())),
        )
        member_ids = ids.filter(members).to_pylist()
        if not member_ids:
            return self
        member_clusters = table.column("dup_cluster").filter(members).to_pylist()
        reps = pc.and_(is_rep, pc.is_in(table.column("dup_cluster"), pa.array(member_clusters)))
        rep_of = dict(
            zip(
                table.column("dup_cluster").filter(reps).to_pylist(),
                ids.filter(reps).to_pylist(),
                strict=True,
            )
        )
        votes: dict[Any, Counter[str]] = {}
        all_discarded: dict[Any, bool] = {}
        for rid, cluster in zip(member_ids, member_clusters, strict=True):
            if rid in self.labels:
                votes.setdefault(cluster, Counter())[self.labels[rid]] += 1
            all_discarded[cluster] = all_discarded.get(cluster, True) and rid in self.discarded
        labels, discarded, carried = dict(self.labels), set(self.discarded), set(self.carried)
        for cluster, rep_id in rep_of.items():
            if rep_id in decided:
                continue
            top = votes.get(cluster, Counter()).most_common(2)
            if top and (len(top) == 1 or top[0][1] > top[1][1]):
                labels[rep_id] = top[0][0]
                carried.add(rep_id)
            elif not top and all_discarded.get(cluster):
                discarded.add(rep_id)
                carried.add(rep_id)
        if not carried - self.carried:
            return self
        return replace(
            self, labels=labels, discarded=frozenset(discarded), carried=frozenset(carried)
        )

    @cached_property
    def _lookup(self):
        """Arrow value sets for the vectorised apply: (label ids, their labels, discarded ids)."""
        import pyarrow as pa

        ids = list(self.labels)
        return (
            pa.array(ids, pa.string()),
            pa.array([self.labels[i] for i in ids], pa.string()),
            pa.array(sorted(self.discarded), pa.string()),
        )


def load_decisions(project: Project) -> ReviewDecisions:
    """The decisions of the last ``review pull`` (empty, ``present=False``, when none), carried
    to the current dedup representatives when ``DIR/dedup`` exists."""
    import pyarrow.parquet as pq

    path = project.annotations_path
    if not path.exists():
        return ReviewDecisions()
    names = set(pq.read_schema(path).names)
    columns = [c for c in ("id", "label", "n_annotators", "discarded_by") if c in names]
    rows = pq.read_table(path, columns=columns).to_pylist()
    return carried_to_dedup_clusters(ReviewDecisions.from_rows(rows), project)


def carried_to_dedup_clusters(decisions: ReviewDecisions, project: Project) -> ReviewDecisions:
    """``decisions`` carried to the representatives of ``DIR/dedup``'s duplicate clusters
    (``ReviewDecisions.carried_to_representatives``); unchanged without a dedup stage."""
    import pyarrow.parquet as pq

    dedup = project.records_path("dedup")
    if not dedup.exists():
        return decisions
    names = set(pq.read_schema(dedup).names)
    clusters = pq.ParquetFile(dedup).read(columns=[c for c in CLUSTER_COLUMNS if c in names])
    decisions = decisions.carried_to_representatives(clusters)
    if decisions.carried:
        log.info(
            "%d representative(s) took the review of a duplicate that is no longer the "
            "representative of its cluster",
            len(decisions.carried),
        )
    return decisions


@dataclass(frozen=True)
class Applied:
    """One batch after ``apply_to_batch``: the rows kept and what happened to them.
    ``reviewed``: kept rows whose label came from reviewers; ``relabelled``: of those, the ones
    whose consensus differs from the input label; ``dropped_discarded``: rows removed."""

    batch: Any
    reviewed: int
    relabelled: int
    dropped_discarded: int
    is_reviewed: Any  # pyarrow BooleanArray over the kept rows


def output_schema(schema):
    """``schema`` with ``label`` as a string column (added when missing) and ``original_label``,
    ``label_source`` appended: the schema of every ``apply_to_batch`` result."""
    import pyarrow as pa

    fields = [f for f in schema if f.name not in ("original_label", "label_source")]
    names = [f.name for f in fields]
    if "label" in names:
        fields[names.index("label")] = pa.field("label", pa.string())
    else:
        fields.append(pa.field("label", pa.string()))
    fields += [pa.field("original_label", pa.string()), pa.field("label_source", pa.string())]
    return pa.schema(fields, metadata=schema.metadata)


def apply_to_batch(batch, decisions: ReviewDecisions) -> Applied:
    """Drop the discarded rows of an Arrow batch/table and merge the consensus labels in
    (columns as in ``output_schema``; row order kept). Pure: the input is not changed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    label_ids, label_values, discarded_ids = decisions._lookup
    ids = pc.cast(_plain(batch.column("id")), pa.string())
    gone = pc.fill_null(pc.is_in(ids, value_set=discarded_ids), False)
    n_gone = pc.sum(gone).as_py() or 0
    if n_gone:
        batch = batch.filter(pc.invert(gone))
        ids = ids.filter(pc.invert(gone))
    original = _original_labels(batch)
    consensus = pc.take(label_values, pc.index_in(ids, value_set=label_ids))
    is_reviewed = pc.is_valid(consensus)
    changed = pc.and_(is_reviewed, pc.fill_null(pc.not_equal(consensus, original), True))
    columns = {
        "label": pc.coalesce(consensus, original),
        "original_label": original,
        "label_source": pc.if_else(is_reviewed, REVIEWED, ORIGINAL),
    }
    schema = output_schema(batch.schema)
    arrays = [columns[f.name] if f.name in columns else batch.column(f.name) for f in schema]
    out = type(batch).from_arrays(arrays, schema=schema)
    return Applied(
        batch=out,
        reviewed=pc.sum(is_reviewed).as_py() or 0,
        relabelled=pc.sum(changed).as_py() or 0,
        dropped_discarded=n_gone,
        is_reviewed=is_reviewed,
    )


def _original_labels(batch):
    """The batch's ``label`` column as strings (all null when the stage has no labels)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "label" not in batch.schema.names:
        return pa.nulls(batch.num_rows, pa.string())
    return pc.cast(_plain(batch.column("label")), pa.string())


def _plain(column):
    """One contiguous array (a table's columns are chunked; a batch's are not)."""
    import pyarrow as pa

    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
