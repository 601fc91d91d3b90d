"""The monitor's per-record output: ``records.parquet`` next to ``report.json``.

One row per compared traffic row of the window: ``time``, ``request_id``, ``text_hash``,
``label``, ``prob``, ``near_ood`` (True = the text's k-NN distance to the training texts is above
the near-OOD threshold; null when the text was not logged or the near-OOD test did not run) and
``ood_distance`` (that mean cosine distance to the k nearest training texts, high = far from the
training data; null when not computed). ``thresher round --from-traffic`` ranks the flagged
texts first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RECORDS_FILE = "records.parquet"


@dataclass(frozen=True)
class OodScores:
    """The near-OOD test's per-text evidence: logged text → k-NN cosine distance (high = far
    from the training data), and the threshold above which a text counts as near-OOD."""

    threshold: float
    distance: dict[str, float]


def records_schema():
    """The Arrow schema of ``records.parquet``."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("text_hash", pa.string(), nullable=False),
            pa.field("label", pa.string(), nullable=False),
            pa.field("prob", pa.float32(), nullable=False),
            pa.field("near_ood", pa.bool_(), nullable=True),
            pa.field("ood_distance", pa.float64(), nullable=True),
        ]
    )


def record_table(traffic, ood: OodScores | None):
    """The per-record table of the compared traffic rows (a pandas frame with ``COLUMNS`` of
    ``thresher.traffic``), with the near-OOD evidence where there is some."""
    import pyarrow as pa

    distances: list[float | None] = []
    for text in traffic["text"]:
        known = ood is not None and isinstance(text, str)
        distances.append(ood.distance.get(text) if known else None)
    threshold = ood.threshold if ood is not None else 0.0
    return pa.table(
        {
            "time": pa.array(traffic["time"], type=pa.timestamp("us", tz="UTC")),
            "request_id": pa.array(traffic["request_id"].astype(str), type=pa.string()),
            "text_hash": pa.array(traffic["text_hash"].astype(str), type=pa.string()),
            "label": pa.array(traffic["label"].astype(str), type=pa.string()),
            "prob": pa.array(traffic["prob"].astype("float32"), type=pa.float32()),
            "near_ood": pa.array(
                [None if d is None else bool(d > threshold) for d in distances], type=pa.bool_()
            ),
            "ood_distance": pa.array(distances, type=pa.float64()),
        },
        schema=records_schema(),
    )


def write_records(path: Path, table) -> None:
    """Write ``table`` to ``path`` atomically (a reader never sees half a file)."""
    import pyarrow.parquet as pq

    from thresher.project import atomic_output

    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)
