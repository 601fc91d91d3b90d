"""``thresher tune promote``: make a run the production model (thin: parse, call, print)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from thresher.cli_common import emit, json_option, project_option

if TYPE_CHECKING:
    from tune.promote import PromoteResult


@click.command("promote")
@project_option
@click.option("--run", required=True, help="Run name or folder under DIR/tune to promote.")
@click.option(
    "--force", is_flag=True, help="Promote even a run significantly worse than production."
)
@click.option("--n-boot", type=int, default=1000, show_default=True, help="Bootstrap resamples.")
@json_option
def promote_command(project_dir: str, run: str, force: bool, n_boot: int, as_json: bool) -> None:
    """Make RUN the production model (DIR/tune/registry.json), unless it is worse.

    \b
    RUN is compared with the current production run on the shared test split (paired
    bootstrap 95% CI of the macro-F1 difference; answer loss for instruction/response runs)
    and refused when significantly worse; --force promotes it anyway. The registry keeps a
    history: who promoted which run when, its metrics, a fingerprint of its training data,
    the run it replaced and the comparison. `--run production` then names it everywhere
    (tune eval/predict/export, thresher serve).
    Examples:
      thresher tune promote -p proj --run run-1
      thresher tune promote -p proj --run run-2 --json
      thresher tune eval -p proj --run run-3 --against production
    """
    from thresher.project import Project
    from tune.evaluate import find_run
    from tune.promote import promote

    project = Project.at(project_dir)
    run_dir = find_run(project.root / "tune", run)
    result = promote(project, run_dir, force=force, n_boot=n_boot)
    emit(result.to_dict(), as_json, _lines(result))


def _lines(result: PromoteResult) -> list[str]:
    if result.noop:
        return [f"{result.run} already is the production model; nothing to do"]
    lines = [f"promoted {result.run} to production (was {result.previous or 'none'})"]
    cmp = result.comparison
    if cmp and "error" in cmp:
        lines.append(f"not compared with {cmp['against']}: {cmp['error']}")
    elif cmp:
        what = "answer loss" if cmp["metric"] == "loss" else "macro-F1"
        lines.append(
            f"{what} vs {cmp['against']}: {cmp['diff']:+.4f} "
            f"(95% CI {cmp['ci_low']:+.4f} .. {cmp['ci_high']:+.4f})"
            + ("; forced although significantly worse" if cmp["significantly_worse"] else "")
        )
    lines.append(f"→ {result.registry}")
    return lines
