"""The dedup sketching pass on Ray Data (optional extra: ``pip install thresher[ray]``).

Pass 1 of the stage (normalise, hash, shingle, sign: ``curate.minhash.sketch_batch``) is the
per-document work; here it runs as ``map_batches`` over a Ray Dataset read from the ingested
Parquet, so it spreads over a Ray cluster's CPUs. Each output row carries the signature and the
exact key as fixed-size binary, the label and the text length; the driver collects them in input
order (``preserve_order``) and the rest of the stage (banding, verification, union-find,
representatives, writing) is the same code as the local engine, so both engines give identical
output (a test checks it). Memory on the driver is the sketch: ~541 B per document.

``ray.init()`` is left to the caller or to Ray's defaults (a local instance, or the cluster named
by ``RAY_ADDRESS``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from curate import minhash as mh
from curate.dedup_sketch import Corpus, bits_to_bool, empty_corpus, label_codes, text_lengths
from curate.normalize import NormalizeOptions, normalized_bytes
from curate.ray_support import import_ray

log = logging.getLogger(__name__)


def _sketch_block(batch, opts):
    """The map_batches task (stateless, so no actor pool): Arrow batch of (text, label) →
    sketch columns."""
    import pyarrow as pa

    texts = batch.column("text")
    data, offsets = normalized_bytes(texts, NormalizeOptions(punctuation=opts.punctuation))
    mopts = opts.minhash()
    sk = mh.sketch_batch(data, offsets, mopts)
    n = len(texts)
    width = 4 * mopts.num_perm
    sig = pa.Array.from_buffers(
        pa.binary(width), n, [None, pa.py_buffer(np.ascontiguousarray(sk.signatures))]
    )
    exact = pa.Array.from_buffers(
        pa.binary(16), n, [None, pa.py_buffer(np.ascontiguousarray(sk.exact))]
    )
    has = pa.Array.from_buffers(
        pa.bool_(), n, [None, pa.py_buffer(np.packbits(sk.has_shingles, bitorder="little"))]
    )
    lengths = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(text_lengths(texts))])
    label = (
        batch.column("label").cast(pa.string())
        if "label" in batch.column_names
        else pa.nulls(n, pa.string())
    )
    return pa.table({"sig": sig, "exact": exact, "has": has, "length": lengths, "label": label})


def _fixed(column, width: int, dtype) -> np.ndarray:
    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
    raw = raw[arr.offset * width : (arr.offset + len(arr)) * width]
    return raw.view(dtype).reshape(len(arr), -1)


def sketch_with_ray(src: Path, opts) -> Corpus:
    """Pass 1 on Ray Data: the ``Corpus`` of the records at ``src`` (``opts``: the stage's
    ``curate.dedup.DedupOptions``)."""
    ray = import_ray()
    import pyarrow as pa

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.read_parquet(str(src), columns=["text", "label"])
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
