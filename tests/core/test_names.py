"""Names that become paths: one rule (thresher.names), refused with one line, nothing touched."""

from __future__ import annotations

import os

import pytest

from tests.helpers.names import HOSTILE
from thresher.errors import InvalidNameError, ThresherError
from thresher.names import contained, is_valid_name, validate_name

# every hostile shape the CLI can be handed; the stage tests reuse this list


@pytest.mark.parametrize("name", ["run-1", "r1", "crossfit", "Run_2.v3", "x" * 100, "0"])
def test_plain_names_pass_unchanged(name):
    assert validate_name(name, "--run") == name and is_valid_name(name)


@pytest.mark.parametrize("name", [*HOSTILE, "x" * 101, "-lead", "a b", "a\nb", "é", None, 3])
def test_hostile_names_are_one_line_errors_naming_the_flag_and_the_rule(name):
    with pytest.raises(InvalidNameError) as err:
        validate_name(name, "--run")
    message = str(err.value)
    assert isinstance(err.value, ThresherError)  # the CLI prints it and exits 1
    assert message.startswith(f"--run {name!r}"[:20]) and "letters, digits" in message
    assert "\n" not in message and "\x00" not in message and len(message) < 250
    assert not is_valid_name(name)


def test_contained_resolves_inside_and_refuses_outside(tmp_path):
    root = tmp_path / "users"
    root.mkdir()
    assert contained(root, "alice.json") == (root / "alice.json").resolve()
    assert contained(root, "a/b.json") == (root / "a" / "b.json").resolve()
    for bad in ["../owner.json", "/etc/passwd", "..", ".", "a/../../x", ""]:
        with pytest.raises(InvalidNameError) as err:
            contained(root, bad, "user")
        assert "\n" not in str(err.value) and str(err.value).startswith("user ")
    with pytest.raises(InvalidNameError, match="not a valid path"):
        contained(root, "a\x00b")


def test_contained_follows_symlinks_before_judging(tmp_path):
    """A planted link inside the root that points out is refused: what is checked is what would
    be written or removed."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(InvalidNameError, match="leads outside"):
        contained(root, "link")
    with pytest.raises(InvalidNameError, match="leads outside"):
        contained(root, "link/file")
