"""``thresher round``: one resumable active-learning round through Argilla (thin CLI).

The wiring (which steps, which learner) is in ``loop.round_wiring.build_runner``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from thresher.cli_common import emit, json_option, project_option
from thresher.cli_overrides import config_for

if TYPE_CHECKING:
    from loop.rounds import RoundResult


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
@json_option
def round_command(
    project_dir: str,
    strategy: str | None,
    size: int | None,
    learner: str | None,
    labels: str | None,
    new: bool,
    as_json: bool,
) -> None:
    """Run (or resume) one active-learning round with the annotations in Argilla.

    \b
    pull → rebuild → train → eval (fixed test split) → predict → select → push (round k+1).
    Each step is recorded in DIR/rounds/<k>/manifest.json; after a crash, rerun the same
    command to continue. A finished round is a no-op until new annotations arrive (or --next).
    Example:
      thresher review push -p proj --limit 200     # annotators label, then:
      thresher round -p proj --strategy margin+kmeans --size 50
    """
    from loop.round_wiring import build_runner
    from review.server import connection
    from thresher.project import Project

    project = Project.at(project_dir)
    config = config_for(project.root, "round")
    runner = build_runner(project, config, connect=connection)
    result = runner.run(new=new)
    summary = result.to_dict()
    emit(summary, as_json, _round_lines(result, summary))


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
        f"  selected {sel.get('selected')} by {sel.get('strategy')}: {sel.get('by_reason')}",
        f"  pushed to {push.get('dataset')} as round {push.get('round')}: sent {push.get('sent')}",
        "  steps (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()),
        f"  → {summary['path']}/manifest.json",
    ]
