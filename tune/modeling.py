"""Loading a base model with a LoRA adapter, tokenizing for each task, and scoring texts.

Shared by training, prediction and export so the three agree on one recipe:
- classify: ``AutoModelForSequenceClassification`` (encoder or decoder) + LoRA; the new head is
  trained in full (peft ``modules_to_save``).
- sft: ``AutoModelForCausalLM`` + LoRA on ``prompt_template.format(text=...)`` followed by
  `` <label><eos>``; loss on the answer tokens only. Class probabilities come from the
  log-likelihood of each label's answer, normalised over the labels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
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
        kwargs.update(_qlora_kwargs(dtype, device or torch.device("cpu")))
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
    if dtype is None:
        model = model.float()
    return model


def _qlora_kwargs(dtype, device) -> dict[str, Any]:
    """``from_pretrained`` arguments for a 4-bit NF4 base (double quantization) computing in
    ``dtype`` on ``device``. bitsandbytes >= 0.48 has CPU kernels too: QLoRA is for GPUs that
    lack the memory for the base, but the same path runs (slowly) on a CPU."""
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


def collate(batch_ids, batch_labels, pad_id: int, task: str, multiple: int = 1):
    """Right-pad to the longest sequence in the batch (dynamic padding) → tensors."""
    import torch

    longest = max(len(x) for x in batch_ids)
    longest = -(-longest // multiple) * multiple
    ids = torch.full((len(batch_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), longest), dtype=torch.long)
    for i, x in enumerate(batch_ids):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    if task == "classify":
        labels = torch.tensor(batch_labels, dtype=torch.long)
    else:
        labels = torch.full((len(batch_ids), longest), -100, dtype=torch.long)
        for i, y in enumerate(batch_labels):
            labels[i, : len(y)] = torch.tensor(y)
    return ids, mask, labels


def weighted_loss(logits, labels, weights, task: str):
    """Cross-entropy, each example weighted (suspected label errors may weigh less): the weighted
    mean over examples (classify) or over answer tokens (sft)."""
    import torch.nn.functional as F

    if task == "classify":
        per_example = F.cross_entropy(logits.float(), labels, reduction="none")
        return (per_example * weights).sum() / weights.sum().clamp_min(1e-8)
    # Causal LM: position t predicts token t+1; only answer positions have targets.
    shift_labels = labels[:, 1:]
    keep = shift_labels != -100
    picked = logits[:, :-1][keep].float()  # logits only where there is a target
    per_token = F.cross_entropy(picked, shift_labels[keep], reduction="none")
    token_w = weights[:, None].expand_as(shift_labels)[keep]
    return (per_token * token_w).sum() / token_w.sum().clamp_min(1e-8)


def _fast_sft_ok(model) -> bool:
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


def forward_loss(model, input_ids, attention_mask, labels, weights, task: str, fast_sft: bool):
    """The training loss for one micro-batch.

    ``fast_sft`` (one process, plain decoders): run the decoder, then the LM head only at positions
    that have an answer target. With a 150k vocabulary most of a causal LM's logits (and their fp32
    upcast in the loss) are wasted on prompt tokens; this skips them. Same loss value."""
    if task == "sft" and fast_sft:
        import torch.nn.functional as F

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = base.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        shift = labels[:, 1:]
        keep = shift != -100
        logits = base.get_output_embeddings()(hidden[:, :-1][keep])
        per_token = F.cross_entropy(logits.float(), shift[keep], reduction="none")
        token_w = weights[:, None].expand_as(shift)[keep]
        return (per_token * token_w).sum() / token_w.sum().clamp_min(1e-8)
    kwargs = {"use_cache": False} if task == "sft" else {}  # training needs no KV cache
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
    return weighted_loss(logits, labels, weights, task)


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
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return 0
    if device.type == "cuda" and not _has_triton():
        log.warning("torch.compile needs triton on CUDA; training uncompiled")
        return 0
    blocks = repeated_blocks(model)
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def uncompile_blocks(model) -> int:
    """Undo ``compile_blocks`` (back to eager); returns how many blocks were compiled."""
    undone = 0
    for block in repeated_blocks(model):
        if getattr(block, "_compiled_call_impl", None) is not None:
            block._compiled_call_impl = None
            undone += 1
    return undone


def is_compile_error(err: BaseException) -> bool:
    """An error raised by torch.compile's tracer or compiler (not by the model itself)."""
    return type(err).__module__.startswith(("torch._dynamo", "torch._inductor"))


def _has_triton() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


# ---- scoring ----------------------------------------------------------------------------------


def _order_by_length(lengths):
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
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else _null()
    )
    with torch.no_grad(), autocast:
        if task == "classify":
            ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
            order = _order_by_length([len(x) for x in ids])
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                x, m, _ = collate([ids[i] for i in idx], [0] * len(idx), pad, "classify")
                logits = model(input_ids=x.to(device), attention_mask=m.to(device)).logits
                out[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
            return out
        answers = [answer_ids(tokenizer, str(label)) for label in labels]
        longest = max(len(a) for a in answers)
        prompts = _prompt_ids(tokenizer, texts, template, max(8, max_length - longest))
        order = _order_by_length([len(p) for p in prompts])
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


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
