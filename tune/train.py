"""The training recipe, top to bottom: setup → train → evaluate → save.

One readable loop (no Trainer): seeded; bf16/fp16 autocast on GPU; dynamic padding with
length-grouped batches; gradient accumulation; optional gradient checkpointing; early stopping on
validation macro-F1; a checkpoint every ``save_steps`` optimizer steps in ``DIR/tune/.work/<run>/``
so ``resume=True`` continues after a kill and ends with the same result; DDP when started under
``torchrun``/``accelerate launch`` (rank 0 evaluates and writes). Outputs go to ``DIR/tune/<run>/``
atomically (see ``_save_outputs``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from thresher.errors import ConfigError, ThresherError
from thresher.names import contained, validate_name
from thresher.project import Project, file_sha256, fingerprint, stage_output
from tune.data import TuneData, build_dataset
from tune.distributed import (
    Dist,
    barrier,
    init_distributed,
    load_optimizer_state,
    load_trainable,
    optimizer_state,
    shard_model,
    trainable_state,
    wrap_ddp,
)
from tune.evaluate import classification_metrics, error_table, slice_metrics
from tune.modeling import (
    StaticShapes,
    adapter_weights,
    add_lora,
    autocast,
    compile_blocks,
    compile_graphs,
    encode_classify,
    encode_sft,
    fast_sft_ok,
    forward_loss,
    init_from_adapter,
    is_compile_error,
    is_compiled,
    load_base,
    load_tokenizer,
    loss_module,
    make_batch,
    repeated_blocks,
    resolve_base,
    score_texts,
    uncompile,
)
from tune.options import TuneOptions
from tune.runtime import amp_dtype, training_device

log = logging.getLogger(__name__)

WORK = ".work"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # 2: tensors + JSON text, read with weights_only=True
LOSS_READ_EVERY = 10  # optimizer steps between reads of the loss (each read waits for the GPU)


class Interrupted(Exception):
    """Raised by the ``stop_after`` test hook to simulate a kill between checkpoints."""


@dataclass
class State:
    """Everything a resumed run needs besides the weights and optimizer."""

    step: int = 0
    epoch: int = 0
    best_f1: float = -1.0
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False
    tokens: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)


# ---- setup ------------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, group_by_length: bool = True
) -> list[list[int]]:
    """Shuffled batches of indices; with ``group_by_length`` each batch holds similar lengths
    (sorted inside shuffled mega-batches of 50 batches), so dynamic padding wastes little."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        mega = batch_size * 50
        order = [
            i
            for s in range(0, len(order), mega)
            for i in sorted(order[s : s + mega], key=lambda j: -lengths[j])
        ]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def _rank_batches(lengths, opts: TuneOptions, epoch: int, d: Dist) -> list[list[int]]:
    """This rank's micro-batches for ``epoch`` (same global order on every rank)."""
    batches = length_grouped_batches(
        lengths, opts.batch_size, opts.seed + epoch, opts.group_by_length
    )
    n = max(1, len(batches) // d.world) if len(batches) >= d.world else 1
    mine = batches[d.rank :: d.world][:n]
    return mine or batches[:1]


# ---- the recipe -------------------------------------------------------------------------------


def train(
    project: Project | str | Path,
    options: TuneOptions | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: Callable[[dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    data: TuneData | None = None,
    runs_dir: Path | None = None,
) -> Path:
    """Train one run and return its folder ``DIR/tune/<run>/``.

    ``resume`` continues the named (or most recent unfinished) run from its last checkpoint.
    A finished run with the same data and options is not redone unless ``force``.
    ``progress`` gets ``{step, total, loss, tokens_per_s}`` after each optimizer step.
    ``stop_after`` (tests) raises ``Interrupted`` after that many optimizer steps.
    ``data`` replaces the project's train/val/test split and ``runs_dir`` the ``DIR/tune`` folder
    (cross-fitting, ``tune/crossfit.py``: one run per fold on its own split)."""
    import torch

    project = project if isinstance(project, Project) else Project.at(project)
    opts = options or TuneOptions()
    if opts.run is not None:  # it names DIR/tune/<run>/, which a rerun replaces
        validate_name(opts.run, "--run")
    tune_dir = Path(runs_dir) if runs_dir is not None else project.root / "tune"
    d = init_distributed(opts.strategy)
    if d.world > 1 and opts.run is None:  # every rank must agree on the run name
        import torch.distributed as dist

        names = [time.strftime("run-%Y%m%d-%H%M%S")]
        dist.broadcast_object_list(names, 0)
        opts = replace(opts, run=names[0])
    work, opts = _work_dir(tune_dir, opts, resume)
    _seed_everything(opts.seed)

    # -- setup: data (rank 0 first: it may create the project's split), model, optimizer
    if data is None:
        data = _rank0_first(d, lambda: _dataset(project, opts))
    ref = resolve_base(opts.base, opts.task)
    run_fp = _fingerprint(opts, data, ref)
    final = tune_dir / str(opts.run)
    if not resume and not force:
        done = _finished_run(
            tune_dir, str(opts.run), run_fp, named=options is not None and bool(options.run)
        )
        if done is not None:
            log.info("%s is up to date (same data and options); force redoes it", done)
            if d.main:
                shutil.rmtree(work, ignore_errors=True)
            return done
    device = training_device(d)
    amp = amp_dtype(opts.precision, device)
    tok = load_tokenizer(ref)
    label_map = data.label_map()
    model = _build_model(ref, opts, data.labels, tok, device, amp, d)
    train_set = _encode(tok, data.train, label_map, opts)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(
        trainable, lr=opts.lr, weight_decay=opts.weight_decay, fused=device.type == "cuda"
    )
    steps_per_epoch = math.ceil(
        len(_rank_batches(train_set.lengths(), opts, 0, d)) / opts.grad_accum
    )
    total = planned_steps(opts, steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, _linear_schedule(total, opts.warmup_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    ddp = wrap_ddp(model, d, device)
    state = State()
    best: dict[str, Any] | None = None
    checkpoint = _checkpoint_path(work, d)
    if resume and checkpoint.exists():
        state, best = _load_checkpoint(checkpoint, model, optim, sched, scaler, d)
        log.info("resumed %s at step %d/%d", opts.run, state.step, total)
    eval_every = opts.eval_steps or steps_per_epoch
    fast_sft = opts.task == "sft" and d.world == 1 and fast_sft_ok(model)
    # graphs mode: static shapes and the whole training forward compiled (CUDA graphs on a GPU);
    # eval and predict keep using the uncompiled ``model``
    static = loss_fn = None
    if opts.compile == "graphs" and d.world == 1:
        static = StaticShapes.for_options(opts.batch_size, opts.max_length)
        loss_fn = loss_module(model, opts.task, fast_sft)
        if compile_graphs(loss_fn, device):
            log.info("graphs mode: lengths padded to %s (CUDA graphs on a GPU)", static.buckets)

    # -- train
    model.train()  # from_pretrained returns eval mode (dropout off)
    while state.step < total and not state.stopped_early:
        batches = _rank_batches(train_set.lengths(), opts, state.epoch, d)
        done_in_epoch = state.step - _steps_before_epoch(state, steps_per_epoch)
        for start in range(done_in_epoch * opts.grad_accum, len(batches), opts.grad_accum):
            if state.step >= total:
                break
            t0 = time.perf_counter()
            micro = [
                make_batch(
                    [train_set.input_ids[i] for i in idx],
                    [train_set.labels[i] for i in idx],
                    [train_set.weights[i] for i in idx],
                    tok.pad_token_id,
                    opts.task,
                    multiple=8 if device.type == "cuda" else 1,
                    static=static,
                )
                for idx in batches[start : start + opts.grad_accum]
            ]
            loss_sum, tokens = _eager_on_compile_error(
                loss_fn if loss_fn is not None else model,
                lambda micro=micro: train_step(
                    ddp,
                    micro,
                    optim,
                    sched,
                    scaler,
                    trainable,
                    opts.task,
                    device,
                    amp,
                    fast_sft,
                    loss_fn=loss_fn,
                ),
                before_retry=lambda: optim.zero_grad(set_to_none=True),
            )
            state.step += 1
            state.tokens += tokens * d.world
            state.train_seconds += time.perf_counter() - t0
            state.history.append(
                {"step": state.step, "loss": loss_sum, "lr": sched.get_last_lr()[0]}
            )
            evaluate = state.step % eval_every == 0 or state.step == total
            save = state.step % opts.save_steps == 0 and d.evaluates
            if evaluate or save or state.step % LOSS_READ_EVERY == 0 or stop_after is not None:
                _read_losses(state)
            if progress is not None and d.main:
                progress(
                    {
                        "step": state.step,
                        "total": total,
                        "loss": _last_read_loss(state),
                        "tokens_per_s": state.tokens / max(state.train_seconds, 1e-9),
                    }
                )
            if evaluate:
                best = _evaluate_and_maybe_stop(model, tok, data, opts, device, amp, state, best, d)
            if save:
                _save_checkpoint(checkpoint, model, optim, sched, scaler, state, best, d)
            if stop_after is not None and state.step >= stop_after:
                raise Interrupted(f"stopped after step {state.step}")
            if state.stopped_early:
                break
        else:
            state.epoch += 1
            continue
        if state.step >= total or state.stopped_early:
            break
    if not state.evals or state.evals[-1]["step"] != state.step:
        best = _evaluate_and_maybe_stop(model, tok, data, opts, device, amp, state, best, d)

    _read_losses(state)
    # -- evaluate (best state) and save
    if best is not None:
        load_trainable(model, best["weights"])
    if d.evaluates:
        _save_outputs(
            project,
            final,
            run_fp,
            model,
            tok,
            data,
            opts,
            ref,
            device,
            amp,
            state,
            steps_per_epoch,
            d,
        )
    barrier(d)
    if d.main:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _dataset(project: Project, opts: TuneOptions) -> TuneData:
    """Labelled records (classify, or sft with the label as the answer), or instruction/response
    pairs when ``data.response_column`` is set (sft only)."""
    if opts.data.response_column is None:
        return build_dataset(project, opts.data)
    if opts.task != "sft":
        raise ThresherError(
            "instruction/response pairs (--response-col) train a causal LM: add --task sft"
        )
    from tune.pairs import build_pairs_dataset

    return build_pairs_dataset(project, opts.data)


def _eager_on_compile_error(module, fn: Callable[[], Any], before_retry=None) -> Any:
    """``fn()``; if torch.compile fails inside it, undo every compilation in ``module`` (compiled
    blocks, or the graphs-mode loss module) and run it eagerly."""
    try:
        return fn()
    except Exception as err:
        if not (is_compile_error(err) and uncompile(module)):
            raise
        log.warning("torch.compile failed (%s); continuing uncompiled", str(err)[:200])
        if before_retry is not None:
            before_retry()
        return fn()


def _read_losses(state: State) -> None:
    """Turn the device-side losses in ``state.history`` into floats (waits for the GPU)."""
    for entry in reversed(state.history):
        if isinstance(entry["loss"], float):
            break
        entry["loss"] = float(entry["loss"])


def _last_read_loss(state: State) -> float:
    for entry in reversed(state.history):
        if isinstance(entry["loss"], float):
            return entry["loss"]
    return float("nan")


def _rank0_first(d: Dist, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0, then on the other ranks (for steps that write shared files)."""
    if d.world == 1:
        return fn()
    import torch.distributed as dist

    if d.main:
        result = fn()
        dist.barrier()
    else:
        dist.barrier()
        result = fn()
    return result


def train_step(
    model, micro, optim, sched, scaler, trainable, task, device, amp, fast_sft=False, loss_fn=None
):
    """One optimizer step over ``micro`` = [``Batch``, ...] of CPU tensors (gradient
    accumulation; DDP syncs on the last micro-batch only). Returns (loss, real tokens) with the
    loss still on the device: reading it waits for the GPU, so callers read it only now and then
    and the host can queue the next step meanwhile. Nothing in the step waits for the device (no
    ``.item()``, no boolean indexing: the answer positions come as a CPU-built index).
    ``loss_fn``: the graphs-mode ``loss_module`` (compiled; CUDA graphs on a GPU) instead of
    ``forward_loss(model, ...)``. The benchmark calls this too, so what it measures is the
    recipe's own step."""
    import torch

    graphs = loss_fn is not None and is_compiled(loss_fn) and device.type == "cuda"
    if graphs:
        # CUDA graph outputs are overwritten by the next replay: keep the gradients in buffers
        # of their own (accumulated into in place) rather than let autograd adopt an output
        for p in trainable:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    loss_sum = torch.zeros((), device=device)
    tokens = 0
    pin = device.type == "cuda"
    for k, batch in enumerate(micro):
        tokens += batch.tokens
        batch = batch.to(device, pin=pin)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with _no_sync(model, k < len(micro) - 1), autocast(device, amp):
            loss = (
                loss_fn.loss(batch)
                if loss_fn is not None
                else forward_loss(model, batch, task, fast_sft)
            ) / len(micro)
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    scaler.unscale_(optim)
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    scaler.step(optim)
    scaler.update()
    optim.zero_grad(set_to_none=not graphs)
    sched.step()
    return loss_sum, tokens


def _work_dir(tune_dir: Path, opts: TuneOptions, resume: bool) -> tuple[Path, TuneOptions]:
    """The run's checkpoint folder; on resume the saved options win (same recipe, same result)."""
    root = tune_dir / WORK
    if resume:
        if opts.run is None:
            unfinished = sorted(root.glob("*/options.json"), key=lambda p: p.stat().st_mtime)
            if not unfinished:
                raise ThresherError(f"nothing to resume under {root}; start a run without --resume")
            run = unfinished[-1].parent.name
        else:
            run = opts.run
        work = contained(root, validate_name(run, "--run"), "--run")
        saved = work / "options.json"
        if saved.exists():
            opts = TuneOptions.from_dict(json.loads(saved.read_text()))
        return work, replace(opts, run=run)
    run = opts.run or time.strftime("run-%Y%m%d-%H%M%S")
    opts = replace(opts, run=run)
    work = contained(root, validate_name(run, "--run"), "--run")  # removed and rewritten below
    if int(os.environ.get("RANK", "0")) == 0:  # one writer under DDP
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        (work / "options.json").write_text(json.dumps(opts.to_dict(), indent=2))
    return work, opts


def _finished_run(tune_dir: Path, run: str, run_fp: str, named: bool) -> Path | None:
    """A finished run with this fingerprint: the named one, or (no name given) any."""
    tune_project = Project(tune_dir)
    if tune_project.is_fresh(run, run_fp):
        return tune_dir / run
    if named:
        return None
    for manifest in sorted(tune_dir.glob("*/manifest.json")):
        if not manifest.parent.name.startswith(".") and tune_project.is_fresh(
            manifest.parent.name, run_fp
        ):
            return manifest.parent
    return None


def _fingerprint(opts: TuneOptions, data: TuneData, ref) -> str:
    def rows(frame):
        return list(zip(frame["id"], frame["label"], frame["weight"], strict=True))

    return fingerprint(
        {
            "options": {**opts.to_dict(), "run": None},
            "base": ref.path,
            "init_adapter": file_sha256(adapter_weights(opts.init_adapter))
            if opts.init_adapter
            else None,
            "train": rows(data.train),
            "val": rows(data.val),
            "test": rows(data.test),
        }
    )


def _build_model(ref, opts: TuneOptions, labels, tok, device, amp, d: Dist):
    """Base (frozen; bf16/fp16 on GPU) + LoRA; trainable parameters are kept in fp32. Under FSDP
    the base stays fp32 too (sharded; gathered in ``amp`` precision for compute), uncompiled."""
    import torch

    base_dtype = amp if device.type == "cuda" and not d.fsdp else None
    if opts.qlora and d.fsdp:
        raise ConfigError("--qlora cannot be sharded with --strategy fsdp; use --strategy ddp")
    model = load_base(
        ref, opts.task, labels, tok, dtype=base_dtype, qlora=opts.qlora, device=device
    )
    if opts.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = add_lora(
        model, opts.task, opts.lora_r, opts.lora_alpha, opts.lora_dropout, opts.target_modules
    )
    if opts.init_adapter:
        label2id = {name: i for i, name in enumerate(labels)} if opts.task == "classify" else None
        init_from_adapter(model, opts.init_adapter, label2id)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("base %s: %d trainable parameters", ref.name, n_train)
    model = model.to(device)
    if d.fsdp:
        shard_model(model, repeated_blocks(model), device, amp)
        return model
    mode = opts.compile
    if mode == "graphs" and d.world > 1:
        log.warning("compile graphs runs in one process only; compiling the blocks instead")
        mode = "on"
    compiled = compile_blocks(model, device, mode)
    if compiled:
        log.info("compiling %d transformer blocks (the first steps wait for it)", compiled)
    del torch
    return model


def _encode(tok, frame, label_map, opts: TuneOptions):
    texts, labels, weights = list(frame["text"]), list(frame["label"]), list(frame["weight"])
    if opts.task == "classify":
        return encode_classify(tok, texts, [label_map[x] for x in labels], weights, opts.max_length)
    return encode_sft(tok, texts, labels, weights, opts.prompt_template, opts.max_length)


def planned_steps(opts: TuneOptions, steps_per_epoch: int) -> int:
    """Optimizer steps of a run: ``max_steps`` when set, else ``epochs`` worth of steps but at
    least ``min_steps`` (small sets under-train in a few epochs); early stopping may end sooner."""
    if opts.max_steps > 0:
        return opts.max_steps
    return max(1, math.ceil(opts.epochs * steps_per_epoch), opts.min_steps)


def _linear_schedule(total: int, warmup_ratio: float):
    warmup = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _steps_before_epoch(state: State, steps_per_epoch: int) -> int:
    return state.epoch * steps_per_epoch


class _no_sync:
    """DDP's ``no_sync`` for accumulation micro-steps (a no-op without DDP)."""

    def __init__(self, model, active: bool) -> None:
        self.ctx = model.no_sync() if active and hasattr(model, "no_sync") else None

    def __enter__(self):
        return self.ctx.__enter__() if self.ctx is not None else None

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx is not None else False


# ---- evaluation during training ---------------------------------------------------------------


def _predict(model, tok, frame, data: TuneData, opts: TuneOptions, device, amp):
    return _eager_on_compile_error(
        model,
        lambda: score_texts(
            model,
            tok,
            list(frame["text"]),
            task=opts.task,
            labels=data.labels,
            template=opts.prompt_template,
            max_length=opts.max_length,
            batch_size=opts.eval_batch_size,
            device=device,
            amp_dtype=amp,
        ),
    )


def _val_key(data: TuneData) -> str:
    return "val_loss" if data.pairs else "val_macro_f1"


def _pairs_scores(model, tok, frame, opts: TuneOptions, device, amp, keep: bool = False):
    """Answer loss metrics of ``frame``'s pairs (+ the per-pair ``nll``/``tokens`` if ``keep``)."""
    from tune.pairs import answer_nll, pairs_metrics

    nll, tokens = _eager_on_compile_error(
        model,
        lambda: answer_nll(
            model,
            tok,
            list(frame["text"]),
            list(frame["label"]),
            template=opts.prompt_template,
            max_length=opts.max_length,
            batch_size=opts.eval_batch_size,
            device=device,
            amp_dtype=amp,
        ),
    )
    out = pairs_metrics(nll, tokens)
    return {**out, "nll": nll, "tokens": tokens} if keep else out


def _evaluate_and_maybe_stop(model, tok, data, opts, device, amp, state: State, best, d: Dist):
    """Validation score (macro-F1, or minus the answer loss for pairs) on rank 0 (on every rank
    under FSDP, whose forward needs them all); keep the best weights; stop after ``patience``
    evaluations without gain. Rank 0 decides and tells the others."""
    import torch

    flags = torch.zeros(2)  # improved, stop
    score = float("nan")
    if d.evaluates and len(data.val):
        if data.pairs:  # minus the validation loss: higher is better, like macro-F1
            score = -_pairs_scores(model, tok, data.val, opts, device, amp)["loss"]
        else:
            probs = _predict(model, tok, data.val, data, opts, device, amp)
            gold = data.val["label"].map(data.label_map()).to_numpy()
            score = classification_metrics(gold, probs, data.labels)["macro_f1"]
        if d.main:
            improved = state.best_step == 0 or score > state.best_f1
            flags[0] = float(improved)
            flags[1] = float(not improved and state.bad_evals + 1 >= opts.patience)
    if d.world > 1:
        import torch.distributed as dist

        dist.broadcast(flags, 0)
    # every rank records the eval step, so all agree on whether a final eval is due
    value = -score if data.pairs else score
    state.evals.append({"step": state.step, _val_key(data): value if d.main else float("nan")})
    if d.main and len(data.val):
        if flags[0]:
            state.best_f1, state.best_step, state.bad_evals = score, state.step, 0
        else:
            state.bad_evals += 1
    if flags[0] and d.evaluates:  # gathering the shards is collective under FSDP
        best = {"weights": trainable_state(model), "step": state.step}
    state.stopped_early = bool(flags[1])
    model.train()
    return best


# ---- checkpoints ------------------------------------------------------------------------------


def _checkpoint_path(work: Path, d: Dist) -> Path:
    """One checkpoint per run; under FSDP one per rank (each holds its shard)."""
    return work / (f"checkpoint-rank{d.rank}-of-{d.world}.pt" if d.fsdp else CHECKPOINT)


def _save_checkpoint(path: Path, model, optim, sched, scaler, state: State, best, d: Dist) -> None:
    """Tensors and plain containers only, so ``read_checkpoint`` loads it with
    ``weights_only=True``; the step counters and the Python/numpy RNG states go as JSON text."""
    import numpy as np
    import torch

    numpy_rng = np.random.get_state()
    meta = {
        "state": state.__dict__,
        "rng_python": random.getstate(),
        "rng_numpy": [numpy_rng[0], numpy_rng[1].tolist(), *numpy_rng[2:]],
    }
    blob = {
        "format": CHECKPOINT_FORMAT,
        "weights": trainable_state(model, full=not d.fsdp),
        "optim": optimizer_state(optim),
        "sched": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "best": best,
        "meta": json.dumps(meta, default=float),
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by ``_save_checkpoint``, loaded with ``weights_only=True``: a file
    that would need code to load (any other pickle) is refused with a one-line error, never run.
    ``meta`` comes back decoded (``state``, ``rng_python``, ``rng_numpy``)."""
    import pickle

    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ThresherError(
            f"{path} is not a checkpoint thresher can load safely (only tensors and plain data "
            f"are read, never code); remove {path.parent} and train without --resume"
        ) from err
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ThresherError(
            f"{path} was written by another thresher version; remove {path.parent} and train "
            "without --resume"
        )
    return {**blob, "meta": json.loads(blob["meta"])}


def _load_checkpoint(path: Path, model, optim, sched, scaler, d: Dist):
    import numpy as np
    import torch

    blob = read_checkpoint(path)
    load_trainable(model, blob["weights"], full=not d.fsdp)
    load_optimizer_state(optim, blob["optim"])
    sched.load_state_dict(blob["sched"])
    scaler.load_state_dict(blob["scaler"])
    meta = blob["meta"]
    version, internal, gauss = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(meta["rng_numpy"]))
    torch.set_rng_state(blob["rng_torch"])
    if blob["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng_cuda"])
    return State(**meta["state"]), blob["best"]


# ---- outputs ----------------------------------------------------------------------------------


def _save_outputs(
    project,
    final: Path,
    run_fp,
    model,
    tok,
    data: TuneData,
    opts,
    ref,
    device,
    amp,
    state: State,
    steps_per_epoch: int,
    d: Dist,
) -> None:
    """DIR/tune/<run>/: adapter/ (+ tokenizer, label map), label_map.json, config.json,
    metrics.json, predictions.parquet, errors.parquet, train_data.parquet, history.json,
    loss_curve.png, manifest.json."""
    import numpy as np
    import pandas as pd

    tune_project = Project(final.parent)
    label_map = {"labels": data.labels, "label2id": data.label_map()}
    # Under FSDP every rank runs this far (gathering and the forward passes are collective).
    adapter_state = trainable_state(model) if d.fsdp else None
    metrics: dict[str, Any] = {}
    frames = []
    for split in ("val", "test") if data.pairs else ():
        frame = getattr(data, split)
        scored = _pairs_scores(model, tok, frame, opts, device, amp, keep=True)
        metrics[split] = {k: v for k, v in scored.items() if k not in ("nll", "tokens")}
        frames.append(
            frame[["id", "text", "label", "slice"]]
            .rename(columns={"label": "gold"})
            .assign(split=split, nll=scored["nll"], tokens=scored["tokens"])
        )
    for split in () if data.pairs else ("val", "test"):
        frame = getattr(data, split)
        probs = _predict(model, tok, frame, data, opts, device, amp)
        gold = frame["label"].map(data.label_map()).to_numpy()
        m = classification_metrics(gold, probs, data.labels) if len(frame) else {"n": 0}
        if len(frame):
            m["slices"] = slice_metrics(gold, probs, list(frame["slice"]), data.labels)
        metrics[split] = m
        frames.append(
            pd.DataFrame(
                {
                    "id": frame["id"],
                    "text": frame["text"],
                    "split": split,
                    "gold": frame["label"],
                    "predicted": [data.labels[i] for i in probs.argmax(axis=1)]
                    if len(frame)
                    else [],
                    "prob": probs.max(axis=1) if len(frame) else [],
                    "probs": list(probs.astype("float32")),
                    "slice": frame["slice"],
                }
            )
        )
    if not d.main:
        return
    predictions = pd.concat(frames, ignore_index=True)
    epochs_done = state.step / max(1, steps_per_epoch)
    metrics["train"] = {
        "steps": state.step,
        "epochs": round(epochs_done, 4),
        "best_step": state.best_step,
        **(
            {"best_val_loss": -state.best_f1}
            if data.pairs
            else {"best_val_macro_f1": state.best_f1}
        ),
        "stopped_early": state.stopped_early,
        "seconds": round(state.train_seconds, 3),
        "seconds_per_epoch": round(state.train_seconds / max(epochs_done, 1e-9), 3),
        "tokens": state.tokens,
        "tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 1),
        "world_size": d.world,
        "device": str(device),
        "precision": str(amp).replace("torch.", "") if amp is not None else "fp32",
    }
    metrics["data"] = data.counts
    config = {
        "run": opts.run,
        "task": opts.task,
        "base": {"name": ref.name, "path": ref.path, "gguf_file": ref.gguf_file},
        "labels": data.labels,
        "source_stage": data.source_stage,
        "options": opts.to_dict(),
    }
    with stage_output(
        tune_project,
        str(opts.run),
        run_fp,
        config=config,
        packages=("torch", "transformers", "peft"),
    ) as out:
        adapter = out.path("adapter")
        model.save_pretrained(adapter, state_dict=adapter_state)
        tok.save_pretrained(adapter)
        (adapter / "label_map.json").write_text(json.dumps(label_map, indent=2))
        (out.path("label_map.json")).write_text(json.dumps(label_map, indent=2))
        (out.path("config.json")).write_text(json.dumps(config, indent=2, default=str))
        (out.path("metrics.json")).write_text(json.dumps(metrics, indent=2, default=float))
        predictions.to_parquet(out.path("predictions.parquet"), index=False)
        if data.pairs:
            from tune.pairs import pairs_error_table

            errors = pairs_error_table(
                predictions.rename(columns={"gold": "label"}),
                predictions["nll"].to_numpy(),
                predictions["tokens"].to_numpy(),
            )
        else:
            errors = error_table(
                predictions.rename(columns={"gold": "label"}),
                np.stack(predictions["probs"].to_numpy()) if len(predictions) else np.zeros((0, 1)),
                data.labels,
                opts.low_confidence,
            )
        errors.to_parquet(out.path("errors.parquet"), index=False)
        data.train[["id", "text", "label", "weight"]].to_parquet(
            out.path("train_data.parquet"), index=False
        )
        (out.path("history.json")).write_text(
            json.dumps({"loss": state.history, "evals": state.evals}, indent=2)
        )
        _loss_curve(state, out.path("loss_curve.png"))
        out.counts = {**data.counts, "errors": len(errors)}
        key = "loss" if data.pairs else "macro_f1"
        out.extra["metrics"] = {k: metrics[k].get(key) for k in ("val", "test")}
    log.info("wrote %s (test %s %s)", final, key, metrics["test"].get(key))


def _loss_curve(state: State, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in state.history]
    ax.plot(steps, [h["loss"] for h in state.history], lw=1, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if state.evals:
        key = "val_loss" if "val_loss" in state.evals[0] else "val_macro_f1"
        name = key.replace("_", " ").replace("macro f1", "macro-F1")
        ax2 = ax.twinx()
        ax2.plot(
            [e["step"] for e in state.evals],
            [e[key] for e in state.evals],
            "o-",
            color="tab:orange",
            label=name,
        )
        ax2.set_ylabel(name)
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
