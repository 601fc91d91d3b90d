"""``thresher simulate`` (thin: parse, call the library, print); ``thresher round`` is in
``loop.round_cli``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from thresher.cli_common import emit, force_option, json_option, progress_bar, project_option
from thresher.cli_overrides import config_for

if TYPE_CHECKING:
    from loop.simulate import SimulateOptions, SimulationResult
    from thresher.config import Config


@click.command("simulate")
@project_option
@click.option("--rounds", type=int, default=None, help="Rounds after the seed set [10].")
@click.option("--size", type=int, default=None, help="Records labelled per round [50].")
@click.option("--seed-size", type=int, default=None, help="Initial labels [= --size].")
@click.option(
    "--cold-start",
    type=click.Choice(["random", "coverage"]),
    default=None,
    help="How the initial labels are picked (random sampling always draws them at random): "
    "coverage = spread over the embeddings, as `thresher round` does from unlabelled text "
    "[coverage].",
)
@click.option(
    "--strategies",
    default=None,
    help="Comma-separated: margin, entropy, least-confidence, random, badge, NAME+kmeans, "
    "NAME+coreset, NAME+badge [margin,entropy,random].",
)
@click.option("--seeds", type=int, default=None, help="Repeats with different seed sets [5].")
@click.option(
    "--learner",
    type=click.Choice(["fast", "tfidf"]),
    default=None,
    help="fast: embeddings + logistic regression; tfidf: TF-IDF + LR [fast].",
)
@click.option("--noise", type=float, default=None, help="Oracle annotator error rate [0.0].")
@click.option("--test-fraction", type=float, default=None, help="Fixed test split [0.2].")
@force_option
@json_option
def simulate_command(
    project_dir: str,
    rounds: int | None,
    size: int | None,
    seed_size: int | None,
    cold_start: str | None,
    strategies: str | None,
    seeds: int | None,
    learner: str | None,
    noise: float | None,
    test_fraction: float | None,
    force: bool,
    as_json: bool,
) -> None:
    """Simulate active learning with an oracle annotator (the data's gold labels).

    \b
    Reads the project's labelled records (score > dedup > ingest), repeats each strategy
    over several seeds, and writes DIR/simulate/: curves.csv, learning_curves.png,
    summary.json (AULC per strategy, mean ± std over seeds) and manifest.json.
    Example:
      thresher curate ingest --demo -p proj
      thresher simulate -p proj --rounds 10 --size 50 --strategies margin,entropy,random --seeds 5
    """
    from loop.simulate import run_simulation
    from thresher.project import Project

    project = Project.at(project_dir)
    opts = _simulate_options(config_for(project.root, "simulate"))
    with progress_bar(len(opts.strategies) * opts.seeds, desc="simulate", unit="runs") as bar:
        result = run_simulation(project, opts, force=force, progress=bar.update)
    emit(result.to_dict(), as_json, _simulate_lines(result, opts))


def _simulate_options(config: Config) -> SimulateOptions:
    from loop.round_wiring import stopping_options
    from loop.simulate import SimulateOptions

    section = config.section("simulate")
    return SimulateOptions(
        rounds=section["rounds"],
        size=section["size"],
        seed_size=section["seed_size"],
        cold_start=section["cold_start"],
        strategies=tuple(section["strategies"]),  # the typed config splits "margin,random"
        seeds=section["seeds"],
        seed=config.get("seed"),
        noise=section["noise"],
        test_fraction=section["test_fraction"],
        learner=section["learner"],
        embedding_model=config.get("models.embedding"),
        target=section["target"],
        diversity_factor=config.get("loop.diversity_factor"),
        stopping=stopping_options(config),
    )


def _simulate_lines(result: SimulationResult, opts: SimulateOptions) -> list[str]:
    lines = []
    if result.noop:
        lines.append("simulate is up to date (inputs and options unchanged); --force redoes it")
    lines.append(
        f"pool {result.pool_size}, test {result.test_size}, full-data macro-F1 "
        f"{result.full_macro_f1:.4f}; first labels: {opts.cold_start}"
        + (" (random sampling: a random draw)" if opts.cold_start == "coverage" else "")
    )
    paired = result.vs_random()
    for name in opts.strategies:
        need = result.labels_to_target.get(name)
        reach = f"{need} labels" if need is not None else "not reached"
        cost = result.labels_per_f1_point.get(name)
        vs = paired.get(name)
        lines.append(
            f"  {name:<20} AULC {result.aulc[name]:.4f} ± {result.aulc_std[name]:.4f}"
            + (
                f" ({vs['gain']:+.4f} vs random, {vs['seeds_won']}/{vs['seeds']} seeds)"
                if vs
                else ""
            )
            + f"   {opts.target:.0%} of full F1: {reach}"
            + f"   labels per F1 point: {'–' if cost is None else f'{cost:.1f}'}"
        )
    stopping = result.stopping.get(opts.strategies[0]) if result.stopping else None
    if stopping:
        lines.append(
            f"stopping rules on {opts.strategies[0]} (mean over {opts.seeds} seeds; "
            "F1 given up vs labelling the whole pool):"
        )
        for rule, row in stopping.items():
            lines.append(
                f"  {rule:<24} stops in round {row['round']:.1f} at {row['labels']:.0f} labels "
                f"({row['stopped']}/{row['seeds']} seeds met it), saves "
                f"{row['labels_saved']:.0f} labels, gives up {row['macro_f1_given_up']:+.4f} F1"
            )
    lines.append(f"curves and plot in {result.path}")
    return lines
