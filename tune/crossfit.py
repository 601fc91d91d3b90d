"""Out-of-sample class probabilities from the tuned model itself, by K-fold cross-fitting.

``curate score --probs-from`` can flag label errors with a tuned model's probabilities instead of
the score stage's own learners, but only out-of-sample probabilities mean anything there: a model
that trained on a record has seen its (possibly wrong) label. ``crossfit`` makes them:

1. The records are the ones the score stage scores: the representatives of the latest
   ``dedup``/``ingest`` records. Labels are the best known (reviewers' consensus over the input
   label, ``thresher.decisions``); records every reviewer discarded are not trained on.
2. The labelled records outside the tune split's test/held records (whose labels no label-noise
   model may learn from, as in ``curate score``) are split into ``folds`` stratified folds.
3. Per fold, one LoRA run with the given recipe (``train``), trained on the other folds minus a
   stratified ``val_fraction`` used for early stopping and picking the best evaluation, and
   scoring the fold itself: those probabilities are out of fold (``split: oof``).
4. Every record no fold trained on (test/held, unlabelled and discarded records) gets the mean
   of the ``folds`` models' probabilities (``split: held`` / ``unlabelled`` / ``discarded``).

Output ``DIR/tune/<name>/`` (atomic, with a manifest; a rerun with the same records, labels and
recipe is a no-op): ``predictions.parquet`` with ``id, split, fold, label, predicted, prob`` and one
``p_<label>`` column per label, as ``thresher tune predict --out`` writes them, so
``thresher curate score --probs-from <name>`` reads it as is; ``crossfit.json`` with each fold's
run and metrics. Fold runs live in ``DIR/tune/.folds/<name>/fold-<k>/``: a finished fold is
reused by a rerun, so a killed cross-fit resumes at the fold it was in.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from thresher.errors import ThresherError
from thresher.names import contained, validate_name
from thresher.project import Project, fingerprint, stage_output, upstream_input
from thresher.split import held_out_ids
from tune.data import TuneData
from tune.options import TuneOptions

log = logging.getLogger(__name__)

FOLDS_DIR = ".folds"


@dataclass(frozen=True)
class CrossfitOptions:
    """``folds``: K (>= 2); ``val_fraction``: of each fold's training records, held for early
    stopping; ``name``: the output folder under ``DIR/tune`` (what ``--probs-from`` names)."""

    folds: int = 5
    val_fraction: float = 0.1
    name: str = "crossfit"


@dataclass
class CrossfitResult:
    name: str
    path: str
    folds: int
    records: int  # rows in predictions.parquet (every representative)
    out_of_fold: int  # labelled records scored by the one fold model that did not train on them
    averaged: int  # records no fold trained on (test/held, unlabelled): mean of the fold models
    fold_macro_f1: list[float]  # each fold model on its own fold (noisy labels: a lower bound)
    seconds: float
    noop: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def crossfit_records(project: Project):
    """The records the score stage scores, with columns ``id, text, label`` (best label or None)
    and ``role``: ``pool`` (labelled, may be trained on), ``held`` (test/held split: never
    trained on), ``unlabelled`` or ``discarded`` (every reviewer discarded it: never trained on,
    still predicted, since the score stage scores it)."""
    import pandas as pd

    from thresher.decisions import load_decisions
    from thresher.records import representative_mask

    _, path = project.latest_records(["dedup", "ingest"])
    frame = pd.read_parquet(path)
    frame = frame[representative_mask(frame)].copy()  # what the score stage scores
    frame["id"] = frame["id"].astype(str)
    decisions = load_decisions(project)
    given = frame["label"] if "label" in frame.columns else pd.Series(None, index=frame.index)
    label = decisions.best_labels(frame["id"], given)
    discarded = decisions.discarded_mask(frame["id"])
    label = label.where(label.notna() & ~discarded, None)
    role = pd.Series("pool", index=frame.index)
    role[label.isna()] = "unlabelled"
    role[discarded] = "discarded"
    role[frame["id"].isin(held_out_ids(project)) & label.notna()] = "held"
    out = pd.DataFrame(
        {"id": frame["id"], "text": frame["text"].astype(str), "label": label, "role": role}
    )
    return out.reset_index(drop=True)


def assign_folds(labels, folds: int, seed: int):
    """Fold number per record (0..folds-1), stratified by label, seeded."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=object)
    out = np.full(len(labels), -1)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        out[held] = k
    return out


def _check(pool, opts: CrossfitOptions) -> None:
    counts = pool["label"].value_counts()
    if opts.folds < 2:
        raise ThresherError(f"--folds must be 2 or more, got {opts.folds}")
    if len(counts) < 2:
        raise ThresherError(
            f"cross-fitting needs two or more labels among the trainable records, got "
            f"{sorted(counts.index)}; ingest labelled data (test-split labels are never used)"
        )
    if counts.min() < 2 * opts.folds:
        raise ThresherError(
            f"label {counts.idxmin()!r} has {counts.min()} trainable records; cross-fitting with "
            f"--folds {opts.folds} needs {2 * opts.folds}: lower --folds or label more records"
        )


def _fold_data(pool, held_rows, k: int, labels: list[str], val_fraction: float, seed: int):
    """Fold ``k``'s TuneData: train/val from the other folds, test = fold ``k``."""
    from sklearn.model_selection import train_test_split

    rest = pool[pool["fold"] != k]
    train, val = train_test_split(
        rest,
        test_size=max(len(labels), round(val_fraction * len(rest))),
        random_state=seed + k,
        stratify=rest["label"],
    )

    def frame(part):
        part = part.assign(weight=1.0, slice=[[] for _ in range(len(part))])
        return part[["id", "text", "label", "weight", "slice"]].reset_index(drop=True)

    counts = {"train": len(train), "val": len(val), "test": int((pool["fold"] == k).sum())}
    return TuneData(
        train=frame(train),
        val=frame(val),
        test=frame(pool[pool["fold"] == k]),
        labels=labels,
        counts={**counts, "crossfit_fold": k, "crossfit_also_scored": len(held_rows)},
    )


@dataclass
class _Parts:
    """The cross-fit's records by role, and the class order of every probability column."""

    pool: Any  # labelled records that may be trained on, with their ``fold``
    others: Any  # never trained on (test/held, unlabelled, discarded): every fold model scores them
    labels: list[str]


def crossfit(
    project: Project,
    recipe: TuneOptions | None = None,
    opts: CrossfitOptions | None = None,
    *,
    force: bool = False,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> CrossfitResult:
    """Cross-fit ``recipe`` over the project's records (see the module docstring).
    ``progress`` gets ``{fold, step, total, loss, tokens_per_s}`` after each optimizer step."""
    recipe = recipe or TuneOptions()
    opts = opts or CrossfitOptions()
    validate_name(opts.name, "--name")  # DIR/tune/<name>/ and .folds/<name>/ are replaced
    if recipe.task != "classify" or recipe.data.response_column:
        raise ThresherError("tune crossfit scores labels: it needs --task classify")
    t0 = time.perf_counter()
    tune_dir = project.root / "tune"
    records = crossfit_records(project)
    parts = _parts(records, opts, recipe.seed)
    inputs, config, stage_fp = _stage_key(project, records, recipe, opts)
    if not force and Project(tune_dir).is_fresh(opts.name, stage_fp):
        summary = json.loads((tune_dir / opts.name / "crossfit.json").read_text())["summary"]
        return CrossfitResult(**{**summary, "noop": True})

    probs, other_probs, fold_runs = _fit_folds(
        project, parts, recipe, opts, force=force, progress=progress
    )
    out = _predictions(parts, probs, other_probs)
    pool, others = parts.pool, parts.others
    result = CrossfitResult(
        name=opts.name,
        path=str(tune_dir / opts.name),
        folds=opts.folds,
        records=len(out),
        out_of_fold=len(pool),
        averaged=len(others),
        fold_macro_f1=[round(float(f["metrics"]["macro_f1"]), 4) for f in fold_runs],
        seconds=round(time.perf_counter() - t0, 1),
    )
    with stage_output(
        Project(tune_dir),
        opts.name,
        stage_fp,
        inputs=inputs,
        config=config,
        packages=("torch", "transformers", "peft"),
    ) as run:
        out.to_parquet(run.path("predictions.parquet"), index=False)
        summary = {k: v for k, v in result.to_dict().items() if k != "noop"}
        run.path("crossfit.json").write_text(
            json.dumps({"summary": summary, "labels": parts.labels, "folds": fold_runs}, indent=2)
            + "\n"
        )
        run.counts = {"out_of_fold": len(pool), "averaged": len(others), "records": len(out)}
    return result


def _parts(records, opts: CrossfitOptions, seed: int) -> _Parts:
    """The trainable pool (checked, and split into stratified folds) and the other records."""
    pool = records[records["role"] == "pool"].reset_index(drop=True)
    _check(pool, opts)
    labels = sorted(pool["label"].astype(str).unique())
    pool = pool.assign(fold=assign_folds(pool["label"], opts.folds, seed))
    others = records[records["role"] != "pool"].reset_index(drop=True)
    return _Parts(pool, others, labels)


def _stage_key(project: Project, records, recipe: TuneOptions, opts: CrossfitOptions):
    """(inputs, config, fingerprint) of the output: the upstream records, the recipe and the
    cross-fit options, and every record's id, label and role."""
    stage_in, _ = project.latest_records(["dedup", "ingest"])
    config = {"recipe": {**recipe.to_dict(), "run": None}, "crossfit": asdict(opts)}
    rows = list(zip(records["id"], records["label"], records["role"], strict=True))
    inputs = [upstream_input(project, stage_in)]
    return inputs, config, fingerprint({"inputs": inputs, "config": config, "records": rows})


def _fit_folds(
    project: Project,
    parts: _Parts,
    recipe: TuneOptions,
    opts: CrossfitOptions,
    *,
    force: bool,
    progress: Callable[[dict[str, float]], None] | None,
):
    """One run per fold (a finished one is reused, an unfinished one resumed). Returns the
    pool's out-of-fold probabilities, the other records' mean over the fold models, and each
    fold's run, counts and test metrics."""
    import numpy as np
    import pandas as pd

    from tune.predict import predict_proba, unload_run
    from tune.train import WORK, train

    pool, others, labels = parts.pool, parts.others, parts.labels
    folds_dir = contained(project.root / "tune" / FOLDS_DIR, opts.name, "--name")
    probs = np.zeros((len(pool), len(labels)))
    other_probs = np.zeros((len(others), len(labels)))
    fold_runs = []
    for k in range(opts.folds):
        data = _fold_data(pool, others, k, labels, opts.val_fraction, recipe.seed)
        resume = (folds_dir / WORK / f"fold-{k}" / "options.json").exists() and not force
        run_dir = train(
            project,
            replace(recipe, run=f"fold-{k}"),
            resume=resume,
            force=force,
            progress=None if progress is None else lambda info, k=k: progress({"fold": k, **info}),
            data=data,
            runs_dir=folds_dir,
        )
        preds = pd.read_parquet(run_dir / "predictions.parquet")
        preds = preds[preds["split"] == "test"].set_index("id")
        in_fold = (pool["fold"] == k).to_numpy()
        probs[in_fold] = np.stack(preds.loc[pool["id"][in_fold], "probs"].to_numpy())
        if len(others):
            other_probs += predict_proba(run_dir, others["text"].tolist()) / opts.folds
        unload_run(run_dir)
        test = json.loads((run_dir / "metrics.json").read_text())["test"]
        fold_runs.append({"fold": k, "run": str(run_dir), **data.counts, "metrics": test})
        log.info("crossfit fold %d/%d: test macro-F1 %s", k + 1, opts.folds, test.get("macro_f1"))
    return probs, other_probs, fold_runs


def _predictions(parts: _Parts, probs, other_probs):
    """``predictions.parquet``: the pool's out-of-fold rows, then the other records'."""
    import pandas as pd

    pool, labels = parts.pool, parts.labels
    return pd.concat(
        [
            _prediction_frame(pool, probs, labels, pool["fold"].to_numpy(), "oof"),
            _prediction_frame(parts.others, other_probs, labels, -1, None),
        ],
        ignore_index=True,
    )


def _prediction_frame(part, probs, labels, fold, split):
    """``id, split, fold, label, predicted, prob, p_<label>...`` for ``part``'s rows."""
    import pandas as pd

    from tune.predict import with_prob_columns

    frame = pd.DataFrame(
        {
            "id": part["id"].to_numpy(),
            "split": part["role"].to_numpy() if split is None else split,
            "fold": fold,
            "label": part["label"].to_numpy(),
        }
    )
    return with_prob_columns(frame, probs, labels)
