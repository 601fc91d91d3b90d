"""``thresher monitor``: drift of served traffic against the training set (thin CLI).

Exit codes: 0 no drift (or too little traffic to decide), 3 drift, 1 user error."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from thresher.cli_common import emit, json_option, project_option

if TYPE_CHECKING:
    from loop.monitor import MonitorResult

DRIFT_EXIT = 3


@click.command("monitor")
@project_option
@click.option("--since", default=None, help="Window start, ISO 8601 UTC (e.g. 2026-12-05T00:00Z).")
@click.option("--until", default=None, help="Window end (exclusive), ISO 8601 UTC [now].")
@click.option("--run", default=None, help="Compare with this run [the most common in traffic].")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="False-alarm rate.")
@click.option("--min-n", type=int, default=50, show_default=True, help="Fewer texts: no decision.")
@json_option
def monitor_command(
    project_dir: str,
    since: str | None,
    until: str | None,
    run: str | None,
    alpha: float,
    min_n: int,
    as_json: bool,
) -> None:
    """Test whether served traffic drifted from the training set of the run that served it.

    \b
    Four tests (embedding MMD, predicted-label mix, confidence drop, near-OOD share), Bonferroni
    at --alpha; per bias slice, the mention rate (reported). Writes
    DIR/monitor/<time>/report.json, report.html and records.parquet (per traffic row: near_ood,
    ood_distance). Exit 0: no drift; 3: drift; 1: error.
    Example:
      thresher monitor -p proj --since 2026-12-04T00:00Z --json || echo "drift (exit $?)"
    """
    from loop.monitor import MonitorOptions, run_monitor
    from thresher.errors import ThresherError
    from thresher.project import Project
    from thresher.traffic import parse_time

    if not 0 < alpha < 1:
        raise ThresherError(f"--alpha {alpha} must be between 0 and 1")
    if min_n < 1:
        raise ThresherError(f"--min-n {min_n} must be at least 1")
    opts = MonitorOptions(
        since=parse_time(since, "--since"),
        until=parse_time(until, "--until"),
        run=run,
        alpha=alpha,
        min_n=min_n,
    )
    result = run_monitor(Project.at(project_dir), opts)
    summary = result.to_dict()
    emit(summary, as_json, _lines(result))
    if result.drift:
        click.get_current_context().exit(DRIFT_EXIT)


def _lines(result: MonitorResult) -> list[str]:
    if not result.decided:
        head = f"no decision: {result.n} texts from run {result.run}"
    else:
        verdict = "DRIFT" if result.drift else "no drift"
        head = (
            f"{verdict}: {result.n} texts from run {result.run} "
            f"(p < {result.threshold:.3g} flags a test)"
        )
    lines = [head]
    for name, test in result.tests.items():
        flag = "  ← drift" if test["drift"] else ""
        lines.append(f"  {name:<19} stat {test['statistic']:.4g}  p {test['p_value']:.3g}{flag}")
    shifted = [s["slice"] for s in result.slices if s["shifted"]]
    if shifted:
        lines.append("  bias slices with a shifted mention rate: " + ", ".join(shifted))
    lines.extend(f"  note: {n}" for n in result.notes)
    lines.append(f"  → {result.report}")
    lines.append(f"  → {result.records}")
    return lines
