"""Loading a base model with a LoRA adapter, tokenizing for each task, and scoring texts.

Shared by training, prediction and export so the three agree on one recipe:
- classify: ``AutoModelForSequenceClassification`` (encoder or decoder) + LoRA; the new head is
  trained in full (peft ``modules_to_save``).
- sft: ``AutoModelForCausalLM`` + LoRA on ``prompt_template.format(text=...)`` followed by
  `` <label><eos>``; loss on the answer tokens only. Class probabilities come from the
  log-likelihood of each label's answer, normalised over the labels.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.assets import ModelRef, resolve_model
from thresher.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

TASKS = ("classify", "sft")


def resolve_base(base: str | None, task: str) -> ModelRef:
    """The base model for ``task`` (default: offline MiniLM for classify, SmolLM2 for sft)."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; use classify or sft")
    ref = resolve_model(base, "classifier" if task == "classify" else "sft")
    if ref.is_local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return ref


def _load_kwargs(ref: ModelRef) -> dict[str, Any]:
    return {"gguf_file": ref.gguf_file} if ref.gguf_file else {}


def load_tokenizer(ref: ModelRef):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(ref.path, **_load_kwargs(ref))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot load a tokenizer for base {ref.name!r} ({ref.path}): {err}; give a local "
            "folder, a reachable hub id, or leave --base out for the offline default"
        ) from err
    if tok.pad_token is None:  # decoders: pad with eos (masked out everywhere)
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def _strip_gguf_quantizer(model) -> None:
    """GGUF bases are dequantized on load; forget the quantizer so save/merge work."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def load_base(
    ref: ModelRef,
    task: str,
    labels: Sequence[str],
    tokenizer,
    *,
    dtype=None,
    qlora: bool = False,
    device=None,
):
    """The base model, with a fresh classification head over ``labels`` for classify.

    ``qlora``: the linear layers are quantized to 4-bit NF4 as they load, straight onto
    ``device`` (a quantized model is not moved afterwards); the other weights (embeddings, norms,
    head) stay in ``dtype`` (float32 when None)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = _load_kwargs(ref)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if qlora:
        dtype = dtype or torch.float32
        skip = CLASSIFY_HEAD_MODULES if task == "classify" else ()
        kwargs.update(qlora_kwargs(dtype, device or torch.device("cpu"), skip))
    try:
        if task == "classify":
            model = AutoModelForSequenceClassification.from_pretrained(
                ref.path,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                **kwargs,
            )
            model.config.pad_token_id = tokenizer.pad_token_id
        else:
            model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot load base model {ref.name!r} ({ref.path}) for task {task}: {err}"
        ) from err
    if ref.gguf_file:
        _strip_gguf_quantizer(model)
    if qlora:
        keep_4bit_portable(model)
    if dtype is None:
        model = model.float()
    return model


def keep_4bit_portable(model) -> int:
    """Keep every 4-bit layer of ``model`` on bitsandbytes' portable CPU path; returns how many.

    On a CPU with AVX512-BF16 units, bitsandbytes (0.50) repacks a 4-bit layer's weight for its
    fused kernel on the first eval-mode forward without gradients. That layout is for inference
    only: a training step after an evaluation gets no gradient through the packed layers (the
    LoRA adapters stop learning, without an error); it requires in_features to be a multiple of
    the quantization block (64), else ``shape '[N, 0]' is invalid``; and it computes in bf16, so a
    run's predictions would change with the machine. The portable path runs on every CPU and
    gives the same numbers on all of them."""
    layers = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            layers += 1
    return layers


# Modules a classifier trains whole (the head, and the pooler BERT-style heads read), so QLoRA
# leaves them in full precision: transformers' own guess misses a head with a bias (BERT's
# ``classifier`` came out 4-bit) and never spares the pooler. Prefix patterns, as
# ``llm_int8_skip_modules`` takes them (they replace transformers' guess).
CLASSIFY_HEAD_MODULES = ("classifier", "score", "bert.pooler")


def qlora_kwargs(dtype, device, skip: Sequence[str] = ()) -> dict[str, Any]:
    """``from_pretrained`` arguments for a 4-bit NF4 base (double quantization) computing in
    ``dtype`` on ``device``; the ``skip`` modules stay unquantized (none: transformers' guess, the
    output layer). bitsandbytes >= 0.48 has CPU kernels too: QLoRA is for GPUs that lack the
    memory for the base, but the same path runs (slowly) on a CPU."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is None or tuple(int(x) for x in version.split(".")[:2]) < (0, 48):
        raise MissingDependencyError(
            "QLoRA needs bitsandbytes >= 0.48 (pip install 'thresher[qlora]'); "
            "drop --qlora to train plain LoRA"
        )
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"QLoRA runs on CUDA or CPU, not {device.type}; drop --qlora")
    if device.type == "cpu":
        log.warning("QLoRA on the CPU: it works, but plain LoRA is faster there")
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=list(skip) or None,
        ),
        "device_map": {"": str(device)},
        "dtype": dtype,
    }


def add_lora(model, task: str, r: int, alpha: int, dropout: float, target_modules=()):
    """Wrap ``model`` in a peft LoRA model (trainable: adapters, and the head for classify)."""
    from peft import LoraConfig, TaskType, get_peft_model

    task_type = TaskType.SEQ_CLS if task == "classify" else TaskType.CAUSAL_LM
    targets = list(target_modules) or None
    # BERT-style heads read a pooler (dense + tanh over [CLS]) that sentence-embedding models never
    # trained; it must learn along with the head or the classifier sees near-random features.
    extra = (
        ["pooler"]
        if task == "classify" and hasattr(getattr(model, "bert", None), "pooler")
        else None
    )
    if extra and model.bert.pooler is None:
        extra = None
    config = LoraConfig(
        task_type=task_type,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=extra,
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError:  # architecture unknown to peft: every linear layer
        config.target_modules = "all-linear"
        peft_model = get_peft_model(model, config)
    return peft_model


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_weights(source: str | os.PathLike) -> Path:
    """The LoRA weights file of a finished run folder (``DIR/tune/RUN``) or of its ``adapter/``."""
    path = Path(source)
    adapter = path / "adapter" if (path / "adapter").is_dir() else path
    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ConfigError(
            f"init adapter {source}: no {ADAPTER_WEIGHTS} there; pass a finished run folder "
            "(DIR/tune/RUN) or its adapter/"
        )
    return weights


def init_from_adapter(model, source: str | os.PathLike, label2id: dict[str, int] | None) -> Path:
    """Warm start: load a finished run's LoRA weights (and its trained head and pooler) into the
    freshly wrapped peft ``model``. For classify, ``label2id`` must equal the run's (same labels,
    same order). Returns the weights file; a mismatch is a one-line ``ConfigError``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = adapter_weights(source)
    saved = weights.parent / "label_map.json"
    if label2id is not None and saved.is_file():
        theirs = json.loads(saved.read_text(encoding="utf-8")).get("label2id")
        if theirs is not None and theirs != label2id:
            raise ConfigError(
                f"init adapter {source} was trained on labels {sorted(theirs)}, this run has "
                f"{sorted(label2id)}; train from the base model instead"
            )
    try:
        result = set_peft_model_state_dict(model, load_file(str(weights)))
    except RuntimeError as err:  # shape mismatch: another base model or lora_r
        first = str(err).strip().splitlines()[-1].strip()
        raise ConfigError(
            f"init adapter {source} does not fit this model (another base or lora_r?): {first}"
        ) from None
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(
            f"init adapter {source} does not fit this model: {len(result.unexpected_keys)} of "
            f"its weights have no place in it (e.g. {result.unexpected_keys[0]})"
        )
    log.info("warm start from %s", weights)
    return weights


# ---- tokenization -----------------------------------------------------------------------------


@dataclass
class Encoded:
    """Token ids per example; ``labels`` is the class index (classify) or per-token targets."""

    input_ids: list[list[int]]
    labels: list[Any]
    weights: list[float]

    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


def encode_classify(tokenizer, texts, label_ids, weights, max_length: int) -> Encoded:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    return Encoded(list(enc["input_ids"]), list(label_ids), list(weights))


def _prompt_ids(tokenizer, texts, template: str, max_prompt: int) -> list[list[int]]:
    """Prompt ids with the *text* truncated, so the instruction and answer cue always survive."""
    prefix, _, suffix = template.partition("{text}")
    head = tokenizer(prefix)["input_ids"] if prefix else tokenizer("")["input_ids"]
    tail = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    if (
        head
        and head[-1] == tokenizer.eos_token_id
        and tokenizer.eos_token_id != tokenizer.bos_token_id
    ):
        head = head[:-1]  # some tokenizers append eos/sep to every encoding
    budget = max(1, max_prompt - len(head) - len(tail))
    body = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [list(head) + list(b[:budget]) + list(tail) for b in body]


def answer_ids(tokenizer, label: str) -> list[int]:
    ids = tokenizer(" " + label, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return list(ids) + ([eos] if eos is not None else [])


def encode_sft(tokenizer, texts, labels, weights, template: str, max_length: int) -> Encoded:
    """Prompt + answer; targets are -100 over the prompt (loss on the answer only)."""
    # A free-text answer (instruction/response pairs) keeps at most half of max_length.
    answers = [answer_ids(tokenizer, str(label))[: max(1, max_length // 2)] for label in labels]
    longest = max((len(a) for a in answers), default=1)
    prompts = _prompt_ids(tokenizer, texts, template, max(8, max_length - longest))
    ids, targets = [], []
    for p, a in zip(prompts, answers, strict=True):
        ids.append(p + a)
        targets.append([-100] * len(p) + a)
    return Encoded(ids, targets, list(weights))


# ---- batches ----------------------------------------------------------------------------------

MIN_BUCKET = 32  # the shortest padded length in graphs mode
LINEAR_ABOVE = 256  # graphs mode: powers of two up to here, then multiples of it
MIN_ANSWER_BUCKET = 8


def seq_buckets(max_length: int) -> list[int]:
    """The padded lengths of graphs mode (one CUDA graph each): powers of two from 32 up to 256,
    then multiples of 256, then ``max_length`` rounded up to a multiple of 8.

    Why: every distinct shape is a compile and a recorded CUDA graph (with its own memory), while
    every padded position is wasted GPU work. Doubling keeps the short lengths to a handful of
    shapes (32..256: 4) where padding costs little in absolute terms; above 256 a step of 256
    keeps the waste under 256 tokens per row (~12 % on average between 768 and 1024) instead of
    doubling's ~25 %. Up to 1024 that is 7 shapes: 32, 64, 128, 256, 512, 768, 1024."""
    top = -(-max(max_length, 1) // 8) * 8
    out, n = [], MIN_BUCKET
    while n < top and n <= LINEAR_ABOVE:
        out.append(n)
        n *= 2
    n = 2 * LINEAR_ABOVE
    while n < top:
        out.append(n)
        n += LINEAR_ABOVE
    return [*out, top]


def bucket_of(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``n``; longer than every bucket: ``n`` rounded up to 8."""
    for b in buckets:
        if b >= n:
            return b
    return -(-n // 8) * 8


def answer_bucket(n: int) -> int:
    """Answer slots per row in graphs mode: a power of two, at least 8."""
    b = MIN_ANSWER_BUCKET
    while b < n:
        b *= 2
    return b


@dataclass(frozen=True)
class StaticShapes:
    """Graphs mode: every micro-batch has ``rows`` rows (short ones padded with zero-weight filler
    rows) and a length from ``buckets``; answer slots are bucketed too (``answer_bucket``)."""

    rows: int
    buckets: tuple[int, ...]

    @classmethod
    def for_options(cls, batch_size: int, max_length: int) -> StaticShapes:
        return cls(batch_size, tuple(seq_buckets(max_length)))


def collate(
    batch_ids,
    batch_labels,
    pad_id: int,
    task: str,
    multiple: int = 1,
    *,
    length: int | None = None,
    rows: int | None = None,
):
    """Right-pad to the longest sequence in the batch (dynamic padding) → tensors.

    ``length`` pads to exactly that many positions instead (graphs mode buckets); ``rows`` adds
    filler rows up to that batch size: pad ids, labels ignored (-100, or class 0 for classify,
    given zero weight by the caller), attention on their first position only (a row with every
    key masked can give NaN in some attention kernels, and NaN times a zero weight is still NaN)."""
    import torch

    longest = max(len(x) for x in batch_ids)
    longest = -(-longest // multiple) * multiple
    if length is not None:
        longest = max(length, max(len(x) for x in batch_ids))
    n = max(rows or 0, len(batch_ids))
    ids = torch.full((n, longest), pad_id, dtype=torch.long)
    mask = torch.zeros((n, longest), dtype=torch.long)
    mask[len(batch_ids) :, 0] = 1  # filler rows
    for i, x in enumerate(batch_ids):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    if task == "classify":
        labels = torch.zeros(n, dtype=torch.long)
        labels[: len(batch_labels)] = torch.tensor(batch_labels, dtype=torch.long)
    else:
        labels = torch.full((n, longest), -100, dtype=torch.long)
        for i, y in enumerate(batch_labels):
            labels[i, : len(y)] = torch.tensor(y)
    return ids, mask, labels


def answer_index(labels, width: int | None = None):
    """(positions, targets), both (B, A): for each row the positions ``t`` whose next token is an
    answer target (``labels[:, t + 1] != -100``) and that target; unused slots hold position 0 and
    target -100 (ignored). A = the most answer tokens in a row, or ``width`` (graphs mode).
    Built on the CPU from CPU labels, so the loss gathers with a fixed-shape index: no boolean
    indexing on the device (a device→host sync and a data-dependent shape every step)."""
    import torch

    shift = labels[:, 1:]
    keep = shift != -100
    counts = keep.sum(1)
    a = max(int(counts.max()) if len(counts) else 0, 1)
    a = max(a, width or 0)
    positions = torch.zeros((labels.shape[0], a), dtype=torch.long)
    targets = torch.full((labels.shape[0], a), -100, dtype=torch.long)
    for i in range(labels.shape[0]):
        where = keep[i].nonzero().flatten()
        positions[i, : len(where)] = where
        targets[i, : len(where)] = shift[i, where]
    return positions, targets


@dataclass
class Batch:
    """One micro-batch: ``input_ids``/``attention_mask`` (B, L), ``labels`` (B,) for classify or
    (B, L) for sft, ``weights`` (B,) (0 for filler rows), ``answer_pos``/``answer_tgt`` (B, A)
    for sft (see ``answer_index``) and ``tokens`` = real (non-pad, non-filler) tokens."""

    input_ids: Any
    attention_mask: Any
    labels: Any
    weights: Any
    tokens: int
    answer_pos: Any = None
    answer_tgt: Any = None

    def to(self, device, pin: bool = False) -> Batch:
        def move(t):
            if t is None:
                return None
            if pin:
                t = t.pin_memory()
            return t.to(device, non_blocking=True)

        return Batch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.labels),
            move(self.weights),
            self.tokens,
            move(self.answer_pos),
            move(self.answer_tgt),
        )


def make_batch(
    batch_ids,
    batch_labels,
    weights,
    pad_id: int,
    task: str,
    *,
    multiple: int = 1,
    static: StaticShapes | None = None,
) -> Batch:
    """CPU tensors for one micro-batch: dynamic padding (to ``multiple``), or with ``static`` a
    bucketed length, ``static.rows`` rows (zero-weight filler) and bucketed answer slots."""
    import torch

    length = rows = None
    if static is not None:
        length = bucket_of(max(len(x) for x in batch_ids), static.buckets)
        rows = static.rows
    x, m, y = collate(batch_ids, batch_labels, pad_id, task, multiple, length=length, rows=rows)
    w = torch.zeros(x.shape[0], dtype=torch.float32)
    w[: len(weights)] = torch.tensor(list(weights), dtype=torch.float32)
    tokens = sum(len(ids) for ids in batch_ids)
    if task != "sft":
        return Batch(x, m, y, w, tokens)
    width = None
    if static is not None:
        width = answer_bucket(int((y[:, 1:] != -100).sum(1).max()))
    pos, tgt = answer_index(y, width)
    return Batch(x, m, y, w, tokens, pos, tgt)


def _answer_loss(logits, targets, weights):
    """Weighted mean cross-entropy over answer tokens; ``logits`` (B, A, V), ``targets`` (B, A)
    with -100 in unused slots, ``weights`` (B,)."""
    import torch.nn.functional as F

    per_token = F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none"
    ).view_as(targets)
    token_w = weights[:, None] * (targets != -100)
    return (per_token * token_w).sum() / token_w.sum().clamp_min(1e-8)


def _gather_positions(x, positions):
    """``x`` (B, L, D) at ``positions`` (B, A) → (B, A, D)."""
    return x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def weighted_loss(logits, labels, weights, task: str, answer=None):
    """Cross-entropy, each example weighted (suspected label errors may weigh less): the weighted
    mean over examples (classify) or over answer tokens (sft). ``answer`` = (positions, targets)
    from ``answer_index``: the sft loss then reads the logits at those positions only (a fixed
    shape gather, no device→host sync); without it every position is scored (same value)."""
    import torch.nn.functional as F

    if task == "classify":
        per_example = F.cross_entropy(logits.float(), labels, reduction="none")
        return (per_example * weights).sum() / weights.sum().clamp_min(1e-8)
    if answer is not None:  # position t predicts token t+1
        return _answer_loss(_gather_positions(logits, answer[0]), answer[1], weights)
    return _answer_loss(logits[:, :-1], labels[:, 1:], weights)


def fast_sft_ok(model) -> bool:
    """The decoder + LM head can be called apart (no logit scaling/soft-capping in between)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    plain = not getattr(cfg, "final_logit_softcapping", None) and getattr(
        cfg, "logit_scale", 1
    ) in (
        None,
        1,
    )
    return plain and hasattr(base, "get_decoder") and base.get_output_embeddings() is not None


def forward_loss(model, batch: Batch, task: str, fast_sft: bool):
    """The training loss for one micro-batch (tensors already on the model's device).

    ``fast_sft`` (one process, plain decoders): run the decoder, then the LM head only at the
    answer positions (``batch.answer_pos``, a fixed-shape gather). With a 150k vocabulary most of
    a causal LM's logits (and their fp32 upcast in the loss) are wasted on prompt tokens; this
    skips them. Same loss value and gradients. No step here waits for the device."""
    answer = (batch.answer_pos, batch.answer_tgt) if batch.answer_pos is not None else None
    if task == "sft" and fast_sft and answer is not None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = base.get_decoder()(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).last_hidden_state
        logits = base.get_output_embeddings()(_gather_positions(hidden, answer[0]))
        return _answer_loss(logits, answer[1], batch.weights)
    kwargs = {"use_cache": False} if task == "sft" else {}  # training needs no KV cache
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs).logits
    return weighted_loss(logits, batch.labels, batch.weights, task, answer)


@functools.cache
def _loss_module_class():
    import torch

    class LossModule(torch.nn.Module):
        """``forward_loss`` as a module, so graphs mode can compile the whole training forward
        (decoder, answer gather, LM head, cross-entropy, weighting) as one graph while ``model``
        itself stays uncompiled (eval and predict use it eagerly; its ``state_dict`` keys are
        untouched)."""

        def __init__(self, model, task: str, fast_sft: bool) -> None:
            super().__init__()
            self.model = model
            self.task = task
            self.fast_sft = fast_sft
            self.dynamic_dims = False  # set by compile_graphs

        def forward(self, input_ids, attention_mask, labels, weights, answer_pos, answer_tgt):
            batch = Batch(input_ids, attention_mask, labels, weights, 0, answer_pos, answer_tgt)
            return forward_loss(self.model, batch, self.task, self.fast_sft)

        def loss(self, batch: Batch):
            if self.dynamic_dims and is_compiled(self):
                _mark_dims_dynamic(batch)
            return self(
                batch.input_ids,
                batch.attention_mask,
                batch.labels,
                batch.weights,
                batch.answer_pos,
                batch.answer_tgt,
            )

    return LossModule


def _mark_dims_dynamic(batch: Batch) -> None:
    """Compile the batch and length dimensions as symbols: one compile serves every bucket (and
    batch size); each CUDA graph is still recorded for one concrete shape."""
    import torch

    for t in (
        batch.input_ids,
        batch.attention_mask,
        batch.labels,
        batch.weights,
        batch.answer_pos,
        batch.answer_tgt,
    ):
        if t is not None:
            torch._dynamo.maybe_mark_dynamic(t, list(range(t.dim())))


def loss_module(model, task: str, fast_sft: bool):
    """A ``torch.nn.Module`` whose forward is ``forward_loss(model, batch, ...)`` (see
    ``compile_graphs``); call ``.loss(batch)``."""
    return _loss_module_class()(model, task, fast_sft)


def repeated_blocks(model) -> list[Any]:
    """The transformer blocks: the largest ``ModuleList`` whose children share one class
    (``model.layers`` of a decoder, ``encoder.layer`` of BERT). Empty if there is none."""
    import torch

    best: list[Any] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and len(module) >= 2:
                best = list(module)
    return best


def compile_blocks(model, device, mode: str) -> int:
    """``torch.compile`` each transformer block in place (``mode`` auto: on CUDA only).

    Why: a LoRA step on a small model is bound by the host launching thousands of small kernels
    (24 blocks x ~100 ops, forward and backward); compiling the blocks fuses the norms, rotary
    embeddings, LoRA adds and casts into a few kernels. Blocks are compiled one by one (same code,
    so compiled once) with dynamic shapes, so length-grouped batches do not recompile, and
    ``state_dict`` keys stay unchanged (checkpoints and adapters load either way). Returns the
    number of blocks compiled."""
    if mode not in ("auto", "on") or (mode == "auto" and device.type != "cuda"):
        return 0  # off, or graphs (compile_graphs compiles the whole training forward instead)
    if device.type == "cuda" and not _has_triton():
        log.warning("torch.compile needs triton on CUDA; training uncompiled")
        return 0
    blocks = repeated_blocks(model)
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def compile_graphs(module, device, static: bool = False) -> bool:
    """Graphs mode: ``torch.compile(mode="reduce-overhead")`` of ``module`` (the whole training
    forward, a ``loss_module``) in place. On CUDA the compiled forward and backward are replayed
    as CUDA graphs: a few graph launches per step instead of ~2k kernel launches (the
    compiled-blocks step was still host-bound). On the CPU it compiles without CUDA graphs
    (correctness checks). Every micro-batch has one of a few shapes (``StaticShapes``).

    By default the batch and length dimensions are compiled as symbols (``maybe_mark_dynamic``):
    one compile serves every length bucket (and batch size), and cudagraph trees record a CUDA
    graph per concrete shape the first times it is met (cheap: a warm-up run and a recording).
    ``static=True`` compiles ``dynamic=False``: fully specialised kernels, but a whole-model
    compile per (length, answer) bucket pair, minutes of warm-up for the 7 length buckets up to
    1024 (the benchmark's ``recipe_graphs_static`` compares the two). Returns whether it
    compiled."""
    import torch

    if device.type == "cuda" and not _has_triton():
        log.warning("torch.compile needs triton on CUDA; training without CUDA graphs")
        return False
    # every shape the compiler specialises on is one entry; the default limit (8) would
    # silently send the later shapes back to eager
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))
    module.dynamic_dims = not static
    module.compile(mode="reduce-overhead", dynamic=False if static else None)
    return True


def is_compiled(module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def uncompile(model) -> int:
    """Undo ``compile_blocks`` or ``compile_graphs`` (back to eager) on ``model`` and every
    module inside it; returns how many modules were compiled."""
    undone = 0
    for module in model.modules():
        if is_compiled(module):
            module._compiled_call_impl = None
            undone += 1
    return undone


def is_compile_error(err: BaseException) -> bool:
    """An error raised by torch.compile's tracer or compiler (not by the model itself)."""
    return type(err).__module__.startswith(("torch._dynamo", "torch._inductor"))


def _has_triton() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


# ---- scoring ----------------------------------------------------------------------------------


def order_by_length(lengths):
    """Indices of ``lengths``, shortest first (batches of similar length pad little)."""
    return sorted(range(len(lengths)), key=lambda i: lengths[i])


def score_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    task: str,
    labels: Sequence[str],
    template: str,
    max_length: int,
    batch_size: int,
    device,
    amp_dtype=None,
):
    """Class probabilities (n, len(labels)) for ``texts``, batched by length (fastest)."""
    import numpy as np
    import torch

    model.eval()
    out = np.zeros((len(texts), len(labels)), dtype="float32")
    if not texts:
        return out
    pad = tokenizer.pad_token_id
    with torch.no_grad(), autocast(device, amp_dtype):
        if task == "classify":
            ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
            order = order_by_length([len(x) for x in ids])
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                x, m, _ = collate([ids[i] for i in idx], [0] * len(idx), pad, "classify")
                logits = model(input_ids=x.to(device), attention_mask=m.to(device)).logits
                out[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
            return out
        answers = [answer_ids(tokenizer, str(label)) for label in labels]
        longest = max(len(a) for a in answers)
        prompts = _prompt_ids(tokenizer, texts, template, max(8, max_length - longest))
        order = order_by_length([len(p) for p in prompts])
        per_batch = max(1, batch_size // len(labels))
        for s in range(0, len(order), per_batch):
            idx = order[s : s + per_batch]
            seqs, tgts = [], []
            for i in idx:
                for a in answers:
                    seqs.append(prompts[i] + a)
                    tgts.append([-100] * len(prompts[i]) + a)
            x, m, y = collate(seqs, tgts, pad, "sft")
            logits = model(input_ids=x.to(device), attention_mask=m.to(device)).logits
            seq_logp, _ = answer_logprob(logits, y.to(device))
            seq_logp = seq_logp.view(len(idx), len(labels))
            out[idx] = torch.softmax(seq_logp, -1).cpu().numpy()
    return out


def answer_logprob(logits, labels):
    """Per sequence: the summed log-probability of its target tokens (``labels`` != -100, the
    causal shift applied) and how many there are."""
    import torch

    target = labels[:, 1:]
    keep = target != -100
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1) * keep
    return picked.sum(-1), keep.sum(-1)


def autocast(device, amp_dtype):
    """Mixed precision in ``amp_dtype`` on ``device`` (None: full precision, no autocast)."""
    import contextlib

    import torch

    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)
