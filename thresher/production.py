"""Production records: served texts sent back to annotators, kept as records of the project.

``thresher round --from-traffic`` picks texts from the traffic log (``thresher.traffic``) and
appends them to ``DIR/review/production.parquet`` in the record schema
(``thresher.records.record_schema``): ``id`` = ``text_id(text)`` (the id ingest gives a text
without an id column, and the traffic log's ``text_hash``), ``text``, ``label`` null, ``source``
``serve/traffic``, ``source_row`` (the row in the traffic window it was read from) and
``metadata`` (JSON: time, model, request_id, predicted_label, predicted_prob).

They join the project's records wherever records are loaded for training or for a round
(``with_production_records``): a reviewed one takes its label from the review decisions
(``thresher.decisions``) and is trained on; an unreviewed one stays unlabelled, in the pool.
The project split (``thresher.split.ensure_split``) puts a record first labelled after the
split was made into train, so the test split stays fixed. The curated set (``review pull``'s
``curated.parquet``, ``curate export``) takes the reviewed ones only
(``reviewed_production_records``): an unreviewed served text has no label to curate.
"""

from __future__ import annotations

import os
from pathlib import Path

from thresher.project import Project, atomic_output

SOURCE = "serve/traffic"
COLUMNS = ("id", "text", "label", "source", "source_row", "metadata")


def production_records(project: Project):
    """The production records (pandas, ``COLUMNS``); an empty frame when there are none."""
    import pandas as pd

    path = project.production_records_path
    if not path.exists():
        return pd.DataFrame(
            {c: pd.Series(dtype="int64" if c == "source_row" else "object") for c in COLUMNS}
        )
    return pd.read_parquet(path, columns=list(COLUMNS))


def production_ids(project: Project) -> frozenset[str]:
    """Ids of the production records (empty when there are none)."""
    import pyarrow.parquet as pq

    path = project.production_records_path
    if not path.exists():
        return frozenset()
    return frozenset(str(x) for x in pq.read_table(path, columns=["id"]).column("id").to_pylist())


def append_production_records(project: Project, rows) -> tuple[int, int]:
    """Add ``rows`` (pandas with ``COLUMNS``) whose ids the file lacks; rewrite it atomically.
    Returns (added, total). Appending the same ids again adds nothing."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thresher.records import record_schema

    current = production_records(project)
    new = rows[list(COLUMNS)].drop_duplicates("id")
    new = new[~new["id"].astype(str).isin(set(current["id"].astype(str)))]
    if new.empty:
        return 0, len(current)
    merged = pd.concat([current, new], ignore_index=True) if len(current) else new
    table = pa.Table.from_pandas(merged.reset_index(drop=True), preserve_index=False)
    table = table.cast(record_schema())
    path = project.production_records_path
    if not path.parent.exists():
        path.parent.mkdir(parents=True)
        os.chmod(path.parent, 0o700)
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)
    return len(new), len(merged)


def with_production_records(project: Project, frame):
    """``frame`` (a stage's records, pandas) plus the production records it does not hold yet:
    those whose id is neither an id of ``frame`` nor the text id of one of its texts (the same
    text ingested later wins). Production rows get null in the stage's other columns."""
    import pandas as pd

    from thresher.records import text_id

    prod = production_records(project)
    if prod.empty:
        return frame
    known = set(frame["id"].astype(str))
    known |= {text_id(str(t)) for t in frame["text"]}
    prod = prod[~prod["id"].astype(str).isin(known)]
    if prod.empty:
        return frame
    if "label" in frame.columns:
        prod = prod.assign(label=prod["label"].astype(object))
    else:
        prod = prod.drop(columns=["label"])
    return pd.concat([frame, prod], ignore_index=True)


def reviewed_production_records(project: Project, stage_path: Path, decisions):
    """The production records reviewers labelled (a consensus in ``decisions``, a
    ``thresher.decisions.ReviewDecisions``) that the stage file at ``stage_path`` does not hold,
    by id or by text, as an Arrow table in that file's schema (its other columns null; labels
    still the input's: apply the decisions as to any batch). None when there are none. The stage
    is read batch by batch, two columns at a time: memory follows the production records."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    prod = production_records(project)
    if prod.empty or not decisions.labels:
        return None
    prod = prod[prod["id"].astype(str).isin(decisions.labels.keys())]
    if prod.empty:
        return None
    ids = pa.array(prod["id"].astype(str).tolist(), pa.string())
    texts = pa.array(prod["text"].astype(str).tolist(), pa.string())
    held = np.zeros(len(prod), dtype=bool)
    parquet = pq.ParquetFile(stage_path)
    for batch in parquet.iter_batches(columns=["id", "text"]):
        stage_ids = pc.cast(batch.column("id"), pa.string())
        held |= pc.fill_null(pc.is_in(ids, value_set=stage_ids), False).to_numpy(False)
        held |= pc.fill_null(pc.is_in(texts, value_set=batch.column("text")), False).to_numpy(False)
    prod = prod[~held]
    if prod.empty:
        return None
    schema = parquet.schema_arrow
    columns = []
    for f in schema:
        if f.name in prod.columns:
            columns.append(pa.array(prod[f.name].tolist()).cast(f.type))
        else:
            columns.append(pa.nulls(len(prod), f.type))
    return pa.Table.from_arrays(columns, schema=schema)
