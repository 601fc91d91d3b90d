"""The type of every config key, checked after each layer (file, environment, flags).

One typed model (pydantic v2) is built from ``thresher.config_defaults.DEFAULTS``: the keys
declared in ``KEYS`` get their type, range or choices from there; any other key (one added to the
template later) is checked against its default's type (bool, int, float, str, list; a null default
accepts anything until declared). Validation returns the typed values (``0.9`` from the
environment is a float, ``[emb, svm]`` or ``emb,svm`` a list of strings), so callers never convert
by hand. A bad value is one ``ConfigError`` line naming the key, its value, the layer it came from
and the type expected.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thresher.errors import ConfigError


@dataclass(frozen=True)
class Spec:
    """The type of one config key.

    ``kind``: int | float | bool | str | choice | list | descriptions (a mapping of name to a
    string or a list of strings) | any. ``low``/``high``: inclusive bounds
    of a number (``above``: ``low`` is exclusive). ``choices``: the allowed strings of a choice,
    or of each list item. ``non_empty``: a list needs at least one item. ``nullable``: null is
    allowed (always so when the default is null).
    ``aliases``: values mapped before the check (YAML reads a bare ``off`` as ``False``)."""

    kind: str
    low: float | None = None
    high: float | None = None
    above: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    non_empty: bool = False
    aliases: tuple[tuple[Any, str], ...] = ()

    def expected(self) -> str:
        """What a user should write, in words ("a number between 0 and 1")."""
        if self.kind in ("int", "float"):
            text = "an integer" if self.kind == "int" else "a number"
            if self.low is not None and self.high is not None and not self.above:
                text += f" between {_num(self.low)} and {_num(self.high)}"
            elif self.low is not None and self.high is not None:
                text += f" above {_num(self.low)} and at most {_num(self.high)}"
            elif self.low is not None:
                text += f" {'>' if self.above else '>='} {_num(self.low)}"
            elif self.high is not None:
                text += f" <= {_num(self.high)}"
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = "a string"
        elif self.kind == "choice":
            text = "one of " + ", ".join(self.choices)
        elif self.kind == "list":
            items = "names from " + ", ".join(self.choices) if self.choices else "strings"
            text = f"a {'non-empty ' if self.non_empty else ''}list of {items}"
            text += " (a YAML list or one comma-separated string)"
        elif self.kind == "descriptions":
            text = "a mapping of label: description (a string or a list of strings)"
        else:
            text = "any value"
        return text + (" or null" if self.nullable else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _int(low: int | None = None, high: int | None = None, **kw: Any) -> Spec:
    return Spec("int", low=low, high=high, **kw)


def _float(low: float | None = None, high: float | None = None, **kw: Any) -> Spec:
    return Spec("float", low=low, high=high, **kw)


def _choice(*choices: str, **kw: Any) -> Spec:
    return Spec("choice", choices=choices, **kw)


_FRACTION = _float(0, 1)
_COUNT = _int(1)  # a size, a batch, a count: at least 1
_STEPS = _int(0)  # 0 means "off" or "not set"

# Declared types. Keys missing here are typed by their default (see ``spec_for``).
KEYS: dict[str, Spec] = {
    "labels": Spec("list"),
    "label_descriptions": Spec("descriptions", nullable=True),
    "seed": _int(0),
    "columns.text": Spec("str"),
    "columns.label": Spec("str", nullable=True),
    "columns.id": Spec("str", nullable=True),
    "ingest.format": _choice("auto", "csv", "tsv", "jsonl", "parquet", "hf"),
    "ingest.max_text_chars": _COUNT,
    "ingest.max_line_bytes": _COUNT,
    "ingest.batch_size": _COUNT,
    "dedup.threshold": _FRACTION,
    "dedup.shingle": _choice("word", "char"),
    "dedup.ngram": _COUNT,
    "dedup.num_perm": _COUNT,
    "dedup.punctuation": Spec("bool"),
    "dedup.semantic": Spec("bool"),
    "dedup.semantic_threshold": _float(-1, 1),
    "dedup.batch_size": _COUNT,
    "dedup.engine": _choice("local", "ray"),
    "score.folds": _int(2),
    "score.repeats": _COUNT,
    "score.learners": Spec("list", choices=("emb", "svm", "nb", "lr"), non_empty=True),
    "score.second_pass": Spec("bool"),
    "score.embeddings": Spec("bool"),
    "score.bias_lexicon": Spec("str", nullable=True),
    "score.bias_lexicon_replace": Spec("bool"),
    "score.bias_alpha": _FRACTION,
    "score.bias_min_count": _COUNT,
    "score.engine": _choice("auto", "local", "stream", "ray"),
    "score.stream_above": _STEPS,
    "score.batch_size": _COUNT,
    "score.class_prior": Spec("str"),
    "loop.strategy": Spec("str"),
    "loop.size": _COUNT,
    "loop.diversity_factor": _COUNT,
    "loop.rereview_threshold": _FRACTION,
    "loop.rereview_size": _STEPS,
    "loop.relabel": _choice("auto", "off"),
    "loop.learner": _choice("fast", "tfidf", "lora"),
    "loop.warm_start": Spec("bool"),
    "loop.labels": _choice("reviewed", "all"),
    "loop.stop_kappa": _float(-1, 1),
    "loop.stop_window": _COUNT,
    "loop.stop_confidence": _FRACTION,
    "loop.stop_set": _COUNT,
    "loop.budget": _int(1, nullable=True),
    "simulate.rounds": _COUNT,
    "simulate.size": _COUNT,
    "simulate.seed_size": _int(1, nullable=True),
    "simulate.cold_start": _choice("random", "coverage"),
    "simulate.strategies": Spec("list", non_empty=True),
    "simulate.seeds": _COUNT,
    "simulate.learner": _choice("fast", "tfidf"),
    "simulate.noise": _FRACTION,
    "simulate.test_fraction": _FRACTION,
    "simulate.target": _FRACTION,
    "models.embedding": Spec("str"),
    "models.classifier": Spec("str"),
    "models.sft": Spec("str"),
    "review.dataset": Spec("str", nullable=True),
    "review.workspace": Spec("str"),
    "review.min_submitted": _COUNT,
    "review.batch_size": _int(1, 500),
    "review.concurrency": _COUNT,
    "review.priority": Spec("str"),
    "review.vectors": Spec("bool"),
    "review.port": _int(0, 65535),
    "tune.task": _choice("classify", "sft"),
    "tune.data": _choice("curated", "raw"),
    "tune.label_issues": _choice("exclude", "downweight", "keep", "relabel"),
    "tune.issue_weight": _FRACTION,
    "tune.issue_min_prob": _FRACTION,
    "tune.curate_val": Spec("bool"),
    "tune.val_fraction": _FRACTION,
    "tune.test_fraction": _FRACTION,
    "tune.epochs": _float(0),  # 0 with max_steps > 0
    "tune.max_steps": _STEPS,
    "tune.min_steps": _STEPS,
    "tune.batch_size": _COUNT,
    "tune.grad_accum": _COUNT,
    "tune.lr": _float(0, above=True),
    "tune.max_length": _COUNT,
    "tune.lora_r": _COUNT,
    "tune.lora_alpha": _COUNT,
    "tune.lora_dropout": _FRACTION,
    "tune.target_modules": Spec("list"),
    "tune.precision": _choice("auto", "bf16", "fp16", "fp32"),
    "tune.qlora": Spec("bool"),
    "tune.gradient_checkpointing": Spec("bool"),
    # YAML 1.1 reads a bare on/off as a boolean
    "tune.compile": _choice("auto", "on", "off", "graphs", aliases=((True, "on"), (False, "off"))),
    "tune.strategy": _choice("ddp", "fsdp"),
    "tune.eval_steps": _STEPS,
    "tune.patience": _COUNT,
    "tune.save_steps": _STEPS,
    "tune.low_confidence": _FRACTION,
    "tune.prompt_template": Spec("str"),
    "tune.response_column": Spec("str", nullable=True),
}


def spec_for(dotted: str, default: Any) -> Spec:
    """The declared spec of ``dotted``, else one derived from its default's type; a null default
    always makes the key nullable."""
    spec = KEYS.get(dotted)
    if spec is None:
        if isinstance(default, bool):
            spec = Spec("bool")
        elif isinstance(default, int):
            spec = Spec("int")
        elif isinstance(default, float):
            spec = Spec("float")
        elif isinstance(default, str):
            spec = Spec("str")
        elif isinstance(default, list):
            spec = Spec("list")
        else:
            spec = Spec("any")
    if default is None and not spec.nullable:
        spec = Spec(**{**spec.__dict__, "nullable": True})
    return spec


def specs(defaults: Mapping[str, Any], prefix: str = "") -> dict[str, Spec]:
    """``{dotted key: Spec}`` for every leaf key of ``defaults``."""
    out: dict[str, Spec] = {}
    for key, value in defaults.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(specs(value, prefix=f"{dotted}."))
        else:
            out[dotted] = spec_for(dotted, value)
    return out


def _reject_bool(value: Any) -> Any:
    # pydantic's lax mode reads True as 1; a boolean where a number belongs is a mistake
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [item.strip() if isinstance(item, str) else item for item in value]
    return value


def _annotation(spec: Spec) -> Any:
    from typing import Annotated, Literal

    from pydantic import BeforeValidator, Field

    if spec.kind in ("int", "float"):
        bound = "gt" if spec.above else "ge"
        constraints = {bound: spec.low} if spec.low is not None else {}
        if spec.high is not None:
            constraints["le"] = spec.high
        if spec.kind == "float":
            constraints["allow_inf_nan"] = False
        base: Any = Annotated[
            int if spec.kind == "int" else float,
            BeforeValidator(_reject_bool),
            Field(**constraints),
        ]
    elif spec.kind == "bool":
        base = bool
    elif spec.kind == "str":
        base = str
    elif spec.kind == "choice":
        aliases = dict(spec.aliases)

        def alias(value: Any) -> Any:
            return aliases.get(value, value) if isinstance(value, bool | str) else value

        base = Annotated[Literal[spec.choices], BeforeValidator(alias)]  # type: ignore[valid-type]
    elif spec.kind == "list":
        item: Any = Literal[spec.choices] if spec.choices else str  # type: ignore[valid-type]
        base = Annotated[
            list[item], BeforeValidator(_split_commas), Field(min_length=int(spec.non_empty))
        ]
    elif spec.kind == "descriptions":
        base = dict[str, Annotated[str, Field(min_length=1)] | list[str]]
    else:
        base = Any
    return base | None if spec.nullable and spec.kind != "any" else base


def build_model(defaults: Mapping[str, Any], prefix: str = "") -> type:
    """A pydantic model of ``defaults`` (a nested mapping; one nested model per section)."""
    from pydantic import ConfigDict, create_model

    fields: dict[str, Any] = {}
    for key, value in defaults.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            fields[key] = (build_model(value, prefix=f"{dotted}."), ...)
        else:
            fields[key] = (_annotation(spec_for(dotted, value)), ...)
    name = "Config_" + (prefix.rstrip(".").replace(".", "_") or "root")
    return create_model(  # type: ignore[call-overload]
        name,
        __config__=ConfigDict(extra="forbid", coerce_numbers_to_str=True, strict=False),
        **fields,
    )


@functools.cache
def _default_model() -> type:
    from thresher.config_defaults import DEFAULTS

    return build_model(DEFAULTS)


def validate_config(
    data: Mapping[str, Any],
    origins: Mapping[str, str] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The typed copy of ``data`` (a full config mapping), or ``ConfigError``: one line naming
    each bad key, its value, where it came from (``origins``: dotted key → layer; the defaults
    when absent) and the type expected. ``defaults``: the mapping the model is built from
    (``thresher.config_defaults.DEFAULTS`` when omitted)."""
    from pydantic import ValidationError

    from thresher.config_defaults import DEFAULTS

    if defaults is None or defaults is DEFAULTS:
        model, defaults = _default_model(), DEFAULTS
    else:
        model = build_model(defaults)
    try:
        typed = model.model_validate(data).model_dump()
    except ValidationError as err:
        raise ConfigError(_message(err, data, origins or {}, defaults)) from None
    _check_label_descriptions(typed, origins or {})
    return typed


def _check_label_descriptions(typed: Mapping[str, Any], origins: Mapping[str, str]) -> None:
    """``label_descriptions`` may only describe labels that ``labels`` names."""
    descriptions = typed.get("label_descriptions")
    if not descriptions:
        return
    labels = list(typed.get("labels") or [])
    unknown = [key for key in descriptions if key not in labels]
    if unknown:
        origin = origins.get("label_descriptions") or "the defaults"
        raise ConfigError(
            f"config key label_descriptions (from {origin}) describes {', '.join(unknown)}, "
            f"not in labels {labels}: name every label under labels: [...] first"
        )


def _message(
    err: Any, data: Mapping[str, Any], origins: Mapping[str, str], defaults: Mapping[str, Any]
) -> str:
    problems: list[str] = []
    seen: set[str] = set()
    for error in err.errors():
        path, node = _key_path(error["loc"], defaults)
        dotted = ".".join(path)
        if dotted in seen:
            continue
        seen.add(dotted)
        if isinstance(node, Mapping):
            expected = "a mapping of keys (a config section)"
        else:
            expected = spec_for(dotted, node).expected()
        origin = origins.get(dotted) or _section_origin(dotted, origins) or "the defaults"
        value = _lookup(data, path)
        problems.append(
            f"config key {dotted} = {_show(value)} (from {origin}): expected {expected}"
        )
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def _key_path(loc: tuple[Any, ...], defaults: Mapping[str, Any]) -> tuple[list[str], Any]:
    """The longest prefix of a pydantic error location that names a config key, and that key's
    default (list indexes and union members are cut off)."""
    path: list[str] = []
    node: Any = defaults
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            break
        path.append(str(part))
        node = node[part]
    return path, node


def _section_origin(dotted: str, origins: Mapping[str, str]) -> str | None:
    # a whole section replaced by a scalar (THRESHER_DEDUP=1) is recorded under the section
    prefix = dotted + "."
    return next((v for k, v in origins.items() if k.startswith(prefix)), None)


def _lookup(data: Mapping[str, Any], path: list[str]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
