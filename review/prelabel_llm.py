"""Pre-labels from a language model: a local instruction model, or an OpenAI-compatible server.

Both ask the same question (``prompt``): the label set with each label's descriptions, the text,
and "Label:". A local model (``llm_probs``, transformers) scores every label's answer by its
log-likelihood after the prompt (the sum over the answer's tokens); the softmax over the labels is
the probability. A server (``endpoint_probs``: ``/v1/chat/completions``, as vLLM, llama.cpp's
server and Ollama speak it) is asked for one short answer with the top log-probabilities of its
first token; a label's probability is the mass of the first-token candidates that begin it, and
when the server returns no log-probabilities the answer itself counts (probability 1).

Probabilities are 0..1, higher = the model prefers that label.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from thresher.errors import InputError

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20
TIMEOUT_S = 120.0


def prompt(text: str, labels: Sequence[str], descriptions: Mapping[str, Sequence[str]]) -> str:
    """The question put to a language model for one text."""
    lines = ["Classify the text into exactly one of these labels:"]
    for label in labels:
        meaning = "; ".join(d for d in descriptions.get(label, ()) if d != label)
        lines.append(f"- {label}" + (f": {meaning}" if meaning else ""))
    lines += ["", f"Text: {text}", "", "Answer with the label only.", "Label:"]
    return "\n".join(lines)


# ---------------------------------------------------------------- a local model (transformers)


def llm_probs(
    texts: Sequence[str],
    labels: Sequence[str],
    descriptions: Mapping[str, Sequence[str]],
    model: str,
    *,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(n, k) label probabilities from a causal LM (a hub id, a folder, or ``smollm2-135m``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thresher.assets import resolve_model

    ref = resolve_model(model, "sft")
    kw = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(ref.path, **kw)
        lm = AutoModelForCausalLM.from_pretrained(ref.path, **kw).eval()
    except OSError as err:
        raise InputError(f"cannot load model {model!r} for pre-labelling: {err}") from err
    out = np.zeros((len(texts), len(labels)))
    with torch.no_grad():
        for i, text in enumerate(texts):
            context = _context_ids(tok, prompt(text, labels, descriptions))
            out[i] = [_answer_logprob(lm, tok, context, label) for label in labels]
            if progress is not None:
                progress(1)
    z = out - out.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _context_ids(tok, question: str) -> list[int]:
    """Token ids of the prompt, through the model's chat template when it has one."""
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, Mapping):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return list(tok(question, add_special_tokens=True)["input_ids"])


def _answer_logprob(lm, tok, context: list[int], label: str) -> float:
    """log p(" label" | context): the sum over the answer's tokens."""
    import torch

    answer = tok(" " + label, add_special_tokens=False)["input_ids"]
    if not answer:
        return -math.inf
    ids = torch.tensor([context + list(answer)])
    logits = lm(input_ids=ids).logits[0, len(context) - 1 : -1].float()
    logp = torch.log_softmax(logits, dim=-1)
    return float(logp[torch.arange(len(answer)), torch.tensor(answer)].sum())


# ---------------------------------------------------------------- an OpenAI-compatible server


def endpoint_base(url: str) -> str:
    """The API base (``.../v1``) of a server URL given as the host, the base or a route."""
    base = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions", "/models"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base if base.endswith("/v1") else base + "/v1"


def endpoint_probs(
    texts: Sequence[str],
    labels: Sequence[str],
    descriptions: Mapping[str, Sequence[str]],
    url: str,
    *,
    model: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, str]:
    """(n, k) label probabilities from the server at ``url`` and the served model's name.
    ``model`` None: the first model the server lists (``GET /v1/models``). ``OPENAI_API_KEY``,
    when set, is sent as the bearer token."""
    import httpx

    base = endpoint_base(url)
    headers = {}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    out = np.zeros((len(texts), len(labels)))
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=TIMEOUT_S) as http:
            served = model or _first_model(http, base)
            for i, text in enumerate(texts):
                body = {
                    "model": served,
                    "messages": [{"role": "user", "content": prompt(text, labels, descriptions)}],
                    "max_tokens": 8,
                    "temperature": 0,
                    "logprobs": True,
                    "top_logprobs": TOP_LOGPROBS,
                }
                resp = http.post("/chat/completions", json=body)
                if resp.status_code != 200:
                    raise InputError(
                        f"{base}/chat/completions answered {resp.status_code}: {resp.text[:200]}"
                    )
                out[i] = choice_probs(resp.json(), labels)
                if progress is not None:
                    progress(1)
    except httpx.HTTPError as err:
        raise InputError(f"cannot reach the pre-label server {base}: {err}") from err
    return out, served


def _first_model(http, base: str) -> str:
    resp = http.get("/models")
    items = resp.json().get("data", []) if resp.status_code == 200 else []
    if not items:
        raise InputError(f"{base}/models lists no model; pass --endpoint-model NAME")
    return str(items[0]["id"])


def choice_probs(response: Mapping, labels: Sequence[str]) -> np.ndarray:
    """Label probabilities from one chat-completion response (see the module doc); uniform when
    the answer names no label."""
    choice = (response.get("choices") or [{}])[0]
    content = ((choice.get("logprobs") or {}).get("content")) or []
    probs = np.zeros(len(labels))
    if content:
        for cand in content[0].get("top_logprobs") or [content[0]]:
            j = _label_of_token(str(cand.get("token", "")), labels)
            if j is not None:
                probs[j] += math.exp(float(cand.get("logprob", -math.inf)))
    if probs.sum() == 0:
        answer = str((choice.get("message") or {}).get("content") or "")
        j = _label_of_answer(answer, labels)
        if j is not None:
            probs[j] = 1.0
    if probs.sum() == 0:
        log.warning("the server's answer names no label; its pre-label is uniform")
        return np.full(len(labels), 1.0 / len(labels))
    return probs / probs.sum()


def _label_of_token(token: str, labels: Sequence[str]) -> int | None:
    """The one label that ``token`` (stripped, any case) begins, else None."""
    t = token.strip().lower()
    if not t:
        return None
    hits = [j for j, lab in enumerate(labels) if lab.lower().startswith(t)]
    return hits[0] if len(hits) == 1 else None


def _label_of_answer(answer: str, labels: Sequence[str]) -> int | None:
    """The label a free-text answer gives (the first word, then any exact mention)."""
    words = answer.strip().strip(".:").lower().split()
    first = words[0].strip(".,:;\"'") if words else ""
    for j, lab in enumerate(labels):
        if first == lab.lower():
            return j
    hits = [j for j, lab in enumerate(labels) if lab.lower() in answer.lower()]
    return hits[0] if len(hits) == 1 else None
