"""Per bias slice: does the traffic mention a group as often as the scored data did?

The slices are the groups the score stage reported (``DIR/score/bias.json`` → ``groups``); the
reference mention rate is the share of ``DIR/score/records.parquet`` rows whose ``bias_groups``
name the group. Traffic texts are matched against the same lexicon the score stage used (the
shipped identity-term list, extended or replaced by ``score.bias_lexicon`` as its manifest
records) with the same matcher (``thresher.bias_terms``).

Every slice gets a two-sided two-proportion test (``loop.drift.mention_shift``); ``shifted``
uses a Bonferroni threshold inside the slice family. Reported only: the drift decision does not
use these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loop.drift import bonferroni, mention_shift
from thresher.bias_terms import Matcher, default_lexicon, read_lexicon_file
from thresher.project import Project


def read_lexicon(project: Project) -> dict[str, list[str]]:
    """The lexicon the score stage matched with: group name → lowercase terms (the shipped one,
    extended or replaced by the ``bias_lexicon`` its manifest records; a user file that is gone
    is skipped)."""
    manifest = project.read_manifest("score") or {}
    config = manifest.get("config", {})
    user = config.get("bias_lexicon")
    lexicon = {} if (config.get("bias_lexicon_replace") and user) else default_lexicon()
    if user:
        path = Path(user)
        if not path.is_absolute() and not path.exists():
            path = project.root / path
        if path.exists():
            lexicon.update(read_lexicon_file(path))
    return lexicon


def slice_shifts(
    project: Project, traffic_texts: Sequence[str], alpha: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """Mention-rate shift per bias slice; ([] and a note) when the score stage has not run."""
    bias_path = project.stage_dir("score") / "bias.json"
    records_path = project.records_path("score")
    if not bias_path.exists() or not records_path.exists():
        return [], [f"no bias slices: {bias_path} not found (run `thresher curate score`)"]
    if not traffic_texts:
        return [], ["no bias slices: the traffic was logged without text"]
    groups = sorted({g["name"] for g in json.loads(bias_path.read_text()).get("groups", [])})
    reference = _reference_groups(records_path)
    lexicon = read_lexicon(project)
    matcher = Matcher(lexicon)
    mentioned = [set(matcher.groups(text)) for text in traffic_texts]
    rows = []
    for group in groups:
        if group not in lexicon:
            continue
        ref_hits = sum(group in g for g in reference)
        cur_hits = sum(group in g for g in mentioned)
        test = mention_shift(ref_hits, len(reference), cur_hits, len(traffic_texts), group)
        rows.append(test)
    threshold, flags = bonferroni([t.p_value for t in rows], alpha)
    return [_slice_row(t, flag, threshold) for t, flag in zip(rows, flags, strict=True)], []


def _reference_groups(records_path: Path) -> list[set[str]]:
    import pyarrow.parquet as pq

    column = pq.read_table(records_path, columns=["bias_groups"]).column("bias_groups")
    return [set(g or ()) for g in column.to_pylist()]


def _slice_row(test, shifted: bool, threshold: float) -> dict[str, Any]:
    details: Mapping[str, Any] = test.details
    return {
        "slice": test.name,
        "statistic": test.statistic,
        "p_value": test.p_value,
        "threshold": threshold,
        "shifted": shifted,
        "reference_rate": details["reference_rate"],
        "traffic_rate": details["traffic_rate"],
        "n_reference": test.n_reference,
        "n_traffic": test.n_traffic,
    }
