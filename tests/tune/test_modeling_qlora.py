"""QLoRA: LoRA on a 4-bit NF4 base (bitsandbytes, which has CPU kernels since 0.48, so the same
path that serves GPUs short of memory is tested here on the CPU with a tiny random Llama).

bitsandbytes picks its CPU path by CPU feature (``has_avx512bf16``: a packed bf16 layout on CPUs
with AVX512-BF16 units). The ``bnb_cpu_branch`` fixture forces that detection either way, so both
branches run on any machine: the packing code that failed on AVX-512 machines is plain torch."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tune import TuneOptions, export_run, predict_proba, train
from tune.predict import load_run

pytest.importorskip("bitsandbytes")  # in the dev extra, so CI runs these

FAST = {"batch_size": 8, "lr": 5e-3, "eval_batch_size": 32, "max_length": 32}


@pytest.fixture(params=["avx512bf16", "portable"])
def bnb_cpu_branch(request, monkeypatch) -> str:
    """bitsandbytes' CPU-feature detection forced to one branch (its 4-bit layers read it as
    they are built)."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: request.param == "avx512bf16")
    return request.param


def _linear4bit_layers(model) -> list:
    return [
        m
        for m in model.modules()
        if type(m).__module__.startswith("bitsandbytes") and type(m).__name__ == "Linear4bit"
    ]


def test_the_forced_branch_reaches_bitsandbytes(bnb_cpu_branch):
    """The sentinel for the fixture: a bare 4-bit layer takes the forced branch, and on the
    AVX512-BF16 branch its eval-mode forward packs the weight (and fails on a 32-wide input, the
    error thresher's own layers never reach)."""
    import torch
    from bitsandbytes.nn import Linear4bit

    layer = Linear4bit(32, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer = layer.to("cpu").eval()
    assert layer.support_avx512bf16_for_cpu is (bnb_cpu_branch == "avx512bf16")
    x = torch.randn(2, 32)
    with torch.no_grad():
        if bnb_cpu_branch == "avx512bf16":
            with pytest.raises(RuntimeError, match=r"shape '\[64, 0\]' is invalid"):
                layer(x)
        else:
            assert layer(x).shape == (2, 64)


def _four_bit_layers(model) -> int:
    return len(_linear4bit_layers(model))


def test_4bit_layers_keep_the_portable_path_and_train_after_an_evaluation(
    bnb_cpu_branch, tiny_llama
):
    """On either branch: an evaluation pass leaves every 4-bit layer unpacked, and the next
    training step still sends gradients into the first block's adapters (the packed layout is
    inference-only: through it the adapters stop learning)."""
    import torch
    from transformers import AutoTokenizer

    from thresher.assets import ModelRef
    from tune.modeling import add_lora, load_base

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = load_base(ModelRef("tiny", tiny_llama), "classify", ["a", "b"], tok, qlora=True)
    model = add_lora(model, "classify", r=4, alpha=8, dropout=0.0)
    layers = _linear4bit_layers(model)
    assert len(layers) == 2 * 7
    assert not any(m.support_avx512bf16_for_cpu for m in layers)
    batch = tok(["a great film", "a dull plot"], return_tensors="pt", padding=True)
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    assert torch.isfinite(logits).all()
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)

    model.train()
    model(**batch, labels=torch.tensor([0, 1])).loss.backward()
    first = {n: p.grad for n, p in model.named_parameters() if "layers.0." in n and "lora_B" in n}
    assert first  # the adapters of the first block (q_proj and v_proj)
    assert all(g is not None and g.abs().sum() > 0 for g in first.values())


def test_qlora_on_a_bert_base_keeps_its_head_and_pooler_trainable(tiny_bert):
    """The default classify base is BERT-style: its head has a bias (transformers' own guess
    then quantized it) and it reads a pooler that must train; both stay in full precision."""
    import torch
    from transformers import AutoTokenizer

    from thresher.assets import ModelRef
    from tune.modeling import add_lora, load_base

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = load_base(ModelRef("bert", tiny_bert), "classify", ["a", "b"], tok, qlora=True)
    assert len(_linear4bit_layers(model)) == 6  # q, k, v, attention out, intermediate, output
    model = add_lora(model, "classify", r=4, alpha=8, dropout=0.0)
    batch = tok(["a great film", "a dull plot"], return_tensors="pt", padding=True)
    loss = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=torch.tensor([0, 1]),
    ).loss
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    for part in ("classifier.modules_to_save", "pooler.modules_to_save", "lora_B"):
        assert any(part in n for n in trained), part


@pytest.mark.slow
def test_qlora_trains_on_a_4bit_base_and_every_reload_matches_it(
    bnb_cpu_branch, project, tiny_llama, tmp_path
):
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
    from tune.modeling import qlora_kwargs

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(MissingDependencyError, match=r"thresher\[qlora\].*drop --qlora") as err:
        qlora_kwargs(torch.float32, torch.device("cpu"))
    assert "\n" not in str(err.value)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.47.0")
    with pytest.raises(MissingDependencyError, match=">= 0.48"):
        qlora_kwargs(torch.float32, torch.device("cpu"))
