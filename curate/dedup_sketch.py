"""Dedup pass 1: every record's MinHash sketch, label code and text length (``Corpus``).

Both engines build a ``Corpus``: ``sketch_batches`` over Arrow batches in this process, and
``curate.dedup_ray`` on Ray Data (with the Arrow column helpers below); the rest of the stage
(``curate.dedup``) clusters it the same way whichever built it. The helpers read Arrow buffers
directly: the obvious ``fill_null`` / ``to_numpy`` calls import pandas (+0.5 s start-up).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from curate import minhash as mh
from curate.normalize import NormalizeOptions, normalized_bytes


@dataclass
class Corpus:
    """The sketched records, in input order."""

    sketch: mh.Sketch
    label_codes: np.ndarray  # int32, -1 = no label
    label_names: list[str]
    lengths: np.ndarray  # int64 characters


def empty_corpus(num_perm: int) -> Corpus:
    """The corpus of no records."""
    sketch = mh.concat_sketches([], num_perm)
    return Corpus(sketch, np.zeros(0, np.int32), [], np.zeros(0, np.int64))


def sketch_batches(
    batches: Iterable[Any],
    norm: NormalizeOptions,
    mopts: mh.MinHashOptions,
    progress: Callable[[int], None] | None,
    with_labels: bool = True,
    n_rows: int | None = None,
) -> Corpus:
    """Pass 1: sketch every Arrow batch (``text``, optional ``label``). With ``n_rows`` known,
    signatures go straight into one preallocated array (no concatenation copy)."""
    import pyarrow as pa

    num_perm = mopts.num_perm
    parts, labels, lengths = [], [], []
    sig_all = np.empty((n_rows, num_perm), np.uint32) if n_rows is not None else None
    row = 0
    for batch in batches:
        texts = batch.column("text")
        data, offsets = normalized_bytes(texts, norm)
        part = mh.sketch_batch(data, offsets, mopts)
        if sig_all is not None:
            sig_all[row : row + len(texts)] = part.signatures
            part.signatures = np.empty((0, num_perm), np.uint32)  # no view: frees it
        row += len(texts)
        parts.append(part)
        lengths.append(text_lengths(texts))
        if with_labels and "label" in batch.schema.names:
            labels.append(batch.column("label").cast(pa.string()))
        else:
            labels.append(pa.nulls(len(texts), pa.string()))
        if progress is not None:
            progress(len(texts))
    sketch = mh.concat_sketches(parts, num_perm)
    if sig_all is not None:
        sketch.signatures = sig_all[:row]
    codes, names = label_codes(labels)
    length = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)
    return Corpus(sketch, codes, names, length)


def text_lengths(texts) -> np.ndarray:
    """Characters per text (0 for null) of an Arrow string array, as int64."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    return _int_values(pc.utf8_length(texts), 0)


def label_codes(chunks) -> tuple[np.ndarray, list[str]]:
    """Arrow string chunks → int32 codes in alphabetical order of the label (-1 = null), and
    the labels in code order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not chunks:
        return np.zeros(0, np.int32), []
    labels = pa.chunked_array(chunks, type=pa.string()).combine_chunks()
    uniq = pc.drop_null(pc.unique(labels))
    uniq = uniq.take(pc.sort_indices(uniq))  # alphabetical codes, no pa.array (see module doc)
    codes = pc.index_in(labels, value_set=uniq)
    return _int_values(codes, -1).astype(np.int32), [str(v) for v in uniq.to_pylist()]


def _int_values(arr, fill: int) -> np.ndarray:
    """An Arrow int32/int64 array as int64 numpy, nulls → ``fill`` (no ``pc.fill_null``: with a
    Python fill value it imports pandas)."""
    import pyarrow as pa

    dtype = np.int32 if arr.type == pa.int32() else np.int64
    values = np.frombuffer(arr.buffers()[1], dtype=dtype)[arr.offset : arr.offset + len(arr)]
    values = values.astype(np.int64)
    if arr.null_count:
        values[~_valid_mask(arr)] = fill
    return values


def bits_to_bool(column) -> np.ndarray:
    """An Arrow bool array (no nulls) as numpy bool, through its bitmap."""
    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    bits = np.unpackbits(np.frombuffer(arr.buffers()[1], dtype=np.uint8), bitorder="little")
    return bits[arr.offset : arr.offset + len(arr)].astype(bool)


def _valid_mask(arr) -> np.ndarray:
    """Validity bitmap → bool numpy (``is_valid().to_numpy`` would import pandas)."""
    bitmap = arr.buffers()[0]
    if bitmap is None:
        return np.ones(len(arr), dtype=bool)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return bits[arr.offset : arr.offset + len(arr)].astype(bool)
