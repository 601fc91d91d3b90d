"""A small labelled project: sentiment texts whose cue words decide the label, ingested."""

from __future__ import annotations

import csv
import random
from pathlib import Path

POS = ["great", "wonderful", "superb", "delightful", "brilliant", "moving", "charming", "fresh"]
NEG = ["awful", "boring", "dull", "tedious", "clumsy", "lifeless", "mess", "stale"]
FILLER = ["the", "film", "movie", "story", "cast", "plot", "was", "and", "a", "very", "with", "it"]


def synthetic_rows(
    n: int, seed: int = 0, flip: float = 0.0, cue_words: int = 4
) -> list[dict[str, str]]:
    """Texts whose ``cue_words`` sentiment words decide the label; ``flip`` of labels are wrong."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(POS if label == "pos" else NEG, cue_words) + rng.sample(FILLER, 2)
        rng.shuffle(words)
        if rng.random() < flip:
            label = "neg" if label == "pos" else "pos"
        rows.append({"text": " ".join(words) + f" number {i}", "label": label})
    return rows


def make_project(root: Path, rows: list[dict[str, str]]) -> Path:
    """Ingest ``rows`` into a project folder at ``root``."""
    from curate.ingest import IngestOptions, ingest
    from thresher.project import Project

    root.mkdir(parents=True, exist_ok=True)
    src = root / "input.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ingest([src], Project.at(root), IngestOptions())
    return root
