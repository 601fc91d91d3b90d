"""Identity-term lexicon and the group-term matcher, shared by bias scoring (``curate.bias``)
and the monitor's bias slices (``loop.monitor_slices``).

The lexicon maps a group name (``<axis>:<group>``) to its terms; the shipped one is
``thresher/identity_terms.yaml`` (documented in that file), extended or replaced by a project's
``score.bias_lexicon``. Matching rules: case-insensitive, on maximal runs of word characters and
hyphens ("man" matches "man," but not "manual" or "non-man"), a trailing ``*`` matches any ending,
a phrase matches its words with any whitespace between them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from thresher.errors import ConfigError

LEXICON_FILE = "identity_terms.yaml"


def default_lexicon() -> dict[str, list[str]]:
    """The lexicon shipped with thresher: group name → terms."""
    import yaml

    text = resources.files("thresher").joinpath(LEXICON_FILE).read_text(encoding="utf-8")
    return _validate_lexicon(yaml.safe_load(text), LEXICON_FILE)


def _validate_lexicon(data: Any, origin: str) -> dict[str, list[str]]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: a lexicon is a mapping of group name -> list of terms")
    out: dict[str, list[str]] = {}
    for group, terms in data.items():
        if isinstance(terms, str):
            terms = [terms]
        if not isinstance(terms, list) or not all(isinstance(t, str) and t.strip() for t in terms):
            raise ConfigError(f"{origin}: group {group!r} must map to a list of non-empty terms")
        out[str(group)] = [t.strip().lower() for t in terms]
    return out


def load_lexicon(path: str | Path | None = None, *, replace: bool = False) -> dict[str, list[str]]:
    """The default lexicon, extended (or, with ``replace``, replaced) by the YAML at ``path``.
    A group named in the user's file replaces the default group of that name."""
    lexicon = {} if (replace and path) else default_lexicon()
    if path:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"bias lexicon {path} not found; fix score.bias_lexicon")
        lexicon.update(read_lexicon_file(path))
    return lexicon


def read_lexicon_file(path: str | Path) -> dict[str, list[str]]:
    """One lexicon YAML file (group name → terms), validated; a one-line error naming the file
    when it is not valid YAML or not of that shape."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    return _validate_lexicon(data, str(path))


def _term_pattern(term: str) -> str:
    wildcard = term.endswith("*")
    core = re.escape(term.rstrip("*")).replace(r"\ ", r"\s+")
    tail = r"[\w-]*" if wildcard else ""
    return r"(?<![\w-])" + core + tail + r"(?![\w-])"


_WORD_RUN = re.compile(r"[\w-]+")


@dataclass
class Matcher:
    """Word-boundary matcher for a lexicon. A text is split once into maximal runs of word
    characters and hyphens (so "man" matches "man," but not "manual" or "non-man"); one-word
    terms are set look-ups, wildcards prefix checks, and only phrases use a regex."""

    lexicon: dict[str, list[str]]
    _words: dict[str, set[str]] = field(default_factory=dict, repr=False)
    _prefixes: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _phrases: dict[str, list[tuple[str, re.Pattern]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for group, terms in self.lexicon.items():
            words, prefixes, phrases = set(), [], []
            for term in terms:
                if _WORD_RUN.fullmatch(term) and not term.endswith("*"):
                    words.add(term)
                elif term.endswith("*") and _WORD_RUN.fullmatch(term[:-1]):
                    prefixes.append(term[:-1])
                else:
                    phrases.append((term, re.compile(_term_pattern(term), re.IGNORECASE)))
            self._words[group] = words
            self._prefixes[group] = tuple(prefixes)
            self._phrases[group] = phrases
        # Reverse indexes so a text costs O(its words), not O(lexicon size).
        self._word_groups: dict[str, list[str]] = {}
        for group, words in self._words.items():
            for w in words:
                self._word_groups.setdefault(w, []).append(group)
        self._phrase_heads: dict[str, list[tuple[str, str, re.Pattern]]] = {}
        for group, phrases in self._phrases.items():
            for term, rx in phrases:
                head = _WORD_RUN.findall(term.rstrip("*"))
                key = head[0] if head else ""
                self._phrase_heads.setdefault(key, []).append((group, term, rx))
        self._any_prefix = any(self._prefixes.values())

    def _found(self, text: str) -> dict[str, list[str]]:
        tokens = set(_WORD_RUN.findall(text.lower()))
        found: dict[str, list[str]] = {}
        for tok in tokens & self._word_groups.keys():
            for group in self._word_groups[tok]:
                found.setdefault(group, []).append(tok)
        if self._any_prefix:
            for group, prefixes in self._prefixes.items():
                for prefix in prefixes:
                    if any(tok.startswith(prefix) for tok in tokens):
                        found.setdefault(group, []).append(prefix + "*")
        for key, entries in self._phrase_heads.items():
            if key and not any(tok.startswith(key) for tok in tokens):
                continue  # a phrase's first word must be in the text (as a word or prefix)
            for group, term, rx in entries:
                if rx.search(text):
                    found.setdefault(group, []).append(term)
        return {g: found[g] for g in self.lexicon if g in found}

    def groups(self, text: str) -> list[str]:
        """Sorted names of the groups ``text`` mentions."""
        return sorted(self._found(text))

    def groups_and_terms(self, text: str) -> tuple[list[str], list[str]]:
        """The groups ``text`` mentions and the lexicon terms that matched."""
        found = self._found(text)
        return sorted(found), sorted({t for hits in found.values() for t in hits})

    def terms(self, text: str) -> list[str]:
        """Lexicon terms found in ``text``."""
        return self.groups_and_terms(text)[1]


def mentions(texts: Sequence[str], terms: Sequence[str]) -> list[bool]:
    """Whether each text mentions any of ``terms`` (the ``Matcher`` rules)."""
    matcher = Matcher({"terms": list(terms)})
    return [bool(matcher.groups(text)) for text in texts]
