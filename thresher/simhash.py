"""Candidate near-duplicate pairs by random-hyperplane LSH (SimHash) with banding.

Each row gets ``bands`` keys of ``BITS`` sign bits, one bit per random hyperplane through the
origin. Two rows at angle θ agree on one bit with probability ``1 − θ/π`` whatever the data
(Charikar 2002), so they share at least one band key with probability
``1 − (1 − (1 − θ/π)^BITS)^bands``. ``bands_for`` picks the number of bands that makes this at
least ``RECALL_AT_THRESHOLD`` for a pair exactly at the similarity threshold (and more for any
closer pair); rows sharing a key are the candidates, to be verified by exact cosine.

Cost is linear in rows (one matmul with the hyperplanes, one sort per band), so this is the path
for high thresholds such as semantic dedup's 0.95. Lower thresholds need many more bands
(``bands_for(0.9)`` is about 680): there a neighbour index is cheaper.

Pure functions over arrays; the hyperplanes come from a fixed seed, so a run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BITS = 32  # hyperplanes per band: one uint32 key
RECALL_AT_THRESHOLD = 0.99  # chance that a pair exactly at the threshold shares a band
MAX_RUN = 64  # rows sharing one band key beyond this are compared with each other exactly
KEY_BYTES = 256 << 20  # band keys held at once (bands are hashed in groups within this)
HASH_ROWS = 4_096  # rows hashed per matmul (a 4096 × bands·32 float32 block: 72 MB at 138 bands)
SEED = 20_240_611


def bands_for(
    threshold: float, bits: int = BITS, recall: float = RECALL_AT_THRESHOLD
) -> int | float:
    """Bands needed so that a pair at cosine ``threshold`` shares a key with chance ≥ ``recall``
    (a very large number for low thresholds; ``math.inf`` at or below −1)."""
    if threshold >= 1.0:
        return 1
    if threshold <= -1.0:
        return math.inf
    agree = (1.0 - math.acos(threshold) / math.pi) ** bits
    if agree <= 0.0:
        return math.inf
    return max(1, math.ceil(math.log(1.0 - recall) / math.log1p(-agree)))


def pair_chance(similarity: float, bands: int, bits: int = BITS) -> float:
    """Chance that two rows at cosine ``similarity`` share at least one of ``bands`` keys."""
    agree = (1.0 - math.acos(max(-1.0, min(1.0, similarity))) / math.pi) ** bits
    return 1.0 - (1.0 - agree) ** bands


@dataclass(frozen=True)
class Candidates:
    """``pairs``: int64 (p, 2), i < j, unique, rows that share a band key in a run of at most
    ``MAX_RUN`` rows. ``dense``: sorted rows that were in a longer run in some band (groups of
    near-identical rows); every pair among them must be checked."""

    pairs: np.ndarray
    dense: np.ndarray
    bands: int


def candidate_pairs(vectors, bands: int, *, seed: int = SEED, key_bytes: int = KEY_BYTES):
    """The candidate pairs of the rows of ``vectors`` (2-D float array or memmap) over ``bands``
    bands of ``BITS`` hyperplanes. All-zero rows get no candidates (their cosine with any row
    is 0)."""
    n, dim = vectors.shape
    planes = np.random.default_rng(seed).standard_normal((dim, bands * BITS), dtype=np.float32)
    nonzero = _nonzero_rows(vectors)
    group = max(1, min(bands, key_bytes // max(4 * n, 1)))
    codes: list[np.ndarray] = [np.zeros(0, np.int64)]
    dense: list[np.ndarray] = [np.zeros(0, np.int64)]
    for first in range(0, bands, group):
        last = min(bands, first + group)
        keys = _band_keys(vectors, planes[:, first * BITS : last * BITS])
        for band_keys in keys:
            found, crowded = _colliding(band_keys, nonzero)
            codes.append(found[:, 0] * n + found[:, 1])
            dense.append(crowded)
        codes = [np.unique(np.concatenate(codes))]  # bounded by distinct pairs so far
    code = codes[0]
    pairs = np.stack([code // max(n, 1), code % max(n, 1)], axis=1) if len(code) else code
    return Candidates(
        pairs=pairs.reshape(-1, 2).astype(np.int64),
        dense=np.unique(np.concatenate(dense)),
        bands=bands,
    )


def _nonzero_rows(vectors) -> np.ndarray:
    n = len(vectors)
    keep = np.empty(n, dtype=bool)
    for start in range(0, n, HASH_ROWS):
        block = np.asarray(vectors[start : start + HASH_ROWS], dtype=np.float32)
        keep[start : start + len(block)] = np.any(block != 0, axis=1)
    return keep


def _band_keys(vectors, planes: np.ndarray) -> np.ndarray:
    """uint32 keys, shape (bands in ``planes``, rows): bit b of a key is the sign of the row
    against hyperplane b of that band."""
    n = len(vectors)
    bands = planes.shape[1] // BITS
    keys = np.empty((bands, n), dtype=np.uint32)
    for start in range(0, n, HASH_ROWS):
        block = np.asarray(vectors[start : start + HASH_ROWS], dtype=np.float32)
        packed = np.packbits(block @ planes > 0, axis=1)  # (rows, bands * 4) bytes
        keys[:, start : start + len(block)] = packed.view(">u4").T
    return keys


def _colliding(keys: np.ndarray, nonzero: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of nonzero rows with equal ``keys`` in runs of at most ``MAX_RUN`` rows, and
    the rows of longer runs."""
    rows = np.flatnonzero(nonzero)
    order = rows[np.argsort(keys[rows], kind="stable")]
    ordered = keys[order]
    breaks = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    starts = np.concatenate([[0], breaks])
    lengths = np.diff(np.concatenate([starts, [len(order)]]))
    crowded_runs = lengths > MAX_RUN
    crowded = np.zeros(0, np.int64)
    if crowded_runs.any():
        crowded = np.concatenate(
            [
                order[s : s + m]
                for s, m in zip(starts[crowded_runs], lengths[crowded_runs], strict=True)
            ]
        )
    small = np.repeat((lengths >= 2) & ~crowded_runs, lengths)
    found = [np.zeros((0, 2), np.int64)]
    offset = 1
    same = small[:-1] & (ordered[1:] == ordered[:-1])
    while same.any():
        at = np.flatnonzero(same)
        a, b = order[at], order[at + offset]
        found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
        offset += 1
        if offset >= len(order):
            break
        same = small[:-offset] & (ordered[offset:] == ordered[:-offset])
    return np.concatenate(found).astype(np.int64), np.sort(crowded).astype(np.int64)
