"""Fixtures of the loop tests: a small planted text classification set."""

from __future__ import annotations

import numpy as np
import pytest

VOCAB = {
    "sport": "goal match team score league coach player stadium win season".split(),
    "food": "recipe cook bake flavor dish sauce oven taste menu chef".split(),
    "tech": "laptop code software chip server app battery screen cloud data".split(),
}
FILLER = "the a of and to in it is was on for with as at by this that".split()


def planted_corpus(n: int = 240, seed: int = 0, signal: int = 2) -> tuple[list[str], list[str]]:
    """Texts of filler words plus ``signal`` words from their class's vocabulary (some rows get
    a word from another class too, so the task is not trivially separable)."""
    rng = np.random.default_rng(seed)
    labels = list(VOCAB)
    texts, ys = [], []
    for i in range(n):
        label = labels[i % len(labels)]
        words = list(rng.choice(FILLER, size=8))
        words += list(rng.choice(VOCAB[label], size=signal))
        if rng.random() < 0.3:
            other = labels[(labels.index(label) + 1) % len(labels)]
            words.append(str(rng.choice(VOCAB[other])))
        rng.shuffle(words)
        texts.append(" ".join(words) + f" #{i}")
        ys.append(label)
    return texts, ys


@pytest.fixture
def planted():
    return planted_corpus()


@pytest.fixture
def make_planted():
    """The ``planted_corpus`` function, for tests that need other sizes or seeds."""
    return planted_corpus
