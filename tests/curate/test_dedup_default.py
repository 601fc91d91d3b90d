"""The near-duplicate threshold default: one value everywhere, the one the benchmark chose, and
what it does to a short review."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from curate.dedup import DedupOptions, dedup
from curate.ingest import IngestOptions, ingest
from curate.minhash import MinHashOptions
from thresher.config import DEFAULTS
from thresher.project import Project

ROOT = Path(__file__).resolve().parents[2]


def test_default_threshold_is_the_benchmarks_choice_everywhere():
    result = json.loads((ROOT / "benchmarks/results/dedup_threshold.json").read_text())
    chosen = result["default"]["threshold"]
    assert DedupOptions().threshold == chosen
    assert MinHashOptions().threshold == chosen
    assert DEFAULTS["dedup"]["threshold"] == chosen
    # the rule it was chosen by: precision >= 0.99 on every corpus at every planting rate
    for corpus in result["default"]["per_corpus"].values():
        for at_rate in corpus.values():
            assert at_rate["thresher"]["precision"] >= 0.99


def test_default_links_a_one_word_edit_of_a_short_review_but_not_a_shared_phrase(tmp_path):
    review = (
        "The acting is uneven and the plot drifts in the middle, but the final half hour is "
        "tense, funny and surprisingly moving."
    )
    rows = [
        {"text": review},
        {"text": review.replace("tense", "gripping")},  # word 3-gram Jaccard 0.74
        # shares its first 11 words with the review: Jaccard 0.27, a different review
        {
            "text": "The acting is uneven and the plot drifts in the middle, and the ending is a "
            "shambles that even the fine cast cannot rescue."
        },
    ]
    src = tmp_path / "reviews.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    project = Project.at(tmp_path / "proj")
    ingest([src], project, IngestOptions(label_col=None))
    result = dedup(project, DedupOptions())
    assert (result.clusters, result.near_clusters, result.removed) == (1, 1, 1)
    clusters = pq.read_table(project.records_path("dedup")).column("dup_cluster").to_pylist()
    assert clusters[0] == clusters[1] == 0 and clusters[2] is None
