"""Export the curated set: the most downstream stage's records, representatives only, with the
review's decisions applied.

Which records: ``score`` if it exists, else ``dedup``, else ``ingest`` (so an export right after
ingest is the validated data as is). Per batch, in this order (each drop counted once):

1. rows with ``is_representative == false`` are dropped (when the column exists);
2. when ``DIR/review/annotations.parquet`` exists (``thresher review pull``), the review's
   decisions are applied as in pull's ``curated.parquet`` (``thresher.decisions``): records every
   reviewer discarded are dropped, ``label`` becomes the consensus where reviewers reached one,
   and two columns are added, ``original_label`` (the input label) and ``label_source``
   (``reviewed`` | ``original``). Without a review the columns are not added. Production
   records (served texts sent to review by ``round --from-traffic``) that reviewers labelled are
   appended after the stage's records (``production`` counts them), with the stage's other
   columns null;
3. rows with ``label_issue == true`` are dropped only with ``drop_label_issues``, and never a
   reviewed row (a reviewer settled its label).

Every other column is kept. Formats: ``parquet`` (one file), ``jsonl`` (one JSON
object a line), ``hf`` (a Hugging Face ``datasets`` folder, ``load_from_disk``-able). The output is
written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thresher.decisions import ReviewDecisions, apply_to_batch, load_decisions, output_schema
from thresher.errors import InputError
from thresher.production import reviewed_production_records
from thresher.project import MANIFEST, Project, atomic_output
from thresher.records import representative_mask

log = logging.getLogger(__name__)

FORMATS = ("parquet", "jsonl", "hf")
# what thresher itself writes under DIR: an export never replaces any of it, nor DIR itself
PROJECT_OWNED = (
    "ingest",
    "dedup",
    "score",
    "review",
    "tune",
    "rounds",
    "simulate",
    "serve",
    "monitor",
    ".cache",
)
STAGES = ("score", "dedup", "ingest")
COUNTS = (
    "rows_in",
    "exported",
    "dropped_duplicates",
    "dropped_discarded",
    "dropped_label_issues",
    "reviewed",
    "relabelled",
    "production",
)


@dataclass(frozen=True)
class ExportOptions:
    """``format``: parquet | jsonl | hf. ``drop_label_issues``: also drop rows flagged
    ``label_issue`` by the score stage. ``force``: replace an existing ``hf`` folder."""

    format: str = "parquet"
    drop_label_issues: bool = False
    force: bool = False
    batch_size: int = 50_000


@dataclass
class ExportResult:
    """What an export wrote. ``rows_in`` = ``exported`` + the three ``dropped_*`` counts.
    ``reviewed``: exported rows whose label is the reviewers' consensus; ``relabelled``: of
    those, the ones whose consensus differs from the input label (0 without a review).
    ``production``: reviewed production records appended (in ``rows_in`` and ``exported``)."""

    stage: str
    rows_in: int
    exported: int
    dropped_duplicates: int
    dropped_label_issues: int
    dropped_discarded: int
    reviewed: int
    relabelled: int
    production: int
    format: str
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _filtered_batches(
    path: Path, opts: ExportOptions, review: ReviewDecisions, counts, production=None
):
    """The exported batches of the stage file at ``path``, then the reviewed ``production``
    records (an Arrow table in the stage's schema, or None), counting every drop in ``counts``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    for batch in parquet.iter_batches(opts.batch_size):
        counts["rows_in"] += batch.num_rows
        keep = pa.array(representative_mask(batch))
        batch = _drop(batch, keep, counts, "dropped_duplicates")
        settled = None
        if review.present:
            applied = apply_to_batch(batch, review)
            batch, settled = applied.batch, applied.is_reviewed
            counts["dropped_discarded"] += applied.dropped_discarded
            counts["reviewed"] += applied.reviewed
            counts["relabelled"] += applied.relabelled
        if opts.drop_label_issues and "label_issue" in names:
            batch = _drop(batch, _unsettled_issue(batch, settled), counts, "dropped_label_issues")
        counts["exported"] += batch.num_rows
        yield batch
    if production is not None:
        for batch in apply_to_batch(production, review).batch.to_batches():
            counts["rows_in"] += batch.num_rows
            counts["production"] += batch.num_rows
            counts["exported"] += batch.num_rows
            yield batch


def _unsettled_issue(batch, settled):
    """False to keep: rows flagged ``label_issue`` that no reviewer settled."""
    import pyarrow.compute as pc

    issue = pc.fill_null(batch.column("label_issue"), False)
    if settled is not None:
        issue = pc.and_(issue, pc.invert(settled))
    return pc.invert(issue)


def _drop(batch, keep, counts: dict[str, int], key: str):
    """``batch`` filtered to ``keep``; the rows removed are added to ``counts[key]``."""
    import pyarrow.compute as pc

    counts[key] += batch.num_rows - (pc.sum(keep).as_py() or 0)
    return batch.filter(keep)


def export(project: Project, out: str | Path, opts: ExportOptions) -> ExportResult:
    """Write the curated records of ``project`` to ``out`` (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if opts.format not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {opts.format!r}")
    out = Path(out)
    _check_out(project, out)
    stage, path = project.latest_records(STAGES)
    if opts.drop_label_issues and stage != "score":
        log.warning("--drop-label-issues: no score stage in %s, nothing is flagged", project.root)
    review = load_decisions(project)
    production = reviewed_production_records(project, path, review)
    counts = dict.fromkeys(COUNTS, 0)
    schema = pq.ParquetFile(path).schema_arrow
    if review.present:
        schema = output_schema(schema)
    out.parent.mkdir(parents=True, exist_ok=True)
    if opts.format == "hf":
        if out.exists() and any(out.iterdir() if out.is_dir() else [out]) and not opts.force:
            raise InputError(f"{out} already exists; pass --force to replace it")
        table = pa.Table.from_batches(
            list(_filtered_batches(path, opts, review, counts, production)), schema=schema
        )
        _save_hf(table, out)
    else:
        with atomic_output(out) as tmp:
            if opts.format == "parquet":
                with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                    for batch in _filtered_batches(path, opts, review, counts, production):
                        writer.write_batch(batch)
            else:
                with open(tmp, "w", encoding="utf-8") as fh:
                    for batch in _filtered_batches(path, opts, review, counts, production):
                        for row in batch.to_pylist():
                            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    log.info(
        "exported %d of %d rows from %s to %s", counts["exported"], counts["rows_in"], stage, out
    )
    return ExportResult(stage=stage, format=opts.format, path=str(out), **counts)


def _check_out(project: Project, out: Path) -> None:
    """Refuse an output that is the project folder, holds it, or lies in a folder thresher
    writes (a stage, tune runs, rounds, caches) or is its config: the export would replace it."""
    from thresher.config import CONFIG_FILE

    root, target = project.root.resolve(), out.resolve()
    if root.is_relative_to(target):
        raise InputError(
            f"{out} is the project folder {project.root} or holds it; export to a new path"
        )
    if target.is_relative_to(root):
        top = target.relative_to(root).parts[0]
        if top in (*PROJECT_OWNED, CONFIG_FILE) or (root / top / MANIFEST).exists():
            raise InputError(
                f"{out} is inside the project's {top!r}, which thresher writes; export elsewhere, "
                f"e.g. {project.root / 'exports' / out.name}"
            )


def _save_hf(table, out: Path) -> None:
    from datasets import Dataset

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        Dataset(table).save_to_disk(str(tmp))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
