"""Which config key each command-line flag sets: one table for every command.

Flags are the top layer of the configuration (defaults < thresher.yaml < environment < flags, see
``thresher.config``). ``OVERRIDES`` maps each command's click parameter names to dotted config
keys; ``config_for`` loads a project's config with the flags that were given applied. A flag left
unset maps to ``None``, which ``Config.with_overrides`` skips, so the lower layers decide.

Only click and the standard library are imported here, so ``thresher --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from thresher.config import Config


@dataclass(frozen=True)
class TurnsOff:
    """A ``--no-X`` flag: given, it sets ``key`` to false; left off, the lower layers decide."""

    key: str


# Command (its words after `thresher`) → {click parameter name: config key}.
OVERRIDES: dict[str, dict[str, str | TurnsOff]] = {
    "curate ingest": {
        "text_col": "columns.text",
        "label_col": "columns.label",
        "id_col": "columns.id",
        "fmt": "ingest.format",
        "max_text_chars": "ingest.max_text_chars",
        "max_line_bytes": "ingest.max_line_bytes",
    },
    "curate score": {
        "folds": "score.folds",
        "model": "models.embedding",
        "no_embeddings": TurnsOff("score.embeddings"),
        "learners": "score.learners",  # the typed config splits "emb,svm"
        "engine": "score.engine",
        "class_prior": "score.class_prior",
    },
    "curate dedup": {
        "threshold": "dedup.threshold",
        "shingle": "dedup.shingle",
        "ngram": "dedup.ngram",
        "num_perm": "dedup.num_perm",
        "punctuation": "dedup.punctuation",
        "semantic": "dedup.semantic",
        "semantic_threshold": "dedup.semantic_threshold",
        "engine": "dedup.engine",
    },
    "tune train": {
        "task": "tune.task",
        "epochs": "tune.epochs",
        "max_steps": "tune.max_steps",
        "data_mode": "tune.data",
        "batch_size": "tune.batch_size",
        "grad_accum": "tune.grad_accum",
        "lr": "tune.lr",
        "max_length": "tune.max_length",
        "label_issues": "tune.label_issues",
        "response_col": "tune.response_column",
        "issue_min_prob": "tune.issue_min_prob",
        "curate_val": "tune.curate_val",
        "precision": "tune.precision",
        "qlora": "tune.qlora",
        "gradient_checkpointing": "tune.gradient_checkpointing",
        "compile_mode": "tune.compile",
        "strategy": "tune.strategy",
    },
    "tune crossfit": {
        "epochs": "tune.epochs",
        "max_steps": "tune.max_steps",
        "batch_size": "tune.batch_size",
        "lr": "tune.lr",
        "max_length": "tune.max_length",
        "precision": "tune.precision",
        "qlora": "tune.qlora",
        "base": "models.classifier",
    },
    "simulate": {
        "rounds": "simulate.rounds",
        "size": "simulate.size",
        "seed_size": "simulate.seed_size",
        "cold_start": "simulate.cold_start",
        "strategies": "simulate.strategies",  # the typed config splits "margin,random"
        "seeds": "simulate.seeds",
        "learner": "simulate.learner",
        "noise": "simulate.noise",
        "test_fraction": "simulate.test_fraction",
    },
    "round": {
        "strategy": "loop.strategy",
        "size": "loop.size",
        "learner": "loop.learner",
        "labels": "loop.labels",
    },
    "review server up": {"port": "review.port"},
    "review users add": {"workspace": "review.workspace"},
    "review push": {
        "dataset": "review.dataset",
        "priority": "review.priority",
        "no_vectors": TurnsOff("review.vectors"),
    },
    "review pull": {"dataset": "review.dataset"},
}


def overrides_for(command: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"section.key": value}`` for ``command``'s flags; ``params``: click parameter name →
    value. Unset flags map to ``None`` (skipped by ``Config.with_overrides``)."""
    out: dict[str, Any] = {}
    for name, target in OVERRIDES[command].items():
        value = params[name]
        if isinstance(target, TurnsOff):
            out[target.key] = False if value else None
        else:
            out[target] = value
    return out


def config_for(
    project_root: str | Path,
    command: str,
    params: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Config:
    """The project's config with ``command``'s flags applied. ``params``: click parameter name →
    value (the running command's when omitted). ``extra``: overrides a command sets itself,
    applied over the flags."""
    from thresher.config import load_config

    if params is None:
        params = click.get_current_context().params
    overrides = overrides_for(command, params)
    overrides.update(extra or {})
    return load_config(project_root).with_overrides(overrides)
