"""QLoRA: LoRA on a 4-bit NF4 base (bitsandbytes, which has CPU kernels since 0.48, so the same
path that serves GPUs short of memory is tested here on the CPU with a tiny random Llama)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tune import TuneOptions, export_run, predict_proba, train
from tune.predict import load_run

pytest.importorskip("bitsandbytes")  # in the dev extra, so CI runs these

FAST = {"batch_size": 8, "lr": 5e-3, "eval_batch_size": 32, "max_length": 32}


def _four_bit_layers(model) -> int:
    return sum(
        type(m).__module__.startswith("bitsandbytes") and type(m).__name__ == "Linear4bit"
        for m in model.modules()
    )


@pytest.mark.slow
def test_qlora_trains_on_a_4bit_base_and_every_reload_matches_it(project, tiny_llama, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = train(project, TuneOptions(base=tiny_llama, run="q", qlora=True, max_steps=16, **FAST))
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["qlora"] is True
    history = json.loads((run / "history.json").read_text())["loss"]
    assert all(np.isfinite(h["loss"]) for h in history)

    # predict reloads the base in 4-bit, as it was trained: the run's own test probabilities
    loaded = load_run(run)
    assert _four_bit_layers(loaded.model) == 2 * 7  # q,k,v,o,gate,up,down per block
    preds = pd.read_parquet(run / "predictions.parquet")
    test = preds[preds["split"] == "test"]
    probs = predict_proba(run, test["text"].tolist())
    assert np.allclose(probs, np.stack(test["probs"].to_numpy()), atol=1e-4)

    # merged export: a plain full-precision model (no bitsandbytes layers) with the adapter
    # folded in; it differs from the 4-bit run only by the quantization error of the base
    out = export_run(run, tmp_path / "merged", merged=True)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert _four_bit_layers(model) == 0
    assert not getattr(model.config, "quantization_config", None)
    tok = AutoTokenizer.from_pretrained(out)
    texts = test["text"].tolist()
    with torch.no_grad():
        batch = tok(texts, return_tensors="pt", padding=True)
        merged = torch.softmax(model(**batch).logits, -1).numpy()
    assert np.abs(merged - probs).max() < 0.1
    assert (merged.argmax(1) == probs.argmax(1)).mean() >= 0.9


def test_qlora_without_bitsandbytes_is_a_one_line_error(monkeypatch):
    import importlib.metadata

    import torch

    from thresher.errors import MissingDependencyError
    from tune.modeling import _qlora_kwargs

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(MissingDependencyError, match=r"thresher\[qlora\].*drop --qlora") as err:
        _qlora_kwargs(torch.float32, torch.device("cpu"))
    assert "\n" not in str(err.value)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.47.0")
    with pytest.raises(MissingDependencyError, match=">= 0.48"):
        _qlora_kwargs(torch.float32, torch.device("cpu"))
