"""The score stage's reported outputs, written once for every engine.

An engine scores and writes ``records.parquet`` (and the local engine ``map.parquet``); then it
hands a ``ScoreOutputs`` to ``write_outputs``, which writes the rest of ``DIR/score/``:
``annotators.json`` (with several labels per record), ``bias.json``, ``report.html``, and the
manifest's counts, summary, scoring description, seed and classes. The summary is also the
stage's result (``ScoreResult``, what ``--json`` prints).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.score_plan import STAGE, ScorePlan

if TYPE_CHECKING:
    from curate.bias import BiasReport
    from curate.noise import NoiseResult
    from thresher.project import StageRun


@dataclass
class ScoreResult:
    """Summary of one score run (also what ``--json`` prints)."""

    scored: int
    records: int
    labeled: int
    label_issues: int
    near_ood: int
    significant_bias: int
    top_bias: list[dict[str, Any]]
    learners: list[str]
    folds: int
    path: str
    report: str
    noop: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    engine: str = "local"
    skipped: list[str] = field(default_factory=list)  # one line per step not run, and why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoreOutputs:
    """What an engine hands the writer: the representatives' scores and bias report, and the
    counts over every row it wrote to ``records.parquet``."""

    res: NoiseResult  # the scored records (representatives), in input order
    bias: BiasReport
    annotator_quality: dict[str, float]  # CROWDLAB quality per annotator; {} without any
    scored: int  # records scored (representatives)
    records: int  # rows in records.parquet
    labeled: int
    label_issues: int
    near_ood: int
    scoring: dict[str, Any]  # how the engine scored: the manifest's ``scoring``, the report's note
    report_records: Callable[[], Any]  # the report's rows (a pandas DataFrame, built on demand)
    coords: np.ndarray | None = None  # (rows, 2) embedding map aligned with the report's rows
    # The stream engine reads texts back for its report, so it is timed apart ("report").
    time_report: bool = False
    skipped: list[str] = field(default_factory=list)  # one line per step not run, and why


def write_outputs(run: StageRun, plan: ScorePlan, out: ScoreOutputs) -> ScoreResult:
    """Write annotators.json, bias.json, report.html and the manifest's fields into ``run``;
    return the run's summary."""
    if out.annotator_quality:
        _write_json(run, "annotators.json", {"annotator_quality": out.annotator_quality})
    bias = out.bias.to_dict()
    run.path("bias.json").write_text(
        json.dumps(bias, indent=2, sort_keys=True, default=float) + "\n", encoding="utf-8"
    )
    summary = _summary(plan, out)
    with run.timed("report") if out.time_report else nullcontext():
        _write_report(run, plan, out, bias)
    run.counts.update(
        {"rows_in": out.records, "scored": out.scored, "label_issues": out.label_issues,
         "near_ood": out.near_ood}
    )  # fmt: skip
    summary.timings = dict(run.timings)
    run.extra.update(
        {"summary": _summary_json(summary), "scoring": out.scoring, "seed": plan.opts.seed,
         "classes": out.res.classes}
    )  # fmt: skip
    return summary


def _write_json(run: StageRun, name: str, value: dict[str, Any]) -> None:
    run.path(name).write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _summary(plan: ScorePlan, out: ScoreOutputs) -> ScoreResult:
    """The run's summary: counts, the bias headline, learners, folds and output paths."""
    groups = out.bias.groups
    project = plan.project
    return ScoreResult(
        scored=out.scored,
        records=out.records,
        labeled=out.labeled,
        label_issues=out.label_issues,
        near_ood=out.near_ood,
        significant_bias=sum(1 for g in groups if g["significant"]),
        top_bias=[
            {k: g[k] for k in ("name", "label", "lift", "q_value", "slice_size")}
            for g in groups[:5]
        ],
        learners=list(out.res.learners),
        folds=out.res.folds,
        path=str(project.records_path(STAGE)),
        report=str(project.stage_dir(STAGE) / "report.html"),
        engine=plan.engine,
        skipped=list(out.skipped),
    )


def _write_report(run: StageRun, plan: ScorePlan, out: ScoreOutputs, bias: dict[str, Any]) -> None:
    from curate.report import ReportData, render_report, stage_counts

    project = plan.project
    html_text = render_report(
        ReportData(
            records=out.report_records(),
            bias=bias,
            stage_counts={**stage_counts(project), "score": {"records": out.records}},
            coords=out.coords,
            project=str(project.root),
            scoring=out.scoring,
            skipped=list(out.skipped),
        )
    )
    run.path("report.html").write_text(html_text, encoding="utf-8")


def _summary_json(summary: ScoreResult) -> dict[str, Any]:
    out = summary.to_dict()
    out.pop("noop")
    return json.loads(json.dumps(out, default=float))
