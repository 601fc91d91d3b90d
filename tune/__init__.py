"""LoRA tuning on the curated set, evaluation against baselines, prediction and export.

Library API (the CLI and the active-learning loop call these)::

    from tune import TuneOptions, train, predict_proba
    run_dir = train(project, TuneOptions(max_steps=200))
    probs = predict_proba(run_dir, ["a text", ...])   # (n, n_labels), columns in label_map order

Every module imports torch/transformers/peft lazily, so importing ``tune`` is cheap.
"""

from __future__ import annotations

from tune.evaluate import evaluate_run
from tune.export import export_run
from tune.options import DataOptions, TuneOptions
from tune.predict import predict_proba
from tune.train import train

__all__ = ["DataOptions", "TuneOptions", "evaluate_run", "export_run", "predict_proba", "train"]
