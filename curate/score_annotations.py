"""Multi-annotator input for the score stage: the review pull's labels per record, scored with
cleanlab's CROWDLAB (``curate.noise.score_multiannotator``) against the ensemble's predictions.

Reads ``DIR/review/annotations.parquet`` column ``annotator_labels`` (``{annotator: label}``, a
JSON string or a mapping, as ``thresher review pull`` writes it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thresher.project import Project


def read_annotations(project: Project) -> tuple[dict[str, dict[str, str]] | None, Path | None]:
    """Per-record annotator labels from a review pull, if any: ({id: {annotator: label}}, the
    file). (None, None) without the file; (None, file) when it lacks the columns."""
    import pandas as pd

    path = project.annotations_path
    if not path.exists():
        return None, None
    frame = pd.read_parquet(path)
    if "annotator_labels" not in frame.columns or "id" not in frame.columns:
        return None, path
    out = {}
    for rid, raw in zip(frame["id"], frame["annotator_labels"], strict=True):
        value = json.loads(raw) if isinstance(raw, str) else raw
        if isinstance(value, dict) and value:
            out[str(rid)] = {str(k): str(v) for k, v in value.items() if v is not None}
    return out, path


def score_annotations(
    ids: Sequence[Any], annotations: dict[str, dict[str, str]], res
) -> tuple[Any, dict[str, float]]:
    """CROWDLAB over the scored records (``ids``, aligned with ``res``, a
    ``curate.noise.NoiseResult``) that annotators labelled: a frame (id, consensus_label,
    consensus_quality, annotator_agreement; quality and agreement in [0, 1], low = doubtful) and
    each annotator's quality. (None, {}) when no scored record has annotations."""
    import pandas as pd

    from curate.noise import score_multiannotator

    pos = [i for i, rid in enumerate(ids) if str(rid) in annotations]
    if not pos:
        return None, {}
    rows = [annotations[str(ids[i])] for i in pos]
    multi = score_multiannotator(rows, res.pred_probs[pos], res.classes)
    frame = pd.DataFrame(
        {
            "id": [ids[i] for i in pos],
            "consensus_label": multi.consensus_label,
            "consensus_quality": multi.consensus_quality,
            "annotator_agreement": multi.annotator_agreement,
        }
    )
    return frame, multi.annotator_quality
