"""Export the curated set: the most downstream stage's records, representatives only.

Which records: ``score`` if it exists, else ``dedup``, else ``ingest`` (so an export right after
ingest is the validated data as is). Rows with ``is_representative == false`` are dropped (when
the column exists); rows with ``label_issue == true`` are dropped only with
``drop_label_issues``. Every column is kept. Formats: ``parquet`` (one file), ``jsonl`` (one JSON
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

from thresher.errors import InputError
from thresher.project import Project

log = logging.getLogger(__name__)

FORMATS = ("parquet", "jsonl", "hf")
STAGES = ("score", "dedup", "ingest")


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
    stage: str
    rows_in: int
    exported: int
    dropped_duplicates: int
    dropped_label_issues: int
    format: str
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _filtered_batches(path: Path, opts: ExportOptions, counts: dict[str, int]):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    for batch in parquet.iter_batches(opts.batch_size):
        counts["rows_in"] += batch.num_rows
        if "is_representative" in names:
            keep = pc.fill_null(batch.column("is_representative"), True)
            counts["dropped_duplicates"] += batch.num_rows - (pc.sum(keep).as_py() or 0)
            batch = batch.filter(keep)
        if opts.drop_label_issues and "label_issue" in names:
            issue = pc.fill_null(batch.column("label_issue"), False)
            n_issue = pc.sum(issue).as_py() or 0
            counts["dropped_label_issues"] += n_issue
            batch = batch.filter(pc.invert(issue))
        counts["exported"] += batch.num_rows
        yield batch


def export(project: Project, out: str | Path, opts: ExportOptions) -> ExportResult:
    """Write the curated records of ``project`` to ``out`` (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if opts.format not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {opts.format!r}")
    out = Path(out)
    stage, path = project.latest_records(STAGES)
    if opts.drop_label_issues and stage != "score":
        log.warning("--drop-label-issues: no score stage in %s, nothing is flagged", project.root)
    counts = {"rows_in": 0, "exported": 0, "dropped_duplicates": 0, "dropped_label_issues": 0}
    schema = pq.ParquetFile(path).schema_arrow
    out.parent.mkdir(parents=True, exist_ok=True)
    if opts.format == "hf":
        if out.exists() and any(out.iterdir() if out.is_dir() else [out]) and not opts.force:
            raise InputError(f"{out} already exists; pass --force to replace it")
        table = pa.Table.from_batches(list(_filtered_batches(path, opts, counts)), schema=schema)
        _save_hf(table, out)
    else:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if opts.format == "parquet":
                with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                    for batch in _filtered_batches(path, opts, counts):
                        writer.write_batch(batch)
            else:
                with open(tmp, "w", encoding="utf-8") as fh:
                    for batch in _filtered_batches(path, opts, counts):
                        for row in batch.to_pylist():
                            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    log.info(
        "exported %d of %d rows from %s to %s", counts["exported"], counts["rows_in"], stage, out
    )
    return ExportResult(stage=stage, format=opts.format, path=str(out), **counts)


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
