"""Pattern languages of COPY (Go filepath.Match, dockerignore) and --chmod values, as pure logic."""

from __future__ import annotations

import pytest

from kiln.build.chmod import ChmodError, parse_chmod
from kiln.build.copy_patterns import PatternError, contains_wildcards, filters, go_match, may_select_below


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "abc", True),
        ("*", ".hidden", True),  # Go's * matches a leading dot
        ("*", "a/b", False),  # never a separator
        ("a*/b", "abc/b", True),
        ("a*b*c", "axxbyyc", True),
        ("?", "a", True),
        ("?", "", False),
        ("[abc]", "b", True),
        ("[^abc]", "b", False),
        ("[^abc]", "d", True),
        ("[a-c]x", "bx", True),
        ("[a-c]x", "dx", False),
        ("[\\]]", "]", True),
        ("\\*", "*", True),
        ("\\*", "a", False),
        ("[z-a]", "m", False),  # an inverted range is legal and matches nothing
        ("**", "a", True),  # just two stars here: no directory spanning
        ("**", "a/b", False),
    ],
)
def test_go_match(pattern: str, name: str, expected: bool) -> None:
    assert go_match(pattern, name) is expected


@pytest.mark.parametrize("bad", ["[", "[]", "[a-]", "a\\", "[^]"])
def test_go_bad_patterns(bad: str) -> None:
    with pytest.raises(PatternError):
        go_match(bad, "x")


def test_contains_wildcards() -> None:
    assert contains_wildcards("a*")
    assert contains_wildcards("[ab]")
    assert not contains_wildcards("plain.txt")
    assert not contains_wildcards("a\\*b")  # escaped: fsutil takes the path literally


def test_filters_use_dockerignore_rules() -> None:
    excl = filters(["*.md", "build", "!build/keep"], "--exclude")
    assert excl is not None
    assert excl.is_excluded("a.md") and excl.is_excluded("build/x") and not excl.is_excluded("build/keep")
    assert excl.might_include_children("build") and not excl.might_include_children("other")
    assert filters([], "--exclude") is None
    with pytest.raises(PatternError, match="--exclude"):
        filters(["!"], "--exclude")


def test_may_select_below() -> None:
    incl = filters(["src/*/x"], "--parents")
    assert incl is not None
    assert may_select_below(incl, "src/a") and may_select_below(incl, "src")
    assert not may_select_below(incl, "lib")


# -- --chmod ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "mode", "is_dir", "expected"),
    [
        ("755", 0o600, False, 0o755),
        ("0640", 0o4777, False, 0o640),
        ("4755", 0o644, False, 0o4755),
        ("u+x", 0o644, False, 0o744),
        ("g-w", 0o664, False, 0o644),
        ("o=r", 0o667, False, 0o664),
        ("a+X", 0o644, False, 0o644),
        ("a+X", 0o744, False, 0o755),
        ("a+X", 0o600, True, 0o711),
        ("+x", 0o600, False, 0o711),  # no 'who' means all (there is no umask in a build)
        ("u=rwx,go=rx", 0o000, False, 0o755),
        ("u+s,g+s", 0o755, False, 0o6755),
        ("+t", 0o777, True, 0o1777),
        ("go=u", 0o640, False, 0o666),
        ("u-w+x", 0o644, False, 0o544),
        ("a=", 0o4755, False, 0o000),
    ],
)
def test_chmod(spec: str, mode: int, is_dir: bool, expected: int) -> None:
    assert parse_chmod(spec).apply(mode, is_dir) == expected


@pytest.mark.parametrize("bad", ["", "8", "10000", "u+q", "x+r", "u+x,", "rwx", "0o755"])
def test_bad_chmod(bad: str) -> None:
    with pytest.raises(ChmodError, match="invalid chmod parameter"):
        parse_chmod(bad)
