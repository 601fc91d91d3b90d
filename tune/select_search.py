"""A small hyperparameter search per base for ``tune select --search TRIALS``.

Optuna, in memory (no study file): a TPE sampler with a fixed seed and a median pruner. Each trial
is a normal run ``<candidate run>-t<k>`` trained with the candidate's recipe and budget, except
for the learning rate (log-uniform from a tenth to ten times the recipe's) and the LoRA rank
(4, 8 or 16; alpha = 2 x rank). Every validation evaluation of the training loop is reported to
the pruner, which may stop a trial that trails the median of earlier trials at the same step. The
trial with the best validation macro-F1 (higher = better; never test) is the candidate's run.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from thresher.errors import ThresherError
from thresher.project import Project
from tune.options import TuneOptions

log = logging.getLogger(__name__)

LORA_RANKS = (4, 8, 16)
LR_SPAN = 10.0  # the learning rate is searched in [lr / LR_SPAN, lr * LR_SPAN], log-uniform
PRUNER_STARTUP = 2  # trials that finish before the pruner stops any


def _optuna():
    """optuna, its own logging quieted to warnings (thresher reports the trials itself)."""
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - a dependency of the project
        from thresher.errors import MissingDependencyError

        raise MissingDependencyError("--search needs optuna: pip install optuna") from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def search_base(
    project: Project,
    opts: TuneOptions,
    trials: int,
    *,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Path, bool, list[dict[str, Any]]]:
    """Run ``trials`` trials for ``opts.base``; (best trial's run, every trial run reused, the
    trial records ``{number, run, params, state, val_macro_f1, intermediate, reused, chosen}``)."""
    optuna = _optuna()
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP),
    )
    outcome: dict[int, tuple[Path, bool]] = {}

    def objective(trial) -> float:
        run_dir, reused = train_trial(project, trial_options(opts, trial), trial, force, progress)
        outcome[trial.number] = (run_dir, reused)
        return validation_f1(run_dir)

    study.optimize(objective, n_trials=trials)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ThresherError(f"--search: no trial of {opts.base} finished; raise --search")
    best = max(done, key=lambda t: (t.value, -t.number))
    records = [trial_record(t, opts, outcome, best.number) for t in study.trials]
    run_dir, _ = outcome[best.number]
    return run_dir, all(r for _, r in outcome.values()), records


def trial_options(opts: TuneOptions, trial) -> TuneOptions:
    """The candidate's recipe with this trial's learning rate and LoRA rank, run ``<run>-t<k>``."""
    lr = trial.suggest_float("lr", opts.lr / LR_SPAN, opts.lr * LR_SPAN, log=True)
    rank = trial.suggest_categorical("lora_r", list(LORA_RANKS))
    return replace(opts, run=f"{opts.run}-t{trial.number}", lr=lr, lora_r=rank, lora_alpha=2 * rank)


def train_trial(project: Project, opts: TuneOptions, trial, force: bool, progress):
    """Train one trial through ``TuneRecipe``, reporting each validation evaluation to optuna
    (and pruning when it says so: the unfinished work folder is removed). (run folder, reused)."""
    optuna = _optuna()
    from tune.train import TuneRecipe

    reported: list[int] = []

    def on_step(info: dict[str, Any]) -> None:
        if progress is not None:
            progress({**info, "trial": trial.number})
        # evaluate() runs after the step's progress call, so an evaluation shows up one step on
        for entry in recipe.state.evals[len(reported) :]:
            reported.append(entry["step"])
            _report(trial, entry)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {entry['step']}")

    recipe = TuneRecipe(project, opts, force=force, progress=on_step)
    try:
        finished = recipe.setup()
        if finished is not None:  # up to date: replay its evaluations for the pruner's record
            for entry in _history_evals(finished):
                _report(trial, entry)
            return finished, True
        recipe.train()
        for entry in recipe.state.evals[len(reported) :]:  # the last step's evaluation
            _report(trial, entry)
        return recipe.save(), False
    except optuna.TrialPruned:
        shutil.rmtree(recipe.work, ignore_errors=True)
        raise


def _report(trial, entry: dict[str, Any]) -> None:
    value = entry.get("val_macro_f1")
    if value is not None and math.isfinite(value):
        trial.report(float(value), int(entry["step"]))


def _history_evals(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.json"
    return json.loads(path.read_text()).get("evals", []) if path.exists() else []


def validation_f1(run_dir: Path) -> float:
    """The run's validation macro-F1 (its metrics.json; the saved, best-evaluation weights)."""
    value = json.loads((run_dir / "metrics.json").read_text()).get("val", {}).get("macro_f1")
    if value is None or not math.isfinite(value):
        raise ThresherError(
            f"{run_dir} has no validation score; --search needs a validation split "
            "(tune.val_fraction > 0)"
        )
    return float(value)


def trial_record(trial, opts: TuneOptions, outcome, best: int) -> dict[str, Any]:
    """What selection.json keeps of one trial."""
    run_dir, reused = outcome.get(trial.number, (None, False))
    return {
        "number": trial.number,
        "run": run_dir.name if run_dir is not None else f"{opts.run}-t{trial.number}",
        "params": dict(trial.params),
        "state": trial.state.name.lower(),
        "val_macro_f1": trial.value,
        "intermediate": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "reused": reused,
        "chosen": trial.number == best,
    }
