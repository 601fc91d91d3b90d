"""The dedup stage on Ray Data (optional extra: ``pip install thresher[ray]``).

Two entry points (``curate.dedup`` picks one for ``--engine ray``):

- ``cluster_with_ray``: the whole search on the cluster (the default for ``--engine ray``). The
  driver keeps a few bytes per row:

  1. sketch: one task per Parquet row group, so every row carries its index (``row``);
  2. exact groups: ``groupby`` on the 128-bit exact key; each row learns its group's first row,
     and one row per group with shingles (carrying its signature) goes on to the near search;
  3. LSH: ``map_batches`` emits (band, band hash, row) per band; ``groupby`` per bucket emits the
     candidate pairs with the local rule (each member paired with the next ``max_bucket - 1`` in
     row order); pairs are deduplicated with a ``groupby`` on the pair key;
  4. verification: two ``join``\\ s bring both signatures to the pair; the estimated Jaccard is
     computed on the workers and pairs below ``threshold`` are dropped;
  5. connected components: alternating large-star / small-star rounds (Kiveris et al. 2014) over
     the edge list (exact links and verified pairs), each a ``groupby``; the driver only sums each
     round's changes. The fixed point is a star per component around its smallest row: the same
     labels as ``curate.minhash.components``;
  6. the driver reads back the (row, root) edges, and lengths and labels of the rows in a cluster,
     and numbers the clusters with ``curate.dedup_clusters.dense_cluster_ids``, as the local
     engine does.

- ``sketch_with_ray``: pass 1 only (normalise, hash, shingle, sign) as ``map_batches``; the driver
  collects the ``Corpus`` (~541 B per document) and clusters it like the local engine. Used with
  ``--semantic`` or ``--against``, which need every sketch on the driver.

The result is identical to the local engine's (tests compare every array). ``ray.init()`` is left
to the caller or to Ray's defaults (a local instance, or the cluster named by ``RAY_ADDRESS``).
The input path must be readable from every node (shared storage) on a multi-machine cluster.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from curate import minhash as mh
from curate.dedup_clusters import Clusters, dense_cluster_ids
from curate.dedup_sketch import Corpus, bits_to_bool, empty_corpus, label_codes, text_lengths
from curate.normalize import NormalizeOptions, normalized_bytes
from curate.ray_support import import_ray

log = logging.getLogger(__name__)

_CHOSEN = ("rep", "conflict", "exact")
_NO_STATS = {"candidate_reps": 0, "near_pairs": 0, "ray_rounds": 0}
_MAX_ROUNDS = 200  # large-star/small-star needs O(log^2 n) rounds; this is a safety stop


# --------------------------------------------------------------------------- pass 1


def _sketch_table(texts, labels, opts, rows=None):
    """Sketch columns for Arrow ``texts`` (and ``labels`` or None); with ``rows`` (the first row
    index) also ``row`` and the exact key as two uint64 columns (group-by keys)."""
    import pyarrow as pa

    data, offsets = normalized_bytes(texts, NormalizeOptions(punctuation=opts.punctuation))
    mopts = opts.minhash()
    sk = mh.sketch_batch(data, offsets, mopts)
    n = len(texts)
    sig = pa.Array.from_buffers(
        pa.binary(4 * mopts.num_perm),
        n,
        [None, pa.py_buffer(np.ascontiguousarray(sk.signatures))],
    )
    has = pa.Array.from_buffers(
        pa.bool_(), n, [None, pa.py_buffer(np.packbits(sk.has_shingles, bitorder="little"))]
    )
    lengths = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(text_lengths(texts))])
    label = labels.cast(pa.string()) if labels is not None else pa.nulls(n, pa.string())
    columns: dict[str, Any] = {"sig": sig, "has": has, "length": lengths, "label": label}
    if rows is None:
        columns["exact"] = pa.Array.from_buffers(
            pa.binary(16), n, [None, pa.py_buffer(np.ascontiguousarray(sk.exact))]
        )
    else:
        columns["row"] = np.arange(rows, rows + n, dtype=np.int64)
        columns["exact0"] = np.ascontiguousarray(sk.exact[:, 0])
        columns["exact1"] = np.ascontiguousarray(sk.exact[:, 1])
    return pa.table(columns)


def _sketch_block(batch, opts):
    """The map_batches task of ``sketch_with_ray``: Arrow batch of (text, label) → sketch."""
    labels = batch.column("label") if "label" in batch.column_names else None
    return _sketch_table(batch.column("text"), labels, opts)


def _fixed(column, width: int, dtype) -> np.ndarray:
    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
    raw = raw[arr.offset * width : (arr.offset + len(arr)) * width]
    return raw.view(dtype).reshape(len(arr), -1)


def _ints(column) -> np.ndarray:
    """An int64/uint64 Arrow column without nulls as numpy (no pandas)."""
    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    return np.asarray(arr.to_numpy(zero_copy_only=False))


def sketch_with_ray(src: Path, opts) -> Corpus:
    """Pass 1 on Ray Data: the ``Corpus`` of the records at ``src`` (``opts``: the stage's
    ``curate.dedup.DedupOptions``)."""
    ray = import_ray()
    import pyarrow as pa

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.read_parquet(str(src)).select_columns(["text", "label"])
    out = ds.map_batches(
        _sketch_block, fn_kwargs={"opts": opts}, batch_format="pyarrow", batch_size=opts.batch_size
    )
    sigs, exacts, has, lengths, labels = [], [], [], [], []
    for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
        if batch.num_rows == 0:
            continue
        sigs.append(_fixed(batch.column("sig"), 4 * opts.num_perm, np.uint32))
        exacts.append(_fixed(batch.column("exact"), 16, np.uint64))
        has.append(bits_to_bool(batch.column("has")))
        lengths.append(_fixed(batch.column("length"), 8, np.int64).ravel())
        labels.extend(batch.column("label").chunks)
    if not sigs:
        return empty_corpus(opts.num_perm)
    sketch = mh.Sketch(np.concatenate(sigs), np.concatenate(exacts), np.concatenate(has))
    codes, names = label_codes([pa.concat_arrays(labels)] if labels else [])
    log.info("ray: sketched %d documents", len(sketch.exact))
    return Corpus(sketch, codes, names, np.concatenate(lengths))


# --------------------------------------------------------------------------- the whole search


def _sketch_row_group(item, path: str, opts):
    """One Parquet row group → sketch rows with their global index (``row``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    group, start = int(item["group"][0]), int(item["start"][0])
    pf = pq.ParquetFile(path)
    columns = ["text", "label"] if "label" in pf.schema_arrow.names else ["text"]
    parts = []
    for batch in pf.iter_batches(opts.batch_size, row_groups=[group], columns=columns):
        labels = batch.column("label") if "label" in batch.schema.names else None
        parts.append(_sketch_table(batch.column("text"), labels, opts, rows=start))
        start += batch.num_rows
    return pa.concat_tables(parts) if parts else None


def _exact_links(group):
    """A group of rows with one exact key → per row its group's first row and whether the group
    has ≥ 2 rows; the first row keeps its signature (others: null) for the near search."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = _ints(group.column("row"))
    first = int(rows.min())
    keep = rows == first
    sig = pc.if_else(pa.array(keep), group.column("sig"), pa.nulls(len(rows), group["sig"].type))
    return pa.table(
        {
            "row": rows,
            "first": np.full(len(rows), first, np.int64),
            "dup": np.full(len(rows), len(rows) >= 2),
            "near": keep,
            "has": group.column("has"),
            "sig": sig,
            "length": group.column("length"),
            "label": group.column("label"),
        }
    )


def _band_rows(batch, bands: int, rows: int, num_perm: int):
    """Near-search rows → (band, hash, row) for every band."""
    import pyarrow as pa

    sig = _fixed(batch.column("sig"), 4 * num_perm, np.uint32)
    ids = _ints(batch.column("row"))
    n = len(ids)
    hashes = np.stack([mh.band_hash(sig, b, rows) for b in range(bands)], axis=1)
    return pa.table(
        {
            "band": np.repeat(np.arange(bands, dtype=np.int64)[None, :], n, axis=0).ravel(),
            "hash": hashes.ravel(),
            "row": np.repeat(ids, bands),
        }
    )


def _bucket_pairs(group, max_bucket: int):
    """One LSH bucket → its candidate pairs (a < b), each member with the next
    ``max_bucket - 1`` members in row order (``curate.minhash.bucket_pairs``'s rule)."""
    import pyarrow as pa

    rows = np.sort(_ints(group.column("row")))
    found = [np.stack([rows[:-d], rows[d:]], axis=1) for d in range(1, min(max_bucket, len(rows)))]
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    return pa.table({"a": pairs[:, 0].copy(), "b": pairs[:, 1].copy()})


def _exact_rows(batch):
    """Rows in an exact group of ≥ 2: (row, first)."""
    keep = batch.column("dup")
    return batch.select(["row", "first"]).filter(keep)


def _search_rows(batch):
    """One row per exact group, with shingles: (row, sig) for the near search."""
    import pyarrow.compute as pc

    keep = pc.and_(batch.column("near"), batch.column("has"))
    return batch.select(["row", "sig"]).filter(keep)


def _exact_edges(batch):
    """Edges (child, parent) from exact copies to their group's first row."""
    keep = batch["row"] != batch["first"]
    return {"child": batch["row"][keep], "parent": batch["first"][keep]}


def _near_edges(batch):
    return {"child": batch["b"], "parent": batch["a"]}


def _pair_key(batch, n: int):
    return {"key": batch["a"] * n + batch["b"]}


def _unkey(batch, n: int):
    key = batch["key"]
    return {"a": key // n, "b": key % n}


def _pair_rows(batch, sig_type):
    """Candidate pairs → verification rows keyed by their first row (no signature yet)."""
    import pyarrow as pa

    n = batch.num_rows
    return pa.table(
        {"key": batch.column("a"), "other": batch.column("b"), "carry": pa.nulls(n, sig_type)}
    )


def _own_signatures(batch):
    """Near-search rows → verification rows that bring a row's signature (``other`` = -1)."""
    import pyarrow as pa

    n = batch.num_rows
    return pa.table(
        {"key": batch.column("row"), "other": np.full(n, -1, np.int64), "carry": batch["sig"]}
    )


def _split_group(group):
    """A verification group → (own signature row mask, the pair rows' mask)."""
    other = _ints(group.column("other"))
    return other < 0, other


def _attach_signature(group):
    """Group of row k: pairs (k, b) → rows keyed by b carrying k's signature."""
    import pyarrow as pa

    mine, other = _split_group(group)
    pairs = ~mine
    own = group.column("carry").filter(pa.array(mine))
    key = _ints(group.column("key"))
    n = int(pairs.sum())
    carry = own.take(pa.array(np.zeros(n, np.int64))) if n else own.slice(0, 0)
    return pa.table({"key": other[pairs], "other": key[pairs], "carry": carry})


def _verify_group(group, threshold: float, num_perm: int):
    """Group of row b: pairs (a, b) carrying a's signature → those whose estimated Jaccard with
    b's signature is ≥ ``threshold``, as (a, b)."""
    import pyarrow as pa

    mine, other = _split_group(group)
    sig = _fixed(group.column("carry"), 4 * num_perm, np.uint32)
    pairs = ~mine
    sim = (sig[pairs] == sig[mine][:1]).mean(axis=1).astype(np.float32)
    keep = sim >= np.float32(threshold)
    b = _ints(group.column("key"))[pairs][keep]
    return pa.table({"a": other[pairs][keep], "b": b})


def _both_ways(batch):
    """Edges (child, parent) → both directions keyed by ``node``."""
    return {
        "node": np.concatenate([batch["child"], batch["parent"]]),
        "other": np.concatenate([batch["parent"], batch["child"]]),
    }


def _large_star(group):
    """Large-star at node u: every larger neighbour v gets parent min(Γ(u) ∪ {u}); a change is a
    new parent other than u."""
    u = int(group["node"][0])
    others = np.unique(group["other"])
    low = min(u, int(others[0]))
    bigger = others[others > u]
    return {
        "child": bigger,
        "parent": np.full(len(bigger), low, np.int64),
        "changed": np.full(len(bigger), low != u, np.int64),
    }


def _small_star(group):
    """Small-star at child u with parents P (all < u): u and every p ≠ min P get parent min P;
    a change is a child with two or more distinct parents."""
    u = int(group["child"][0])
    parents = np.unique(group["parent"])
    low = int(parents[0])
    children = np.concatenate([[u], parents[1:]]).astype(np.int64)
    changed = np.zeros(len(children), np.int64)
    changed[0] = len(parents) - 1
    return {"child": children, "parent": np.full(len(children), low, np.int64), "changed": changed}


def _drop_changed(batch):
    return {"child": batch["child"], "parent": batch["parent"]}


def _components(edges, num_partitions: int) -> tuple[Any, int]:
    """Star forest of the graph ``edges`` (child, parent): a Dataset of (child, root) with the
    root the smallest node of the component; and the rounds it took."""
    for round_no in range(1, _MAX_ROUNDS + 1):
        large = (
            edges.map_batches(_both_ways, batch_format="numpy")
            .groupby("node", num_partitions=num_partitions)
            .map_groups(_large_star, batch_format="numpy")
            .materialize()
        )
        large_changes = int(large.sum("changed") or 0) if large.count() else 0
        small = (
            large.map_batches(_drop_changed, batch_format="numpy")
            .groupby("child", num_partitions=num_partitions)
            .map_groups(_small_star, batch_format="numpy")
            .materialize()
        )
        small_changes = int(small.sum("changed") or 0) if small.count() else 0
        edges = small.map_batches(_drop_changed, batch_format="numpy").materialize()
        log.info("ray: components round %d: %d + %d changes", round_no, large_changes,
                 small_changes)  # fmt: skip
        if large_changes == 0 and small_changes == 0:
            return edges, round_no
    raise RuntimeError(f"ray: connected components did not settle in {_MAX_ROUNDS} rounds")


def _pick_members(batch, members):
    """Rows of ``batch`` in a cluster, with their component: ``members`` (an object ref) holds
    the sorted row indices and their components."""
    import pyarrow as pa
    import ray

    rows_in, comps = ray.get(members) if isinstance(members, ray.ObjectRef) else members
    rows = _ints(batch.column("row"))
    pos = np.minimum(np.searchsorted(rows_in, rows), max(len(rows_in) - 1, 0))
    keep = (rows_in[pos] == rows) if len(rows_in) else np.zeros(len(rows), bool)
    mask = pa.array(keep)
    table = batch.select(["row", "first", "length", "label"]).filter(mask)
    return table.append_column("comp", pa.array(comps[pos[keep]]))


def _choose_in_component(group):
    """One duplicate cluster → per row: ``rep`` (the representative: majority label, ties
    alphabetical, unlabelled rows do not vote; then longest text; then earliest row),
    ``conflict`` (≥ 2 distinct labels) and ``exact`` (all rows share one normalised text)."""
    import pyarrow as pa

    rows = _ints(group.column("row"))
    lengths = _ints(group.column("length"))
    labels = group.column("label").to_pylist()
    votes: dict[str, int] = {}
    for label in labels:
        if label is not None:
            votes[label] = votes.get(label, 0) + 1
    majority = min(votes, key=lambda lab: (-votes[lab], lab)) if votes else None
    eligible = np.array([majority is None or lab == majority for lab in labels], bool)
    order = np.lexsort((rows, -lengths, ~eligible))
    rep = np.zeros(len(rows), bool)
    rep[order[0]] = True
    n = len(rows)
    exact = len(np.unique(_ints(group.column("first")))) == 1
    return pa.table(
        {
            "row": rows,
            "rep": rep,
            "conflict": np.full(n, len(votes) >= 2),
            "exact": np.full(n, exact),
        }
    )


def _row_groups(path: Path) -> tuple[list[dict[str, int]], int]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    items, start = [], 0
    for i in range(meta.num_row_groups):
        items.append({"group": i, "start": start})
        start += meta.row_group(i).num_rows
    return items, start


def _collect(ds, columns: list[str]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        for c in columns:
            parts[c].append(np.asarray(batch[c]))
    return {c: np.concatenate(v) if v else np.zeros(0, np.int64) for c, v in parts.items()}


def cluster_with_ray(
    src: Path, opts, num_partitions: int | None = None
) -> tuple[Clusters, dict[str, int]]:
    """Exact + near clusters, representatives and label conflicts of the records at ``src``,
    computed on Ray Data (``opts``: the stage's ``curate.dedup.DedupOptions``). Identical to
    ``curate.dedup.cluster_corpus`` on the locally sketched corpus.

    Group-bys use Ray's task-based sort shuffle: the default hash shuffle starts aggregator actors
    for every group-by, which measured 2x slower on this many small shuffles."""
    ray = import_ray()
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    before = ctx.shuffle_strategy
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        return _cluster(ray, src, opts, num_partitions)
    finally:
        ctx.shuffle_strategy = before


def _cluster(ray, src: Path, opts, num_partitions: int | None) -> tuple[Clusters, dict[str, int]]:
    mopts = opts.minhash()
    bands, band_rows = (
        (mopts.bands, mopts.rows)
        if mopts.bands
        else mh.optimal_bands(mopts.threshold, mopts.num_perm)
    )
    if bands * band_rows > mopts.num_perm:
        raise ValueError(f"bands*rows = {bands * band_rows} exceeds num_perm = {mopts.num_perm}")
    parts = num_partitions or max(2, int(ray.cluster_resources().get("CPU", 2)))
    items, n = _row_groups(src)
    if n == 0:
        empty = {"row": np.zeros(0, np.int64)} | {k: np.zeros(0, bool) for k in _CHOSEN}
        return _assemble(np.zeros(0, np.int64), empty, {"row": np.zeros(0, np.int64)}, _NO_STATS)

    sketched = (
        ray.data.from_items(items, override_num_blocks=len(items))
        .map_batches(
            _sketch_row_group,
            fn_kwargs={"path": str(src), "opts": opts},
            batch_format="pyarrow",
            batch_size=1,
        )  # fmt: skip
        .materialize()
    )
    linked = (
        sketched.select_columns(["row", "exact0", "exact1", "has", "sig", "length", "label"])
        .groupby(["exact0", "exact1"], num_partitions=parts)
        .map_groups(_exact_links, batch_format="pyarrow")
        .materialize()
    )
    exact = _collect(linked.map_batches(_exact_rows, batch_format="pyarrow"), ["row", "first"])
    searched = linked.map_batches(_search_rows, batch_format="pyarrow").materialize()
    n_reps = searched.count()

    candidates = (
        searched.map_batches(
            _band_rows,
            fn_kwargs={"bands": bands, "rows": band_rows, "num_perm": mopts.num_perm},
            batch_format="pyarrow",
        )  # fmt: skip
        .groupby(["band", "hash"], num_partitions=parts)
        .map_groups(
            _bucket_pairs, fn_kwargs={"max_bucket": mopts.max_bucket}, batch_format="pyarrow"
        )  # fmt: skip
        .map_batches(_pair_key, fn_kwargs={"n": n}, batch_format="numpy")
        .groupby("key", num_partitions=parts)
        .count()
        .map_batches(_unkey, fn_kwargs={"n": n}, batch_format="numpy")
    )
    sig_type = searched.schema().base_schema.field("sig").type
    own = searched.map_batches(_own_signatures, batch_format="pyarrow")
    verify = {"threshold": mopts.threshold, "num_perm": mopts.num_perm}
    verified = (
        candidates.map_batches(_pair_rows, fn_kwargs={"sig_type": sig_type}, batch_format="pyarrow")
        .union(own)
        .groupby("key", num_partitions=parts)
        .map_groups(_attach_signature, batch_format="pyarrow")
        .union(own)
        .groupby("key", num_partitions=parts)
        .map_groups(_verify_group, fn_kwargs=verify, batch_format="pyarrow")
        .materialize()
    )
    n_near = verified.count()

    edges = (
        linked.select_columns(["row", "first"])
        .map_batches(_exact_edges, batch_format="numpy")
        .union(verified.map_batches(_near_edges, batch_format="numpy"))
        .materialize()
    )
    stars = {"child": np.zeros(0, np.int64), "parent": np.zeros(0, np.int64)}
    rounds = 0
    if edges.count():
        star_ds, rounds = _components(edges, parts)
        stars = _collect(star_ds, ["child", "parent"])
    comp = np.arange(n, dtype=np.int64)
    comp[stars["child"]] = stars["parent"]
    del stars
    stats = {"candidate_reps": int(n_reps), "near_pairs": int(n_near), "ray_rounds": rounds}
    in_cluster = np.flatnonzero(np.bincount(comp, minlength=n)[comp] >= 2)
    members = ray.put((in_cluster, comp[in_cluster]))
    chosen = (
        linked.map_batches(_pick_members, fn_kwargs={"members": members}, batch_format="pyarrow")
        .groupby("comp", num_partitions=parts)
        .map_groups(_choose_in_component, batch_format="pyarrow")
    )
    return _assemble(comp, _collect(chosen, ["row", "rep", "conflict", "exact"]), exact, stats)


def _assemble(comp: np.ndarray, chosen, exact, stats) -> tuple[Clusters, dict[str, int]]:
    """The per-row output arrays (numbered as ``curate.dedup.cluster_corpus`` numbers them)."""
    n = len(comp)
    exact_dup = np.zeros(n, bool)
    exact_dup[exact["row"]] = True
    dup_cluster, n_clusters = dense_cluster_ids(comp)
    rep = dup_cluster < 0
    rep[chosen["row"]] = chosen["rep"]
    conflict = np.zeros(n, bool)
    conflict[chosen["row"]] = chosen["conflict"]
    n_exact = int((chosen["rep"] & chosen["exact"]).sum())
    clusters = Clusters(
        dup_cluster=dup_cluster,
        exact_dup=exact_dup,
        is_representative=rep,
        label_conflict=conflict,
        semantic_cluster=None,
        n_clusters=n_clusters,
        n_exact_clusters=n_exact,
        n_near_clusters=n_clusters - n_exact,
        n_conflicts=int((chosen["rep"] & chosen["conflict"]).sum()),
        n_semantic=None,
    )
    return clusters, stats
