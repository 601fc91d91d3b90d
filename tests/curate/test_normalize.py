"""Normalisation: documented cases, and the fast byte path agrees with the reference."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.normalize import NormalizeOptions, normalize_text, normalized_bytes, words


def _words_from_bytes(texts: list[str], opts: NormalizeOptions) -> list[list[str]]:
    data, offsets = normalized_bytes(pa.array(texts, pa.string()), opts)
    out = []
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        piece = bytes(data[a:b]).decode("utf-8")
        out.append([w for w in piece.split(" ") if w])
    return out


def test_nfkc_casefold_whitespace():
    assert normalize_text("  Straße\u00a0ﬁne\tHello,\n\nWORLD!  ") == "strasse fine hello, world!"
    assert normalize_text("ＡＢＣ　ｄｅｆ") == "abc def"  # full-width letters and space
    assert normalize_text("a\x1cb\x00c") == "a b c"  # control characters separate words


def test_punctuation_is_optional():
    assert normalize_text("Hello, world!") == "hello, world!"
    assert normalize_text("Hello, world!", NormalizeOptions(punctuation=True)) == "hello world"
    assert normalize_text("«Ça va?» — oui…", NormalizeOptions(punctuation=True)) == "ça va oui"
    assert words("") == [] and words("   ") == []


def test_byte_path_matches_reference_on_known_cases():
    texts = ["Hello,  World!", "Straße ﬁne", "", "A\tb\nC", "naïve café", "x"]
    for punct in (False, True):
        opts = NormalizeOptions(punctuation=punct)
        assert _words_from_bytes(texts, opts) == [words(t, opts) for t in texts]


def test_byte_path_handles_nulls_and_offsets():
    arr = pa.array(["skip me", "One two", None, "Three"]).slice(1)
    data, offsets = normalized_bytes(arr)
    assert len(offsets) == 4
    assert bytes(data).decode() == "one two  three "
    assert offsets.dtype == np.int64


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",)),
            max_size=40,
        ),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
)
def test_byte_path_matches_reference(texts, punct):
    opts = NormalizeOptions(punctuation=punct)
    assert _words_from_bytes(texts, opts) == [words(t, opts) for t in texts]
