"""LoRA tuning on the curated set, evaluation against baselines, prediction and export.

Library API (the CLI and the active-learning loop call these)::

    from tune import TuneOptions, train, predict_proba
    run_dir = train(project, TuneOptions(max_steps=200))
    probs = predict_proba(run_dir, ["a text", ...])   # (n, n_labels), columns in label_map order
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy modules load only when used
    from tune.options import TuneOptions  # noqa: F401

__all__ = ["TuneOptions", "train", "predict_proba", "evaluate_run", "export_run"]


def __getattr__(name: str):
    if name == "TuneOptions":
        from tune.options import TuneOptions

        return TuneOptions
    if name == "train":
        from tune.train import train

        return train
    if name == "predict_proba":
        from tune.predict import predict_proba

        return predict_proba
    if name == "evaluate_run":
        from tune.evaluate import evaluate_run

        return evaluate_run
    if name == "export_run":
        from tune.export import export_run

        return export_run
    raise AttributeError(name)
