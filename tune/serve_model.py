"""The model ``thresher serve`` answers with: a finished run's base + LoRA adapter merged into one
plain model (no adapter indirection per layer: faster), in bf16 where the hardware has it.

``ServedModel`` is what the HTTP app (``tune.serve_app``) and a Ray Serve deployment call:
``predict(texts)`` (classify runs, and SFT runs trained on labels) and ``generate(prompts, n)``
(SFT runs trained on instruction/response pairs). Both are synchronous and not thread-safe:
callers run them from one thread at a time (the batcher does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.errors import ThresherError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
CLASSIFY, GENERATE = "classify", "generate"


def choose_precision(precision: str, device) -> str:
    """``bf16`` or ``fp32`` for serving on ``device``: ``auto`` picks bf16 on a GPU that supports
    it or a CPU with native bf16 units (``thresher.embeddings.cpu_has_bf16``; emulated bf16 is
    several times slower than fp32), else fp32."""
    import torch

    if precision not in PRECISIONS:
        raise ThresherError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    from thresher.embeddings import cpu_has_bf16

    return "bf16" if cpu_has_bf16() else "fp32"


@dataclass
class ServedModel:
    """A run's merged model in eval mode. ``kind`` is ``classify`` (``predict``) or ``generate``
    (``generate``); ``labels`` are the classes in probability-column order (empty for generate)."""

    name: str
    run_dir: Path
    kind: str
    labels: list[str]
    model: Any
    tokenizer: Any
    options: Any  # tune.options.TuneOptions
    device: Any
    precision: str

    @classmethod
    def load(
        cls, run_dir: str | Path, *, device: str | None = None, precision: str = "auto"
    ) -> ServedModel:
        """Load ``run_dir`` (a finished run), merge its adapter into a private copy of the base
        and cast it to the chosen precision."""
        import torch

        from tune.predict import load_run, unload_run
        from tune.runtime import default_device, read_run_config, trained_on_pairs

        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        dev = default_device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ThresherError("--device cuda: no CUDA GPU is visible; use --device cpu")
        chosen = choose_precision(precision, dev)
        # load_run caches its model per process and merging rewrites that model's weights, so
        # empty the cache around the load: this copy is ours alone and nobody else's is touched.
        unload_run(run_dir)
        try:
            loaded = load_run(run_dir, str(dev), quantized=False)
        finally:
            unload_run(run_dir)
        model = loaded.model.merge_and_unload()
        model = model.to(dtype=torch.bfloat16 if chosen == "bf16" else torch.float32).eval()
        kind = GENERATE if trained_on_pairs(config) else CLASSIFY
        log.debug("loaded %s (%s, %s, %s)", run_dir.name, kind, dev, chosen)
        return cls(
            name=str(config.get("run") or run_dir.name),
            run_dir=run_dir,
            kind=kind,
            labels=list(loaded.labels) if kind == CLASSIFY else [],
            model=model,
            tokenizer=loaded.tokenizer,
            options=loaded.options,
            device=dev,
            precision=chosen,
        )

    def predict(self, texts: list[str]):
        """``(labels, probs)``: the predicted label per text and the class probabilities, shape
        (len(texts), len(self.labels)), rows in input order (higher = more likely)."""
        from tune.modeling import score_texts

        if self.kind != CLASSIFY:
            raise ThresherError(f"{self.name} generates text; it has no classes to predict")
        probs = score_texts(
            self.model,
            self.tokenizer,
            list(texts),
            task=self.options.task,
            labels=self.labels,
            template=self.options.prompt_template,
            max_length=self.options.max_length,
            batch_size=max(1, len(texts)),
            device=self.device,
        )
        return [self.labels[i] for i in probs.argmax(axis=1)], probs

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts`` (each filled into the run's prompt template, as in
        training), at most ``max_new_tokens`` tokens each, without the prompt."""
        import torch

        tok = self.tokenizer
        eos, bos = tok.eos_token_id, tok.bos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        rows = []
        for prompt in prompts:
            ids = tok(self.options.prompt_template.replace("{text}", prompt))["input_ids"]
            if ids and ids[-1] == eos and eos != bos:
                ids = ids[:-1]  # some tokenizers end every encoding with eos (as in training)
            rows.append(ids[-self.options.max_length :])
        width = max(len(r) for r in rows)
        # left padding: every row's last prompt token sits at the same position
        x = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device
        )
        with torch.no_grad():
            out = self.model.generate(
                input_ids=x,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        return [tok.decode(row[width:], skip_special_tokens=True).strip() for row in out.tolist()]
