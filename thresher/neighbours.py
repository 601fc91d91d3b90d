"""Cosine nearest neighbours and near-duplicate pairs of embedding rows, exact or approximate.

Shared by the score stage (kNN outlier scores), dedup (semantic pairs) and the monitor (near-OOD
distances). Two paths behind one API:

- exact: blocked float32 matmul of a block of query rows against all rows, the top ``k`` kept
  with ``np.partition``. Time grows as n², memory stays at one block (``BLOCK_CELLS``).
- ann: a usearch HNSW graph (cosine, float16 storage), built on one thread up to
  ``REPRODUCIBLE_BUILD_MAX_ROWS`` rows, so that it is the same graph on every run, and on all
  cores above (parallel insertion order varies, so a rare missed neighbour may differ between
  runs); searched on all cores. Candidates are re-scored with exact float32
  cosine, so every distance returned is exact and only a missed neighbour is approximate
  (recall@10 ≥ 0.95 against exact; benchmarks/neighbours.py measures it).

Near pairs above a high similarity (semantic dedup's 0.95) take a third path above
``EXACT_MAX_ROWS`` rows: SimHash banding (``thresher.simhash``), linear in rows, candidates
verified by exact cosine, a pair at the threshold found with chance ≥ 0.99.

``method="auto"`` takes the exact path up to ``EXACT_MAX_ROWS`` rows, or when usearch is not
installed (``pip install thresher[ann]``), and the ann path above it.

Inputs may be float32 or float16 arrays, including ``np.memmap`` files: rows are converted and
L2-normalised one block at a time, so a float16 matrix is never copied whole to float32.
Distances are cosine distances ``1 - cos`` in [0, 2] (low = similar); a zero vector is at
distance 1 from every row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from thresher.errors import ThresherError

log = logging.getLogger(__name__)

EXACT_MAX_ROWS = 20_000  # auto: exact up to here (ann pays off above, benchmarks/neighbours.py)
REPRODUCIBLE_BUILD_MAX_ROWS = 200_000  # one build thread up to here (≈ 1 min), all cores above
BLOCK_CELLS = 2**24  # similarity cells per exact block (64 MiB of float32)
INDEX_CHUNK_ROWS = 65_536  # rows converted to float32 at a time for non-float32 inputs
PAIR_CANDIDATES = 32  # ann neighbours per row checked by pairs_above
PAIR_MARGIN = 0.02  # candidates this far below the threshold (float16 index) are verified
SIMHASH_MAX_BANDS = 256  # pairs_above takes SimHash up to this many bands (threshold ≈ 0.935+)


@dataclass(frozen=True)
class AnnParams:
    """HNSW settings. ``connectivity``: graph edges per node; ``expansion_add`` /
    ``expansion_search``: candidate list sizes while building / searching (higher = better recall,
    slower). ``build_threads`` 1 keeps the graph identical run to run (parallel insertion order
    varies), 0 uses all cores, None (default) one thread up to ``REPRODUCIBLE_BUILD_MAX_ROWS``
    rows and all cores above; ``search_threads`` 0 = all cores (a search does not change the
    graph)."""

    connectivity: int = 16
    expansion_add: int = 64
    expansion_search: int = 64
    build_threads: int | None = None
    search_threads: int = 0


def ann_available() -> bool:
    """True when the ANN library (usearch, the ``ann`` extra) imports."""
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        return False
    return True


_NOTED: set[str] = set()


def use_ann(n_rows: int, method: str = "auto") -> bool:
    """Whether ``method`` resolves to the ann path for an index of ``n_rows`` rows.

    ``auto``: ann above ``EXACT_MAX_ROWS`` when usearch is installed (one log line, once per
    process, when it is not). ``ann`` without usearch raises a ``ThresherError`` with the fix."""
    if method not in ("auto", "exact", "ann"):
        raise ThresherError(f"neighbour method must be auto, exact or ann, not {method!r}")
    if method == "exact" or (method == "auto" and n_rows <= EXACT_MAX_ROWS):
        return False
    if ann_available():
        return True
    if method == "ann":
        raise ThresherError("approximate neighbours need usearch: pip install 'thresher[ann]'")
    if "missing" not in _NOTED:
        _NOTED.add("missing")
        log.info(
            "%d rows: exact neighbours (O(n²)); pip install 'thresher[ann]' for an ANN index",
            n_rows,
        )
    return False


# --------------------------------------------------------------------------------------------
# Blocks


def unit_rows(vectors, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` of ``vectors`` as an L2-normalised float32 array (zero rows stay 0)."""
    x = np.asarray(vectors[start:stop], dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _index_chunks(vectors) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, normalised float32 rows) covering ``vectors``: one chunk for a float32 array
    (one normalised copy, as the exact path always made), ``INDEX_CHUNK_ROWS`` rows otherwise."""
    n = len(vectors)
    step = n if vectors.dtype == np.float32 else INDEX_CHUNK_ROWS
    for start in range(0, n, max(step, 1)):
        yield start, unit_rows(vectors, start, start + step)


def _check(vectors, what: str = "vectors"):
    if not hasattr(vectors, "dtype"):
        vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ThresherError(f"{what}: expected a 2-D array, got shape {vectors.shape}")
    return vectors


# --------------------------------------------------------------------------------------------
# k nearest neighbours


def cosine_knn(
    vectors,
    k: int,
    *,
    queries=None,
    exclude_self: bool = True,
    method: str = "auto",
    block_cells: int | None = None,
    params: AnnParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``vectors`` to each query row by cosine distance.

    Returns ``(distances, indices)``, shape (m, k), float32 distances ascending (low = similar)
    and int64 row numbers of ``vectors``. ``queries`` None: the rows of ``vectors`` themselves,
    and ``exclude_self`` keeps a row out of its own list (an identical other row stays, at
    distance 0). With ``queries`` given, ``exclude_self`` is ignored. ``k`` must be below the
    number of candidate rows."""
    x = _check(vectors)
    q = None if queries is None else _check(queries, "queries")
    self_query = q is None
    drop_self = self_query and exclude_self
    n = len(x)
    if k < 1 or k > n - (1 if drop_self else 0):
        raise ThresherError(f"k = {k} neighbours asked of {n} rows")
    if use_ann(n, method):
        return _ann_knn(x, k, q, drop_self, params or AnnParams(), block_cells)
    return exact_knn(x, k, queries=q, exclude_self=drop_self, block_cells=block_cells)


def exact_knn(
    vectors,
    k: int,
    *,
    queries=None,
    query_rows: np.ndarray | None = None,
    exclude_self: bool = True,
    block_cells: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact brute force behind ``cosine_knn``: queries are ``queries``, or the rows
    ``query_rows`` of ``vectors`` (all rows when both are None). ``exclude_self`` (row queries
    only) keeps each row out of its own list."""
    x = vectors
    n = len(x)
    if queries is not None:
        m = len(queries)
    else:
        m = n if query_rows is None else len(query_rows)
    self_rows = None
    if queries is None:
        self_rows = np.arange(n) if query_rows is None else np.asarray(query_rows, np.int64)
    cells = block_cells or BLOCK_CELLS
    block = max(1, cells // max(n, 1))
    dist = np.empty((m, k), dtype=np.float32)
    idx = np.empty((m, k), dtype=np.int64)
    chunks = list(_index_chunks(x)) if x.dtype == np.float32 else None
    for start in range(0, m, block):
        stop = min(start + block, m)
        if queries is not None:
            qb = unit_rows(queries, start, stop)
        elif query_rows is None:
            qb = unit_rows(x, start, stop) if chunks is None else chunks[0][1][start:stop]
        else:
            qb = unit_rows(x[self_rows[start:stop]])
        if chunks is not None:  # float32: one normalised copy, one matmul per block
            sims = qb @ chunks[0][1].T
        else:
            sims = np.empty((stop - start, n), dtype=np.float32)
            for c0, xc in _index_chunks(x):
                sims[:, c0 : c0 + len(xc)] = qb @ xc.T
        if exclude_self and self_rows is not None:
            sims[np.arange(stop - start), self_rows[start:stop]] = -np.inf
        top_sims, idx[start:stop] = _top_k(sims, k)
        dist[start:stop] = 1.0 - top_sims
    return np.clip(dist, 0.0, 2.0), idx


def _top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row of ``sims`` and their columns, largest first (ties:
    lower column first). ``np.partition`` finds each row's k-th value (several times faster than
    ``np.argpartition``); the columns at or above it are then sorted, a few per row."""
    n = sims.shape[1]
    kth = np.partition(sims, n - k, axis=1)[:, n - k]
    rows, cols = np.nonzero(sims >= kth[:, None])
    vals = sims[rows, cols]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    take = np.searchsorted(rows, np.arange(len(sims)))[:, None] + np.arange(k)
    return vals[take], cols[take].astype(np.int64)


def _ann_index(x, params: AnnParams):
    """A usearch HNSW index over the rows of ``x`` (float16 storage, cosine), rows added one
    chunk at a time so that a float16 memmap is never copied whole."""
    from usearch.index import Index

    index = Index(
        ndim=x.shape[1],
        metric="cos",
        dtype="f16",
        connectivity=params.connectivity,
        expansion_add=params.expansion_add,
        expansion_search=params.expansion_search,
        enable_key_lookups=False,
    )
    threads = _build_threads(params, len(x))
    for start in range(0, len(x), INDEX_CHUNK_ROWS):
        chunk = np.asarray(x[start : start + INDEX_CHUNK_ROWS], dtype=np.float16)
        keys = np.arange(start, start + len(chunk), dtype=np.uint64)
        index.add(keys, chunk, threads=threads)
    return index


def _all_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0


def _build_threads(params: AnnParams, n_rows: int) -> int:
    """Insertion threads: ``params.build_threads`` when set (0 = all cores), else one thread up
    to ``REPRODUCIBLE_BUILD_MAX_ROWS`` rows and all cores above."""
    if params.build_threads is None:
        return 1 if n_rows <= REPRODUCIBLE_BUILD_MAX_ROWS else _all_cores()
    return params.build_threads or _all_cores()


def _search_threads(params: AnnParams) -> int:
    return params.search_threads or _all_cores()


def _ann_candidates(x, q, want: int, drop_self: bool, params: AnnParams):
    """Per block of queries: (query rows, candidate keys, approximate cosine similarities, rows
    that got all ``want`` candidates). Keys and similarities have ``want - drop_self`` columns,
    a row's own entry dropped."""
    index = _ann_index(x, params)
    queries = x if q is None else q
    threads = _search_threads(params)
    for start in range(0, len(queries), INDEX_CHUNK_ROWS):
        stop = min(start + INDEX_CHUNK_ROWS, len(queries))
        block = np.asarray(queries[start:stop], dtype=np.float16)
        found = index.search(block, want, threads=threads)
        keys = np.asarray(found.keys).astype(np.int64, copy=False)
        sims = 1.0 - np.asarray(found.distances, dtype=np.float32)
        full = np.asarray(found.counts) >= want
        rows = np.arange(start, stop)
        if drop_self:
            keep = _not_self(keys, rows)
            keys = keys[keep].reshape(len(keys), want - 1)
            sims = sims[keep].reshape(len(keys), want - 1)
        keys[~full] = 0
        yield rows, keys, sims, full


def _ann_knn(
    x, k: int, q, drop_self: bool, params: AnnParams, block_cells: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """ANN candidates (k + 1 when a row's own entry is dropped), re-scored by exact cosine.
    Rows the graph returned too few candidates for are answered by the exact path."""
    queries = x if q is None else q
    m = len(queries)
    dist = np.empty((m, k), dtype=np.float32)
    idx = np.empty((m, k), dtype=np.int64)
    short: list[np.ndarray] = []
    want = k + (1 if drop_self else 0)
    for rows, keys, _, full in _ann_candidates(x, q, want, drop_self, params):
        sims = _pair_sims(queries, x, rows, keys)
        order = np.argsort(-sims, axis=1, kind="stable")
        idx[rows[0] : rows[-1] + 1] = np.take_along_axis(keys, order, axis=1)
        dist[rows[0] : rows[-1] + 1] = 1.0 - np.take_along_axis(sims, order, axis=1)
        short.append(rows[~full])
    missing = np.concatenate(short) if short else np.zeros(0, np.int64)
    if len(missing):
        if q is None:
            d, i = exact_knn(
                x, k, query_rows=missing, exclude_self=drop_self, block_cells=block_cells
            )
        else:
            d, i = exact_knn(x, k, queries=q[missing], exclude_self=False, block_cells=block_cells)
        dist[missing], idx[missing] = d, i
    return np.clip(dist, 0.0, 2.0), idx


def _not_self(keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mask of each row's keys other than the row itself (all but the last one when the row is
    not among its own candidates, which happens among identical rows)."""
    is_self = keys == rows[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return ~is_self


def _pair_sims(queries, x, rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Exact float32 cosine of query ``rows[i]`` with index rows ``keys[i, :]``, gathered a
    block at a time (``BLOCK_CELLS`` floats) and in row order (sequential reads on a memmap)."""
    out = np.empty(keys.shape, dtype=np.float32)
    step = max(1, BLOCK_CELLS // (keys.shape[1] * x.shape[1]))
    for start in range(0, len(rows), step):
        part = keys[start : start + step]
        qb = unit_rows(queries, int(rows[start]), int(rows[start]) + len(part))
        flat = part.ravel()
        order = np.argsort(flat, kind="stable")
        gathered = np.empty((len(flat), x.shape[1]), dtype=np.float32)
        gathered[order] = unit_rows(x[flat[order]])
        gathered = gathered.reshape(part.shape[0], part.shape[1], -1)
        out[start : start + step] = np.einsum("md,mkd->mk", qb, gathered)
    return out


# --------------------------------------------------------------------------------------------
# Pairs above a similarity


def pairs_above(
    vectors,
    threshold: float,
    *,
    method: str = "auto",
    block_bytes: int = 64 << 20,
    candidates: int = PAIR_CANDIDATES,
    params: AnnParams | None = None,
) -> np.ndarray:
    """Pairs (i < j) of rows with cosine similarity ≥ ``threshold`` (−1..1; higher = fewer,
    closer pairs), int64 shape (p, 2) sorted by (i, j).

    ``pair_path`` chooses how. Exact: blocked matmul over the upper triangle (``block_bytes``
    bounds a block). SimHash (thresholds of about 0.935 and up): rows sharing a band key of
    random-hyperplane signs, verified by exact cosine; a pair at the threshold is found with
    chance ≥ 0.99 (closer pairs more surely), in time linear in rows. Ann (lower thresholds):
    each row's ``candidates`` nearest rows from the HNSW index, verified the same way; a row
    whose candidates all clear the threshold (a large duplicate group) is compared with every
    row exactly, so big groups are complete too."""
    x = _check(vectors)
    n = len(x)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    path = pair_path(n, threshold, method)
    if path == "simhash":
        return _simhash_pairs(x, threshold, block_bytes)
    if path == "ann" and n > candidates + 1:
        return _ann_pairs(x, threshold, candidates, params or AnnParams(), block_bytes)
    return _exact_pairs(x, threshold, block_bytes)


def pair_path(n_rows: int, threshold: float, method: str = "auto") -> str:
    """``exact``, ``simhash`` or ``ann``: how ``pairs_above`` finds the pairs of ``n_rows`` rows.

    ``exact`` for ``method="exact"`` and, under ``auto``, up to ``EXACT_MAX_ROWS`` rows.
    Otherwise ``simhash`` when the threshold needs at most ``SIMHASH_MAX_BANDS`` bands (no extra
    dependency), else ``ann`` (the HNSW index, or exact without usearch, as ``use_ann``)."""
    from thresher.simhash import bands_for

    if method not in ("auto", "exact", "ann"):
        raise ThresherError(f"neighbour method must be auto, exact or ann, not {method!r}")
    if method == "exact" or (method == "auto" and n_rows <= EXACT_MAX_ROWS):
        return "exact"
    if bands_for(threshold) <= SIMHASH_MAX_BANDS:
        return "simhash"
    return "ann" if use_ann(n_rows, method) else "exact"


def _simhash_pairs(x, threshold: float, block_bytes: int) -> np.ndarray:
    """SimHash candidates verified by exact cosine; the rows of crowded buckets (groups of
    near-identical rows) compared with each other exactly."""
    from thresher.simhash import bands_for, candidate_pairs

    found = candidate_pairs(x, bands_for(threshold))
    a, b = found.pairs[:, 0], found.pairs[:, 1]
    hit = _pair_cos(x, a, b) >= threshold if len(a) else np.zeros(0, bool)
    pairs = [found.pairs[hit]]
    if len(found.dense):
        log.info("%d rows in crowded SimHash buckets: compared exactly", len(found.dense))
        among = _exact_pairs(_rows(x, found.dense), threshold, block_bytes)
        pairs.append(found.dense[among])
    return _sorted_pairs(np.concatenate(pairs))


def _exact_pairs(x, threshold: float, block_bytes: int) -> np.ndarray:
    n = len(x)
    block = max(1, min(n, block_bytes // (4 * n)))
    chunks = list(_index_chunks(x)) if x.dtype == np.float32 else None
    found = [np.zeros((0, 2), np.int64)]
    for start in range(0, n, block):
        stop = min(n, start + block)
        qb = unit_rows(x, start, stop) if chunks is None else chunks[0][1][start:stop]
        for c0, xc in chunks if chunks is not None else _index_chunks(x):
            if c0 + len(xc) <= start:
                continue
            lo = max(c0, start)
            sims = qb @ xc[lo - c0 :].T
            rows, cols = np.nonzero(sims >= threshold)
            rows, cols = rows + start, cols + lo
            keep = cols > rows
            found.append(np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64))
    return _sorted_pairs(np.concatenate(found))


def _ann_pairs(x, threshold: float, candidates: int, params, block_bytes: int) -> np.ndarray:
    """Candidates whose approximate similarity (float16 index) is within ``PAIR_MARGIN`` of the
    threshold, verified by exact cosine; rows with every candidate that close, or with too few
    candidates, compared with all rows exactly."""
    found = [np.zeros((0, 2), np.int64)]
    exact_rows = []
    for rows, keys, sims, full in _ann_candidates(x, None, candidates + 1, True, params):
        close = (sims >= threshold - PAIR_MARGIN) & full[:, None]
        exact_rows.append(rows[~full | close.all(axis=1)])
        a = np.repeat(rows, candidates).reshape(keys.shape)[close]
        b = keys[close]
        hit = _pair_cos(x, a, b) >= threshold
        found.append(np.stack([a[hit], b[hit]], axis=1))
    redo = np.concatenate(exact_rows)
    if len(redo):
        log.info("%d rows with ≥ %d near rows: compared exactly", len(redo), candidates)
        found.append(_pairs_of_rows(x, redo, threshold, block_bytes))
    both = np.concatenate(found)
    both = np.stack([both.min(axis=1), both.max(axis=1)], axis=1)
    return _sorted_pairs(both[both[:, 0] != both[:, 1]])


def _pair_cos(x, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact float32 cosine of rows ``a[i]`` and ``b[i]``, a block of pairs at a time."""
    out = np.empty(len(a), dtype=np.float32)
    step = max(1, BLOCK_CELLS // x.shape[1])
    for start in range(0, len(a), step):
        ra, rb = a[start : start + step], b[start : start + step]
        out[start : start + len(ra)] = np.einsum("pd,pd->p", _rows(x, ra), _rows(x, rb))
    return out


def _rows(x, rows: np.ndarray) -> np.ndarray:
    """Normalised float32 ``x[rows]``, read in row order (sequential on a memmap)."""
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), x.shape[1]), dtype=np.float32)
    out[order] = unit_rows(x[rows[order]])
    return out


def _pairs_of_rows(x, rows: np.ndarray, threshold: float, block_bytes: int) -> np.ndarray:
    """Every (row, other) with cosine ≥ threshold, for the given rows against all rows."""
    n = len(x)
    block = max(1, block_bytes // (4 * n))
    found = [np.zeros((0, 2), np.int64)]
    for start in range(0, len(rows), block):
        part = rows[start : start + block]
        qb = unit_rows(x[part])
        for c0, xc in _index_chunks(x):
            r, c = np.nonzero(qb @ xc.T >= threshold)
            found.append(np.stack([part[r], c + c0], axis=1).astype(np.int64))
    return np.concatenate(found)


def _sorted_pairs(pairs: np.ndarray) -> np.ndarray:
    if len(pairs) == 0:
        return np.zeros((0, 2), np.int64)
    pairs = np.unique(pairs.astype(np.int64), axis=0)
    return pairs
