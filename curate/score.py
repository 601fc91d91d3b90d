"""The score stage: label noise, outliers and bias for every record, plus the HTML report.

Reads ``DIR/dedup/records.parquet`` when present (else ``DIR/ingest/``). With dedup output only
representatives are scored (duplicates would leak across folds and inflate confidence); cluster
members get their representative's predictions, and their own ``label_quality`` against them.

Writes ``DIR/score/``: ``records.parquet`` (input columns + label_quality, label_issue,
predicted_label, predicted_prob, outlier_score, near_ood, bias_groups), ``bias.json``,
``report.html``, ``map.parquet`` (2-D embedding map) and ``manifest.json``.

The stage in steps, each in its own module:

- ``curate.score_plan``: the options, the run's inputs and fingerprint (a no-op when unchanged);
- an engine scores and writes ``records.parquet``: ``curate.score_engine_local`` (in memory) or
  ``curate.score_engine_stream`` (``stream``/``ray``: passes over batches, ``curate.score_stream``);
  both carry scores to cluster members with ``curate.score_members`` and score several labels
  per record with ``curate.score_annotations``;
- ``curate.score_outputs`` writes what both report: annotators.json, bias.json, report.html and
  the manifest's counts and summary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from curate.score_members import expand_scores, representative_rows, scored_records
from curate.score_outputs import ScoreOutputs, ScoreResult, write_outputs
from curate.score_plan import (
    ENGINES,
    STAGE,
    ScoreOptions,
    ScorePlan,
    plan_score,
    resolve_engine,
    resolve_learners,
)
from thresher.project import Project, stage_output

if TYPE_CHECKING:
    from thresher.project import StageRun

__all__ = [
    "ENGINES",
    "STAGE",
    "ScoreOptions",
    "ScoreResult",
    "expand_scores",
    "report_path",
    "representative_rows",
    "resolve_engine",
    "resolve_learners",
    "score",
    "scored_records",
]


def score(
    project: Project,
    opts: ScoreOptions,
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ScoreResult:
    """Run the score stage on ``project``. A rerun with unchanged inputs/options is a no-op."""
    plan = plan_score(project, opts, progress)
    if not force and project.is_fresh(STAGE, plan.fingerprint):
        manifest = project.read_manifest(STAGE) or {}
        return ScoreResult(**{**manifest["summary"], "noop": True})
    engine = _engine(plan)
    with stage_output(
        project, STAGE, plan.fingerprint, inputs=plan.inputs, config=plan.config,
        packages=engine.packages,
    ) as run:  # fmt: skip
        summary = write_outputs(run, plan, engine.score(run))
    return summary


class Engine(Protocol):
    """What the stage asks of an engine: the packages it reports, and a run that scores and
    writes ``records.parquet`` into the stage folder."""

    packages: tuple[str, ...]

    def score(self, run: StageRun) -> ScoreOutputs: ...


def _engine(plan: ScorePlan) -> Engine:
    """The engine that runs ``plan``, its input read and checked."""
    if plan.engine == "local":
        from curate.score_engine_local import LocalEngine

        return LocalEngine(plan)
    from curate.score_engine_stream import StreamEngine

    return StreamEngine(plan)


def report_path(project: Project) -> Path:
    return project.stage_dir(STAGE) / "report.html"
