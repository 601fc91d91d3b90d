"""GPU benchmark: the recipe's Trainer-free step vs plain Hugging Face ``Trainer`` + peft.

Same model (a Qwen2-0.5B architecture config with random bf16 weights: no hub), same LoRA
(r=16 on q,k,v,o), same SFT-shaped data (random prompts of 32..seq_len tokens, each followed by an
8-token answer; loss on the answer only), same batch size, bf16 autocast, fused AdamW, grad-norm
clip 1.0, in one process on the same GPU. Reports real (non-pad) tokens/s, MFU and peak memory for
each, and the ratio. Recipe variants (``--variants``): ``recipe`` (eager), ``recipe_compiled``
(``compile=on``, the GPU default ``auto``: ``torch.compile`` of each transformer block, see
tune/modeling.py), ``recipe_graphs`` (``compile=graphs``: lengths padded to buckets, batches to
full rows, the whole training forward compiled with mode="reduce-overhead" and replayed as CUDA
graphs, one compile with symbolic batch and lengths) and ``recipe_graphs_static`` (the same compiled
``dynamic=False``: one compile per shape); ``recipe_qlora`` / ``recipe_qlora_compiled``: the
eager / compiled-blocks recipe on a 4-bit NF4 base (QLoRA, bitsandbytes). Graphs variants
compile and record every shape the timed steps meet before the clock starts
(``warmup_seconds``, ``shapes``); ``fill`` is real tokens / padded positions (bucketing pads
more), ``cudagraph_skips`` how often inductor declined a CUDA graph (should be 0).

What differs is the recipe, not the settings: ``Trainer`` (defaults: random batches, full logits
over the 151k vocabulary at every position, fp32 upcast inside the loss) vs ``tune.train``'s step
(length-grouped batches padded to a multiple of 8; LM-head logits only where an answer token is
the target). MFU counts the useful model FLOPs per real token, the same for both: 4·N_body (LoRA:
forward + input gradients, no weight gradients for the frozen base) + causal attention
(≈ 6·layers·ctx·d per token, fwd+bwd) + the LM head for target tokens only; peak bf16 dense
989 TFLOP/s (H100/H200). ``mfu_6n`` is the same under the usual full-training convention
(6·N_body per token), which overstates what a LoRA step computes by 1.5×; both are printed.

    python benchmarks/tune_gpu.py [--configs 1024x8 512x8 1024x32] [--steps 30] [--tiny]
        [--variants trainer recipe recipe_compiled recipe_graphs] [--profile FILE
        --profile-variant recipe_graphs]
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
RECIPE_COMPILE = {
    "recipe": "off",
    "recipe_compiled": "on",
    "recipe_graphs": "graphs",
    "recipe_graphs_static": "graphs-static",
    "recipe_qlora": "off",  # 4-bit NF4 base (bitsandbytes), eager
    "recipe_qlora_compiled": "on",  # the same with the blocks compiled (the GPU default)
}
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


def build_model(cfg, device, dtype, seed: int, qlora: bool = False):
    """The random-weight model + LoRA. ``qlora``: the same weights saved and loaded back the
    recipe's way (``tune.modeling.qlora_kwargs``: NF4, double quantization, onto the device)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tune.modeling import add_lora, qlora_kwargs

    torch.manual_seed(seed)
    if qlora:
        with tempfile.TemporaryDirectory() as tmp:
            AutoModelForCausalLM.from_config(cfg, dtype=dtype).save_pretrained(tmp)
            model = AutoModelForCausalLM.from_pretrained(tmp, **qlora_kwargs(dtype, device))
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model = add_lora(model, "sft", 16, 32, 0.0, ("q_proj", "k_proj", "v_proj", "o_proj"))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model.to(device)


def flops_per_token(cfg, mean_ctx: float, target_share: float, per_param: int = 4) -> float:
    """Useful FLOPs per real token: ``per_param``·N_body (4 for LoRA; 6 is the full-training
    convention) + causal attention + the LM head where there is a target."""
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    kv = d * cfg.num_key_value_heads // cfg.num_attention_heads
    body = layers * (d * d * 2 + d * kv * 2 + 3 * d * cfg.intermediate_size)
    attention = 6 * layers * mean_ctx * d  # causal: half of 2·2·ctx·d fwd, ×3 with backward
    head = per_param * d * cfg.vocab_size * target_share
    return per_param * body + attention + head


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_recipe(cfg, data, args, device, amp, compile_mode="off", profile_to=None, qlora=False):
    """Our step (tune.train.train_step) with length-grouped batches; ``compile_mode`` as the
    recipe's ``tune.compile`` (``graphs``: bucketed static shapes, the whole training forward
    compiled with mode="reduce-overhead", CUDA graphs; ``graphs-static``: the same compiled
    ``dynamic=False``, one compile per shape). ``profile_to``: write a torch.profiler table of 3
    steps there."""
    import torch

    from tune.modeling import (
        StaticShapes,
        compile_blocks,
        compile_graphs,
        fast_sft_ok,
        loss_module,
        make_batch,
    )
    from tune.train import length_grouped_batches, linear_schedule, train_step

    model = build_model(cfg, device, amp or torch.float32, args.seed, qlora=qlora)
    compiled = compile_blocks(model, device, compile_mode)
    model.train()
    fast = fast_sft_ok(model)
    static = loss_fn = None
    if compile_mode.startswith("graphs"):
        static = StaticShapes.for_options(args.batch, args.seq_len)
        loss_fn = loss_module(model, "sft", fast)
        compile_graphs(loss_fn, device, static=compile_mode == "graphs-static")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")
    ids, labels = data
    batches = length_grouped_batches([len(x) for x in ids], args.batch, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    multiple = 8 if device.type == "cuda" else 1

    def step_batch(step):
        idx = batches[step % len(batches)]
        return make_batch(
            [ids[i] for i in idx],
            [labels[i] for i in idx],
            [1.0] * len(idx),
            0,
            "sft",
            multiple=multiple,
            static=static,
        )

    plan = [step_batch(step) for step in range(args.warmup + args.steps)]
    warm, timed = plan[: args.warmup], plan[args.warmup :]
    shapes = {(b.input_ids.shape, b.answer_pos.shape): b for b in timed}
    if static is not None:
        # every shape the timed steps meet is compiled and its CUDA graph recorded (2 calls:
        # warm-up run, then recording) before the clock starts
        warm = [b for b in shapes.values() for _ in range(2)] + warm
    sched = torch.optim.lr_scheduler.LambdaLR(optim, linear_schedule(len(warm) + len(timed), 0.0))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(batch):
        return train_step(
            model, [batch], optim, sched, scaler, trainable, "sft", device, amp, fast, loss_fn
        )

    skips_before = _cudagraph_skips()
    t_warm = time.perf_counter()
    for batch in warm:
        step(batch)
    _sync(device)
    t0 = time.perf_counter()
    tokens = 0
    for batch in timed:
        tokens += step(batch)[1]
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    skips = _cudagraph_skips() - skips_before
    if profile_to is not None:
        profile_steps(profile_to, lambda k: step(timed[k % len(timed)]), device)
    return {
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
        "tokens": tokens,
        # real tokens / padded positions of the timed batches (bucketing pads more)
        "fill": tokens / sum(b.input_ids.numel() for b in timed),
        "shapes": len(shapes),
        "warmup_steps": len(warm),
        "warmup_seconds": t0 - t_warm,  # includes compiling (and CUDA graph recording)
        "peak_mem_gib": peak,
        # graphs on CUDA: times inductor declined CUDA graphs (0 = every compiled graph replayed)
        "cudagraph_skips": skips if static is not None and device.type == "cuda" else None,
        "fast_sft_logits": fast,
        "compiled_blocks": compiled,
        "qlora": qlora,
        "params": n_params,
    }


def _cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"].get("cudagraph_skips", 0))


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


def profile_steps(path: Path, step, device) -> None:
    """torch.profiler over 3 steps: device time vs wall time and the top operators."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for k in range(3):
            step(k)
        _sync(device)
    wall = (time.perf_counter() - t0) / 3
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]  # ops would count twice
    device_us = sum(e.self_device_time_total for e in kernels) / 3
    launches = sum(e.count for e in events if e.key.startswith(("cudaLaunch", "cuLaunch"))) / 3
    head = (
        f"per step: wall {wall * 1e3:.1f} ms, device busy {device_us / 1e3:.1f} ms, "
        f"kernel launches {launches:.0f}, aten ops "
        f"{sum(e.count for e in events if e.key.startswith('aten::')) / 3:.0f}\n"
    )
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.write_text(head + events.table(sort_by=sort, row_limit=25))
    print(head, file=sys.stderr, flush=True)
    del torch


def parse_config(text: str) -> tuple[int, int]:
    seq_len, batch = text.lower().split("x")
    return int(seq_len), int(batch)


def measure(fn, fpt, fpt6, device):
    import torch

    try:
        r = fn()
    except Exception as err:  # keep the other runs' numbers if one fails (e.g. out of memory)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"error": f"{type(err).__name__}: {err}"[:500]}
    if device.type == "cuda":
        r["mfu"] = r["tokens_per_s"] * fpt / PEAK_BF16
        r["mfu_6n"] = r["tokens_per_s"] * fpt6 / PEAK_BF16
        torch.cuda.empty_cache()
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}


def summary(args, device, amp, results) -> dict:
    import torch

    return {
        "benchmark": "tune_gpu",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (--tiny check)",
        "model": "Qwen2-0.5B architecture, random weights" if not args.tiny else "tiny Qwen2",
        "params": next(
            (r[v]["params"] for r in results for v in RECIPE_COMPILE if "params" in r.get(v, {})),
            None,
        ),
        "lora": "r=16 alpha=32 on q,k,v,o",
        "steps_timed": args.steps,
        "precision": "bf16 autocast, frozen base in bf16, LoRA in fp32" if amp else "fp32",
        "versions": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "peft": __import__("peft").__version__,
        },
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--configs", nargs="+", default=["1024x8", "512x8", "1024x32"], help="SEQxBATCH"
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--variants", nargs="+", default=["trainer", "recipe", "recipe_compiled"])
    parser.add_argument("--profile", type=Path, default=None, help="profile table of 3 steps")
    parser.add_argument("--profile-variant", default="recipe", choices=sorted(RECIPE_COMPILE))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" else None
    cfg = model_config(args.tiny)
    results = []
    for k, text in enumerate(args.configs):
        args.seq_len, args.batch = parse_config(text)
        seq_len = args.seq_len
        data = make_data(
            args.batch * (args.warmup + args.steps) * 2, seq_len, cfg.vocab_size, args.seed
        )
        mean_len = sum(map(len, data[0])) / len(data[0])
        fpt = flops_per_token(cfg, mean_len / 2, ANSWER / mean_len)
        fpt6 = flops_per_token(cfg, mean_len / 2, ANSWER / mean_len, per_param=6)
        row = {
            "seq_len": seq_len,
            "batch": args.batch,
            "mean_tokens_per_record": round(mean_len, 1),
            "flops_per_token": fpt,
        }
        for name in args.variants:
            profile = args.profile if k == 0 and name == args.profile_variant else None
            row[name] = measure(
                lambda name=name, data=data, profile=profile: (
                    run_trainer(cfg, data, args, device, amp)
                    if name == "trainer"
                    else run_recipe(
                        cfg,
                        data,
                        args,
                        device,
                        amp,
                        RECIPE_COMPILE[name],
                        profile,
                        qlora="qlora" in name,
                    )
                ),
                fpt,
                fpt6,
                device,
            )
            done = {"variant": name, "seq_len": seq_len, "batch": args.batch, **row[name]}
            print(json.dumps(done), file=sys.stderr, flush=True)
        trainer = row.get("trainer", {})
        for name in RECIPE_COMPILE:
            ours = row.get(name, {})
            if "tokens_per_s" in ours and "tokens_per_s" in trainer:
                row[f"speedup_{name}"] = round(ours["tokens_per_s"] / trainer["tokens_per_s"], 3)
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.out:  # the rows so far, in case a time limit cuts the run
            args.out.parent.mkdir(parents=True, exist_ok=True)
            partial = {**summary(args, device, amp, results), "complete": False}
            args.out.write_text(json.dumps(partial, indent=2) + "\n", encoding="utf-8")
    out = summary(args, device, amp, results)
    emit(out, args.out)


if __name__ == "__main__":
    main()
