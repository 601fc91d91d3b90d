"""The training recipe, top to bottom: setup → train → evaluate → save.

One readable loop (no Trainer), held by ``TuneRecipe``: seeded; bf16/fp16 autocast on GPU; dynamic
padding with length-grouped batches; gradient accumulation; optional gradient checkpointing; early
stopping on validation macro-F1; a checkpoint every ``save_steps`` optimizer steps in
``DIR/tune/.work/<run>/`` (``tune/checkpoint.py``) so ``resume=True`` continues after a kill and
ends with the same result; DDP when started under ``torchrun``/``accelerate launch`` (rank 0
evaluates and writes). Outputs go to ``DIR/tune/<run>/`` atomically (see ``TuneRecipe.save``).
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
from dataclasses import replace
from pathlib import Path
from typing import Any

from thresher.assets import ModelRef
from thresher.errors import ConfigError, ThresherError
from thresher.names import contained, validate_name
from thresher.project import Project, file_sha256, fingerprint, stage_output
from tune.checkpoint import State, checkpoint_path, read_checkpoint, restore_rng, save_checkpoint
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
    Encoded,
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
from tune.pairs import answer_nll, build_pairs_dataset, pairs_error_table, pairs_metrics
from tune.registry import RESERVED_RUN_NAMES
from tune.runtime import amp_dtype, training_device

log = logging.getLogger(__name__)

WORK = ".work"
LOSS_READ_EVERY = 10  # optimizer steps between reads of the loss (each read waits for the GPU)


class Interrupted(Exception):
    """Raised by the ``stop_after`` test hook to simulate a kill between checkpoints."""


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
    recipe = TuneRecipe(
        project,
        options,
        resume=resume,
        force=force,
        progress=progress,
        stop_after=stop_after,
        data=data,
        runs_dir=runs_dir,
    )
    finished = recipe.setup()
    if finished is not None:
        return finished
    recipe.train()
    return recipe.save()


# ---- the recipe -------------------------------------------------------------------------------


class TuneRecipe:
    """One training run: ``setup()`` → ``train()`` (which calls ``evaluate()``) → ``save()``.

    The run's state lives here, set by ``setup``: the options (config as data: ``TuneOptions``),
    the project and data, the process group, device and autocast dtype, the model, tokenizer,
    optimizer, scheduler and grad scaler, the step ``state`` and the ``best`` evaluation's
    weights. ``train(...)`` above runs it; the arguments mean the same there."""

    # where the run goes and what it learns from (setup)
    dist: Dist
    work: Path  # DIR/tune/.work/<run>/: options.json and the checkpoint
    final: Path  # DIR/tune/<run>/
    ref: ModelRef
    run_fp: str
    # what trains, and how (setup)
    device: Any
    amp: Any  # autocast dtype, None = fp32
    tok: Any
    model: Any  # the peft model; ``ddp`` wraps it under DDP, ``loss_fn`` in graphs mode
    ddp: Any
    train_set: Encoded
    trainable: list[Any]
    optim: Any
    sched: Any
    scaler: Any
    steps_per_epoch: int
    total: int  # planned optimizer steps
    eval_every: int
    checkpoint: Path
    fast_sft: bool
    static: StaticShapes | None
    loss_fn: Any
    # where training stands (setup; a resumed run reads them from the checkpoint)
    state: State
    best: dict[str, Any] | None  # {"weights", "step"} of the best evaluation so far

    def __init__(
        self,
        project: Project | str | Path,
        options: TuneOptions | None = None,
        *,
        resume: bool = False,
        force: bool = False,
        progress: Callable[[dict[str, float]], None] | None = None,
        stop_after: int | None = None,
        data: TuneData | None = None,
        runs_dir: Path | None = None,
    ) -> None:
        self.project = project if isinstance(project, Project) else Project.at(project)
        self.opts = options or TuneOptions()
        self.named = options is not None and bool(options.run)  # the caller named the run
        self.resume, self.force = resume, force
        self.progress, self.stop_after = progress, stop_after
        self.data = data
        self.tune_dir = Path(runs_dir) if runs_dir is not None else self.project.root / "tune"

    # ---- setup --------------------------------------------------------------------------------

    def setup(self) -> Path | None:
        """Run folder, data, model, optimizer and schedule; on resume, the last checkpoint.
        Returns the folder of a finished run with the same data and options (nothing to do,
        unless ``force`` or ``resume``), else None."""
        self._setup_run()
        self._setup_data()
        if not self.resume and not self.force:
            done = _finished_run(self.tune_dir, str(self.opts.run), self.run_fp, self.named)
            if done is not None:
                log.info("%s is up to date (same data and options); force redoes it", done)
                if self.dist.main:
                    shutil.rmtree(self.work, ignore_errors=True)
                return done
        self._setup_model()
        self._setup_optimizer()
        if self.resume and self.checkpoint.exists():
            self._load_checkpoint()
            log.info("resumed %s at step %d/%d", self.opts.run, self.state.step, self.total)
        self._setup_compile()
        return None

    def _setup_run(self) -> None:
        """The process group, the run's name and work folder (on resume its saved options), and
        the seeds."""
        opts = self.opts
        if opts.run is not None:  # it names DIR/tune/<run>/, which a rerun replaces
            validate_name(opts.run, "--run")
            if opts.run in RESERVED_RUN_NAMES:
                raise ConfigError(
                    f"--run {opts.run} is reserved (it names the {opts.run} model in tune eval, "
                    "predict and serve); pick another run name"
                )
        self.dist = init_distributed(opts.strategy)
        if self.dist.world > 1 and opts.run is None:  # every rank must agree on the run name
            opts = replace(opts, run=_rank0_run_name())
        self.work, self.opts = _work_dir(self.tune_dir, opts, self.resume)
        _seed_everything(self.opts.seed)

    def _setup_data(self) -> None:
        """The train/val/test data (rank 0 first: it may create the project's split), the base
        model and the run's fingerprint."""
        if self.data is None:
            self.data = _rank0_first(self.dist, lambda: _dataset(self.project, self.opts))
        self.ref = resolve_base(self.opts.base, self.opts.task)
        self.run_fp = _fingerprint(self.opts, self.data, self.ref)
        self.final = self.tune_dir / str(self.opts.run)

    def _setup_model(self) -> None:
        """The device, autocast dtype, tokenizer, model and the encoded training set."""
        self.device = training_device(self.dist)
        self.amp = amp_dtype(self.opts.precision, self.device)
        self.tok = load_tokenizer(self.ref)
        self.model = self._build_model()
        self.train_set = self._encode_train()

    def _build_model(self):
        """Base (frozen; bf16/fp16 on GPU) + LoRA; trainable parameters are kept in fp32. Under
        FSDP the base stays fp32 too (sharded; gathered in ``amp`` precision for compute),
        uncompiled."""
        opts, d, device = self.opts, self.dist, self.device
        base_dtype = self.amp if device.type == "cuda" and not d.fsdp else None
        if opts.qlora and d.fsdp:
            raise ConfigError("--qlora cannot be sharded with --strategy fsdp; use --strategy ddp")
        model = load_base(
            self.ref,
            opts.task,
            self.data.labels,
            self.tok,
            dtype=base_dtype,
            qlora=opts.qlora,
            device=device,
        )
        if opts.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            model.enable_input_require_grads()
        model = add_lora(
            model, opts.task, opts.lora_r, opts.lora_alpha, opts.lora_dropout, opts.target_modules
        )
        if opts.init_adapter:
            label2id = self.data.label_map() if opts.task == "classify" else None
            init_from_adapter(model, opts.init_adapter, label2id)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("base %s: %d trainable parameters", self.ref.name, n_train)
        model = model.to(device)
        if d.fsdp:
            shard_model(model, repeated_blocks(model), device, self.amp)
            return model
        mode = opts.compile
        if mode == "graphs" and d.world > 1:
            log.warning("compile graphs runs in one process only; compiling the blocks instead")
            mode = "on"
        compiled = compile_blocks(model, device, mode)
        if compiled:
            log.info("compiling %d transformer blocks (the first steps wait for it)", compiled)
        return model

    def _encode_train(self) -> Encoded:
        """Token ids, targets and loss weights of the training rows."""
        frame, opts = self.data.train, self.opts
        texts, labels, weights = list(frame["text"]), list(frame["label"]), list(frame["weight"])
        if opts.task == "classify":
            label_map = self.data.label_map()
            ids = [label_map[x] for x in labels]
            return encode_classify(self.tok, texts, ids, weights, opts.max_length)
        return encode_sft(self.tok, texts, labels, weights, opts.prompt_template, opts.max_length)

    def _setup_optimizer(self) -> None:
        """AdamW over the trainable (LoRA + head) weights, the linear schedule over the planned
        steps, the fp16 grad scaler (a no-op otherwise), the DDP wrapper, a fresh ``state``."""
        import torch

        opts = self.opts
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optim = torch.optim.AdamW(
            self.trainable,
            lr=opts.lr,
            weight_decay=opts.weight_decay,
            fused=self.device.type == "cuda",
        )
        batches = _rank_batches(self.train_set.lengths(), opts, 0, self.dist)
        self.steps_per_epoch = math.ceil(len(batches) / opts.grad_accum)
        self.total = planned_steps(opts, self.steps_per_epoch)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.optim, linear_schedule(self.total, opts.warmup_ratio)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.ddp = wrap_ddp(self.model, self.dist, self.device)
        self.state, self.best = State(), None
        self.checkpoint = checkpoint_path(self.work, self.dist)
        self.eval_every = opts.eval_steps or self.steps_per_epoch

    def _setup_compile(self) -> None:
        """The answer-positions-only SFT loss where it applies, and graphs mode: static shapes
        and the whole training forward compiled (CUDA graphs on a GPU); eval and predict keep
        using the uncompiled ``model``."""
        opts = self.opts
        self.fast_sft = opts.task == "sft" and self.dist.world == 1 and fast_sft_ok(self.model)
        self.static = self.loss_fn = None
        if opts.compile == "graphs" and self.dist.world == 1:
            self.static = StaticShapes.for_options(opts.batch_size, opts.max_length)
            self.loss_fn = loss_module(self.model, opts.task, self.fast_sft)
            if compile_graphs(self.loss_fn, self.device):
                log.info(
                    "graphs mode: lengths padded to %s (CUDA graphs on a GPU)", self.static.buckets
                )

    # ---- train --------------------------------------------------------------------------------

    def train(self) -> None:
        """Optimizer steps, epoch after epoch, until ``total`` steps or early stopping; the last
        step is evaluated too."""
        self.model.train()  # from_pretrained returns eval mode (dropout off)
        while self.state.step < self.total and not self.state.stopped_early:
            if not self._train_epoch():
                break
            self.state.epoch += 1
        if not self.state.evals or self.state.evals[-1]["step"] != self.state.step:
            self.evaluate()
        _read_losses(self.state)

    def _train_epoch(self) -> bool:
        """This rank's micro-batches of the current epoch from where it stands (a resumed run
        skips the steps done), ``grad_accum`` per optimizer step. False when the run ends
        inside the epoch (steps spent, or stopped early)."""
        accum = self.opts.grad_accum
        batches = _rank_batches(self.train_set.lengths(), self.opts, self.state.epoch, self.dist)
        done_in_epoch = self.state.step - self.state.epoch * self.steps_per_epoch
        for start in range(done_in_epoch * accum, len(batches), accum):
            if self.state.step >= self.total:
                return False
            self._train_step(batches[start : start + accum])
            if self.state.stopped_early:
                return False
        return True

    def _train_step(self, micro_indices: list[list[int]]) -> None:
        """One optimizer step over the micro-batches of these row indices, then what is due
        after it: progress, evaluation, checkpoint."""
        t0 = time.perf_counter()
        micro = [self._batch(idx) for idx in micro_indices]
        loss_sum, tokens = _eager_on_compile_error(
            self.loss_fn if self.loss_fn is not None else self.model,
            lambda: train_step(
                self.ddp,
                micro,
                self.optim,
                self.sched,
                self.scaler,
                self.trainable,
                self.opts.task,
                self.device,
                self.amp,
                self.fast_sft,
                loss_fn=self.loss_fn,
            ),
            before_retry=lambda: self.optim.zero_grad(set_to_none=True),
        )
        state = self.state
        state.step += 1
        state.tokens += tokens * self.dist.world
        state.train_seconds += time.perf_counter() - t0
        state.history.append(
            {"step": state.step, "loss": loss_sum, "lr": self.sched.get_last_lr()[0]}
        )
        self._after_step()

    def _batch(self, idx: list[int]):
        """The ``Batch`` (CPU tensors) of these training rows."""
        data = self.train_set
        return make_batch(
            [data.input_ids[i] for i in idx],
            [data.labels[i] for i in idx],
            [data.weights[i] for i in idx],
            self.tok.pad_token_id,
            self.opts.task,
            multiple=8 if self.device.type == "cuda" else 1,
            static=self.static,
        )

    def _after_step(self) -> None:
        """Read the losses when due, report progress, evaluate every ``eval_every`` steps (and at
        the last), checkpoint every ``save_steps``; ``stop_after`` raises ``Interrupted``."""
        state = self.state
        evaluate = state.step % self.eval_every == 0 or state.step == self.total
        save = state.step % self.opts.save_steps == 0 and self.dist.evaluates
        if evaluate or save or state.step % LOSS_READ_EVERY == 0 or self.stop_after is not None:
            _read_losses(state)
        if self.progress is not None and self.dist.main:
            self.progress(
                {
                    "step": state.step,
                    "total": self.total,
                    "loss": _last_read_loss(state),
                    "tokens_per_s": state.tokens / max(state.train_seconds, 1e-9),
                }
            )
        if evaluate:
            self.evaluate()
        if save:
            self._save_checkpoint()
        if self.stop_after is not None and state.step >= self.stop_after:
            raise Interrupted(f"stopped after step {state.step}")

    # ---- evaluate -----------------------------------------------------------------------------

    def evaluate(self) -> None:
        """Validation score (macro-F1, or minus the answer loss for pairs) on rank 0 (on every
        rank under FSDP, whose forward needs them all); keep the best weights; stop after
        ``patience`` evaluations without gain. Rank 0 decides and tells the others."""
        import torch

        d, data, state = self.dist, self.data, self.state
        flags = torch.zeros(2)  # improved, stop
        score = float("nan")
        if d.evaluates and len(data.val):
            score = self._val_score()
            if d.main:
                improved = state.best_step == 0 or score > state.best_f1
                flags[0] = float(improved)
                flags[1] = float(not improved and state.bad_evals + 1 >= self.opts.patience)
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
            self.best = {"weights": trainable_state(self.model), "step": state.step}
        state.stopped_early = bool(flags[1])
        self.model.train()

    def _val_score(self) -> float:
        """Validation macro-F1, or minus the answer loss for pairs: higher is better for both."""
        data = self.data
        if data.pairs:
            return -self._pairs_scores(data.val)["loss"]
        probs = self._predict(data.val)
        gold = data.val["label"].map(data.label_map()).to_numpy()
        return classification_metrics(gold, probs, data.labels)["macro_f1"]

    def _predict(self, frame):
        """Class probabilities (rows of ``frame``, columns in label order) from the model now."""
        opts = self.opts
        return _eager_on_compile_error(
            self.model,
            lambda: score_texts(
                self.model,
                self.tok,
                list(frame["text"]),
                task=opts.task,
                labels=self.data.labels,
                template=opts.prompt_template,
                max_length=opts.max_length,
                batch_size=opts.eval_batch_size,
                device=self.device,
                amp_dtype=self.amp,
            ),
        )

    def _pairs_scores(self, frame, keep: bool = False) -> dict[str, Any]:
        """Answer loss metrics of ``frame``'s pairs (+ the per-pair ``nll``/``tokens`` if
        ``keep``)."""
        opts = self.opts
        nll, tokens = _eager_on_compile_error(
            self.model,
            lambda: answer_nll(
                self.model,
                self.tok,
                list(frame["text"]),
                list(frame["label"]),
                template=opts.prompt_template,
                max_length=opts.max_length,
                batch_size=opts.eval_batch_size,
                device=self.device,
                amp_dtype=self.amp,
            ),
        )
        out = pairs_metrics(nll, tokens)
        return {**out, "nll": nll, "tokens": tokens} if keep else out

    # ---- checkpoints --------------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        """Trainable weights, optimizer, schedule, scaler, state and best evaluation."""
        save_checkpoint(
            self.checkpoint,
            {
                "weights": trainable_state(self.model, full=not self.dist.fsdp),
                "optim": optimizer_state(self.optim),
                "sched": self.sched.state_dict(),
                "scaler": self.scaler.state_dict(),
            },
            self.state,
            self.best,
        )

    def _load_checkpoint(self) -> None:
        """Everything ``_save_checkpoint`` wrote, the RNG states included (same result)."""
        blob = read_checkpoint(self.checkpoint)
        load_trainable(self.model, blob["weights"], full=not self.dist.fsdp)
        load_optimizer_state(self.optim, blob["optim"])
        self.sched.load_state_dict(blob["sched"])
        self.scaler.load_state_dict(blob["scaler"])
        self.state, self.best = restore_rng(blob), blob["best"]

    # ---- save ---------------------------------------------------------------------------------

    def save(self) -> Path:
        """The best evaluation's weights, scored and written to ``DIR/tune/<run>/`` (by rank 0;
        every rank takes part under FSDP), then the work folder goes. Returns the run folder."""
        if self.best is not None:
            load_trainable(self.model, self.best["weights"])
        if self.dist.evaluates:
            self._write_outputs()
        barrier(self.dist)
        if self.dist.main:
            shutil.rmtree(self.work, ignore_errors=True)
        return self.final

    def _write_outputs(self) -> None:
        """DIR/tune/<run>/: adapter/ (+ tokenizer, label map), label_map.json, config.json,
        metrics.json, predictions.parquet, errors.parquet, train_data.parquet, history.json,
        loss_curve.png, manifest.json."""
        import pandas as pd

        data, state = self.data, self.state
        # Under FSDP every rank runs this far (gathering and the forward passes are collective).
        adapter_state = trainable_state(self.model) if self.dist.fsdp else None
        metrics, frames = self._score_splits()
        if not self.dist.main:
            return
        predictions = pd.concat(frames, ignore_index=True)
        metrics["train"] = self._train_metrics()
        metrics["data"] = data.counts
        config = self._run_config()
        label_map = json.dumps({"labels": data.labels, "label2id": data.label_map()}, indent=2)
        with stage_output(
            Project(self.final.parent),
            str(self.opts.run),
            self.run_fp,
            config=config,
            packages=("torch", "transformers", "peft"),
        ) as out:
            adapter = out.path("adapter")
            self.model.save_pretrained(adapter, state_dict=adapter_state)
            self.tok.save_pretrained(adapter)
            (adapter / "label_map.json").write_text(label_map)
            out.path("label_map.json").write_text(label_map)
            out.path("config.json").write_text(json.dumps(config, indent=2, default=str))
            out.path("metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
            predictions.to_parquet(out.path("predictions.parquet"), index=False)
            errors = self._errors(predictions)
            errors.to_parquet(out.path("errors.parquet"), index=False)
            data.train[["id", "text", "label", "weight"]].to_parquet(
                out.path("train_data.parquet"), index=False
            )
            history = {"loss": state.history, "evals": state.evals}
            out.path("history.json").write_text(json.dumps(history, indent=2))
            _loss_curve(state, out.path("loss_curve.png"))
            out.counts = {**data.counts, "errors": len(errors)}
            key = "loss" if data.pairs else "macro_f1"
            out.extra["metrics"] = {k: metrics[k].get(key) for k in ("val", "test")}
        log.info("wrote %s (test %s %s)", self.final, key, metrics["test"].get(key))

    def _score_splits(self) -> tuple[dict[str, Any], list[Any]]:
        """Metrics and prediction rows of the val and test splits."""
        metrics: dict[str, Any] = {}
        frames = []
        for split in ("val", "test"):
            frame = getattr(self.data, split)
            score = self._score_pairs if self.data.pairs else self._score_labels
            metrics[split], rows = score(split, frame)
            frames.append(rows)
        return metrics, frames

    def _score_pairs(self, split: str, frame) -> tuple[dict[str, Any], Any]:
        """Answer loss metrics and ``id, text, gold, slice, split, nll, tokens`` rows."""
        scored = self._pairs_scores(frame, keep=True)
        metrics = {k: v for k, v in scored.items() if k not in ("nll", "tokens")}
        rows = (
            frame[["id", "text", "label", "slice"]]
            .rename(columns={"label": "gold"})
            .assign(split=split, nll=scored["nll"], tokens=scored["tokens"])
        )
        return metrics, rows

    def _score_labels(self, split: str, frame) -> tuple[dict[str, Any], Any]:
        """Classification metrics (+ per slice) and ``id, text, split, gold, predicted, prob,
        probs, slice`` rows."""
        import pandas as pd

        data = self.data
        probs = self._predict(frame)
        gold = frame["label"].map(data.label_map()).to_numpy()
        metrics = classification_metrics(gold, probs, data.labels) if len(frame) else {"n": 0}
        if len(frame):
            metrics["slices"] = slice_metrics(gold, probs, list(frame["slice"]), data.labels)
        rows = pd.DataFrame(
            {
                "id": frame["id"],
                "text": frame["text"],
                "split": split,
                "gold": frame["label"],
                "predicted": [data.labels[i] for i in probs.argmax(axis=1)] if len(frame) else [],
                "prob": probs.max(axis=1) if len(frame) else [],
                "probs": list(probs.astype("float32")),
                "slice": frame["slice"],
            }
        )
        return metrics, rows

    def _train_metrics(self) -> dict[str, Any]:
        """``metrics.json`` → ``train``: steps, epochs, the best evaluation, time and speed."""
        state, amp = self.state, self.amp
        epochs_done = state.step / max(1, self.steps_per_epoch)
        best = (
            {"best_val_loss": -state.best_f1}
            if self.data.pairs
            else {"best_val_macro_f1": state.best_f1}
        )
        return {
            "steps": state.step,
            "epochs": round(epochs_done, 4),
            "best_step": state.best_step,
            **best,
            "stopped_early": state.stopped_early,
            "seconds": round(state.train_seconds, 3),
            "seconds_per_epoch": round(state.train_seconds / max(epochs_done, 1e-9), 3),
            "tokens": state.tokens,
            "tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 1),
            "world_size": self.dist.world,
            "device": str(self.device),
            "precision": str(amp).replace("torch.", "") if amp is not None else "fp32",
        }

    def _run_config(self) -> dict[str, Any]:
        """``config.json``: what ``tune predict``/``eval``/``export`` load the run with."""
        ref = self.ref
        return {
            "run": self.opts.run,
            "task": self.opts.task,
            "base": {"name": ref.name, "path": ref.path, "gguf_file": ref.gguf_file},
            "labels": self.data.labels,
            "source_stage": self.data.source_stage,
            "options": self.opts.to_dict(),
        }

    def _errors(self, predictions):
        """``errors.parquet``: the val/test rows to send back for review."""
        import numpy as np

        frame = predictions.rename(columns={"gold": "label"})
        if self.data.pairs:
            nll, tokens = predictions["nll"].to_numpy(), predictions["tokens"].to_numpy()
            return pairs_error_table(frame, nll, tokens)
        probs = np.stack(predictions["probs"].to_numpy()) if len(predictions) else np.zeros((0, 1))
        return error_table(frame, probs, self.data.labels, self.opts.low_confidence)


# ---- setup helpers ----------------------------------------------------------------------------


def _rank0_run_name() -> str:
    """A timestamped run name, rank 0's, broadcast to every rank."""
    import torch.distributed as dist

    names = [time.strftime("run-%Y%m%d-%H%M%S")]
    dist.broadcast_object_list(names, 0)
    return names[0]


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def _dataset(project: Project, opts: TuneOptions) -> TuneData:
    """Labelled records (classify, or sft with the label as the answer), or instruction/response
    pairs when ``data.response_column`` is set (sft only)."""
    if opts.data.response_column is None:
        return build_dataset(project, opts.data)
    if opts.task != "sft":
        raise ThresherError(
            "instruction/response pairs (--response-col) train a causal LM: add --task sft"
        )
    return build_pairs_dataset(project, opts.data)


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


# ---- training steps ---------------------------------------------------------------------------


def planned_steps(opts: TuneOptions, steps_per_epoch: int) -> int:
    """Optimizer steps of a run: ``max_steps`` when set, else ``epochs`` worth of steps but at
    least ``min_steps`` (small sets under-train in a few epochs); early stopping may end sooner."""
    if opts.max_steps > 0:
        return opts.max_steps
    return max(1, math.ceil(opts.epochs * steps_per_epoch), opts.min_steps)


def linear_schedule(total: int, warmup_ratio: float):
    warmup = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


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


class _no_sync:
    """DDP's ``no_sync`` for accumulation micro-steps (a no-op without DDP)."""

    def __init__(self, model, active: bool) -> None:
        self.ctx = model.no_sync() if active and hasattr(model, "no_sync") else None

    def __enter__(self):
        return self.ctx.__enter__() if self.ctx is not None else None

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx is not None else False


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


# ---- outputs ----------------------------------------------------------------------------------


def _val_key(data: TuneData) -> str:
    return "val_loss" if data.pairs else "val_macro_f1"


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
