"""``thresher tune ...`` commands (thin: parse, call the library, print)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from tune.promote_cli import promote_command
from tune.select_cli import select_command

if TYPE_CHECKING:
    from thresher.project import Project
    from tune.crossfit import CrossfitResult
    from tune.options import TuneOptions


@click.group(cls=ThresherGroup)
def tune() -> None:
    """Train LoRA models on the curated set, evaluate them against baselines, predict, export."""


def _run_dir(project_dir: str, run: str | None, what: str = "--run"):
    from pathlib import Path

    from tune.evaluate import find_run

    return find_run(Path(project_dir) / "tune", run, what)


@tune.command("train")
@project_option
@click.option("--base", default=None, help="Base model: HF id or folder [offline default].")
@click.option("--task", type=click.Choice(["classify", "sft"]), default=None, help="[classify]")
@click.option("--epochs", type=float, default=None, help="Epochs [config tune.epochs: 3].")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps; overrides --epochs.")
@click.option("--data", "data_mode", type=click.Choice(["raw", "curated"]), default=None)
@click.option(
    "--run", "--name", "run", default=None, help="Run name [run-<timestamp>] (--name: torchrun)."
)
@click.option(
    "--resume", is_flag=True, help="Continue the run (or latest unfinished) after a kill."
)
@click.option("--batch-size", type=int, default=None)
@click.option("--grad-accum", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--max-length", type=int, default=None)
@click.option(
    "--label-issues",
    type=click.Choice(["exclude", "downweight", "relabel", "keep"]),
    default=None,
    help="Suspected label errors (score stage) [config tune.label_issues].",
)
@click.option(
    "--issue-min-prob",
    type=click.FloatRange(0, 1),
    default=None,
    help="Act on flags with predicted_prob >= this [tune.issue_min_prob].",
)
@click.option(
    "--curate-val/--no-curate-val",
    default=None,
    help="Apply --label-issues to the validation split too [tune.curate_val].",
)
@click.option(
    "--response-col",
    default=None,
    help="sft on instruction/response pairs: the response column (or metadata key).",
)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default=None)
@click.option("--qlora", is_flag=True, default=None, help="QLoRA: 4-bit NF4 base (bitsandbytes).")
@click.option("--gradient-checkpointing", is_flag=True, default=None)
@click.option(
    "--compile",
    "compile_mode",
    type=click.Choice(["auto", "on", "off", "graphs"]),
    default=None,
    help="torch.compile the transformer blocks [auto: on a CUDA GPU only]; graphs: the whole "
    "training step with bucketed shapes, as CUDA graphs (one process).",
)
@click.option(
    "--strategy",
    type=click.Choice(["ddp", "fsdp"]),
    default=None,
    help="Several processes: ddp replicas or fsdp shards [ddp].",
)
@click.option(
    "--init-adapter",
    default=None,
    metavar="RUN|FOLDER",
    help="Warm start: begin from a finished run's LoRA weights and head (same base and labels).",
)
@force_option
@json_option
def train_command(
    project_dir: str,
    base: str | None,
    task: str | None,
    epochs: float | None,
    max_steps: int | None,
    data_mode: str | None,
    run: str | None,
    resume: bool,
    batch_size: int | None,
    grad_accum: int | None,
    lr: float | None,
    max_length: int | None,
    label_issues: str | None,
    response_col: str | None,
    issue_min_prob: float | None,
    curate_val: bool | None,
    precision: str | None,
    qlora: bool | None,
    gradient_checkpointing: bool | None,
    compile_mode: str | None,
    strategy: str | None,
    init_adapter: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Train a LoRA adapter on the project's curated (or raw) labelled records.

    \b
    Writes DIR/tune/<run>/: adapter/, label_map.json, config.json, metrics.json,
    predictions.parquet, errors.parquet, loss_curve.png. Several GPUs: run the same command
    under `torchrun --nproc-per-node N -m thresher tune train --name RUN ...` (torchrun
    mistakes --run for its own --run-path, so name the run with --name there).
    Examples:
      thresher tune train -p proj --max-steps 200
      thresher tune train -p proj --data raw --run raw-1
      thresher tune train -p proj --task sft --base HuggingFaceTB/SmolLM2-360M
      thresher tune train -p proj --task sft --response-col response
      thresher tune train -p proj --run run-1 --resume
      thresher tune train -p proj --run run-2 --init-adapter run-1
    """
    from thresher.project import Project

    project = Project.at(project_dir)
    opts = _train_options(project, project_dir, base=base, run=run, init_adapter=init_adapter)
    run_dir = _train_with_progress(project, opts, resume=resume, force=force)
    metrics = _read_metrics(run_dir)
    emit(_train_summary(run_dir, metrics), as_json, _train_lines(run_dir, metrics, project_dir))


def _train_options(
    project: Project,
    project_dir: str,
    *,
    base: str | None,
    run: str | None,
    init_adapter: str | None,
) -> TuneOptions:
    """The recipe from the config and train's flags. --base names the model of the task that
    results (models.sft for sft, models.classifier otherwise), so it is applied after the rest."""
    from tune.options import options_from_config

    config = config_for(project.root, "tune train")
    if base is not None:
        kind = "models.sft" if config.get("tune.task") == "sft" else "models.classifier"
        config = config.with_overrides({kind: base})
    init = str(_run_dir(project_dir, init_adapter, "--init-adapter")) if init_adapter else None
    return options_from_config(config, run=run, init_adapter=init)


def _train_with_progress(project: Project, opts: TuneOptions, *, resume: bool, force: bool) -> Path:
    """Train with a progress bar of optimizer steps (loss and tokens/s); the run's folder."""
    from tune.train import train

    with progress_bar(desc="tune train", unit="steps") as bar:

        def progress(info: dict) -> None:
            bar.total = info["total"]
            bar.set_postfix(loss=f"{info['loss']:.4f}", tok_s=f"{info['tokens_per_s']:.0f}")
            bar.update(1)

        return train(project, opts, resume=resume, force=force, progress=progress)


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    import json

    return json.loads((run_dir / "metrics.json").read_text())


def _train_summary(run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    test = metrics.get("test", {})
    return {
        "run": run_dir.name,
        "path": str(run_dir),
        "macro_f1": test.get("macro_f1"),
        "loss": test.get("loss"),
        "accuracy": test.get("accuracy"),
        "val_macro_f1": metrics.get("val", {}).get("macro_f1"),
        "train": metrics["train"],
        "data": metrics.get("data"),
    }


def _train_lines(run_dir: Path, metrics: dict[str, Any], project_dir: str) -> list[str]:
    test, tr = metrics.get("test", {}), metrics["train"]
    return [
        f"run {run_dir.name}: {tr['steps']} steps ({tr['epochs']} epochs) "
        f"in {tr['seconds']} s, "
        f"{tr['tokens_per_s']} tokens/s on {tr['device']} ({tr['precision']})",
        (
            f"test answer loss {test.get('loss') or float('nan'):.4f}  perplexity "
            f"{test.get('perplexity') or float('nan'):.2f}  (n={test.get('n')} pairs)"
            if "loss" in test
            else f"test macro-F1 {test.get('macro_f1', float('nan')):.4f}  accuracy "
            f"{test.get('accuracy', float('nan')):.4f}  (n={test.get('n')})"
        ),
        f"→ {run_dir}; compare: thresher tune eval -p {project_dir} --run {run_dir.name}",
    ]


@tune.command("crossfit")
@project_option
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True)
@click.option(
    "--name", default="crossfit", show_default=True, help="Output DIR/tune/<name>/ (--probs-from)."
)
@click.option("--base", default=None, help="Base model: HF id or folder [offline default].")
@click.option("--epochs", type=float, default=None, help="Epochs per fold [config tune.epochs].")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps per fold.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--max-length", type=int, default=None)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default=None)
@click.option("--qlora", is_flag=True, default=None, help="QLoRA: 4-bit NF4 base (bitsandbytes).")
@force_option
@json_option
def crossfit_command(
    project_dir: str,
    folds: int,
    name: str,
    base: str | None,
    epochs: float | None,
    max_steps: int | None,
    batch_size: int | None,
    lr: float | None,
    max_length: int | None,
    precision: str | None,
    qlora: bool | None,
    force: bool,
    as_json: bool,
) -> None:
    """Out-of-fold class probabilities from the tuned model, for label-error scoring.

    \b
    Trains one LoRA run per fold (the training recipe of `tune train`) on the other folds and
    scores the fold it left out; test-split and unlabelled records get the mean of the fold
    models. Writes DIR/tune/<name>/predictions.parquet (id, p_<label>...). Then flag label
    errors with the tuned model instead of the score stage's own learners:
      thresher tune crossfit -p proj --folds 5
      thresher curate score -p proj --probs-from crossfit --force
    """
    from thresher.project import Project
    from tune.crossfit import CrossfitOptions, crossfit
    from tune.options import options_from_config

    project = Project.at(project_dir)
    # the fold models score class probabilities: always classifiers, whatever tune.task says
    config = config_for(project.root, "tune crossfit", extra={"tune.task": "classify"})
    recipe = options_from_config(config)
    with progress_bar(desc="tune crossfit", unit="steps") as bar:

        def progress(info: dict) -> None:
            bar.total = info["total"] * folds
            bar.set_postfix(fold=f"{info['fold'] + 1}/{folds}", loss=f"{info['loss']:.4f}")
            bar.update(1)

        result = crossfit(
            project, recipe, CrossfitOptions(folds=folds, name=name), force=force, progress=progress
        )
    emit(result.to_dict(), as_json, _crossfit_lines(result, project_dir))


def _crossfit_lines(result: CrossfitResult, project_dir: str) -> list[str]:
    return [
        f"crossfit {result.name}: up to date, nothing to do"
        if result.noop
        else f"crossfit {result.name}: {result.folds} folds in {result.seconds} s",
        f"{result.out_of_fold} records scored out of fold, {result.averaged} by the mean "
        f"of the fold models; fold macro-F1 {result.fold_macro_f1}",
        f"→ {result.path}/predictions.parquet; flag label errors with it: "
        f"thresher curate score -p {project_dir} --probs-from {result.name} --force",
    ]


@tune.command("eval")
@project_option
@click.option("--run", default=None, help="Run name or folder [latest finished].")
@click.option(
    "--against", default="baseline", show_default=True, help="baseline, production or a RUN name."
)
@click.option("--n-boot", type=int, default=1000, show_default=True, help="Bootstrap resamples.")
@json_option
def eval_command(project_dir: str, run: str | None, against: str, n_boot: int, as_json: bool):
    """Test metrics of a run vs majority-class and TF-IDF+logreg baselines, or another run.

    \b
    Accuracy, macro-F1, per-class F1, ECE, per-slice metrics (bias groups from scoring), and a
    paired bootstrap 95% CI of the macro-F1 difference. Also writes DIR/tune/<run>/eval.json.
    Examples:
      thresher tune eval -p proj
      thresher tune eval -p proj --run curated-1 --against raw-1 --json
    """
    from tune.evaluate import evaluate_run

    run_dir = _run_dir(project_dir, run)
    against_arg = (
        against if against == "baseline" else str(_run_dir(project_dir, against, "--against"))
    )
    result = evaluate_run(run_dir, against=against_arg, n_boot=n_boot)
    lines = _pair_eval_lines(result) if "loss" in result else _eval_lines(result)
    emit(result, as_json, lines)


def _pair_eval_lines(result: dict[str, Any]) -> list[str]:
    """The report of a run on instruction/response pairs: answer loss and perplexity."""
    cmp = result["comparison"]
    other = result.get("baseline") or result.get("other_run") or {}
    return [
        f"run {result['run']} on {result['n']} test pairs ({result['tokens']} answer tokens)",
        f"{'model':<26}{'loss':>8}{'perplexity':>12}",
        f"{result['run'][:25]:<26}{result['loss']:>8.4f}{result['perplexity']:>12.2f}",
        f"{cmp['against'][:25]:<26}{other['loss']:>8.4f}{other['perplexity']:>12.2f}",
        f"loss difference vs {cmp['against']}: {cmp['diff']:+.4f} nats/token "
        f"(95% CI {cmp['ci_low']:+.4f} .. {cmp['ci_high']:+.4f}; lower is better)",
    ]


def _eval_lines(result: dict[str, Any]) -> list[str]:
    """The report of a classifier run: metrics against the baselines or the other run."""
    cmp = result["comparison"]
    lines = [
        f"run {result['run']} on {result['n']} test records",
        f"{'model':<16}{'macro-F1':>10}{'accuracy':>10}{'ECE':>8}",
        f"{result['run'][:15]:<16}{result['macro_f1']:>10.4f}{result['accuracy']:>10.4f}"
        f"{result['ece']:>8.4f}",
    ]
    others = dict(result["baseline"])
    if "other_run" in result:
        others[cmp["against"]] = result["other_run"]
    for name, m in others.items():
        lines.append(f"{name[:15]:<16}{m['macro_f1']:>10.4f}{m['accuracy']:>10.4f}{m['ece']:>8.4f}")
    lines.append(
        f"macro-F1 difference vs {cmp['against']}: {cmp['diff']:+.4f} "
        f"(95% CI {cmp['ci_low']:+.4f} .. {cmp['ci_high']:+.4f})"
    )
    lines.append(
        "per class F1: " + ", ".join(f"{k}={v:.3f}" for k, v in result["per_class_f1"].items())
    )
    small = {k: v for k, v in result["slices"].items() if k != "(none)"}
    if small:
        lines.append(
            "slices: "
            + ", ".join(f"{k} (n={v['n']}) F1={v['macro_f1']:.3f}" for k, v in small.items())
        )
    return lines


@tune.command("predict")
@project_option
@click.option("--run", default=None, help="Run name or folder [latest finished].")
@click.option(
    "--input",
    "input_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CSV/TSV/JSONL/Parquet/TXT file [the project's latest records].",
)
@click.option("--text-col", default="text", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output Parquet/CSV [DIR/tune/<run>/predict.parquet].",
)
@click.option("--batch-size", type=int, default=None)
@json_option
def predict_command(project_dir, run, input_path, text_col, out, batch_size, as_json):
    """Score a file or the project's records with a run: predicted label, prob, p_<label>.

    \b
    Examples:
      thresher tune predict -p proj
      thresher tune predict -p proj --run run-1 --input new.csv --out scored.csv
    """
    from pathlib import Path

    import pandas as pd

    from thresher.project import Project
    from tune.predict import predict_frame, read_texts

    run_dir = _run_dir(project_dir, run)
    if input_path:
        frame = read_texts(Path(input_path), text_col)
    else:
        _, path = Project.at(project_dir).latest_records(["score", "dedup", "ingest"])
        frame = pd.read_parquet(path, columns=["id", "text"])
    out_path = Path(out) if out else run_dir / "predict.parquet"
    with progress_bar(total=len(frame), desc="predict") as bar:
        scored = predict_frame(run_dir, frame, batch_size=batch_size, progress=bar.update)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix.lower() == ".csv":
        scored.to_csv(out_path, index=False)
    else:
        scored.to_parquet(out_path, index=False)
    counts = scored["predicted"].value_counts().to_dict()
    emit(
        {"run": run_dir.name, "rows": len(scored), "path": str(out_path), "predicted": counts},
        as_json,
        [f"scored {len(scored)} texts with {run_dir.name} → {out_path}", f"predicted: {counts}"],
    )


@tune.command("export")
@project_option
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--run", default=None, help="Run name or folder [latest finished].")
@click.option("--merged", is_flag=True, help="Merge LoRA into the base (plain transformers).")
@json_option
def export_command(project_dir: str, out: str, run: str | None, merged: bool, as_json: bool):
    """Write a run's adapter, or with --merged a full model loadable with plain transformers.

    \b
    Examples:
      thresher tune export -p proj adapter-out
      thresher tune export -p proj --run run-1 --merged merged-model
    """
    from tune.export import export_run

    run_dir = _run_dir(project_dir, run)
    path = export_run(run_dir, out, merged=merged)
    emit(
        {"run": run_dir.name, "path": str(path), "merged": merged},
        as_json,
        [f"exported {'merged model' if merged else 'adapter'} of {run_dir.name} → {path}"],
    )


tune.add_command(promote_command)
tune.add_command(select_command)
