"""What one score run works from: its options, its input records, and its fingerprint.

``plan_score`` gathers the inputs (the latest records, the review pull's annotations, the tune
split's held-out ids, the bias lexicon) and fingerprints them with the options, so the stage can
tell a rerun with nothing changed (a no-op) from one to do. Both engines read the plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thresher.errors import InputError
from thresher.project import Project, fingerprint, path_sha256, upstream_input
from thresher.split import held_out_ids

STAGE = "score"
ENGINES = ("auto", "local", "stream", "ray")


@dataclass(frozen=True)
class ScoreOptions:
    """What the score stage needs from the config (resolved by the caller)."""

    folds: int = 5
    repeats: int = 2
    learners: tuple[str, ...] = ("emb", "svm")
    second_pass: bool = False
    embeddings: bool = True
    model: str = "default"
    bias_lexicon: str | None = None
    bias_lexicon_replace: bool = False
    bias_alpha: float = 0.05
    bias_min_count: int = 5
    probs_from: str | None = None
    seed: int = 0
    # observed | uniform | label=share,...: the true class shares to assume (curate.noise
    # adjust_to_prior); not observed when label noise runs mostly one way
    class_prior: str = "observed"
    # local = in memory (all learners, outliers, map); stream = two passes over Parquet batches
    # with hashed naive Bayes (never all texts in memory); ray = the same passes on Ray Data;
    # auto = local up to ``stream_above`` records to score, stream above.
    engine: str = "auto"
    stream_above: int = 200_000
    batch_size: int = 8192


def resolve_engine(opts: ScoreOptions, rows: int) -> str:
    """The engine that runs: ``auto`` picks ``stream`` above ``stream_above`` rows."""
    if opts.engine not in ENGINES:
        raise InputError(f"score engine must be one of {', '.join(ENGINES)}, got {opts.engine!r}")
    if opts.engine != "auto":
        return opts.engine
    return "stream" if rows > opts.stream_above else "local"


def resolve_learners(learners: tuple[str, ...], embeddings: bool) -> tuple[str, ...]:
    """The learners to run. Without embeddings, ``emb`` is replaced by ``nb`` (naive Bayes on
    word + character n-grams: a second, differently-biased text view; measured in docs/score.md)."""
    from curate.noise import ALL_LEARNERS

    unknown = [ln for ln in learners if ln not in ALL_LEARNERS]
    if unknown:
        raise InputError(f"unknown learners {unknown}; choose from {', '.join(ALL_LEARNERS)}")
    if embeddings:
        return tuple(dict.fromkeys(learners))
    out = [("nb" if ln == "emb" else ln) for ln in learners]
    out = list(dict.fromkeys(out))
    if not out:
        raise InputError("no learners given; choose from " + ", ".join(ALL_LEARNERS))
    return tuple(out)


@dataclass
class ScorePlan:
    """One score run's inputs, resolved: what both engines and the output writer read."""

    project: Project
    opts: ScoreOptions
    engine: str  # local, stream or ray (never auto)
    stage_in: str  # the stage whose records are scored: dedup, else ingest
    path_in: Path
    lexicon: dict[str, list[str]]
    inputs: list[dict[str, Any]]  # the manifest's inputs (records, annotations, split)
    config: dict[str, Any]
    fingerprint: str
    annotations: dict[str, dict[str, str]] | None  # {id: {annotator: label}} from review pull
    held_out: frozenset[str]  # ids whose labels no model learns from (the tune split's test)
    progress: Callable[[int], None] | None = None


def plan_score(
    project: Project, opts: ScoreOptions, progress: Callable[[int], None] | None = None
) -> ScorePlan:
    """Gather and fingerprint a run's inputs (reads the annotations and split, not the records)."""
    import pyarrow.parquet as pq

    from curate.score_annotations import read_annotations
    from thresher.bias_terms import load_lexicon

    stage_in, path_in = project.latest_records(["dedup", "ingest"])
    lexicon = load_lexicon(opts.bias_lexicon, replace=opts.bias_lexicon_replace)
    inputs = [upstream_input(project, stage_in)]
    annotations, ann_path = read_annotations(project)
    if ann_path is not None:
        inputs.append({"path": str(ann_path), "sha256": path_sha256(ann_path)})
    # the project split's test/held records: no label-noise model learns from their labels, so a
    # curated run's test score is not shaped by its own test labels
    held_out = held_out_ids(project)
    if project.split_path.exists():
        inputs.append({"path": str(project.split_path), "sha256": path_sha256(project.split_path)})
    engine = resolve_engine(opts, pq.ParquetFile(path_in).metadata.num_rows)
    config = {**asdict(opts), "engine": engine, "lexicon": fingerprint(lexicon)}
    stage_fp = fingerprint({"inputs": inputs, "config": config})
    return ScorePlan(
        project, opts, engine, stage_in, path_in, lexicon, inputs, config, stage_fp,
        annotations, held_out, progress,
    )  # fmt: skip
