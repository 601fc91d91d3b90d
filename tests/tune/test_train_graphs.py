"""Graphs mode (``tune.compile: graphs``): bucketed static shapes, zero-weight filler rows, the
answer-position gather that replaced boolean indexing, and the compiled whole training forward
(CPU inductor here: no CUDA graphs, same maths)."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest

from tune import TuneOptions, train

FAST = {"batch_size": 8, "lr": 5e-3, "eval_batch_size": 32, "max_length": 32}


def _tiny_causal(path, task="sft", seed=0):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tune.modeling import add_lora

    torch.manual_seed(seed)
    if task == "sft":
        base = AutoModelForCausalLM.from_pretrained(path)
    else:
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
        base.config.pad_token_id = 0
    model = add_lora(base, task, 4, 8, 0.0)
    model.train()
    return model


def _random_sft(n, seed, vocab=500, max_len=60):
    """Prompts of random length with 1-5 answer tokens (labels -100 over the prompt)."""
    rng = random.Random(seed)
    ids, labels = [], []
    for _ in range(n):
        p, a = rng.randint(3, max_len - 6), rng.randint(1, 5)
        seq = [rng.randrange(5, vocab) for _ in range(p + a)]
        ids.append(seq)
        labels.append([-100] * p + seq[p:])
    return ids, labels


def test_seq_buckets_and_static_batch_shapes():
    import torch

    from tune.modeling import StaticShapes, bucket_of, make_batch, seq_buckets

    assert seq_buckets(1024) == [32, 64, 128, 256, 512, 768, 1024]
    assert seq_buckets(128) == [32, 64, 128]
    assert seq_buckets(100) == [32, 64, 104]
    assert seq_buckets(2048)[-5:] == [1024, 1280, 1536, 1792, 2048]
    assert bucket_of(33, [32, 64]) == 64 and bucket_of(70, [32, 64]) == 72  # never truncates
    static = StaticShapes.for_options(8, 128)
    rng = random.Random(0)
    seen = set()
    for trial in range(40):
        ids, labels = _random_sft(rng.randint(1, 8), seed=trial, max_len=128)
        weights = [rng.choice([1.0, 0.3]) for _ in ids]
        b = make_batch(ids, labels, weights, 0, "sft", static=static)
        rows, length = b.input_ids.shape
        seen.add(length)
        assert rows == 8 and length in static.buckets and length >= max(map(len, ids))
        assert b.tokens == sum(map(len, ids)) == int(b.attention_mask[: len(ids)].sum())
        width = b.answer_pos.shape[1]
        assert width >= 8 and width & (width - 1) == 0  # a power of two
        filler = slice(len(ids), rows)
        assert torch.all(b.weights[filler] == 0)
        assert torch.all(b.weights[: len(ids)] == torch.tensor(weights))
        assert torch.all(b.attention_mask[filler, 0] == 1)  # one key: finite attention
        assert torch.all(b.attention_mask[filler, 1:] == 0)
        assert torch.all(b.labels[filler] == -100) and torch.all(b.answer_tgt[filler] == -100)
        # every answer target is gathered once, at the position that predicts it
        for i, y in enumerate(labels):
            want = [(t - 1, tok) for t, tok in enumerate(y) if tok != -100]
            got = [
                (int(p), int(t))
                for p, t in zip(b.answer_pos[i], b.answer_tgt[i], strict=True)
                if t != -100
            ]
            assert got == want
    assert len(seen) >= 2  # several buckets were exercised
    dynamic = make_batch(ids, labels, weights, 0, "sft")
    assert dynamic.input_ids.shape == (len(ids), max(map(len, ids)))


def _old_fast_loss(model, x, m, y, w):
    """The fast SFT loss before the gather: boolean indexing (a device→host sync per step)."""
    import torch.nn.functional as F

    base = model.get_base_model()
    hidden = base.get_decoder()(input_ids=x, attention_mask=m, use_cache=False).last_hidden_state
    shift = y[:, 1:]
    keep = shift != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    per_token = F.cross_entropy(logits.float(), shift[keep], reduction="none")
    token_w = w[:, None].expand_as(shift)[keep]
    return (per_token * token_w).sum() / token_w.sum().clamp_min(1e-8)


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_gathered_answer_loss_equals_boolean_index_loss(tiny_llama):
    """The fixed-shape gather gives the old loss value and gradients, fast and full paths."""
    import torch

    from tune.modeling import forward_loss, make_batch, weighted_loss

    model = _tiny_causal(tiny_llama)
    ids, labels = _random_sft(5, seed=3, vocab=model.config.vocab_size)
    weights = [1.0, 0.3, 1.0, 0.0, 2.0]
    batch = make_batch(ids, labels, weights, 0, "sft")
    model.zero_grad()
    old = _old_fast_loss(model, batch.input_ids, batch.attention_mask, batch.labels, batch.weights)
    old.backward()
    g_old = _grads(model)
    for fast in (True, False):
        model.zero_grad()
        new = forward_loss(model, batch, "sft", fast_sft=fast)
        new.backward()
        assert torch.allclose(new, old, atol=1e-6)
        for a, b in zip(_grads(model), g_old, strict=True):
            assert torch.allclose(a, b, atol=1e-6)
    # weighted_loss without the index (every position scored) gives the same value too
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    plain = weighted_loss(logits, batch.labels, batch.weights, "sft")
    assert torch.allclose(plain, old, atol=1e-6)


@pytest.mark.parametrize("task", ["sft", "classify"])
def test_filler_rows_and_bucket_padding_change_neither_loss_nor_gradients(tiny_llama, task):
    import torch

    from tune.modeling import StaticShapes, forward_loss, make_batch

    model = _tiny_causal(tiny_llama, task)
    ids, labels = _random_sft(3, seed=5, vocab=model.config.vocab_size)
    if task == "classify":
        labels = [0, 2, 1]
    weights = [1.0, 0.5, 1.0]
    plain = make_batch(ids, labels, weights, 0, task)
    padded = make_batch(ids, labels, weights, 0, task, static=StaticShapes(8, (32, 64, 128)))
    assert padded.input_ids.shape[0] == 8 and padded.input_ids.shape[1] > plain.input_ids.shape[1]
    results = []
    for batch in (plain, padded):
        model.zero_grad()
        loss = forward_loss(model, batch, task, fast_sft=True)
        loss.backward()
        assert torch.isfinite(loss)
        results.append((loss.detach(), _grads(model)))
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        assert torch.all(torch.isfinite(b)) and torch.allclose(a, b, atol=1e-6)


def _losses(run_dir) -> list[float]:
    return [h["loss"] for h in json.loads((run_dir / "history.json").read_text())["loss"]]


@pytest.mark.slow
def test_graphs_mode_trains_like_eager(project, tiny_llama, caplog):
    """compile=graphs (whole training forward compiled, bucketed shapes, filler rows) gives the
    eager run's losses and predictions; the adapter's keys are the eager run's keys."""
    from safetensors.torch import load_file
    from torch._dynamo.utils import counters

    opts = {"base": tiny_llama, "task": "sft", "max_steps": 6, "lora_dropout": 0.0, **FAST}
    eager = train(project, TuneOptions(run="eager", compile="off", **opts))
    frames = counters["stats"]["unique_graphs"]
    with caplog.at_level("INFO", logger="tune.train"):
        graphs = train(project, TuneOptions(run="graphs", compile="graphs", **opts))
    assert "graphs mode" in caplog.text and "continuing uncompiled" not in caplog.text
    assert counters["stats"]["unique_graphs"] > frames  # it did compile
    assert np.allclose(_losses(graphs), _losses(eager), rtol=1e-4, atol=1e-5)
    a = json.loads((eager / "metrics.json").read_text())
    b = json.loads((graphs / "metrics.json").read_text())
    assert b["train"]["tokens"] == a["train"]["tokens"]  # filler rows are not counted
    assert b["test"]["macro_f1"] == pytest.approx(a["test"]["macro_f1"], abs=1e-6)
    keys = [set(load_file(r / "adapter" / "adapter_model.safetensors")) for r in (eager, graphs)]
    assert keys[0] == keys[1] and not any("_orig_mod" in k for k in keys[1])


def test_graphs_compile_failure_falls_back_to_eager(project, tiny_llama, monkeypatch, caplog):
    """A compile error in the graphs-mode step undoes it and the run goes on eagerly."""
    import importlib

    from torch._dynamo.exc import BackendCompilerFailed

    train_module = importlib.import_module("tune.train")
    compiled = []

    def broken_compile(module, device, static=False):
        def fail(*args, **kwargs):
            raise BackendCompilerFailed(fail, RuntimeError("no compiler here"), None)

        module._compiled_call_impl = fail
        compiled.append(module)
        return True

    monkeypatch.setattr(train_module, "compile_graphs", broken_compile)
    with caplog.at_level("WARNING", logger="tune.train"):
        opts = TuneOptions(base=tiny_llama, task="sft", run="g", max_steps=3, **FAST)
        run = train(project, replace(opts, compile="graphs"))
    assert "continuing uncompiled" in caplog.text
    assert len(compiled) == 1 and compiled[0]._compiled_call_impl is None
    assert len(_losses(run)) == 3 and all(np.isfinite(_losses(run)))


@pytest.mark.slow
def test_graphs_compiled_encoder_classifier_gives_eager_loss_and_gradients(tiny_bert):
    """The graphs-mode loss module on a BERT classifier (static batch, two length buckets under
    one compile) gives the eager loss and gradients (CPU inductor; dropout off)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tune.modeling import (
        StaticShapes,
        add_lora,
        compile_graphs,
        encode_classify,
        forward_loss,
        loss_module,
        make_batch,
    )

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    model = add_lora(base, "classify", 4, 8, 0.0).eval()  # eval: no dropout to differ
    static = StaticShapes(4, (32, 64))
    texts = [["a great film", "dull"], ["word " * 40, "fine", "bad bad"]]
    batches = []
    for chunk in texts:
        enc = encode_classify(tok, chunk, [1, 0, 1][: len(chunk)], [1.0] * len(chunk), 64)
        batches.append(
            make_batch(enc.input_ids, enc.labels, enc.weights, 0, "classify", static=static)
        )
    assert [b.input_ids.shape[1] for b in batches] == [32, 64]
    lm = loss_module(model, "classify", False)
    assert compile_graphs(lm, torch.device("cpu"))
    for batch in batches:
        out = []
        for fn in (lambda b: forward_loss(model, b, "classify", False), lm.loss):
            model.zero_grad()
            loss = fn(batch)
            loss.backward()
            out.append((loss.detach(), _grads(model)))
        (l1, g1), (l2, g2) = out
        assert torch.allclose(l1, l2, rtol=1e-4)
        for a, b in zip(g1, g2, strict=True):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)
