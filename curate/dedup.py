"""The dedup stage: exact, near and (opt-in) semantic duplicates, label-aware.

Reads ``DIR/ingest/records.parquet`` and writes ``DIR/dedup/records.parquet`` (every input column
plus ``dup_cluster``, ``dup_kind``, ``is_representative``, ``label_conflict``,
``semantic_cluster``) and ``manifest.json``; with ``--against`` also ``leakage.parquet``.

- Exact duplicates: equal normalised text (``curate.normalize``).
- Near duplicates: MinHash + LSH over word (or character) shingles, candidate pairs verified by
  estimated Jaccard ≥ ``threshold`` (``curate.minhash``), run on one row per exact group.
- A duplicate cluster is a connected component of exact and near links; ``dup_kind`` is ``exact``
  for a row whose normalised text also occurs in another row, else ``near``.
- Representative of a cluster, deterministic: among rows with the cluster's majority label (ties:
  the alphabetically first label; unlabelled rows do not vote), the longest text (characters), then
  the earliest row. Rows in no cluster are their own representative.
- ``label_conflict``: the row's duplicate cluster (or, with ``semantic``, its semantic cluster)
  holds two or more different non-null labels.
- Semantic clusters (opt-in): cosine similarity of sentence embeddings ≥ ``semantic_threshold``,
  linked transitively; only flagged (never changes ``is_representative``).

Streaming: pass 1 reads Arrow batches and keeps ~560 B per document (signature + keys + label code
+ length); pass 2 re-reads the batches and writes the output, so memory does not grow with text
size. Semantic search keeps the embeddings (4 × dim B per exact-distinct text: 1.5 KiB at 384).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate import minhash as mh
from curate.dedup_clusters import (
    Clusters,
    choose_representatives,
    dense_cluster_ids,
    label_conflicts,
)
from curate.dedup_sketch import Corpus, sketch_batches
from curate.normalize import NormalizeOptions
from thresher.errors import InputError
from thresher.project import Project, fingerprint, path_sha256, stage_output, upstream_input

log = logging.getLogger(__name__)

STAGE = "dedup"
LEAKAGE = "leakage.parquet"
ROW_GROUP = 65_536
DEDUP_COLUMNS = (
    "dup_cluster",
    "dup_kind",
    "is_representative",
    "label_conflict",
    "semantic_cluster",
)


@dataclass(frozen=True)
class DedupOptions:
    """Dedup settings (resolved from the config by the caller).

    ``threshold``: Jaccard similarity of shingle sets (0..1; higher = fewer, closer duplicates).
    ``semantic_threshold``: cosine similarity (−1..1; higher = stricter)."""

    threshold: float = 0.45
    num_perm: int = 128
    shingle: str = "word"
    ngram: int = 3
    punctuation: bool = False
    bands: int = 0
    rows: int = 0
    semantic: bool = False
    semantic_threshold: float = 0.95
    embedding_model: str = "default"
    batch_size: int = 4096
    keep_in_memory_mb: int = 256
    engine: str = "local"
    seed: int = 0

    def minhash(self) -> mh.MinHashOptions:
        return mh.MinHashOptions(
            threshold=self.threshold,
            num_perm=self.num_perm,
            shingle=self.shingle,
            ngram=self.ngram,
            seed=self.seed,
            bands=self.bands,
            rows=self.rows,
        )

    def normalize(self) -> NormalizeOptions:
        return NormalizeOptions(punctuation=self.punctuation)

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise InputError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.shingle not in ("word", "char"):
            raise InputError(f"shingle must be 'word' or 'char', got {self.shingle!r}")
        if self.ngram < 1 or (self.shingle == "char" and self.ngram > 8):
            raise InputError(f"ngram must be 1..8 for char shingles, >= 1 for words: {self.ngram}")
        if self.engine not in ("local", "ray"):
            raise InputError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        if self.num_perm < 8:
            raise InputError(f"num_perm must be at least 8, got {self.num_perm}")
        if not -1.0 <= self.semantic_threshold <= 1.0:
            raise InputError(f"semantic threshold must be in [-1, 1]: {self.semantic_threshold}")


@dataclass
class DedupResult:
    """Summary of a dedup run (what ``--json`` prints). ``removed``: rows that are not
    representatives (what ``export`` drops)."""

    rows: int
    clusters: int
    removed: int
    exact_clusters: int
    near_clusters: int
    duplicate_rows: int
    label_conflicts: int
    label_conflict_rows: int
    semantic_clusters: int | None
    path: str
    noop: bool = False
    leaked: int | None = None
    against: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- clustering


def cluster_corpus(corpus: Corpus, opts: DedupOptions) -> tuple[Clusters, dict[str, Any]]:
    """Exact + near clusters, representatives and label conflicts for a sketched corpus."""
    sk = corpus.sketch
    n = len(sk.exact)
    exact = mh.exact_groups(sk.exact)
    exact_dup = np.bincount(exact, minlength=n)[exact] >= 2
    reps = np.flatnonzero((exact == np.arange(n)) & sk.has_shingles)
    pairs, _ = mh.near_pairs(sk.signatures, opts.minhash(), subset=reps)
    edges = np.concatenate(
        [np.stack([np.arange(n), exact], axis=1), reps[pairs]] if n else [np.zeros((0, 2))]
    ).astype(np.int64)
    comp = mh.components(n, edges)
    dup_cluster, n_clusters = dense_cluster_ids(comp)
    # A cluster is "exact" when all its rows share one normalised text.
    if n_clusters:
        in_c = dup_cluster >= 0
        distinct = np.unique(dup_cluster[in_c] * n + exact[in_c]) // n
        n_exact_clusters = int((np.bincount(distinct, minlength=n_clusters) == 1).sum())
    else:
        n_exact_clusters = 0
    conflict, n_conflicts = label_conflicts(dup_cluster, corpus.label_codes)
    rep = choose_representatives(dup_cluster, corpus.label_codes, corpus.lengths)
    stats = {"candidate_reps": int(len(reps)), "near_pairs": int(len(pairs))}
    clusters = Clusters(
        dup_cluster=dup_cluster,
        exact_dup=exact_dup,
        is_representative=rep,
        label_conflict=conflict,
        semantic_cluster=None,
        n_clusters=n_clusters,
        n_exact_clusters=n_exact_clusters,
        n_near_clusters=n_clusters - n_exact_clusters,
        n_conflicts=n_conflicts,
        n_semantic=None,
    )
    return clusters, stats


# --------------------------------------------------------------------------- semantic


def semantic_pairs(
    vectors: np.ndarray, threshold: float, block_bytes: int = 64 << 20
) -> np.ndarray:
    """Pairs (i < j) with cosine similarity ≥ ``threshold`` of L2-normalised ``vectors``.

    ``thresher.neighbours.pairs_above``: blocked matmul over the upper triangle up to
    ``EXACT_MAX_ROWS`` rows (time O(n²·dim), memory O(block · n), never an n × n matrix;
    ``block_bytes`` bounds the similarity block); above it SimHash banding for thresholds of
    about 0.935 and up (linear in rows; a pair at the threshold found with chance ≥ 0.99), ANN
    candidates below that; candidates are always verified by exact cosine."""
    from thresher.neighbours import pairs_above

    return pairs_above(vectors, threshold, block_bytes=block_bytes)


def _semantic(
    project: Project, src: Path, exact: np.ndarray, opts: DedupOptions, progress
) -> np.ndarray:
    import pyarrow.parquet as pq

    from thresher.embeddings import embed_texts

    n = len(exact)
    firsts = np.flatnonzero(exact == np.arange(n))
    texts = pq.read_table(src, columns=["text"]).column("text").to_pylist()
    vectors = embed_texts(
        [texts[i] for i in firsts],
        opts.embedding_model,
        cache_dir=project.embedding_cache,
        progress=progress,
    )
    pairs = firsts[semantic_pairs(vectors, opts.semantic_threshold)]
    edges = np.concatenate([np.stack([np.arange(n), exact], axis=1), pairs]).astype(np.int64)
    comp = mh.components(n, edges)
    # Only groups linked by a semantic pair count (exact copies alone are not a semantic cluster).
    linked = np.zeros(n, bool)
    linked[pairs.ravel()] = True
    has_link = np.bincount(comp, weights=linked, minlength=n) > 0
    comp_sem = np.where(has_link[comp], comp, np.arange(n))
    dense, _ = dense_cluster_ids(comp_sem)
    return dense


# --------------------------------------------------------------------------- leakage


def _read_other_texts(other: Path, text_col: str, batch_size: int):
    """Arrow batches with a ``text`` (and ``id`` when present) column from a project folder or a
    file (parquet/jsonl/csv/tsv/hf)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.readers import expand_sources, read_rows

    if other.is_dir() and (other / "ingest").is_dir():
        _, path = Project(other).latest_records(["dedup", "ingest"])
        yield from pq.ParquetFile(path).iter_batches(batch_size, columns=["id", "text"])
        return
    if not other.exists():
        raise InputError(f"--against {other}: no such file or project folder")
    ids, texts = [], []
    for source in expand_sources([other]):
        for row in read_rows(source, batch_size):
            if row.data is None or not isinstance(row.data.get(text_col), str):
                continue
            ids.append(str(row.data.get("id", f"{source.name}:{row.row}")))
            texts.append(row.data[text_col])
            if len(texts) >= batch_size:
                yield pa.record_batch({"id": ids, "text": texts})
                ids, texts = [], []
    if texts:
        yield pa.record_batch({"id": ids, "text": texts})


def leakage_pairs(mine: mh.Sketch, theirs: mh.Sketch, opts: mh.MinHashOptions):
    """Cross pairs (row in mine, row in theirs, kind, similarity): exact pairs where the
    normalised texts are equal, near pairs where the estimated Jaccard ≥ threshold."""
    n_mine = len(mine.exact)
    both = mh.concat_sketches([mine, theirs], opts.num_perm)
    exact = mh.exact_groups(both.exact)
    # exact: group ids shared by both sides (one pair per my row, first matching other row)
    other_rows = np.arange(n_mine, len(exact))
    first_other = {}
    for g, row in zip(exact[other_rows].tolist(), other_rows.tolist(), strict=True):
        first_other.setdefault(g, row)
    mine_groups = exact[:n_mine].tolist()
    exact_hits = [
        (i, first_other[g] - n_mine) for i, g in enumerate(mine_groups) if g in first_other
    ]
    exact_rows = {i for i, _ in exact_hits}
    usable = np.flatnonzero(both.has_shingles)
    pairs, sim = mh.near_pairs(both.signatures, opts, subset=usable)
    pairs = usable[pairs]
    cross = (pairs[:, 0] < n_mine) & (pairs[:, 1] >= n_mine)
    near = [
        (int(a), int(b) - n_mine, float(s))
        for (a, b), s in zip(pairs[cross], sim[cross], strict=True)
        if int(a) not in exact_rows
    ]
    return exact_hits, near


def _against(
    other: Path, corpus: Corpus, ids: list[str], opts: DedupOptions, text_col: str, out: Path
) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    other_ids: list[str] = []

    def batches():
        for batch in _read_other_texts(other, text_col, opts.batch_size):
            other_ids.extend(str(v) for v in batch.column("id").to_pylist())
            yield batch

    theirs = sketch_batches(batches(), opts.normalize(), opts.minhash(), None, with_labels=False)
    exact_hits, near = leakage_pairs(corpus.sketch, theirs.sketch, opts.minhash())
    rows = [(ids[a], other_ids[b], "exact", 1.0) for a, b in exact_hits]
    rows += [(ids[a], other_ids[b], "near", s) for a, b, s in near]
    rows.sort(key=lambda r: (r[0], r[1]))
    table = pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.string()),
            "other_id": pa.array([r[1] for r in rows], pa.string()),
            "kind": pa.array([r[2] for r in rows], pa.string()),
            "similarity": pa.array([r[3] for r in rows], pa.float32()),
        }
    )
    pq.write_table(table, out)
    return len({r[0] for r in rows})


# --------------------------------------------------------------------------- the stage


def _bits(values: np.ndarray):
    import pyarrow as pa

    return pa.py_buffer(np.packbits(values.astype(bool), bitorder="little"))


def _arrow(values: np.ndarray, kind: str, valid: np.ndarray | None = None):
    """numpy → Arrow through buffers (``pa.array`` would import pandas: +0.5 s start-up)."""
    import pyarrow as pa

    n = len(values)
    validity = None if valid is None or valid.all() else _bits(valid)
    nulls = 0 if validity is None else int(n - valid.sum())
    if kind == "bool":
        return pa.Array.from_buffers(pa.bool_(), n, [validity, _bits(values)], null_count=nulls)
    arrow_type = {"int64": pa.int64(), "int8": pa.int8()}[kind]
    data = pa.py_buffer(np.ascontiguousarray(values, dtype=kind))
    return pa.Array.from_buffers(arrow_type, n, [validity, data], null_count=nulls)


def _kinds():
    import pyarrow as pa

    offsets = pa.py_buffer(np.array([0, 5, 9], dtype=np.int32))
    return pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"exactnear")])


def _output_columns(clusters: Clusters, start: int, stop: int) -> dict[str, Any]:
    import pyarrow.compute as pc

    dc = clusters.dup_cluster[start:stop]
    in_cluster = dc >= 0
    kind_codes = np.where(clusters.exact_dup[start:stop], 0, 1).astype(np.int8)
    sem = clusters.semantic_cluster
    sem_part = sem[start:stop] if sem is not None else np.full(stop - start, -1)
    return {
        "dup_cluster": _arrow(dc, "int64", in_cluster),
        "dup_kind": pc.take(_kinds(), _arrow(kind_codes, "int8", in_cluster)),
        "is_representative": _arrow(clusters.is_representative[start:stop], "bool"),
        "label_conflict": _arrow(clusters.label_conflict[start:stop], "bool"),
        "semantic_cluster": _arrow(sem_part, "int64", sem_part >= 0),
    }


def dedup(
    project: Project,
    opts: DedupOptions,
    *,
    force: bool = False,
    against: str | Path | None = None,
    text_col: str = "text",
    progress: Callable[[int], None] | None = None,
) -> DedupResult:
    """Run the dedup stage on ``project`` (a rerun with unchanged input and options is a no-op
    unless ``force``). ``against``: a project folder or file whose duplicates in this project are
    reported in ``leakage.parquet`` (train/test leakage). ``opts.engine == "ray"`` runs the whole
    search on Ray Data (``curate.dedup_ray.cluster_with_ray``), or only the hashing pass when
    ``opts.semantic`` or ``against`` need every sketch here; the output is the same."""
    opts.validate()
    src = project.require("ingest", "thresher curate ingest SRC -p DIR")
    inputs = _stage_inputs(project, against)
    config = _fingerprint_config(opts)
    stage_fp = fingerprint({"inputs": inputs, "config": config})
    if not force and project.is_fresh(STAGE, stage_fp):
        manifest = project.read_manifest(STAGE) or {}
        return _result(manifest["counts"], project, noop=True)

    with stage_output(
        project, STAGE, stage_fp, inputs=inputs, config=config, packages=("numpy", "pyarrow")
    ) as run:
        source = _Input(src, opts)
        leaked = None
        if _whole_search_on_ray(opts, against):
            from curate.dedup_ray import cluster_with_ray

            with run.timed("ray_search"):
                clusters, stats = cluster_with_ray(src, opts)
        else:
            with run.timed("sketch"):
                corpus = _sketch(source, opts, progress)
            with run.timed("cluster"):
                clusters, stats = cluster_corpus(corpus, opts)
            if opts.semantic:
                with run.timed("semantic"):
                    _add_semantic(clusters, project, src, corpus, opts)
            if against is not None:
                with run.timed("against"):
                    leaked = _leakage(src, Path(against), corpus, opts, text_col, run.path(LEAKAGE))
            del corpus  # the signatures are not needed past here: freed before pass 2 (peak memory)
        with run.timed("write"):
            _write(source.schema, source.second_pass(), clusters, run.path("records.parquet"))
        run.counts = _counts(clusters, stats, leaked, against)
        run.extra["seed"] = opts.seed
        run.extra["memory_bytes_per_doc"] = 4 * opts.num_perm + 16 + 1 + 4 + 8
    result = _result(run.counts, project, noop=False)
    result.timings = dict(run.timings)
    return result


def _stage_inputs(project: Project, against: str | Path | None) -> list[dict[str, Any]]:
    """The stage's inputs for its fingerprint: the ingested records, and ``against`` if given."""
    inputs = [upstream_input(project, "ingest")]
    if against is not None:
        other = Path(against)
        if not other.exists():
            raise InputError(f"--against {other}: no such file or project folder")
        inputs.append({"against": str(other), "sha256": path_sha256(_against_hash_target(other))})
    return inputs


def _fingerprint_config(opts: DedupOptions) -> dict[str, Any]:
    """The options that change the output (batching, memory and engine do not)."""
    config = asdict(opts)
    config.pop("batch_size")
    config.pop("keep_in_memory_mb")
    config.pop("engine")  # both engines give the same output
    return config


class _Input:
    """The ingested records, read twice: pass 1 sketches, pass 2 writes. Pass 1's batches are
    kept for pass 2 when the file fits in ``keep_in_memory_mb`` (local engine only)."""

    def __init__(self, path: Path, opts: DedupOptions) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.parquet = pq.ParquetFile(path)
        self.schema = self.parquet.schema_arrow
        self.rows = self.parquet.metadata.num_rows
        self.batch_size = opts.batch_size
        meta = self.parquet.metadata
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        self.in_memory = size <= (opts.keep_in_memory_mb << 20)
        self.kept: list | None = [] if self.in_memory and opts.engine == "local" else None

    def first_pass(self):
        """Batches of ``text`` and ``label`` (every column when they are kept for pass 2)."""
        columns = None if self.in_memory else ["text", "label"]
        stream = self.parquet.iter_batches(self.batch_size, columns=columns, use_threads=False)
        return _remember(stream, self.kept)

    def second_pass(self):
        """Batches of every column."""
        if self.kept is not None:
            return self.kept
        return self.parquet.iter_batches(self.batch_size, use_threads=False)


def _whole_search_on_ray(opts: DedupOptions, against: str | Path | None) -> bool:
    """The Ray engine runs the whole near-duplicate search on the cluster, unless semantic
    clusters or leakage need every sketch on the driver (then only pass 1 runs on Ray)."""
    return opts.engine == "ray" and not opts.semantic and against is None


def _sketch(source: _Input, opts: DedupOptions, progress) -> Corpus:
    """Pass 1 on the chosen engine (``sketch_with_ray``: the hashing on Ray, the rest here)."""
    if opts.engine == "ray":
        from curate.dedup_ray import sketch_with_ray

        return sketch_with_ray(source.path, opts)
    return sketch_batches(
        source.first_pass(), opts.normalize(), opts.minhash(), progress, n_rows=source.rows
    )


def _add_semantic(
    clusters: Clusters, project: Project, src: Path, corpus: Corpus, opts: DedupOptions
) -> None:
    """Semantic clusters, and the label conflicts they add, into ``clusters``."""
    sem = _semantic(project, src, mh.exact_groups(corpus.sketch.exact), opts, None)
    sem_conflict, _ = label_conflicts(sem, corpus.label_codes)
    clusters.semantic_cluster = sem
    clusters.label_conflict |= sem_conflict
    clusters.n_semantic = int(sem.max()) + 1 if len(sem) and sem.max() >= 0 else 0


def _leakage(
    src: Path, other: Path, corpus: Corpus, opts: DedupOptions, text_col: str, out: Path
) -> int:
    """``leakage.parquet`` against ``other``; returns how many of this project's rows leak."""
    import pyarrow.parquet as pq

    ids = pq.read_table(src, columns=["id"]).column("id").to_pylist()
    return _against(other, corpus, ids, opts, text_col, out)


def _counts(
    clusters: Clusters, stats: dict[str, Any], leaked: int | None, against: str | Path | None
) -> dict[str, Any]:
    """The manifest's counts (also the result's fields)."""
    n = len(clusters.dup_cluster)
    return {
        "rows": n,
        "clusters": clusters.n_clusters,
        "removed": int(n - clusters.is_representative.sum()),
        "exact_clusters": clusters.n_exact_clusters,
        "near_clusters": clusters.n_near_clusters,
        "duplicate_rows": int((clusters.dup_cluster >= 0).sum()),
        "label_conflicts": clusters.n_conflicts,
        "label_conflict_rows": int(clusters.label_conflict.sum()),
        "semantic_clusters": clusters.n_semantic,
        "leaked": leaked,
        "against": str(against) if against is not None else None,
        **stats,
    }


def _against_hash_target(other: Path) -> Path:
    if other.is_dir() and (other / "ingest").is_dir():
        return Project(other).latest_records(["dedup", "ingest"])[1]
    return other


def _remember(stream, kept: list | None):
    for batch in stream:
        if kept is not None:
            kept.append(batch)
        yield batch


def _write(schema, batches, clusters: Clusters, out: Path) -> None:
    """Pass 2: every input column plus the dedup columns (snappy: fast to write and read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name in DEDUP_COLUMNS:
        if name in schema.names:
            schema = schema.remove(schema.get_field_index(name))
    extra = [
        pa.field("dup_cluster", pa.int64()),
        pa.field("dup_kind", pa.string()),
        pa.field("is_representative", pa.bool_(), nullable=False),
        pa.field("label_conflict", pa.bool_(), nullable=False),
        pa.field("semantic_cluster", pa.int64()),
    ]
    for f in extra:
        schema = schema.append(f)
    start = 0
    pending: list = []
    with pq.ParquetWriter(out, schema, compression="snappy") as writer:
        for batch in batches:
            stop = start + batch.num_rows
            cols = {name: batch.column(name) for name in batch.schema.names}
            cols.update(_output_columns(clusters, start, stop))
            pending.append(pa.table({f.name: cols[f.name] for f in schema}, schema=schema))
            start = stop
            if sum(t.num_rows for t in pending) >= ROW_GROUP:
                writer.write_table(pa.concat_tables(pending))
                pending = []
        if pending or start == 0:
            writer.write_table(pa.concat_tables(pending) if pending else schema.empty_table())


def _result(counts: dict[str, Any], project: Project, *, noop: bool) -> DedupResult:
    return DedupResult(
        rows=counts["rows"],
        clusters=counts["clusters"],
        removed=counts["removed"],
        exact_clusters=counts["exact_clusters"],
        near_clusters=counts["near_clusters"],
        duplicate_rows=counts["duplicate_rows"],
        label_conflicts=counts["label_conflicts"],
        label_conflict_rows=counts["label_conflict_rows"],
        semantic_clusters=counts.get("semantic_clusters"),
        path=str(project.records_path(STAGE)),
        noop=noop,
        leaked=counts.get("leaked"),
        against=counts.get("against"),
    )
