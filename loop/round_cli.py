"""``thresher round``: one resumable active-learning round through Argilla (thin CLI).

The wiring (which steps, which learner) is in ``loop.round_wiring.build_runner``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from thresher.cli_common import emit, json_option, project_option
from thresher.cli_overrides import config_for

if TYPE_CHECKING:
    from loop.rounds import RoundResult
    from thresher.config import Config
    from thresher.project import Project


@click.command("round")
@project_option
@click.option(
    "--strategy",
    default=None,
    help="margin | entropy | least-confidence | random, optionally +kmeans or +coreset "
    "[config loop.strategy: margin].",
)
@click.option("--size", type=int, default=None, help="Pool records to select [loop.size: 50].")
@click.option(
    "--learner",
    type=click.Choice(["fast", "tfidf", "lora"]),
    default=None,
    help="fast: embeddings + LR; tfidf: TF-IDF + LR; lora: tune's LoRA classifier [fast].",
)
@click.option(
    "--labels",
    type=click.Choice(["reviewed", "all"]),
    default=None,
    help="Train on reviewed labels only, or input labels too [loop.labels: reviewed].",
)
@click.option("--next", "new", is_flag=True, help="Start the next round even without new labels.")
@click.option(
    "--from-traffic",
    is_flag=True,
    help="A production round: served texts (DIR/serve/traffic) to annotators, no training.",
)
@click.option("--since", default=None, help="--from-traffic: served at or after (ISO time, UTC).")
@click.option("--until", default=None, help="--from-traffic: served before (ISO time, UTC).")
@json_option
def round_command(
    project_dir: str,
    strategy: str | None,
    size: int | None,
    learner: str | None,
    labels: str | None,
    new: bool,
    from_traffic: bool,
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Run (or resume) one active-learning round with the annotations in Argilla.

    \b
    pull → rebuild → train → eval (fixed test split) → predict → select → push (round k+1).
    Each step is recorded in DIR/rounds/<k>/manifest.json; after a crash, rerun the same
    command to continue. A finished round is a no-op until new annotations arrive (or --next).
    --from-traffic: pull → select the served texts the project lacks, least sure first →
    push with reason production; recorded in DIR/rounds/production/<n>/.
    Examples:
      thresher review push -p proj --limit 200     # annotators label, then:
      thresher round -p proj --strategy margin+kmeans --size 50
      thresher round -p proj --from-traffic --since 2026-12-01 --size 100
    """
    from loop.round_wiring import build_runner
    from loop.rounds import label_cost
    from review.server import connection
    from thresher.project import Project

    project = Project.at(project_dir)
    config = config_for(project.root, "round")
    if from_traffic:
        if strategy or learner or labels or new:
            raise click.UsageError(
                "--from-traffic takes no --strategy, --learner, --labels, --next"
            )
        _traffic_round(project, config, since, until, as_json)
        return
    if since or until:
        raise click.UsageError("--since/--until select served traffic: add --from-traffic")
    runner = build_runner(project, config, connect=connection)
    result = runner.run(new=new)
    summary = result.to_dict()
    summary["label_cost"] = label_cost(project, result.round)
    emit(summary, as_json, _round_lines(result, summary))


def _stopping_lines(stopping: dict[str, Any] | None) -> list[str]:
    """``stopping: RULE value (threshold) ..., → stop|continue: why`` (nothing before the
    round predicted)."""
    if not stopping:
        return []
    parts = []
    for check in stopping["checks"]:
        value = "–" if check["value"] is None else f"{check['value']:g}"
        bound = "" if check["threshold"] is None else f" of {check['threshold']:g}"
        parts.append(f"{check['rule']} {value}{bound}{' ✓' if check['met'] else ''}")
    return [
        f"  stopping ({stopping['stop_set']} stop-set records): " + "; ".join(parts),
        f"  → {stopping['recommendation']}: {stopping['why']}",
    ]


def _cost_lines(cost: dict[str, Any] | None) -> list[str]:
    """``cost: N labels per macro-F1 point over R rounds (L0 → L labels, F0 → F)``."""
    if not cost:
        return []
    labels, f1 = cost["labels"], cost["macro_f1"]
    per = cost["labels_per_f1_point"]
    price = "F1 has not risen" if per is None else f"{per:g} labels per macro-F1 point"
    return [
        f"  cost: {price} over {cost['rounds']} rounds ({labels[0]} → {labels[-1]} labels, "
        f"macro-F1 {f1[0]:.3f} → {f1[-1]:.3f})"
    ]


def _relabel_lines(sel: dict[str, Any]) -> list[str]:
    """``re-label N (reasons), new M; ActiveLab: ...`` (nothing before the round selected)."""
    kinds, info = sel.get("kinds"), sel.get("relabel") or {}
    if not kinds:
        return []
    reasons = ", ".join(f"{r} {n}" for r, n in sorted((sel.get("relabel_reasons") or {}).items()))
    line = f"  re-label {kinds['relabel']}{f' ({reasons})' if reasons else ''}, new {kinds['new']}"
    if info.get("active"):
        picked = f"{info['relabel']} re-label, {info['new']} new"
        return [f"{line}; ActiveLab chose {picked}: {info.get('why')}"]
    return [f"{line}; ActiveLab not used: {info.get('why', 'loop.relabel is off')}"]


def _round_lines(result: RoundResult, summary: dict[str, Any]) -> list[str]:
    ev = result.outputs("eval")
    reb = result.outputs("rebuild")
    sel = result.outputs("select")
    push = result.outputs("push")
    return [
        f"round {result.round}: "
        + (
            "already finished (no new annotations; --next starts the next round)"
            if result.noop
            else f"ran {', '.join(result.ran)}"
            + (f" (resumed; done before: {', '.join(result.skipped)})" if result.skipped else "")
        ),
        f"  labels: {reb.get('train')} train, {reb.get('test')} test, pool {reb.get('pool')}",
        f"  eval: macro-F1 {ev.get('macro_f1')}  accuracy {ev.get('accuracy')}"
        f" (n={ev.get('n_test')})",
        *_cost_lines(summary.get("label_cost")),
        *_stopping_lines(result.outputs("predict").get("stopping")),
        f"  selected {sel.get('selected')} by {sel.get('strategy')}: {sel.get('by_reason')}",
        *_relabel_lines(sel),
        f"  pushed to {push.get('dataset')} as round {push.get('round')}: sent {push.get('sent')}"
        + (
            f" ({push.get('relabel_sent')} re-labels to {push.get('relabel_dataset')})"
            if push.get("relabel_dataset")
            else ""
        ),
        "  steps (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()),
        f"  → {summary['path']}/manifest.json",
    ]


def _traffic_round(
    project: Project, config: Config, since: str | None, until: str | None, as_json: bool
) -> None:
    """``--from-traffic``: one production round (``loop.traffic_round``)."""
    from loop.round_wiring import push_options
    from loop.traffic_round import TrafficRoundOptions, run_traffic_round
    from review.server import connection
    from thresher.traffic import parse_time

    options = TrafficRoundOptions(
        size=int(config.get("loop.size")),
        since=parse_time(since, "--since"),
        until=parse_time(until, "--until"),
        dataset=config.get("review.dataset"),
        workspace=str(config.get("review.workspace")),
    )
    result = run_traffic_round(project, options, push_options(config), connect=connection)
    sel, push = result.outputs("select"), result.outputs("push")
    emit(
        result.to_dict(),
        as_json,
        [
            f"production round {result.round}: {sel.get('read')} served texts read, "
            f"{sel.get('no_text')} without text, {sel.get('duplicates')} repeats, "
            f"{sel.get('known')} already in the project",
            f"  selected {sel.get('selected')} of {sel.get('candidates')} ({sel.get('ranking')})",
            f"  pushed to {push.get('dataset')} as round {push.get('round')} with reason "
            f"production: sent {push.get('sent')}; {push.get('appended')} new production records",
            f"  → {result.manifest.get('path')}/manifest.json",
        ],
    )
