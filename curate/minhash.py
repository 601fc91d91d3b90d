"""Vectorised MinHash + LSH over whole Arrow batches (numpy only, no per-document Python loop).

Pipeline, per batch of normalised texts (``curate.normalize.normalized_bytes``):

1. words: found from the 0x20 separators; a word's 64-bit hash mixes its bytes 8 at a time
   (splitmix64 finaliser), so equal words hash equally in every batch and every run;
2. shingles: ``k`` consecutive word hashes combined with odd multipliers (word shingles), or byte
   ``k``-grams of the normalised text (character shingles, ``k`` ≤ 8; characters for ASCII);
   a document shorter than ``k`` gives one shingle (all of it);
3. signature: one-permutation hashing (one hash per shingle picks a bin and a 32-bit value, the
   minimum per bin is kept) with optimal densification (Shrivastava 2017) filling empty bins, so
   ``P[sig_a[i] == sig_b[i]]`` is the Jaccard similarity of the shingle sets, as with ``num_perm``
   independent permutations, at the cost of one hash per shingle instead of ``num_perm``;
4. LSH: ``bands`` × ``rows`` (chosen like datasketch, minimising false positive + false negative
   mass around the threshold); documents sharing a band bucket are candidates;
5. verification: a candidate pair is kept when its estimated Jaccard (the fraction of equal
   signature positions) is ≥ the threshold; clusters are the connected components (union-find).

Memory per document kept between batches: the signature (``4 * num_perm`` bytes: 512 B at 128),
plus 16 B of exact-duplicate key and a few int64 bookkeeping values (~560 B in all at 128).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMPTY = np.uint32(0xFFFFFFFF)
_U64 = np.uint64
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MASKS = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
_DENSIFY_TRIES = 64  # a try fills each empty bin with probability (non-empty bins)/num_perm


@dataclass(frozen=True)
class MinHashOptions:
    """MinHash/LSH settings. ``threshold``: Jaccard similarity (0..1, higher = stricter) above
    which two documents are near duplicates. ``shingle``: ``word`` or ``char``; ``ngram``: words
    (or bytes, ≤ 8) per shingle. ``bands``/``rows``: 0 = chosen from the threshold."""

    threshold: float = 0.45
    num_perm: int = 128
    shingle: str = "word"
    ngram: int = 3
    seed: int = 0
    bands: int = 0
    rows: int = 0
    max_bucket: int = 16


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (returned for chaining)."""
    x ^= x >> _U64(30)
    x *= _M1
    x ^= x >> _U64(27)
    x *= _M2
    x ^= x >> _U64(31)
    return x


def _windows(data: np.ndarray) -> np.ndarray:
    """Unaligned little-endian uint64 view starting at every byte of ``data`` (zero padded)."""
    padded = np.zeros(len(data) + 8, dtype=np.uint8)
    padded[: len(data)] = data
    return np.ndarray(shape=(len(data),), dtype="<u8", buffer=padded, strides=(1,))


def word_hashes(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hash every word of every document. Returns ``(hashes uint64, words_per_doc int64)``;
    the hashes are in document order. ``data``/``offsets`` as from ``normalized_bytes`` (every
    document ends with a space, so a word never spans two documents)."""
    n_docs = len(offsets) - 1
    if len(data) == 0:
        return np.zeros(0, np.uint64), np.zeros(n_docs, np.int64)
    sep = np.empty(len(data) + 1, dtype=bool)
    sep[0] = True
    np.equal(data, 0x20, out=sep[1:])
    edges = np.flatnonzero(sep[1:] != sep[:-1])
    if len(edges) % 2:  # the last document lacks its trailing space
        edges = np.append(edges, len(data))
    starts, ends = edges[0::2], edges[1::2]
    lengths = ends - starts
    win = _windows(data)
    h = win[starts]
    h &= _MASKS[np.minimum(lengths, 8)]
    chunk = 1
    long_idx = np.flatnonzero(lengths > 8)
    while len(long_idx):
        h[long_idx] = mix64(h[long_idx]) ^ (
            win[starts[long_idx] + 8 * chunk] & _MASKS[np.minimum(lengths[long_idx] - 8 * chunk, 8)]
        )
        chunk += 1
        long_idx = long_idx[lengths[long_idx] > 8 * chunk]
    h ^= lengths.astype(np.uint64) * _GOLDEN
    mix64(h)
    counts = np.diff(np.searchsorted(starts, offsets)).astype(np.int64)
    return h, counts


def _local_positions(counts: np.ndarray) -> np.ndarray:
    total = int(counts.sum())
    firsts = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) - np.repeat(firsts, counts)


def _position_multipliers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random odd 64-bit multipliers for word positions 0..n-1, two per position; a function of
    the position alone (so every batch agrees)."""
    pos = np.arange(max(n, 1), dtype=np.uint64)
    first = mix64(pos * _GOLDEN + _U64(0xE4AC7)) | _U64(1)
    second = mix64(pos * _M1 + _U64(0x5EC0D)) | _U64(1)
    return first, second


def exact_keys(hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Two 64-bit keys per document from its word sequence (order-sensitive): equal keys ⇔ equal
    normalised text (up to ~2^-128 collisions). Each key is a sum of word hash × a random odd
    multiplier for the word's position. Returns uint64 array (n_docs, 2)."""
    n_docs = len(counts)
    keys = np.zeros((n_docs, 2), dtype=np.uint64)
    if len(hashes):
        pos = _local_positions(counts)
        first_mult, second_mult = _position_multipliers(int(counts.max()))
        nonempty = counts > 0
        firsts = (np.cumsum(counts) - counts)[nonempty]
        keys[nonempty, 0] = np.add.reduceat(hashes * first_mult[pos], firsts)
        keys[nonempty, 1] = np.add.reduceat(hashes * second_mult[pos], firsts)
    keys[:, 0] ^= counts.astype(np.uint64) * _M2
    return keys


def _shingle_multipliers(k: int) -> np.ndarray:
    rng = np.random.default_rng(0x5EED)
    return rng.integers(1, 2**63, size=k, dtype=np.uint64) * _U64(2) + _U64(1)


def word_shingles(hashes: np.ndarray, counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the ``k``-word shingles and shingles per document (``max(n - k + 1, 1)``, or 0
    for a document with no words). A document shorter than ``k`` words gives one shingle of all
    its words."""
    n_words = len(hashes)
    per_doc = np.where(counts > 0, np.maximum(counts - k + 1, 1), 0).astype(np.int64)
    if n_words == 0:
        return np.zeros(0, np.uint64), per_doc
    mults = _shingle_multipliers(k)
    # Sum over the window with shifted slices (no gathers); windows that cross a document end
    # are dropped below, and short documents are redone on their own words.
    acc = hashes * mults[0]
    for j in range(1, k):
        acc[:-j] += hashes[j:] * mults[j]
    doc_end = np.cumsum(counts)
    doc_first = doc_end - counts
    valid = np.ones(n_words, dtype=bool)
    long_docs = counts >= k
    if k > 1:
        tail = (doc_end[long_docs][:, None] - np.arange(1, k)[None, :]).ravel()
        valid[tail] = False
    short = np.flatnonzero((counts > 0) & ~long_docs)
    if len(short):
        for idx in short.tolist():
            first, cnt = int(doc_first[idx]), int(counts[idx])
            valid[first + 1 : first + cnt] = False
            value = np.zeros(1, dtype=np.uint64)
            for j in range(cnt):
                value += hashes[first + j : first + j + 1] * mults[j]
            acc[first] = value[0]
    out = acc[valid]
    mix64(out)
    return out, per_doc


def char_shingles(data: np.ndarray, offsets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of byte ``k``-grams (``1 ≤ k ≤ 8``) of the normalised text with space runs
    collapsed and leading spaces dropped; shingles per document."""
    if not 1 <= k <= 8:
        raise ValueError(f"character shingles need 1 <= ngram <= 8, got {k}")
    n_bytes = len(data)
    n_docs = len(offsets) - 1
    if n_bytes == 0:
        return np.zeros(0, np.uint64), np.zeros(n_docs, np.int64)
    sep = data == 0x20
    prev_break = np.empty(n_bytes, dtype=bool)
    prev_break[0] = True
    prev_break[1:] = sep[:-1]
    starts_mask = np.zeros(n_bytes, dtype=bool)
    starts_mask[offsets[:-1][offsets[:-1] < n_bytes]] = True
    prev_break |= starts_mask
    keep = ~sep | ~prev_break
    doc_of_byte = np.repeat(np.arange(n_docs), np.diff(offsets))
    kept = data[keep]
    counts = np.bincount(doc_of_byte[keep], minlength=n_docs).astype(np.int64)
    # A trailing single space may remain; drop it so "a b " and "a b" agree.
    ends = np.cumsum(counts)
    trailing = (counts > 0) & (kept[np.maximum(ends - 1, 0)] == 0x20)
    if trailing.any():
        drop = np.zeros(len(kept), dtype=bool)
        drop[ends[trailing] - 1] = True
        kept = kept[~drop]
        counts = counts - trailing
    pos = _local_positions(counts)
    count_of_byte = np.repeat(counts, counts)
    valid = pos <= np.maximum(count_of_byte - k, 0)
    starts = np.flatnonzero(valid)
    width = np.minimum(count_of_byte[starts], k)
    h = _windows(kept)[starts] & _MASKS[width]
    h ^= width.astype(np.uint64) << _U64(59)
    mix64(h)
    per_doc = np.where(counts > 0, np.maximum(counts - k + 1, 1), 0).astype(np.int64)
    return h, per_doc


def _donor_table(num_perm: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0xD0])
    return rng.integers(0, num_perm, size=(_DENSIFY_TRIES, num_perm))


def signatures(shingles: np.ndarray, per_doc: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """One-permutation MinHash signatures, densified: uint32 array (n_docs, num_perm). A document
    with no shingles gets a row of ``EMPTY``."""
    n_docs = len(per_doc)
    sig = np.full(n_docs * num_perm, EMPTY, dtype=np.uint32)
    if len(shingles) == 0:
        return sig.reshape(n_docs, num_perm)
    salt = mix64(np.array([seed + 1], dtype=np.uint64))[0]
    u = mix64(shingles ^ salt)
    bins = ((u >> _U64(32)) * _U64(num_perm)) >> _U64(32)
    values = np.minimum(u & _U64(0xFFFFFFFF), _U64(0xFFFFFFFE)).astype(np.uint32)
    doc = np.repeat(np.arange(n_docs, dtype=np.int64), per_doc)
    np.minimum.at(sig, doc * num_perm + bins.astype(np.int64), values)
    sig = sig.reshape(n_docs, num_perm)
    _densify(sig, per_doc > 0, _donor_table(num_perm, seed))
    return sig


def _densify(sig: np.ndarray, has_any: np.ndarray, donors: np.ndarray) -> None:
    """Optimal densification: an empty bin j takes the value of bin donors[t, j] for the first
    try t whose donor bin is non-empty (same donors for every document, so equal sets get equal
    signatures and P[match] stays the Jaccard similarity). Bins still empty after all tries take
    the document's first non-empty bin."""
    n_docs, num_perm = sig.shape
    original = sig.ravel().copy()
    flat = sig.reshape(-1)
    empty = original == EMPTY
    if not has_any.all():
        empty &= np.repeat(has_any, num_perm)
    todo = np.flatnonzero(empty)  # flat indices; row-major, so doc = i // num_perm
    for t in range(donors.shape[0]):
        if len(todo) == 0:
            return
        bins = todo % num_perm
        base = todo - bins
        val = original[base + donors[t][bins]]
        flat[todo] = val  # a miss writes EMPTY over EMPTY
        todo = todo[val == EMPTY]
    bins = todo % num_perm
    base = todo - bins
    if len(todo):
        rows = base // num_perm
        first = np.argmax(original.reshape(n_docs, num_perm)[rows] != EMPTY, axis=1)
        flat[todo] = original[base + first]


def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows ≤ num_perm minimising the false positive plus false negative
    probability mass around ``threshold`` (the rule datasketch uses, equal weights)."""
    grid = np.linspace(0.0, 1.0, 1001)
    step = grid[1] - grid[0]
    below = grid <= threshold
    best, best_err = (1, num_perm), np.inf
    for rows in range(1, num_perm + 1):
        bands = np.arange(1, num_perm // rows + 1)[:, None]
        prob = 1.0 - (1.0 - grid[None, :] ** rows) ** bands
        # Riemann sums are enough to rank the choices.
        err = (
            0.5 * (prob * below).sum(axis=1) * step + 0.5 * ((1 - prob) * ~below).sum(axis=1) * step
        )
        i = int(np.argmin(err))
        if err[i] < best_err:
            best, best_err = (int(bands[i, 0]), rows), float(err[i])
    return best


def _band_multipliers(rows: int) -> np.ndarray:
    rng = np.random.default_rng(0xBA5D)
    return rng.integers(1, 2**63, size=rows, dtype=np.uint64) * _U64(2) + _U64(1)


def band_hash(sig: np.ndarray, band: int, rows: int, subset: np.ndarray | None = None):
    """uint64 hash of one band (columns ``band*rows .. band*rows+rows-1``) for the rows of
    ``sig`` (or its ``subset`` of rows), without copying the signature matrix."""
    mults = _band_multipliers(rows)
    n = sig.shape[0] if subset is None else len(subset)
    acc = np.full(n, ((band + 1) * int(_GOLDEN)) % (1 << 64), dtype=np.uint64)
    for r in range(rows):
        column = sig[:, band * rows + r] if subset is None else sig[subset, band * rows + r]
        acc += column.astype(np.uint64) * mults[r]
    return mix64(acc)


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 hash per (document, band): shape (n_docs, bands)."""
    return np.stack([band_hash(sig, b, rows) for b in range(bands)], axis=1).reshape(
        sig.shape[0], bands
    )


def bucket_pairs(hashes: np.ndarray, max_bucket: int = 16) -> np.ndarray:
    """Pairs (i, j) of positions with equal ``hashes`` (one LSH band). In a bucket each member is
    paired with the next ``max_bucket - 1`` members in hash order: every pair for buckets up to
    ``max_bucket``, a connected band of pairs for bigger ones, so work stays linear."""
    n = len(hashes)
    order = np.argsort(hashes, kind="stable")
    sorted_h = hashes[order]
    found = []
    for delta in range(1, min(max_bucket, n)):
        same = np.flatnonzero(sorted_h[:-delta] == sorted_h[delta:])
        if len(same) == 0:
            break
        found.append(np.stack([order[same], order[same + delta]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(found).astype(np.int64)


def _unique_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    if len(pairs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(pairs, axis=1)
    keys = np.unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([keys // n, keys % n], axis=1)


def candidate_pairs(bands: np.ndarray, max_bucket: int = 16) -> np.ndarray:
    """Pairs (i < j) of rows sharing a bucket in any band (columns of ``bands``): int64 array
    (n_pairs, 2), unique. See ``bucket_pairs`` for large buckets."""
    n_docs = bands.shape[0]
    found = [bucket_pairs(bands[:, b], max_bucket) for b in range(bands.shape[1])]
    return _unique_pairs(np.concatenate(found) if found else np.zeros((0, 2), np.int64), n_docs)


def estimated_jaccard(sig: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Fraction of equal signature positions for each pair (estimates Jaccard, 0..1)."""
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        out[start : start + len(part)] = (sig[part[:, 0]] == sig[part[:, 1]]).mean(axis=1)
    return out


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected components (union-find by min-label propagation with pointer jumping): the label
    of a node is the smallest node index in its component. int64 array of length n."""
    labels = np.arange(n, dtype=np.int64)
    if len(edges) == 0:
        return labels
    a, b = edges[:, 0], edges[:, 1]
    while True:
        low = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels


@dataclass
class Sketch:
    """What the near-duplicate search keeps per document: signatures and exact-duplicate keys."""

    signatures: np.ndarray  # uint32 (n, num_perm); EMPTY rows for documents with no shingles
    exact: np.ndarray  # uint64 (n, 2)
    has_shingles: np.ndarray  # bool (n,)


def sketch_batch(data: np.ndarray, offsets: np.ndarray, opts: MinHashOptions) -> Sketch:
    """Signatures and exact keys for one batch of normalised texts."""
    hashes, counts = word_hashes(data, offsets)
    exact = exact_keys(hashes, counts)
    if opts.shingle == "word":
        shingles, per_doc = word_shingles(hashes, counts, opts.ngram)
    elif opts.shingle == "char":
        shingles, per_doc = char_shingles(data, offsets, opts.ngram)
    else:
        raise ValueError(f"shingle must be 'word' or 'char', got {opts.shingle!r}")
    sig = signatures(shingles, per_doc, opts.num_perm, opts.seed)
    return Sketch(sig, exact, per_doc > 0)


def concat_sketches(parts: list[Sketch], num_perm: int) -> Sketch:
    if not parts:
        return Sketch(
            np.zeros((0, num_perm), np.uint32), np.zeros((0, 2), np.uint64), np.zeros(0, bool)
        )
    return Sketch(
        np.concatenate([p.signatures for p in parts]),
        np.concatenate([p.exact for p in parts]),
        np.concatenate([p.has_shingles for p in parts]),
    )


def exact_groups(exact: np.ndarray) -> np.ndarray:
    """Label per document: the smallest index with the same exact key (itself when unique)."""
    n = len(exact)
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((np.arange(n), exact[:, 1], exact[:, 0]))
    ks = exact[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (ks[1:, 0] != ks[:-1, 0]) | (ks[1:, 1] != ks[:-1, 1])
    group_first = order[np.flatnonzero(new)]
    group_of_sorted = np.cumsum(new) - 1
    labels = np.empty(n, dtype=np.int64)
    labels[order] = group_first[group_of_sorted]
    return labels


def near_pairs(
    sig: np.ndarray, opts: MinHashOptions, subset: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Verified near-duplicate pairs among the rows of ``sig`` (or its ``subset`` of rows; the
    pairs are then positions in ``subset``) and their estimated Jaccard. Bands are hashed one at a
    time, so the extra memory is a few arrays of one value per row."""
    bands, rows = (
        (opts.bands, opts.rows) if opts.bands else optimal_bands(opts.threshold, opts.num_perm)
    )
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {sig.shape[1]}")
    n = sig.shape[0] if subset is None else len(subset)
    if n < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    found = [bucket_pairs(band_hash(sig, b, rows, subset), opts.max_bucket) for b in range(bands)]
    pairs = _unique_pairs(np.concatenate(found), n)
    sim = estimated_jaccard(sig, pairs if subset is None else subset[pairs])
    keep = sim >= opts.threshold
    return pairs[keep], sim[keep]
