"""Typed options for tuning, resolved from the config by the caller (the library never reads it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from thresher.split import SplitSpec

COMPILE_MODES = ("auto", "on", "off", "graphs")
DEFAULT_PROMPT = "Classify the text.\nText: {text}\nLabel:"


@dataclass(frozen=True)
class DataOptions:
    """How the training set is built from the project (see tune/data.py)."""

    mode: str = "curated"  # curated | raw
    label_issues: str = "exclude"  # exclude | downweight | relabel | keep
    issue_weight: float = 0.3  # loss weight of suspected label errors when downweighting
    issue_min_prob: float = 0.0  # a flag counts when the score stage's predicted_prob >= this
    curate_val: bool = False  # apply the policy to the validation split too (never to test)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    # sft on instruction/response pairs: the response column (or metadata key); None = labels
    response_column: str | None = None

    def split_spec(self) -> SplitSpec:
        """The project split's fractions and seed (``thresher.split``)."""
        return SplitSpec(self.val_fraction, self.test_fraction, self.seed)


@dataclass(frozen=True)
class TuneOptions:
    """One training recipe. ``max_steps`` > 0 overrides ``epochs`` (optimizer steps)."""

    base: str | None = None  # None/"default" = offline default for the task
    task: str = "classify"  # classify | sft
    run: str | None = None  # run name; None = run-<timestamp>
    epochs: float = 3.0
    max_steps: int = 0
    min_steps: int = 150  # epochs-based runs train at least this many optimizer steps (0 = off)
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_length: int = 128
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ()  # empty = peft's default for the architecture
    precision: str = "auto"  # auto (bf16/fp16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    qlora: bool = False  # 4-bit NF4 base (needs bitsandbytes >= 0.48; GPU or CPU)
    gradient_checkpointing: bool = False
    # torch.compile the transformer blocks: auto (CUDA only) | on | off; graphs = the whole training
    # forward with static (bucketed) shapes, replayed as CUDA graphs on a GPU (tune/modeling.py)
    compile: str = "auto"
    # warm start: a finished run folder (or its adapter/) whose LoRA weights and head start this run
    init_adapter: str | None = None
    strategy: str = "ddp"  # several processes (torchrun): ddp (replicas) | fsdp (sharded)
    eval_steps: int = 0  # 0 = once per epoch
    save_steps: int = 50  # checkpoint every N optimizer steps (for --resume)
    patience: int = 3  # early stopping: evaluations without val macro-F1 gain
    group_by_length: bool = True
    prompt_template: str = DEFAULT_PROMPT
    low_confidence: float = 0.6  # errors.parquet also lists correct predictions below this prob
    eval_batch_size: int = 64
    seed: int = 0
    data: DataOptions = field(default_factory=DataOptions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TuneOptions:
        raw = dict(raw)
        raw.setdefault("min_steps", 0)  # saved before the step floor existed: epochs only
        data = DataOptions(**raw.pop("data", {}))
        raw["target_modules"] = tuple(raw.get("target_modules") or ())
        return cls(data=data, **raw)


def options_from_config(config: Any, **extra: Any) -> TuneOptions:
    """``TuneOptions`` from a resolved ``thresher.config.Config`` (its ``tune`` section, the model
    for the task from ``models``, and the project seed); ``extra`` sets fields directly."""
    section = config.section("tune")
    task = section["task"]
    base = config.get("models.classifier" if task == "classify" else "models.sft")
    seed = int(config.get("seed"))
    data = DataOptions(
        mode=section["data"],
        label_issues=section["label_issues"],
        issue_weight=float(section["issue_weight"]),
        issue_min_prob=float(section["issue_min_prob"]),
        curate_val=bool(section["curate_val"]),
        val_fraction=float(section["val_fraction"]),
        test_fraction=float(section["test_fraction"]),
        seed=seed,
        response_column=section.get("response_column") or None,
    )
    fields = {
        k: section[k]
        for k in (
            "epochs",
            "max_steps",
            "min_steps",
            "batch_size",
            "grad_accum",
            "lr",
            "max_length",
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "precision",
            "qlora",
            "gradient_checkpointing",
            "compile",
            "strategy",
            "eval_steps",
            "patience",
            "save_steps",
            "low_confidence",
            "prompt_template",
        )
    }
    fields["target_modules"] = tuple(section["target_modules"] or ())
    fields["compile"] = switch(fields["compile"])
    fields["epochs"] = float(fields["epochs"])
    fields["lr"] = float(fields["lr"])
    return TuneOptions(base=base, task=task, seed=seed, data=data, **{**fields, **extra})


def switch(value: Any) -> str:
    """auto | on | off | graphs from config text or YAML booleans (YAML reads a bare ``off`` as
    False)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    aliases = {"true": "on", "yes": "on", "1": "on", "false": "off", "no": "off", "0": "off"}
    text = aliases.get(text, text)
    if text not in COMPILE_MODES:
        from thresher.errors import ConfigError

        raise ConfigError(f"tune.compile is {value!r}; use auto, on, off or graphs")
    return text
