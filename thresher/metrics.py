"""Classification metrics over arrays, the one definition every stage and the loop report.

``gold`` and ``pred`` are integer class indices; ``probs`` is (n, k) with rows summing to 1.
Macro-F1 averages the per-class F1 over the classes present in ``gold`` or ``pred`` (sklearn's
default): a class absent from both says nothing about the model and does not count as 0.

Directions: accuracy, F1 higher = better (0..1); ECE lower = better (0..1).
"""

from __future__ import annotations

N_BINS = 15


def accuracy(gold, pred) -> float:
    """Fraction of exact matches (higher = better)."""
    import numpy as np

    gold, pred = np.asarray(gold), np.asarray(pred)
    return float((gold == pred).mean()) if len(gold) else 0.0


def per_class_f1(gold, pred, n_classes: int) -> list[float]:
    """F1 of each class index 0..n_classes-1 (0 when a class is neither gold nor predicted)."""
    import numpy as np

    gold, pred = np.asarray(gold), np.asarray(pred)
    out = []
    for c in range(n_classes):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        out.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return out


def macro_f1(gold, pred, n_classes: int | None = None) -> float:
    """Mean F1 over the classes present in ``gold`` or ``pred`` (sklearn's default; higher =
    better)."""
    import numpy as np

    gold, pred = np.asarray(gold), np.asarray(pred)
    if len(gold) == 0:
        return 0.0
    k = int(max(gold.max(), pred.max())) + 1 if n_classes is None else n_classes
    present = sorted(set(gold.tolist()) | set(pred.tolist()))
    scores = per_class_f1(gold, pred, k)
    return float(np.mean([scores[c] for c in present]))


def expected_calibration_error(probs, gold, n_bins: int = N_BINS) -> float:
    """Top-label ECE with ``n_bins`` equal-width confidence bins: sum over bins of
    |accuracy - mean confidence| weighted by the bin's share of examples (lower = better)."""
    import numpy as np

    probs, gold = np.asarray(probs, dtype=float), np.asarray(gold)
    if len(gold) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)  # bin i = [i/n, (i+1)/n)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def probs_macro_f1(gold, probs) -> tuple[float, float]:
    """(macro-F1, accuracy) of ``argmax(probs)`` against ``gold`` (higher = better)."""
    import numpy as np

    probs = np.asarray(probs)
    pred = probs.argmax(axis=1)
    return macro_f1(gold, pred, probs.shape[1]), accuracy(gold, pred)
