"""The steps of ``thresher round``, built from the resolved config (no I/O until a step runs).

pull (review) → rebuild → train (fast | tfidf | lora) → eval → predict → select → push (review).
The round's options (strategy, size, learner, labels, ...) are recorded in the round manifest;
a resumed round keeps the options it started with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from loop.errors import LearnerError
from loop.rounds import RoundRunner, StepContext
from thresher.project import Project

LEARNER_CHOICES = ("fast", "tfidf", "lora")


def learner_factory(config: Any, project: Project, name: str):
    """``(classes, ctx) -> Learner`` for ``name``; ``lora`` needs the ``tune`` package."""
    from loop.learners import make_learner

    labels = [str(x) for x in (config.get("labels") or ())]
    seed = int(config.get("seed"))

    def classes_of(found: Sequence[str]) -> list[str]:
        return sorted(set(labels) | {str(c) for c in found})

    if name == "lora":
        from loop.lora import LoraLearner, tune_available

        if not tune_available():
            raise LearnerError(
                "--learner lora needs the tune package (thresher tune); use --learner fast"
            )
        from tune.options import options_from_config

        opts = options_from_config(config)
        warm = bool(config.get("loop.warm_start"))

        def lora(classes: Sequence[str], ctx: StepContext):
            prev = ctx.previous_step_dir("train") if warm else None
            return LoraLearner(classes_of(classes), opts, warm_start=prev)

        return lora
    if name not in LEARNER_CHOICES:
        raise LearnerError(f"unknown learner {name!r}; use one of {', '.join(LEARNER_CHOICES)}")
    cache = project.embedding_cache
    model = str(config.get("models.embedding"))

    def fast(classes: Sequence[str], ctx: StepContext):
        pool = None
        if name == "tfidf":
            import pandas as pd

            parts = [
                pd.read_parquet(ctx.step_dir("rebuild") / f)["text"]
                for f in ("labeled.parquet", "pool.parquet")
            ]
            pool = pd.concat(parts).tolist()
        return make_learner(
            name,
            classes_of(classes),
            pool_texts=pool,
            embedding_model=model,
            cache_dir=cache,
            seed=seed,
        )

    return fast


def stopping_options(config: Any):
    """``loop.stopping.StoppingOptions`` from the ``loop`` section's ``stop_*`` and ``budget``."""
    from loop.stopping import StoppingOptions

    loop = config.section("loop")
    budget = loop.get("budget")
    return StoppingOptions(
        kappa=float(loop.get("stop_kappa", 0.99)),
        window=int(loop.get("stop_window", 3)),
        confidence=float(loop.get("stop_confidence", 0.9)),
        budget=None if budget is None else int(budget),
        stop_set=int(loop.get("stop_set", 1000)),
    )


def push_options(config: Any):
    """``review.push.PushOptions`` from the ``review`` section (as ``thresher review push``)."""
    from review.push import push_options_from_config

    return push_options_from_config(config)


def build_runner(
    project: Project,
    config: Any,
    *,
    connect: Callable[[], Any],
    embed: Callable[[list[str]], Any] | None = None,
) -> RoundRunner:
    """The ``RoundRunner`` of ``thresher round`` (``connect()`` → the Argilla connection;
    ``embed`` overrides the vectors sent with pushed records, for tests)."""
    from loop.review_steps import (
        pull_step,
        push_step,
        records_for_round,
        submitted_probe,
        with_conflicts,
    )
    from loop.steps import (
        eval_step,
        out_of_fold_probs,
        predict_step,
        rebuild_step,
        select_step,
        train_step,
    )
    from loop.strategies import get_strategy

    loop = config.section("loop")
    get_strategy(str(loop["strategy"]))  # an unknown name fails before any step runs
    learner = str(loop["learner"])
    factory = learner_factory(config, project, learner)
    review = config.section("review")
    steps = {
        "pull": pull_step(connect, dataset=review["dataset"], workspace=review["workspace"]),
        "rebuild": rebuild_step(
            records_for_round(str(loop.get("labels", "reviewed"))), seed=int(config.get("seed"))
        ),
        "train": train_step(factory),
        "eval": eval_step(),
        "predict": predict_step(stopping_options(config)),
        "select": with_conflicts(
            select_step(
                str(loop["strategy"]),
                int(loop["size"]),
                rereview_threshold=float(loop["rereview_threshold"]),
                rereview_size=int(loop["rereview_size"]),
                diversity_factor=int(loop["diversity_factor"]),
                seed=int(config.get("seed")),
                relabel=str(loop.get("relabel", "auto")),
                # LoRA is too slow to fit five more times a round: its own probabilities serve
                out_of_fold=None
                if learner == "lora"
                else out_of_fold_probs(factory, seed=int(config.get("seed"))),
            ),
            int(loop["rereview_size"]),
        ),
        "push": push_step(connect, push_options(config), embed=embed),
    }
    options = {
        **loop,
        "labels": str(loop.get("labels", "reviewed")),
        "embedding_model": str(config.get("models.embedding")),
        "dataset": review["dataset"],
    }
    probe = submitted_probe(connect, str(review["workspace"]))
    return RoundRunner(project, steps, options=options, probe=probe)
