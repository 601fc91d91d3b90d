"""Seeded synthetic corpora with planted label noise, for the score tests."""

from __future__ import annotations

import numpy as np

VOCAB = {
    "pos": "great wonderful superb charming delightful moving brilliant funny warm clever".split(),
    "neg": "dull boring tedious clumsy awful flat lifeless messy bland tiresome".split(),
    "neu": "plot scene actor film story script camera director minutes cast music".split(),
}


def make_corpus(n: int = 400, flip: float = 0.1, seed: int = 0):
    """Texts from two classes (class words + shared filler), and labels with ``flip`` of them
    flipped. Returns (texts, noisy labels, true labels, flipped mask)."""
    rng = np.random.default_rng(seed)
    true = rng.choice(["pos", "neg"], size=n)
    texts = []
    for lab in true:
        words = list(rng.choice(VOCAB[lab], size=3)) + list(rng.choice(VOCAB["neu"], size=5))
        # A little cross-class vocabulary so the task is not trivially separable.
        if rng.random() < 0.3:
            other = "neg" if lab == "pos" else "pos"
            words.append(str(rng.choice(VOCAB[other])))
        rng.shuffle(words)
        texts.append(" ".join(words))
    flipped = rng.random(n) < flip
    noisy = np.where(flipped, np.where(true == "pos", "neg", "pos"), true)
    return texts, noisy.tolist(), true.tolist(), flipped
