"""Text normalisation for duplicate detection (one definition, two implementations).

The normalised form of a text is, in this order:

1. Unicode NFKC (compatibility forms folded: ligatures, full-width letters, non-breaking and other
   Unicode spaces become plain characters/spaces);
2. case folding (``str.casefold``: ``"Straße"`` → ``"strasse"``);
3. optionally (``punctuation=True``), every punctuation or symbol character (Unicode categories
   ``P*`` and ``S*``; in ASCII exactly ``string.punctuation``) becomes a space;
4. every run of whitespace or control characters becomes one space, and the ends are trimmed.

Two texts are *exact duplicates* when their normalised forms are equal. Words are the
space-separated pieces of the normalised form.

``normalize_text`` is the reference (per string). ``normalized_bytes`` is the fast path used by
dedup on Arrow batches: ASCII-only texts (the common case) are lowered, cleaned and split with a
256-entry byte table in numpy, and only the non-ASCII texts go through ``normalize_text``. Both give
the same words (a property test checks it).
"""

from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class NormalizeOptions:
    """How texts are normalised before hashing. ``punctuation``: replace punctuation and symbols
    with spaces (``"Hello, world!"`` and ``"hello world"`` become exact duplicates)."""

    punctuation: bool = False


def _is_separator(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) == "Cc"


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


class _SpaceMap(dict):
    """``str.translate`` table built lazily: a character maps to a space when it is a separator
    (or, with ``punctuation``, a punctuation/symbol character); otherwise it is left alone."""

    def __init__(self, punctuation: bool) -> None:
        super().__init__()
        self.punctuation = punctuation

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        value = " " if _is_separator(ch) or (self.punctuation and _is_punct(ch)) else ch
        self[code] = value
        return value


_MAPS = {False: _SpaceMap(False), True: _SpaceMap(True)}


def normalize_text(text: str, opts: NormalizeOptions | None = None) -> str:
    """The normalised form of ``text`` (see the module docstring). Pure and deterministic."""
    opts = opts or NormalizeOptions()
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(folded.translate(_MAPS[opts.punctuation]).split())


def words(text: str, opts: NormalizeOptions | None = None) -> list[str]:
    """The words of ``text`` after normalisation."""
    norm = normalize_text(text, opts)
    return norm.split(" ") if norm else []


@lru_cache(maxsize=2)
def byte_table(punctuation: bool):
    """256-entry uint8 table for ASCII bytes: upper → lower case, whitespace/control → space,
    (optionally) ``string.punctuation`` → space. Bytes ≥ 0x80 (UTF-8 continuation/lead bytes) are
    unchanged."""
    import numpy as np

    table = np.arange(256, dtype=np.uint8)
    table[ord("A") : ord("Z") + 1] += 32
    table[:0x21] = 0x20
    table[0x7F] = 0x20
    if punctuation:
        for ch in string.punctuation:
            table[ord(ch)] = 0x20
    return table


def normalized_bytes(texts, opts: NormalizeOptions | None = None):
    """Normalise an Arrow string array for hashing.

    Returns ``(data, offsets)``: ``data`` is a uint8 numpy array of the UTF-8 bytes of every text
    followed by one space, in which every separator is the byte 0x20 (runs not collapsed, ends not
    trimmed: word splitting skips empty pieces, which gives the same words as ``normalize_text``);
    ``offsets`` (int64, length ``len(texts) + 1``) delimits each text (its trailing space
    included). Null texts count as empty. Non-ASCII texts go through ``normalize_text``.
    """
    import numpy as np
    import pyarrow as pa

    opts = opts or NormalizeOptions()
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        texts = texts.cast(pa.large_string())
    offsets, raw = _buffers(texts)
    # One pass in C: join the texts with a trailing space each (so no word spans two texts),
    # then map bytes through the table (lower case, separators and optional punctuation → space).
    # (No pa.array() here: it imports pandas, half a second of start-up.)
    view = memoryview(raw)
    bounds = offsets.tolist()
    pieces: list = [view[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    replaced: list[int] = []
    if texts.null_count:
        bits = np.unpackbits(np.frombuffer(texts.buffers()[0], dtype=np.uint8), bitorder="little")
        valid = bits[texts.offset : texts.offset + len(texts)].astype(bool)
        for i in np.flatnonzero(~valid).tolist():
            pieces[i] = b""
            replaced.append(i)
    if len(raw) and raw.max() >= 0x80:
        high = np.zeros(len(raw) + 1, dtype=np.int64)
        np.cumsum(raw >= 0x80, out=high[1:])
        for i in np.flatnonzero(high[offsets[1:]] > high[offsets[:-1]]).tolist():
            text = bytes(pieces[i]).decode("utf-8", errors="replace")
            pieces[i] = normalize_text(text, opts).encode("utf-8")
            replaced.append(i)
    joined = b" ".join(pieces) + b" " if pieces else b""
    data = np.frombuffer(joined.translate(_table_bytes(opts.punctuation)), dtype=np.uint8)
    lengths = np.diff(offsets) + 1
    for i in replaced:
        lengths[i] = len(pieces[i]) + 1
    new_offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    return data, new_offsets


def _buffers(texts):
    import numpy as np
    import pyarrow as pa

    off_type = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    buffers = texts.buffers()
    offsets = np.frombuffer(buffers[1], dtype=off_type)[
        texts.offset : texts.offset + len(texts) + 1
    ]
    offsets = offsets.astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    if buffers[2] is None or end == start:
        return offsets - start, np.zeros(0, np.uint8)
    raw = np.frombuffer(buffers[2], dtype=np.uint8)[start:end]
    return offsets - start, raw


@lru_cache(maxsize=2)
def _table_bytes(punctuation: bool) -> bytes:
    return bytes(byte_table(punctuation).tolist())
