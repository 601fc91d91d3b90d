"""GPU benchmark: the recipe's Trainer-free step vs plain Hugging Face ``Trainer`` + peft.

Same model (a Qwen2-0.5B architecture config with random bf16 weights: no hub), same LoRA
(r=16 on q,k,v,o), same SFT-shaped data (random prompts of 32..seq_len tokens, each followed by an
8-token answer; loss on the answer only), same batch size, bf16 autocast, fused AdamW, grad-norm
clip 1.0, in one process on the same GPU. Reports real (non-pad) tokens/s, MFU and peak memory for
each, and the ratio.

What differs is the recipe, not the settings: ``Trainer`` (defaults: random batches, full logits
over the 151k vocabulary at every position, fp32 upcast inside the loss) vs ``tune.train``'s step
(length-grouped batches padded to a multiple of 8; LM-head logits only where an answer token is
the target). MFU counts the useful model FLOPs per real token, the same for both: 4·N_body (LoRA:
forward + input gradients, no weight gradients for the frozen base) + causal attention
(≈ 6·layers·ctx·d per token, fwd+bwd) + the LM head for target tokens only; peak bf16 dense
989 TFLOP/s (H100/H200).

    python benchmarks/tune_gpu.py [--seq-len 1024 512] [--batch 8] [--steps 30] [--tiny]
``--tiny`` is a small config on CPU to check the script (no meaningful numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402

PEAK_BF16 = 989e12
ANSWER = 8


def model_config(tiny: bool):
    from transformers import Qwen2Config

    if tiny:
        return Qwen2Config(
            vocab_size=4096,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        )
    # Qwen2-0.5B's published architecture (494M parameters), random weights.
    return Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1e6,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )


def make_data(n: int, seq_len: int, vocab: int, seed: int):
    """(input_ids, labels) lists: prompt of random length + answer; labels -100 on the prompt."""
    import random

    rng = random.Random(seed)
    ids, labels = [], []
    for _ in range(n):
        p = rng.randint(32, seq_len - ANSWER)
        seq = [rng.randrange(10, vocab) for _ in range(p + ANSWER)]
        ids.append(seq)
        labels.append([-100] * p + seq[p:])
    return ids, labels


def build_model(cfg, device, dtype, seed: int):
    import torch
    from transformers import AutoModelForCausalLM

    from tune.modeling import add_lora

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model = add_lora(model, "sft", 16, 32, 0.0, ("q_proj", "k_proj", "v_proj", "o_proj"))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model.to(device)


def flops_per_token(cfg, mean_ctx: float, target_share: float) -> float:
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    kv = d * cfg.num_key_value_heads // cfg.num_attention_heads
    body = layers * (d * d * 2 + d * kv * 2 + 3 * d * cfg.intermediate_size)
    attention = 6 * layers * mean_ctx * d  # causal: half of 2·2·ctx·d fwd, ×3 with backward
    head = 4 * d * cfg.vocab_size * target_share
    return 4 * body + attention + head


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_recipe(cfg, data, args, device, amp):
    """Our step (tune.train.train_step) with length-grouped batches."""
    import torch

    from tune.modeling import _fast_sft_ok, collate
    from tune.train import _linear_schedule, length_grouped_batches, train_step

    model = build_model(cfg, device, amp or torch.float32, args.seed)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")
    total = args.warmup + args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(optim, _linear_schedule(total, 0.0))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    ids, labels = data
    batches = length_grouped_batches([len(x) for x in ids], args.batch, args.seed)
    fast = _fast_sft_ok(model)
    n_params = sum(p.numel() for p in model.parameters())
    multiple = 8 if device.type == "cuda" else 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens = 0
    t0 = None
    for step in range(total):
        idx = batches[step % len(batches)]
        x, m, y = collate([ids[i] for i in idx], [labels[i] for i in idx], 0, "sft", multiple)
        w = torch.ones(len(idx))
        if step == args.warmup:
            _sync(device)
            t0 = time.perf_counter()
        _, n = train_step(
            model, [(x, m, y, w)], optim, sched, scaler, trainable, "sft", device, amp, fast
        )
        if step >= args.warmup:
            tokens += n
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del model, optim
    return {
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
        "tokens": tokens,
        "peak_mem_gib": peak,
        "fast_sft_logits": fast,
        "params": n_params,
    }


def run_trainer(cfg, data, args, device, amp):
    """Plain transformers.Trainer + peft with the same model, data, batch and precision."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from tune.modeling import collate

    model = build_model(cfg, device, amp or torch.float32, args.seed)
    ids, labels = data
    counted: list[int] = []

    class Records(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return i

    def collator(batch):
        x, m, y = collate([ids[i] for i in batch], [labels[i] for i in batch], 0, "sft")
        counted.append(int(m.sum()))
        return {"input_ids": x, "attention_mask": m, "labels": y}

    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kw):
            if state.global_step == args.warmup:
                _sync(device)
                marks["t0"] = time.perf_counter()
                marks["c0"] = len(counted) - 1  # this step's batch is already collated

        def on_train_end(self, targs, state, control, **kw):
            _sync(device)
            marks["t1"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch,
            max_steps=args.warmup + args.steps,
            learning_rate=1e-4,
            lr_scheduler_type="linear",
            bf16=amp is not None and amp == torch.bfloat16,
            optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch",
            max_grad_norm=1.0,
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            remove_unused_columns=False,
            seed=args.seed,
            use_cpu=device.type != "cuda",
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=Records(),
            data_collator=collator,
            callbacks=[Timer()],
        )
        with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its own summary
            trainer.train()
    seconds = marks["t1"] - marks["t0"]
    tokens = sum(counted[marks["c0"] : marks["c0"] + args.steps])
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del trainer, model
    return {
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
        "tokens": tokens,
        "peak_mem_gib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, nargs="+", default=[1024, 512])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" else None
    cfg = model_config(args.tiny)
    n_params = None
    results = []
    for seq_len in args.seq_len:
        data = make_data(
            args.batch * (args.warmup + args.steps) * 2, seq_len, cfg.vocab_size, args.seed
        )
        mean_len = sum(map(len, data[0])) / len(data[0])
        fpt = flops_per_token(cfg, mean_len / 2, ANSWER / mean_len)
        row = {
            "seq_len": seq_len,
            "mean_tokens_per_record": round(mean_len, 1),
            "flops_per_token": fpt,
        }
        for name, fn in (("trainer", run_trainer), ("recipe", run_recipe)):
            try:
                r = fn(cfg, data, args, device, amp)
            except Exception as err:  # keep the other side's numbers if one side fails
                row[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
                continue
            n_params = r.pop("params", n_params)
            r["mfu"] = r["tokens_per_s"] * fpt / PEAK_BF16 if device.type == "cuda" else None
            row[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if "error" not in row["recipe"] and "error" not in row["trainer"]:
            row["speedup_tokens_per_s"] = round(
                row["recipe"]["tokens_per_s"] / row["trainer"]["tokens_per_s"], 3
            )
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    out = {
        "benchmark": "tune_gpu",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (--tiny check)",
        "model": "Qwen2-0.5B architecture, random weights" if not args.tiny else "tiny Qwen2",
        "params": n_params,
        "lora": "r=16 alpha=32 on q,k,v,o",
        "batch": args.batch,
        "steps_timed": args.steps,
        "precision": "bf16 autocast, frozen base in bf16, LoRA in fp32" if amp else "fp32",
        "versions": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "peft": __import__("peft").__version__,
        },
        "results": results,
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
