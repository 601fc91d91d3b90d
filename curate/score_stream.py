"""The score stage's streaming engines (``stream`` on one machine, ``ray`` on Ray Data).

No step holds all texts or features: the input Parquet is read in record batches three times.

0. The small columns of every row (id, label, is_representative, dup_cluster): classes, checks.
1. Per batch: hashed word + char n-gram features and naive Bayes' sufficient statistics per
   fold and class (``curate.noise_stream``), plus word document counts per label for the
   data-driven bias terms; summed over batches (associative: on Ray, ``map_batches`` + a reduce
   on the driver).
2. Per batch: each record's out-of-sample NB scores (fold ``f``'s model = all counts minus fold
   ``f``'s, exact K-fold) and its lexicon groups/terms. The driver keeps (n, alphas, classes)
   floats per record, calibrates them and runs cleanlab on the (n, k) arrays, as the in-memory
   path does.
3. Write ``records.parquet`` batch by batch (``ParquetWriter``): input columns + score columns.
   The report reads back only the texts it shows.

What the streaming passes do not compute: the embedding learner and the embedding map. Outlier
scores and the near-OOD flag come from the engine's neighbour step (``rep_text_batches`` feeds
the embeddings into a float16 file, ``thresher.neighbours`` finds the neighbours); without
embeddings ``outlier_score`` and ``near_ood`` are null. With dedup output only representatives
are featurised, as in the in-memory path.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate import noise_stream as ns
from curate.ray_support import import_ray
from thresher.errors import InputError
from thresher.records import representative_mask

log = logging.getLogger(__name__)

WORD_CAP = 200_000  # distinct words kept for the data-driven bias terms (see merge_word_counts)


@dataclass(frozen=True)
class BatchContext:
    """What a batch function needs (small; shipped to every Ray task)."""

    classes: tuple[str, ...]
    folds: int
    seed: int
    n_features: int = ns.VIEW_FEATURES
    alphas: tuple[float, ...] = ns.ALPHAS
    lexicon: tuple[tuple[str, tuple[str, ...]], ...] = ()
    dedup: bool = False
    held_out: frozenset[str] = frozenset()  # ids whose labels no model learns from (tune test)


@dataclass
class Pass1Part:
    counts: ns.CountPart
    words: dict[str, Counter[str]]
    rows: int


def _batch_fields(batch, ctx: BatchContext):
    """The representatives' ids, texts and labels of an Arrow batch."""
    keep = representative_mask(batch)  # the column is read only with dedup output
    ids = batch.column("id").to_pylist()
    texts = batch.column("text").to_pylist()
    labels = batch.column("label").to_pylist() if "label" in batch.column_names else None
    idx = np.flatnonzero(keep).tolist()
    ids = [str(ids[i]) for i in idx]
    texts = ["" if texts[i] is None else str(texts[i]) for i in idx]
    labs = [None] * len(idx) if labels is None else [labels[i] for i in idx]
    labs = [None if v is None else str(v) for v in labs]
    return ids, texts, labs


def _fit_labels(ids, labels, ctx: BatchContext):
    """The labels the models learn from: held-out records count as unlabeled."""
    if not ctx.held_out:
        return labels
    return [None if i in ctx.held_out else lab for i, lab in zip(ids, labels, strict=True)]


def pass1_batch(batch, ctx: BatchContext) -> Pass1Part:
    """Pass 1 on one Arrow batch: NB sufficient statistics and word counts."""
    from curate.bias import word_doc_counts

    ids, texts, labels = _batch_fields(batch, ctx)
    y = ns.label_codes(_fit_labels(ids, labels, ctx), ctx.classes)
    fold = ns.fold_ids(ids, ctx.folds, ctx.seed)
    X = ns.featurize(texts, ctx.n_features)
    part = ns.batch_counts(X, y, fold, ctx.folds, len(ctx.classes))
    return Pass1Part(part, word_doc_counts(texts, labels), len(ids))


_MATCHERS: dict[Any, Any] = {}


def _matcher(ctx: BatchContext):
    from curate.bias import Matcher

    key = ctx.lexicon
    if key not in _MATCHERS:
        _MATCHERS.clear()
        _MATCHERS[key] = Matcher({g: list(t) for g, t in ctx.lexicon})
    return _MATCHERS[key]


def pass2_batch(batch, ctx: BatchContext, model: ns.NBModel):
    """Pass 2 on one Arrow batch: out-of-sample NB scores and lexicon matches, one row per
    representative (Arrow table: id, scores = alphas * classes floats, groups, terms)."""
    import pyarrow as pa

    ids, texts, labels = _batch_fields(batch, ctx)
    y = ns.label_codes(_fit_labels(ids, labels, ctx), ctx.classes)
    fold = np.where(y >= 0, ns.fold_ids(ids, ctx.folds, ctx.seed), -1)  # -1: the all-fold model
    scores = model.scores(ns.featurize(texts, ctx.n_features), fold)
    matcher = _matcher(ctx)
    found = [matcher.groups_and_terms(t) for t in texts]
    width = scores.shape[1] * scores.shape[2]
    flat = pa.array(scores.reshape(-1), type=pa.float64())
    return pa.table(
        {
            "id": pa.array(ids, type=pa.string()),
            "scores": pa.FixedSizeListArray.from_arrays(flat, width),
            "groups": pa.array([g for g, _ in found], type=pa.list_(pa.string())),
            "terms": pa.array([t for _, t in found], type=pa.list_(pa.string())),
        }
    )


# --------------------------------------------------------------------------------------------
# Executors: the same batch functions, run in this process or on Ray Data


def _read_columns(path: Path, dedup: bool) -> list[str]:
    import pyarrow.parquet as pq

    names = set(pq.ParquetFile(path).schema_arrow.names)
    cols = ["id", "text"] + (["label"] if "label" in names else [])
    if dedup and "is_representative" in names:
        cols.append("is_representative")
    return cols


def _local_batches(path: Path, columns: list[str], batch_size: int) -> Iterator[Any]:
    import pyarrow.parquet as pq

    yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)


class LocalRunner:
    """Both passes in this process, batch after batch."""

    name = "stream"

    def __init__(self, path: Path, ctx: BatchContext, batch_size: int, progress=None):
        self.path, self.ctx, self.batch_size, self.progress = path, ctx, batch_size, progress
        self.columns = _read_columns(path, ctx.dedup)

    def pass1(self) -> Iterator[Pass1Part]:
        for batch in _local_batches(self.path, self.columns, self.batch_size):
            yield pass1_batch(batch, self.ctx)
            if self.progress:
                self.progress(batch.num_rows)

    def pass2(self, model: ns.NBModel) -> Iterator[Any]:
        for batch in _local_batches(self.path, self.columns, self.batch_size):
            yield pass2_batch(batch, self.ctx, model)
            if self.progress:
                self.progress(batch.num_rows)


def _ray_pass1(batch, ctx: BatchContext):
    """map_batches task: one batch → one row holding its pickled partial statistics."""
    import pyarrow as pa

    part = pass1_batch(batch, ctx)
    return pa.table({"part": pa.array([pickle.dumps(part)], type=pa.binary())})


def _ray_pass2(batch, ctx: BatchContext, model_ref):
    import ray

    model = ray.get(model_ref) if isinstance(model_ref, ray.ObjectRef) else model_ref
    return pass2_batch(batch, ctx, model)


class RayRunner:
    """Both passes as Ray Data ``map_batches`` over the input Parquet; the driver reduces pass 1
    and collects pass 2's small per-record outputs in input order. ``ray.init()`` is left to the
    caller or to Ray's defaults (a local instance, or the cluster named by ``RAY_ADDRESS``)."""

    name = "ray"

    def __init__(self, path: Path, ctx: BatchContext, batch_size: int, progress=None):
        self.ray = import_ray()
        if not self.ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
            self.ray.init(include_dashboard=False, log_to_driver=False)
        self.path, self.ctx, self.batch_size, self.progress = path, ctx, batch_size, progress
        self.columns = _read_columns(path, ctx.dedup)

    def _dataset(self):
        data = self.ray.data
        data.DataContext.get_current().execution_options.preserve_order = True
        return data.read_parquet(str(self.path), columns=self.columns)

    def pass1(self) -> Iterator[Pass1Part]:
        out = self._dataset().map_batches(
            _ray_pass1, fn_kwargs={"ctx": self.ctx}, batch_format="pyarrow",
            batch_size=self.batch_size,
        )  # fmt: skip
        for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
            for blob in batch.column("part").to_pylist():
                part = pickle.loads(blob)
                if self.progress:
                    self.progress(part.rows)
                yield part

    def pass2(self, model: ns.NBModel) -> Iterator[Any]:
        ref = self.ray.put(model)
        out = self._dataset().map_batches(
            _ray_pass2, fn_kwargs={"ctx": self.ctx, "model_ref": ref}, batch_format="pyarrow",
            batch_size=self.batch_size,
        )  # fmt: skip
        for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
            if batch.num_rows:
                if self.progress:
                    self.progress(batch.num_rows)
                yield batch


# --------------------------------------------------------------------------------------------
# The driver


@dataclass
class Index:
    """Pass 0: the small columns of every row (no text)."""

    ids: np.ndarray  # object (str)
    labels: list[str | None]
    rep: np.ndarray  # bool
    clusters: np.ndarray | None
    dedup: bool


def read_index(path: Path) -> Index:
    """Ids, labels and dedup columns of every row (a few dozen bytes per record)."""
    import pyarrow.parquet as pq

    names = set(pq.ParquetFile(path).schema_arrow.names)
    cols = [c for c in ("id", "label", "is_representative", "dup_cluster") if c in names]
    table = pq.read_table(path, columns=cols)
    ids = np.array(table.column("id").to_pylist(), dtype=object)
    labels = table.column("label").to_pylist() if "label" in names else [None] * len(ids)
    labels = [None if v is None else str(v) for v in labels]
    dedup = "is_representative" in names
    rep = representative_mask(table)
    clusters = None
    if "dup_cluster" in names:
        clusters = table.column("dup_cluster").to_pandas().to_numpy()
    return Index(ids, labels, rep, clusters, dedup)


@dataclass
class StreamScores:
    """What the streaming passes produce for the stage (representatives in file order)."""

    res: Any  # curate.noise.NoiseResult over the representatives
    group_rows: np.ndarray  # sparse membership: representative position, group name
    group_names: np.ndarray
    term_rows: np.ndarray
    term_names: np.ndarray
    words: dict[str, Counter[str]]
    alpha: float
    log_loss: dict[float, float]
    timings: dict[str, float] = field(default_factory=dict)


def score_passes(
    path: Path,
    index: Index,
    *,
    engine: str,
    folds: int,
    seed: int,
    lexicon: dict[str, list[str]],
    batch_size: int,
    ranking: str = "normalized_margin",
    filter_by: str = "low_quality",
    class_prior: str = "observed",
    n_features: int = ns.VIEW_FEATURES,
    alphas: tuple[float, ...] = ns.ALPHAS,
    progress: Callable[[int], None] | None = None,
    held_out: frozenset[str] = frozenset(),
) -> StreamScores:
    """Passes 1 and 2 and the cleanlab scoring of the representatives of the records at
    ``path``. ``engine``: ``stream`` (this process) or ``ray`` (Ray Data)."""
    from curate.noise import effective_folds, encode_labels, noise_result, parse_class_prior

    rep_labels = [lab for lab, r in zip(index.labels, index.rep, strict=True) if r]
    y, classes = encode_labels(rep_labels)
    parse_class_prior(class_prior, classes)  # a bad prior fails before the passes, not after
    rep_ids = index.ids[index.rep]
    held = np.array([str(i) in held_out for i in rep_ids], dtype=bool) if held_out else None
    y_fit = y if held is None else np.where(held, -1, y)
    k_folds = effective_folds(y_fit, folds)
    ctx = BatchContext(
        classes=tuple(classes), folds=k_folds, seed=seed, n_features=n_features, alphas=alphas,
        lexicon=tuple((g, tuple(t)) for g, t in sorted(lexicon.items())), dedup=index.dedup,
        held_out=frozenset(held_out),
    )  # fmt: skip
    runner = _runner(engine, path, ctx, batch_size, progress)
    timings: dict[str, float] = {}
    with _timed(timings, "pass1_counts"):
        model, words = _pass1(runner, ctx, len(y), path)
    with _timed(timings, "pass2_scores"):
        scores, groups, terms = _pass2(runner, model, ctx, rep_ids, engine, path)
    with _timed(timings, "calibrate_cleanlab"):
        cal = ns.calibrate(scores, y_fit, alphas=alphas, seed=seed)  # held-out labels unused
        del scores
        res = noise_result(
            y, cal.probs, classes, ranking=ranking, filter_by=filter_by, folds=k_folds,
            learners=(ns.LEARNER,), class_prior=class_prior,
        )  # fmt: skip
    return StreamScores(res, *groups, *terms, words, cal.alpha, cal.log_loss, timings)


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Seconds (3 decimals) the block took, into ``timings[step]``."""
    t0 = time.perf_counter()
    yield
    timings[step] = round(time.perf_counter() - t0, 3)


def _runner(engine: str, path: Path, ctx: BatchContext, batch_size: int, progress):
    """The executor of both passes: this process (``stream``) or Ray Data (``ray``)."""
    runner_cls = {"stream": LocalRunner, "ray": RayRunner}.get(engine)
    if runner_cls is None:
        raise InputError(f"unknown streaming engine {engine!r}; choose stream or ray")
    return runner_cls(path, ctx, batch_size, progress)


def _pass1(
    runner, ctx: BatchContext, expected: int, path: Path
) -> tuple[ns.NBModel, dict[str, Counter[str]]]:
    """Pass 1: the summed NB statistics (→ the per-fold models) and the word counts."""
    from curate.bias import merge_word_counts

    stats = ns.NBStats.zeros(ctx.folds, len(ctx.classes), 2 * ctx.n_features)
    words: dict[str, Counter[str]] = {}
    seen = 0
    for part in runner.pass1():
        stats.add(part.counts)
        merge_word_counts(words, part.words, cap=WORD_CAP)
        seen += part.rows
    if seen != expected:
        raise InputError(f"{path}: read {seen} representatives in pass 1, expected {expected}")
    return ns.NBModel.from_stats(stats, ctx.alphas), words


def _pass2(
    runner, model: ns.NBModel, ctx: BatchContext, rep_ids: np.ndarray, engine: str, path: Path
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Pass 2: every representative's out-of-sample scores (n, alphas, classes), in input
    order, and its sparse lexicon group and term memberships."""
    n_all, n_alphas, n_classes = len(rep_ids), len(ctx.alphas), len(ctx.classes)
    scores = np.zeros((n_all, n_alphas, n_classes))
    groups: list[tuple[np.ndarray, np.ndarray]] = []
    terms: list[tuple[np.ndarray, np.ndarray]] = []
    pos = 0
    for table in runner.pass2(model):
        n = table.num_rows
        got = table.column("id").to_pylist()
        if got != list(rep_ids[pos : pos + n]):
            raise RuntimeError(f"{engine}: pass 2 rows out of input order at row {pos}")
        flat = table.column("scores").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        scores[pos : pos + n] = flat.reshape(n, n_alphas, n_classes)
        groups.append(_sparse(table.column("groups"), pos))
        terms.append(_sparse(table.column("terms"), pos))
        pos += n
    if pos != n_all:
        raise InputError(f"{path}: scored {pos} representatives in pass 2, expected {n_all}")
    return scores, _concat(groups), _concat(terms)


def _sparse(column, offset: int) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64) + offset
    names = np.array(pc.list_flatten(arr).to_pylist(), dtype=object)
    return rows, names


def _concat(parts) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, dtype=object)
    return (
        np.concatenate([r for r, _ in parts]).astype(np.int64),
        np.concatenate([n for _, n in parts]).astype(object),
    )


def bias_from_scores(out: StreamScores, y: np.ndarray, *, alpha: float, min_count: int,
                     lexicon_groups: int, top_terms: int = 15):  # fmt: skip
    """The ``bias.json`` report from the streamed counts and memberships."""
    from dataclasses import asdict

    from curate import bias as b

    classes = out.res.classes
    rows = []
    for kind, (r, n) in (("group", (out.group_rows, out.group_names)),
                         ("term", (out.term_rows, out.term_names))):  # fmt: skip
        counts = b.membership_counts(r, n, y, classes)
        rows.append(
            b.associations_from_counts(*counts, kind=kind, min_count=min_count, alpha=alpha)
        )
    return b.BiasReport(
        groups=[asdict(r) for r in rows[0]],
        terms=[asdict(r) for r in rows[1]],
        data_driven_terms=b.log_odds_from_counts(out.words, top=top_terms, min_count=min_count),
        slices=b.slice_table_sparse(
            out.group_rows,
            out.group_names,
            y,
            classes,
            out.res.label_issue,
            out.res.label_quality,
        ),  # fmt: skip
        alpha=alpha,
        min_count=min_count,
        lexicon_groups=lexicon_groups,
    )


def group_lists(rows: np.ndarray, names: np.ndarray, n: int):
    """Sparse membership → (offsets (n + 1), values sorted per row) for building list columns."""
    order = np.lexsort((names.astype(str), rows)) if rows.size else np.zeros(0, np.int64)
    counts = np.bincount(rows, minlength=n) if rows.size else np.zeros(n, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, names[order]


def write_records(
    path_in: Path,
    path_out: Path,
    *,
    index: Index,
    row_of: np.ndarray,
    quality: np.ndarray,
    issue: np.ndarray,
    res,
    groups: tuple[np.ndarray, np.ndarray],
    consensus: dict[str, tuple[str, float, float]] | None,
    batch_size: int,
    outliers: tuple[np.ndarray, np.ndarray] | None = None,
) -> int:
    """Pass 3: every input row + the score columns, written batch by batch (zstd Parquet).
    ``outliers``: the representatives' outlier scores and near-OOD flags (null columns without)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    start = 0
    try:
        for batch in pq.ParquetFile(path_in).iter_batches(batch_size=batch_size):
            sl = slice(start, start + batch.num_rows)
            cols = dict(zip(batch.schema.names, batch.columns, strict=True))
            cols.update(_score_columns(row_of[sl], quality[sl], issue[sl], res, groups, outliers))
            if consensus is not None:
                cols.update(_consensus_columns(index.ids[sl], consensus))
            table = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(path_out, table.schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
            start += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    return start


def _score_columns(
    r: np.ndarray,
    quality: np.ndarray,
    issue: np.ndarray,
    res,
    groups: tuple[np.ndarray, np.ndarray],
    outliers: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The score columns of one batch's rows, whose representatives are ``r`` (positions);
    ``quality`` and ``issue`` are the rows' own. Without ``outliers``: null outlier columns."""
    import pyarrow as pa

    n, k = len(r), len(res.classes)
    offsets, values = groups
    probs = res.pred_probs[r]
    pred = np.asarray(res.predicted_label, dtype=object)[r]
    lens = offsets[r + 1] - offsets[r]
    starts = np.repeat(offsets[r], lens) + (
        np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    )
    return {
        "label_quality": pa.array(quality, type=pa.float64(), from_pandas=True),
        "label_issue": pa.array(issue, type=pa.bool_()),
        "predicted_label": pa.array(pred.tolist(), type=pa.string()),
        "predicted_prob": pa.array(res.predicted_prob[r], type=pa.float64()),
        "pred_probs": pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
            pa.array(probs.reshape(-1), type=pa.float64()),
        ),
        "outlier_score": (
            pa.nulls(n, pa.float64())
            if outliers is None
            else pa.array(outliers[0][r], type=pa.float64())
        ),
        "near_ood": (
            pa.nulls(n, pa.bool_())
            if outliers is None
            else pa.array(outliers[1][r], type=pa.bool_())
        ),
        "bias_groups": pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)),
            pa.array(values[starts].tolist(), type=pa.string()),
        ),
    }


def _consensus_columns(
    ids: np.ndarray, consensus: dict[str, tuple[str, float, float]]
) -> dict[str, Any]:
    """consensus_label, consensus_quality and annotator_agreement of one batch's rows (null
    for rows no annotator labelled)."""
    import pyarrow as pa

    hit = [consensus.get(str(i)) for i in ids]
    kinds = (("consensus_label", pa.string()), ("consensus_quality", pa.float64()),
             ("annotator_agreement", pa.float64()))  # fmt: skip
    return {
        name: pa.array([h[j] if h else None for h in hit], kind)
        for j, (name, kind) in enumerate(kinds)
    }


def rep_text_batches(path: Path, rep: np.ndarray, batch_size: int) -> Iterator[list[str]]:
    """The representatives' texts (``rep``: a mask over the file's rows), a batch at a time,
    in file order."""
    start = 0
    for batch in _local_batches(path, ["text"], batch_size):
        keep = rep[start : start + batch.num_rows]
        start += batch.num_rows
        texts = batch.column(0).to_pylist()
        yield [str(t) for t, k in zip(texts, keep, strict=True) if k]


def take_rows(path: Path, rows: np.ndarray, columns: list[str], batch_size: int) -> dict[int, dict]:
    """Read back only ``rows`` (positions) of the Parquet at ``path``: {row: {col: value}}."""
    import pyarrow.parquet as pq

    want = np.unique(rows)
    out: dict[int, dict] = {}
    start = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
        n = batch.num_rows
        lo, hi = np.searchsorted(want, [start, start + n])
        if hi > lo:
            picked = batch.take(want[lo:hi] - start).to_pylist()
            out.update(zip(want[lo:hi].tolist(), picked, strict=True))
        start += n
    return out


def consensus_map(frame) -> dict[str, tuple[str, float, float]]:
    return {
        str(i): (lab, float(q), float(a))
        for i, lab, q, a in zip(
            frame["id"],
            frame["consensus_label"],
            frame["consensus_quality"],
            frame["annotator_agreement"],
            strict=True,
        )  # fmt: skip
    }


def manifest_scoring(out: StreamScores, engine: str, n_features: int) -> dict[str, Any]:
    return {
        "engine": engine,
        "learners": ns.LEARNER,
        "features": f"hashed word 1-2 + char_wb 2-5 grams, 2 x {n_features}",
        "nb_alpha": out.alpha,
        "calibration_log_loss": json.loads(json.dumps(out.log_loss)),
    }
