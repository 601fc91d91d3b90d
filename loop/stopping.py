"""When to stop labelling: three stopping rules, checked every round (pure functions).

- **stabilizing predictions** (Bloodgood & Vijay-Shanker, 2009): Cohen's kappa between two
  successive rounds' predicted labels on a fixed *stop set* (records drawn once, never chosen
  for it by the model). Once the model's answers on the same texts stop changing, more labels
  change little. Met when the last ``window`` kappas are all at least ``kappa`` (high = stable).
- **confidence**: the model's mean top-1 probability on the stop set (high = sure). Met when it
  reaches ``confidence``. A miscalibrated or hard task may never meet it; it is reported anyway.
- **budget**: the labels used so far against ``budget`` (None = no budget: never met).

``recommend`` turns the checks into one line: stop when the budget is spent, or when predictions
have stabilised (the rule with the best record in the literature and in ``thresher simulate``);
confidence alone only supports that advice. ``stop_points`` replays the rules over a learning
curve, which is how ``thresher simulate`` reports where each rule would have stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RULES = ("stabilizing_predictions", "confidence", "budget")
STOP, CONTINUE = "stop", "continue"


@dataclass(frozen=True)
class StoppingOptions:
    """Thresholds of the rules (``loop.stopping`` in the config). ``stop_set``: how many records
    the stop set holds (drawn once, seeded)."""

    kappa: float = 0.99
    window: int = 3
    confidence: float = 0.9
    budget: int | None = None
    stop_set: int = 1000

    def __post_init__(self) -> None:
        if not -1.0 <= self.kappa <= 1.0:
            raise ValueError(f"stopping kappa must be in [-1, 1], got {self.kappa}")
        if self.window < 1 or self.stop_set < 1:
            raise ValueError("stopping window and stop_set must be at least 1")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"stopping confidence must be in [0, 1], got {self.confidence}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"stopping budget must be at least 1 label, got {self.budget}")


@dataclass(frozen=True)
class RuleCheck:
    """One rule this round: its value, the threshold it is held to, whether it is met."""

    rule: str
    value: float | None
    threshold: float | None
    met: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def cohen_kappa(a: Sequence, b: Sequence) -> float:
    """Cohen's kappa of two labelings of the same items (1 = identical, 0 = chance agreement).
    Two identical constant labelings give 1."""
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    if len(a) != len(b):
        raise ValueError(f"kappa needs two labelings of the same items: {len(a)} vs {len(b)}")
    if len(a) == 0:
        return float("nan")
    observed = float(np.mean(a == b))
    values = set(a.tolist()) | set(b.tolist())
    chance = sum(float(np.mean(a == v)) * float(np.mean(b == v)) for v in values)
    if chance >= 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - chance) / (1.0 - chance)


def stabilizing_predictions(kappas: Sequence[float | None], opts: StoppingOptions) -> RuleCheck:
    """``kappas``: per round, the kappa against the round before (None for the first round)."""
    known = [k for k in kappas if k is not None and not np.isnan(k)]
    last = known[-1] if known else None
    recent = known[-opts.window :]
    met = len(recent) == opts.window and min(recent) >= opts.kappa
    if last is None:
        detail = "needs two rounds of predictions on the stop set"
    else:
        detail = f"kappa >= {opts.kappa} for {opts.window} rounds in a row"
    return RuleCheck(RULES[0], _round(last), opts.kappa, met, detail)


def confidence_rule(mean_confidence: float | None, opts: StoppingOptions) -> RuleCheck:
    """``mean_confidence``: the mean top-1 probability on the stop set this round."""
    met = mean_confidence is not None and mean_confidence >= opts.confidence
    detail = f"mean top-1 probability on the stop set >= {opts.confidence}"
    return RuleCheck(RULES[1], _round(mean_confidence), opts.confidence, met, detail)


def budget_rule(n_labels: int, opts: StoppingOptions) -> RuleCheck:
    if opts.budget is None:
        return RuleCheck(RULES[2], float(n_labels), None, False, "no budget set (loop.stopping)")
    met = n_labels >= opts.budget
    return RuleCheck(RULES[2], float(n_labels), float(opts.budget), met, "labels used")


def check_rules(
    kappas: Sequence[float | None],
    mean_confidence: float | None,
    n_labels: int,
    opts: StoppingOptions,
) -> list[RuleCheck]:
    return [
        stabilizing_predictions(kappas, opts),
        confidence_rule(mean_confidence, opts),
        budget_rule(n_labels, opts),
    ]


def recommend(checks: Sequence[RuleCheck]) -> tuple[str, str]:
    """(``stop`` | ``continue``, why): the budget or stabilised predictions stop the loop."""
    by = {c.rule: c for c in checks}
    if by["budget"].met:
        return STOP, "the labelling budget is spent"
    if by["stabilizing_predictions"].met:
        extra = " and the model is confident" if by["confidence"].met else ""
        return STOP, f"predictions on the stop set have stabilised{extra}"
    if by["confidence"].met:
        return CONTINUE, "the model is confident, but its predictions still change"
    return CONTINUE, "predictions still change between rounds"


def stop_points(
    kappas: Sequence[float | None],
    confidences: Sequence[float | None],
    n_labels: Sequence[int],
    opts: StoppingOptions,
) -> dict[str, int | None]:
    """For a curve (one entry per round), the first round index at which each rule is met, and
    ``recommended``: the first round ``recommend`` says stop (None = never within the curve)."""
    first: dict[str, int | None] = dict.fromkeys((*RULES, "recommended"))
    for r in range(len(n_labels)):
        checks = check_rules(kappas[: r + 1], confidences[r], int(n_labels[r]), opts)
        for c in checks:
            if c.met and first[c.rule] is None:
                first[c.rule] = r
        if first["recommended"] is None and recommend(checks)[0] == STOP:
            first["recommended"] = r
    return first


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
