"""``thresher tune select``: train candidate bases alike, measure them, choose one (thin)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from thresher.cli_common import emit, force_option, json_option, progress_bar, project_option

if TYPE_CHECKING:
    from tune.select import Selection

# the keys of each candidate in --json (selection.json keeps every measure)
JSON_KEYS = (
    "base",
    "run",
    "macro_f1",
    "ci_low",
    "ci_high",
    "worst_slice_f1",
    "ece",
    "latency_ms",
    "latency_ms_b32",
    "records_per_s",
    "peak_mem_mb",
    "trainable_params",
    "total_params",
    "size_mb",
)


@click.command("select")
@project_option
@click.option(
    "--bases",
    required=True,
    help="Comma-separated candidates: HF ids, folders, or the aliases minilm, smollm2-135m.",
)
@click.option("--epochs", type=float, default=None, help="Epochs each [config tune.epochs].")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps each; over --epochs.")
@click.option(
    "--search",
    "trials",
    type=click.IntRange(0, 100),
    default=0,
    help="Hyperparameter trials per base (learning rate, LoRA rank), picked by validation.",
)
@click.option(
    "--max-latency-ms",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Only candidates at or under this batch-1 latency per record can win.",
)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--max-length", type=int, default=None)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default=None)
@click.option(
    "--timing-records",
    type=click.IntRange(1, 100_000),
    default=64,
    show_default=True,
    help="Test texts timed per pass (cycled when the test split is smaller).",
)
@click.option(
    "--isolate/--no-isolate",
    default=True,
    show_default=True,
    help="Measure each candidate's serving in a fresh process (clean memory numbers).",
)
@force_option
@json_option
def select_command(
    project_dir: str,
    bases: str,
    epochs: float | None,
    max_steps: int | None,
    trials: int,
    max_latency_ms: float | None,
    batch_size: int | None,
    lr: float | None,
    max_length: int | None,
    precision: str | None,
    timing_records: int,
    isolate: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Train each candidate base on the same split and budget; measure and choose one.

    \b
    Each base becomes a normal run DIR/tune/select-<base>/ (reused when up to date), measured on
    the test split: macro-F1 with a 95% CI, worst slice F1, ECE, latency at batch 1 and 32,
    records/s, peak memory, parameters and size. The rule: best macro-F1 (under
    --max-latency-ms when given); within 0.005 of the best, the smaller model wins. Writes
    DIR/tune/selection/selection.json and report.html.
    Examples:
      thresher tune select -p proj --bases minilm,smollm2-135m --max-steps 30
      thresher tune select -p proj --bases minilm,prajjwal1/bert-tiny --max-latency-ms 5 --json
      thresher tune select -p proj --bases minilm,smollm2-135m --max-steps 100 --search 8
    """
    from thresher.project import Project
    from tune.select import SelectOptions, select

    project = Project.at(project_dir)
    recipe = _recipe(
        project,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        max_length=max_length,
        precision=precision,
    )
    options = SelectOptions(
        bases=tuple(b.strip() for b in bases.split(",") if b.strip()),
        max_latency_ms=max_latency_ms,
        trials=trials,
        force=force,
        isolate=isolate,
        latency_records=timing_records,
        seed=recipe.seed,
    )
    with progress_bar(desc="tune select", unit="steps") as bar:

        def progress(info: dict) -> None:
            bar.total = info["total"]
            bar.set_description(f"tune select {info['base']}")
            bar.set_postfix(loss=f"{info['loss']:.4f}")
            bar.update(1)

        selection = select(project, recipe, options, progress=progress)
    emit(_summary(selection), as_json, _lines(selection, project_dir))
    if selection.chosen is None:
        from thresher.errors import ThresherError

        raise ThresherError(f"{selection.reason}; raise --max-latency-ms")


def _recipe(project, **flags: Any):
    """The training recipe every candidate shares: the config with train's flags that were given."""
    from thresher.cli_overrides import OVERRIDES, config_for
    from tune.options import options_from_config

    params = {name: None for name in OVERRIDES["tune train"]} | flags
    config = config_for(project.root, "tune train", params, extra={"tune.task": "classify"})
    return options_from_config(config)


def _summary(selection: Selection) -> dict[str, Any]:
    return {
        "candidates": [{k: getattr(c, k) for k in JSON_KEYS} for c in selection.candidates],
        "chosen": selection.chosen,
        "rule": selection.rule,
    }


def _lines(selection: Selection, project_dir: str) -> list[str]:
    from tune.select_report import table_lines

    reused = [c.run for c in selection.candidates if c.reused]
    lines = [f"tune select on {selection.device} ({len(selection.candidates)} candidates)"]
    if reused:
        lines.append(f"up to date, not retrained: {', '.join(reused)} (--force retrains)")
    lines += table_lines(selection)
    lines.append(f"rule: {selection.rule}")
    lines.append(f"chosen: {selection.chosen or 'none'} ({selection.reason})")
    lines.append(f"→ {selection.path}/report.html and selection.json")
    if selection.chosen:
        lines.append(f"next: thresher tune promote -p {project_dir} --run {selection.chosen}")
    return lines
