"""Synthetic news-like corpus with planted exact and near duplicates (seeded), for dedup.

Each planted cluster is an original plus 1-3 variants: an exact copy (case/whitespace changed),
word edits of 1-5 % (substitute/insert/delete), or a truncation to 90-97 % of the words. The other
documents are unique. ``truth`` gives the cluster id of every document (-1 when unique).
"""

from __future__ import annotations

import numpy as np


def _vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(2, 11, size)
    words = {"".join(rng.choice(letters, n)) for n in lengths}
    return sorted(words)


def edit_words(
    words: list[str], rng: np.random.Generator, vocab: list[str], rate: float
) -> list[str]:
    out = list(words)
    n_edits = max(1, round(rate * len(words)))
    for _ in range(n_edits):
        op = rng.integers(3)
        pos = int(rng.integers(len(out)))
        if op == 0:
            out[pos] = vocab[int(rng.integers(len(vocab)))]
        elif op == 1:
            out.insert(pos, vocab[int(rng.integers(len(vocab)))])
        elif len(out) > 3:
            del out[pos]
    return out


def make_corpus(
    n_docs: int,
    *,
    dup_fraction: float = 0.2,
    mean_words: int = 150,
    vocab_size: int = 30_000,
    seed: int = 0,
) -> tuple[list[str], np.ndarray, list[str]]:
    """``n_docs`` texts, the planted cluster id per text (-1 unique) and the variant kind per text
    ("original", "unique", "exact", "near", "truncated"). Order is shuffled (seeded)."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng, vocab_size)
    ranks = np.arange(1, len(vocab) + 1)
    probs = 1.0 / ranks**1.05
    probs /= probs.sum()
    texts: list[str] = []
    truth: list[int] = []
    kinds: list[str] = []
    n_clusters = 0
    vocab_arr = np.array(vocab, dtype=object)
    lengths = rng.integers(int(mean_words * 0.8), int(mean_words * 1.2) + 1, size=n_docs)
    flat = vocab_arr[rng.choice(len(vocab), int(lengths.sum()), p=probs)].tolist()
    ends = np.cumsum(lengths).tolist()
    doc_no = 0
    while len(texts) < n_docs:
        words = flat[ends[doc_no] - lengths[doc_no] : ends[doc_no]]
        doc_no += 1
        if rng.random() < dup_fraction:
            cid = n_clusters
            n_clusters += 1
            texts.append(" ".join(words))
            truth.append(cid)
            kinds.append("original")
            for _ in range(int(rng.integers(1, 4))):
                kind = ("exact", "near", "truncated")[int(rng.integers(3))]
                if kind == "exact":
                    variant = "  ".join(words).upper() if rng.random() < 0.5 else " ".join(words)
                elif kind == "near":
                    variant = " ".join(
                        edit_words(words, rng, vocab, float(rng.uniform(0.01, 0.05)))
                    )
                else:
                    keep = int(round(len(words) * float(rng.uniform(0.90, 0.97))))
                    variant = " ".join(words[:keep])
                texts.append(variant)
                truth.append(cid)
                kinds.append(kind)
        else:
            texts.append(" ".join(words))
            truth.append(-1)
            kinds.append("unique")
    texts, truth, kinds = texts[:n_docs], truth[:n_docs], kinds[:n_docs]
    order = rng.permutation(len(texts))
    return (
        [texts[i] for i in order],
        np.asarray(truth)[order],
        [kinds[i] for i in order],
    )
