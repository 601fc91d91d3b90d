"""Names that must never become paths: traversal, absolute, hidden, separators, NUL."""

HOSTILE = ["../owner", "/abs/folder", "..", ".", "a/b", "a\\b", "", ".hidden", "a\x00b", "a..b"]
