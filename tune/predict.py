"""Prediction with a finished run: ``predict_proba(run_dir, texts)`` and batch scoring of a
project or a file.

The loaded model is cached per (run folder, device) in the process, so the active-learning loop
can call ``predict_proba`` every round without reloading.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.assets import ModelRef
from thresher.errors import ThresherError
from tune.options import TuneOptions
from tune.runtime import amp_dtype, default_device, read_run_config, trained_on_pairs

log = logging.getLogger(__name__)

_LOADED: dict[tuple[str, str, bool], LoadedRun] = {}


@dataclass
class LoadedRun:
    """A run's model (base + adapter, eval mode), tokenizer, labels and recipe."""

    model: Any
    tokenizer: Any
    labels: list[str]
    options: TuneOptions
    device: Any
    amp: Any


def _require_classifier(run_dir: str | Path) -> None:
    """Runs trained on instruction/response pairs have no classes to predict."""
    if trained_on_pairs(read_run_config(Path(run_dir))):
        raise ThresherError(
            f"{run_dir} was trained on instruction/response pairs: it writes text, it does not "
            "classify; export it (thresher tune export --merged) and call generate() on it"
        )


def load_run(
    run_dir: str | Path, device: str | None = None, *, quantized: bool = True
) -> LoadedRun:
    """Load base + adapter of ``run_dir`` (cached per process). A QLoRA run's base is loaded in
    4-bit as it was trained, unless ``quantized`` is False (full precision, e.g. for merging)."""
    from peft import PeftModel

    from tune.modeling import load_base, load_tokenizer

    run_dir = Path(run_dir).resolve()
    dev = default_device(device)
    key = (str(run_dir), str(dev), quantized)
    if key in _LOADED:
        return _LOADED[key]
    config = read_run_config(run_dir)
    opts = TuneOptions.from_dict(config["options"])
    ref = ModelRef(**config["base"])
    adapter = run_dir / "adapter"
    tok = load_tokenizer(ModelRef(ref.name, str(adapter)))
    amp = amp_dtype(opts.precision, dev)
    base = load_base(
        ref,
        opts.task,
        config["labels"],
        tok,
        dtype=amp if dev.type == "cuda" else None,
        qlora=opts.qlora and quantized,
        device=dev,
    )
    model = PeftModel.from_pretrained(base, str(adapter)).to(dev).eval()
    loaded = LoadedRun(model, tok, list(config["labels"]), opts, dev, amp)
    _LOADED[key] = loaded
    return loaded


def unload_run(run_dir: str | Path) -> None:
    """Drop ``run_dir``'s models from the per-process cache (frees their memory)."""
    run_dir = str(Path(run_dir).resolve())
    for key in [k for k in _LOADED if k[0] == run_dir]:
        del _LOADED[key]


def predict_proba(
    run_dir: str | Path,
    texts: Sequence[str],
    *,
    batch_size: int | None = None,
    device: str | None = None,
):
    """Class probabilities, shape (len(texts), n_labels), columns in the run's label order
    (``config.json`` ``labels``). Higher = more likely."""
    from tune.modeling import score_texts

    _require_classifier(run_dir)
    run = load_run(run_dir, device)
    return score_texts(
        run.model,
        run.tokenizer,
        list(texts),
        task=run.options.task,
        labels=run.labels,
        template=run.options.prompt_template,
        max_length=run.options.max_length,
        batch_size=batch_size or run.options.eval_batch_size,
        device=run.device,
        amp_dtype=run.amp,
    )


def predict_frame(
    run_dir: str | Path,
    frame,
    *,
    batch_size: int | None = None,
    chunk: int = 4096,
    progress: Callable[[int], None] | None = None,
):
    """``frame`` (columns id, text) + predicted, prob, and one ``p_<label>`` column per label."""
    import numpy as np

    _require_classifier(run_dir)
    run = load_run(run_dir)
    parts = []
    for start in range(0, len(frame), chunk):
        texts = frame["text"].iloc[start : start + chunk].astype(str).tolist()
        parts.append(predict_proba(run_dir, texts, batch_size=batch_size))
        if progress is not None:
            progress(len(texts))
    probs = np.concatenate(parts) if parts else np.zeros((0, len(run.labels)), "float32")
    out = frame[["id", "text"]].copy() if "id" in frame.columns else frame[["text"]].copy()
    return with_prob_columns(out, probs, run.labels)


def with_prob_columns(frame, probs, labels):
    """``frame`` + ``predicted``, ``prob`` and one ``p_<label>`` column per label from ``probs``
    (rows aligned with ``frame``; columns in ``labels`` order): what ``--probs-from`` reads."""
    frame["predicted"] = [labels[i] for i in probs.argmax(axis=1)] if len(probs) else []
    frame["prob"] = probs.max(axis=1) if len(probs) else []
    for i, label in enumerate(labels):
        frame[f"p_{label}"] = probs[:, i]
    return frame


def read_texts(path: Path, text_col: str = "text"):
    """A CSV/JSONL/Parquet/TXT file → frame with ``text`` (and ``id`` when present)."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif suffix in (".jsonl", ".json"):
        frame = pd.read_json(path, lines=suffix == ".jsonl")
    elif suffix in (".csv", ".tsv"):
        frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    elif suffix == ".txt":
        frame = pd.DataFrame({"text": path.read_text(encoding="utf-8").splitlines()})
    else:
        raise ThresherError(f"{path}: unknown format {suffix!r}; use csv, tsv, jsonl, parquet, txt")
    if text_col not in frame.columns:
        raise ThresherError(f"{path} has no column {text_col!r}; pass --text-col")
    return frame.rename(columns={text_col: "text"})
