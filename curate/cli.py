"""``thresher curate ...`` commands (thin: parse, call the library, print)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from thresher.cli_common import (
    ThresherGroup,
    emit,
    force_option,
    json_option,
    progress_bar,
    project_option,
)
from thresher.cli_overrides import config_for

if TYPE_CHECKING:
    from curate.ingest import IngestOptions, IngestResult
    from curate.score import ScoreOptions, ScoreResult
    from thresher.config import Config
    from thresher.project import Project

# The demo corpus's own columns, whatever the config or the flags say.
_DEMO_COLUMNS = {"columns.text": "text", "columns.label": "label"}


@click.group(cls=ThresherGroup)
def curate() -> None:
    """Ingest, deduplicate, score and export the data."""


@curate.command("ingest")
@click.argument("sources", nargs=-1, type=click.Path())
@project_option
@click.option("--text-col", default=None, help="Text column [config columns.text: text].")
@click.option("--label-col", default=None, help="Label column [config columns.label: label].")
@click.option(
    "--id-col",
    default=None,
    help="Id column, required in every input [config columns.id: id, used where present].",
)
@click.option("--no-id-col", is_flag=True, help="Text-hash ids even where an id column exists.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "csv", "tsv", "jsonl", "parquet", "hf"]),
    default=None,
    help="Input format [auto: by extension].",
)
@click.option("--max-text-chars", type=int, default=None, help="Quarantine longer texts.")
@click.option(
    "--max-line-bytes",
    type=int,
    default=None,
    help="Quarantine longer lines unparsed [config ingest.max_line_bytes: 16 MiB].",
)
@click.option("--demo", is_flag=True, help="Ingest the built-in Rotten Tomatoes demo corpus.")
@force_option
@json_option
def ingest_command(
    sources: tuple[str, ...],
    project_dir: str,
    text_col: str | None,
    label_col: str | None,
    id_col: str | None,
    no_id_col: bool,
    fmt: str | None,
    max_text_chars: int | None,
    max_line_bytes: int | None,
    demo: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Read CSV/TSV/JSONL/Parquet files or saved HF datasets; quarantine bad rows with a reason.

    \b
    Writes DIR/ingest/records.parquet, rejected.jsonl and manifest.json.
    Examples:
      thresher curate ingest reviews.csv -p proj --text-col body --label-col sentiment
      thresher curate ingest data/ extra.jsonl -p proj --id-col uid
      thresher curate ingest export.jsonl -p proj --no-id-col
      thresher curate ingest --demo -p proj
    """
    from curate.ingest import ingest
    from thresher.project import Project

    if id_col is not None and no_id_col:
        raise click.UsageError("--id-col and --no-id-col exclude each other")
    project = Project.at(project_dir)
    paths = _ingest_paths(project, sources, demo)
    config = config_for(project.root, "curate ingest", extra=_DEMO_COLUMNS if demo else None)
    # the demo corpus has no ids: text-hash ids whatever the config says
    opts = _ingest_options(
        config, demo=demo, hash_ids=no_id_col or demo, id_required=id_col is not None
    )
    with progress_bar(desc="ingest") as bar:
        result = ingest(
            paths, project, opts, force=force, seed=config.get("seed"), progress=bar.update
        )
    emit(result.to_dict(), as_json, _ingest_lines(result, project))


def _ingest_paths(project: Project, sources: tuple[str, ...], demo: bool) -> list[Path]:
    """The input paths: SOURCES, and with --demo the demo corpus written into the project."""
    from thresher.assets import write_demo_corpus

    paths = [Path(p) for p in sources]
    if demo:
        paths.append(Path(write_demo_corpus(project.root / "demo" / "rotten_tomatoes.csv")))
    if not paths:
        raise click.UsageError("give one or more SOURCES, or --demo")
    return paths


def _ingest_options(
    config: Config, *, demo: bool, hash_ids: bool, id_required: bool
) -> IngestOptions:
    """Ingest options from the config; ``hash_ids``: text-hash ids even where an id column
    exists; ``id_required``: the id column was named by a flag, so every input must have it."""
    from curate.ingest import IngestOptions
    from thresher.assets import DEMO_LABELS

    return IngestOptions(
        text_col=config.get("columns.text"),
        label_col=config.get("columns.label"),
        id_col=None if hash_ids else config.get("columns.id"),
        id_required=True if id_required else None,
        format=config.get("ingest.format"),
        max_text_chars=config.get("ingest.max_text_chars"),
        max_line_bytes=config.get("ingest.max_line_bytes"),
        batch_size=config.get("ingest.batch_size"),
        labels=tuple(config.get("labels") or (DEMO_LABELS if demo else ())),
    )


def _ingest_lines(result: IngestResult, project: Project) -> list[str]:
    lines = []
    if result.noop:
        lines.append("ingest is up to date (inputs and config unchanged); --force redoes it")
    lines.append(
        f"rows in: {result.rows_in}  kept: {result.kept}  rejected: {result.rejected}"
        f"  → {result.path}"
    )
    id_cols = sorted({s["id_col"] for s in result.sources if s.get("id_col")})
    if id_cols:
        hashed = any(not s.get("id_col") for s in result.sources)
        lines.append(
            f"ids: from column {', '.join(map(repr, id_cols))}"
            + (" (text hash in sources without it)" if hashed else "")
        )
    if result.by_reason:
        reasons = ", ".join(f"{k}={v}" for k, v in result.by_reason.items())
        lines.append(
            f"rejected by reason: {reasons} (see {project.stage_dir('ingest')}/rejected.jsonl)"
        )
    if result.labels:
        lines.append("labels: " + ", ".join(f"{k}={v}" for k, v in result.labels.items()))
    if result.control_chars_cleaned:
        lines.append(f"control characters removed from {result.control_chars_cleaned} texts")
    return lines


@curate.command("score")
@project_option
@click.option(
    "--folds", type=int, default=None, help="Cross-validation folds [config score.folds: 5]."
)
@click.option(
    "--model",
    default=None,
    help="Embedding model: default (offline MiniLM), a local folder or a hub id "
    "[config models.embedding].",
)
@click.option(
    "--no-embeddings",
    is_flag=True,
    help="Fast mode: TF-IDF learners only, no sentence embeddings (outliers from TF-IDF SVD).",
)
@click.option(
    "--learners",
    default=None,
    help="Comma-separated learners from emb,svm,nb,lr [config score.learners: emb,svm].",
)
@click.option(
    "--probs-from",
    default=None,
    metavar="FILE|RUN",
    help="Use out-of-sample probabilities (a `thresher tune predict --out` file with p_<label> "
    "columns, or tune run RUN's predictions) instead of the ensemble.",
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "local", "stream", "ray"]),
    default=None,
    help="local = in memory; stream = two passes over Parquet batches (hashed naive Bayes, "
    "for corpora past memory); ray = those passes on Ray Data (thresher[ray]); auto = stream "
    "above score.stream_above records [config score.engine: auto].",
)
@click.option(
    "--class-prior",
    default=None,
    help="True class shares to assume: observed (the labels' own), uniform, or "
    "label=share,... Use when label noise runs mostly one way (one class over-used) "
    "[config score.class_prior: observed].",
)
@force_option
@json_option
def score_command(
    project_dir: str,
    folds: int | None,
    model: str | None,
    no_embeddings: bool,
    learners: str | None,
    probs_from: str | None,
    engine: str | None,
    class_prior: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Score label noise (cleanlab, out-of-sample), outliers and bias; write the HTML report.

    \b
    Writes DIR/score/records.parquet, bias.json, report.html and manifest.json.
    Examples:
      thresher curate score -p proj
      thresher curate score -p proj --folds 10 --no-embeddings
      thresher curate score -p big-proj --engine stream
      thresher curate score -p proj --class-prior uniform --force
    """
    from curate.score import score
    from thresher.project import Project

    project = Project.at(project_dir)
    opts = _score_options(config_for(project.root, "curate score"), probs_from)
    with progress_bar(desc="score") as bar:
        result = score(project, opts, force=force, progress=bar.update)
    emit(result.to_dict(), as_json, _score_lines(result))


def _score_options(config: Config, probs_from: str | None) -> ScoreOptions:
    from curate.score import ScoreOptions

    section = config.section("score")
    return ScoreOptions(
        folds=section["folds"],
        repeats=section["repeats"],
        learners=tuple(section["learners"]),
        second_pass=section["second_pass"],
        embeddings=section["embeddings"],
        model=config.get("models.embedding") or "default",
        bias_lexicon=section.get("bias_lexicon"),
        bias_lexicon_replace=section["bias_lexicon_replace"],
        bias_alpha=section["bias_alpha"],
        bias_min_count=section["bias_min_count"],
        probs_from=probs_from,
        seed=config.get("seed"),
        engine=section["engine"],
        stream_above=section["stream_above"],
        batch_size=section["batch_size"],
        class_prior=section["class_prior"],
    )


def _score_lines(result: ScoreResult) -> list[str]:
    lines = []
    if result.noop:
        lines.append("score is up to date (inputs and config unchanged); --force redoes it")
    if result.learners:
        how = f"with {'+'.join(result.learners)}, {result.folds} folds"
    else:
        how = "without a label model"
    lines.append(
        f"scored {result.scored} of {result.records} records ({result.labeled} labeled) "
        f"{how} ({result.engine} engine)"
    )
    lines.extend(f"skipped: {line}" for line in result.skipped)
    lines.append(
        f"label issues: {result.label_issues}  near-OOD: {result.near_ood}  "
        f"significant group/label associations: {result.significant_bias}"
    )
    for row in result.top_bias[:3]:
        lines.append(
            f"  {row['name']} → {row['label']}: lift {row['lift']:.2f}, q {row['q_value']:.2g}, "
            f"n={row['slice_size']}"
        )
    lines.append(f"→ {result.path}")
    lines.append(f"report: {result.report}")
    return lines


@curate.command("report")
@project_option
@json_option
def report_command(project_dir: str, as_json: bool) -> None:
    """Rebuild DIR/score/report.html from the score output (no rescoring).

    \b
    Example:
      thresher curate report -p proj
    """
    from curate.report import build_report
    from thresher.project import Project

    path = build_report(Project.at(project_dir))
    emit({"report": path}, as_json, [f"report: {path}"])
