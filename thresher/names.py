"""Names that become paths: one rule, checked where a user's string meets the file system.

A run, crossfit or user name is joined to a folder of the project (``DIR/tune/<run>``) or of
``THRESHER_HOME`` (``argilla/users/<name>.json``), and thresher writes, replaces and deletes
there. ``validate_name`` keeps such a name to one plain path component, so ``../owner`` or
``/home/me`` can never reach outside; ``contained`` checks a path already joined (symlinks
resolved) before anything is written or removed under it.
"""

from __future__ import annotations

import re
from pathlib import Path

from thresher.errors import InvalidNameError

MAX_NAME = 100
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")
NAME_RULE = (
    f"use 1-{MAX_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit "
    "(no '/', no '..')"
)


def is_valid_name(value: object) -> bool:
    """True when ``value`` is a name ``validate_name`` accepts."""
    return isinstance(value, str) and bool(_NAME.fullmatch(value)) and ".." not in value


def validate_name(value: object, what: str) -> str:
    """``value`` unchanged when it is one safe path component, else ``InvalidNameError``.

    Safe: 1-100 ASCII letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit,
    without ``..``; so never empty, absolute, hidden, ``.``/``..``, or holding a separator or a
    NUL byte. ``what`` names the flag or field in the one-line message (``--run``, ``user``)."""
    if not is_valid_name(value):
        raise InvalidNameError(f"{what} {_shown(value)} is not a valid name: {NAME_RULE}")
    return value  # type: ignore[return-value]


def contained(root: str | Path, name: str | Path, what: str = "path") -> Path:
    """``root / name`` resolved (symlinks followed), refused unless it lies inside ``root``.

    For values that may hold sub-folders (``a/b``) or that come from a folder listing; the
    resolved path is returned so the caller writes or deletes exactly what was checked."""
    text = str(name)
    if not text or "\x00" in text:
        raise InvalidNameError(f"{what} {_shown(text)} is not a valid path")
    base = Path(root).resolve()
    path = (base / text).resolve()
    if path == base or not path.is_relative_to(base):
        raise InvalidNameError(
            f"{what} {_shown(text)} leads outside {base}; name something inside it"
        )
    return path


def _shown(value: object) -> str:
    """``repr`` (escapes newlines and NUL bytes: the message stays one line), cut to 80 chars."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
