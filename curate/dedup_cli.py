"""``thresher curate dedup`` and ``thresher curate export`` (thin: parse, call the library, print).

Only click and the CLI helpers (thresher.cli_common, thresher.cli_overrides) are imported here;
numpy/pyarrow load inside the commands, and torch/sentence-transformers only with ``--semantic``.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING

import click

from thresher.cli_common import emit, force_option, json_option, progress_bar, project_option
from thresher.cli_overrides import config_for

if TYPE_CHECKING:
    from curate.dedup import DedupOptions, DedupResult
    from thresher.config import Config
    from thresher.project import Project


@click.command("dedup")
@project_option
@click.option("--threshold", type=float, default=None, help="Jaccard threshold [dedup.threshold].")
@click.option(
    "--shingle", type=click.Choice(["word", "char"]), default=None, help="Shingle unit [word]."
)
@click.option("--ngram", type=int, default=None, help="Words (or chars) per shingle [3].")
@click.option("--num-perm", type=int, default=None, help="MinHash signature length [128].")
@click.option(
    "--punctuation/--keep-punctuation",
    default=None,
    help="Treat punctuation as spaces when normalising [dedup.punctuation: keep].",
)
@click.option(
    "--semantic/--no-semantic", default=None, help="Also flag semantic duplicates (embeddings)."
)
@click.option("--semantic-threshold", type=float, default=None, help="Cosine threshold [0.95].")
@click.option(
    "--against",
    type=click.Path(exists=True),
    default=None,
    help="Project folder or file (e.g. an eval set): report rows of DIR that duplicate it.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default=None,
    help="Where the search runs [dedup.engine: local]. ray: all of it on Ray Data (the cluster"
    " in RAY_ADDRESS, else a local one; only hashing with --semantic/--against); thresher[ray].",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to run on (--engine ray), e.g. HEAD:6379 [env RAY_ADDRESS, else local].",
)
@force_option
@json_option
def dedup_command(
    project_dir: str,
    threshold: float | None,
    shingle: str | None,
    ngram: int | None,
    num_perm: int | None,
    punctuation: bool | None,
    semantic: bool | None,
    semantic_threshold: float | None,
    against: str | None,
    engine: str | None,
    address: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Find exact, near and (opt-in) semantic duplicates; flag label conflicts.

    \b
    Reads DIR/ingest/records.parquet; writes DIR/dedup/records.parquet with dup_cluster,
    dup_kind, is_representative, label_conflict, semantic_cluster (+ leakage.parquet with
    --against). Examples:
      thresher curate dedup -p proj
      thresher curate dedup -p proj --threshold 0.7 --semantic
      thresher curate dedup -p proj --against eval.jsonl --json
      thresher curate dedup -p proj --engine ray --address HEAD:6379
    """
    from curate.dedup import dedup
    from thresher.project import Project

    _tune_allocator()
    project = Project.at(project_dir)
    config = config_for(project.root, "curate dedup")
    options = _dedup_options(config)
    if address is not None:
        if options.engine != "ray":
            raise click.UsageError("--address needs --engine ray (or dedup.engine: ray)")
        from curate.ray_support import connect

        connect(address)
    run = functools.partial(
        dedup,
        project,
        options,
        force=force,
        against=against,
        text_col=config.get("columns.text"),
    )
    if sys.stderr.isatty():
        with progress_bar(desc="dedup") as bar:
            result = run(progress=bar.update)
    else:  # no bar to show: skip importing tqdm (start-up time counts on large batch jobs)
        result = run()
    emit(result.to_dict(), as_json, _dedup_lines(result, project))


def _dedup_options(config: Config) -> DedupOptions:
    from curate.dedup import DedupOptions

    section = config.section("dedup")
    return DedupOptions(
        threshold=section["threshold"],
        num_perm=section["num_perm"],
        shingle=section["shingle"],
        ngram=section["ngram"],
        punctuation=section["punctuation"],
        semantic=section["semantic"],
        semantic_threshold=section["semantic_threshold"],
        embedding_model=config.get("models.embedding"),
        batch_size=section["batch_size"],
        engine=section["engine"],
        seed=config.get("seed"),
    )


def _dedup_lines(result: DedupResult, project: Project) -> list[str]:
    lines = []
    if result.noop:
        lines.append("dedup is up to date (input and config unchanged); --force redoes it")
    lines.append(
        f"rows: {result.rows}  clusters: {result.clusters} ({result.exact_clusters} exact, "
        f"{result.near_clusters} near)  removed: {result.removed}  → {result.path}"
    )
    if result.label_conflicts:
        lines.append(
            f"label conflicts: {result.label_conflicts} clusters"
            f" ({result.label_conflict_rows} rows); review them first"
        )
    if result.semantic_clusters is not None:
        lines.append(f"semantic clusters (flagged, kept): {result.semantic_clusters}")
    if result.leaked is not None:
        lines.append(
            f"leakage: {result.leaked} rows duplicate {result.against}"
            f" (see {project.stage_dir('dedup')}/leakage.parquet)"
        )
    return lines


@click.command("export")
@project_option
@click.argument("out", type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "jsonl", "hf"]),
    default="parquet",
    show_default=True,
    help="Output format (hf: a datasets folder for load_from_disk).",
)
@click.option(
    "--drop-label-issues",
    is_flag=True,
    help="Also drop rows the score stage flags label_issue (never a reviewed one).",
)
@force_option
@json_option
def export_command(
    project_dir: str, out: str, fmt: str, drop_label_issues: bool, force: bool, as_json: bool
) -> None:
    """Write the curated set: representatives only, from the latest stage (score > dedup > ingest),
    with the review applied (after `thresher review pull`): consensus labels in `label`, the
    input label in `original_label`, `label_source` reviewed|original, and records every
    reviewer discarded left out. --drop-label-issues never drops a reviewed record.

    \b
    Examples:
      thresher curate export -p proj curated.parquet
      thresher curate export -p proj curated.jsonl --format jsonl --drop-label-issues
      thresher curate export -p proj curated-hf --format hf
    """
    from curate.export import ExportOptions, export
    from thresher.project import Project

    result = export(
        Project.at(project_dir),
        out,
        ExportOptions(format=fmt, drop_label_issues=drop_label_issues, force=force),
    )
    lines = [
        f"exported {result.exported} of {result.rows_in} rows from the {result.stage} stage"
        f" → {result.path} ({result.format})",
        f"dropped: {result.dropped_duplicates} duplicates,"
        f" {result.dropped_discarded} discarded by reviewers,"
        f" {result.dropped_label_issues} label issues",
        f"reviewed labels: {result.reviewed} ({result.relabelled} changed)",
    ]
    emit(result.to_dict(), as_json, lines)


def _tune_allocator() -> None:
    """Keep freed memory in the heap (glibc only): the stage allocates many short-lived numpy
    arrays of a few MB per batch, and returning them to the kernel makes every batch page-fault
    its memory in again (a third of the run's CPU time on a busy VM). No-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 1 << 30)
        libc.mallopt(m_top_pad, 64 << 20)
    except (OSError, AttributeError):
        return


def register(group: click.Group) -> None:
    """Add the dedup and export commands to the ``curate`` group."""
    group.add_command(dedup_command)
    group.add_command(export_command)
