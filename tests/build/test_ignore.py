""".dockerignore: reading, matching (** and ! exceptions), safe pruning and file lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.build.ignore import (
    IgnoreMatcher,
    IgnorePatternError,
    MatchInfo,
    find_ignore_file,
    go_clean,
    load_ignore_matcher,
    read_ignore_patterns,
)


def test_read_patterns_normalises_like_docker() -> None:
    text = "\ufeff# comment\n\n  *.pyc  \r\n/abs/path\n ./build/ \n!/keep/../kept\n!  spaced\n  # not a comment\n!\n"
    assert read_ignore_patterns(text) == [
        "*.pyc",
        "abs/path",
        "build",
        "!kept",
        "!spaced",
        "# not a comment",
        "!",
    ]


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        ("", "."),
        ("a//b/./c/", "a/b/c"),
        ("a/../..", ".."),
        ("/../a", "/a"),
        ("../a/..", ".."),
        ("./", "."),
        ("/", "/"),
    ],
)
def test_go_clean(path: str, cleaned: str) -> None:
    assert go_clean(path) == cleaned


CASES = [
    # (patterns, path, excluded)
    (["*.pyc"], "x.pyc", True),
    (["*.pyc"], "dir/x.pyc", False),  # * stays within one component, at the root
    (["**/*.pyc"], "dir/sub/x.pyc", True),
    (["**/*.pyc"], "x.pyc", True),
    (["node_modules"], "node_modules/a/b.js", True),  # a matched directory takes its contents
    (["node_modules"], "src/node_modules", False),
    (["**/node_modules"], "src/node_modules/x", True),
    (["/build"], "build/out.o", True),
    (["build/"], "build/out.o", True),
    (["a/**"], "a", False),
    (["a/**"], "a/b/c", True),
    (["a/**/z"], "a/z", True),
    (["a/**/z"], "a/b/c/z", True),
    (["a/**/z"], "a/b/c/zz", False),
    (["?.txt"], "a.txt", True),
    (["?.txt"], "ab.txt", False),
    (["[a-c]*.md"], "b1.md", True),
    (["[a-c]*.md"], "d1.md", False),
    (["[^a-c]*.md"], "d1.md", True),
    (["f\\*o"], "f*o", True),
    (["f\\*o"], "fxo", False),
    (["v1.0+build"], "v1.0+build", True),
    (["v1.0+build"], "v1x0+build", False),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs", "!docs/README.md"], "docs/other.md", True),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["*.md", "!README.md", "README.md"], "README.md", True),  # the last match wins
    (["!README.md", "*.md"], "README.md", True),
    (["**", "!src"], "src/main.c", False),
    (["**", "!src"], "README", True),
    (["**", "!src", "src/gen"], "src/gen/x.c", True),
    (["**", "!**/*.go"], "pkg/a/b.go", False),
    (["**", "!**/*.go"], "pkg/a/b.c", True),
    ([".git"], ".git/config", True),
    ([".*"], ".env", True),
    ([".*"], "env", False),
    (["**"], ".", False),  # the context root is never excluded
    (["a/b/../c"], "a/c", True),
]


@pytest.mark.parametrize(("patterns", "path", "excluded"), CASES)
def test_is_excluded(patterns: list[str], path: str, excluded: bool) -> None:
    assert IgnoreMatcher.from_text("\n".join(patterns)).is_excluded(path) is excluded


@pytest.mark.parametrize(("patterns", "path", "excluded"), CASES)
def test_match_with_parent_results_agrees(patterns: list[str], path: str, excluded: bool) -> None:
    matcher = IgnoreMatcher.from_text("\n".join(patterns))
    parts = go_clean(path).split("/")
    info: MatchInfo | None = None
    for depth in range(1, len(parts)):
        _, info = matcher.match("/".join(parts[:depth]), info)
    assert matcher.match(path, info)[0] is excluded
    assert matcher.match(path)[0] is excluded  # without parent info it checks the parents itself


def test_leading_slash_is_only_stripped_when_reading_a_file() -> None:
    assert IgnoreMatcher.from_text("/build").is_excluded("build/x")
    assert not IgnoreMatcher(["/build"]).is_excluded("build/x")  # as patternmatcher.New


@pytest.mark.parametrize("pattern", ["[", "a[", "[]a]", "[x-]", "[a-b-c]", "[^", "trailing\\", "!"])
def test_bad_patterns_are_rejected(pattern: str) -> None:
    with pytest.raises(IgnorePatternError):
        IgnoreMatcher([pattern])


def test_valid_class_escapes_are_accepted() -> None:
    matcher = IgnoreMatcher(["[\\]a]x", "[\\-]y"])
    assert matcher.is_excluded("]x") and matcher.is_excluded("-y")


def test_might_include_children() -> None:
    assert not IgnoreMatcher(["build", "*.o"]).might_include_children("build")
    keep = IgnoreMatcher(["build", "!build/keep"])
    assert keep.has_exceptions
    assert keep.might_include_children("build")
    assert not keep.might_include_children("other")
    deep = IgnoreMatcher(["vendor", "!vendor/a/b"])
    assert deep.might_include_children("vendor") and deep.might_include_children("vendor/a")
    assert not deep.might_include_children("vendor/c")
    star = IgnoreMatcher(["*", "!src/*.c"])
    assert star.might_include_children("src") and not star.might_include_children("lib")
    assert IgnoreMatcher(["**", "!**/*.go"]).might_include_children("any/dir")
    assert IgnoreMatcher(["x", "![a-c]/y"]).might_include_children("x")  # classes: assume the worst


TREE = [
    "README.md", "main.go", ".git/config", ".git/objects/ab/cd",
    "build/out.o", "build/keep/me.txt", "build/deep/keep/me.txt",
    "docs/README.md", "docs/api/index.md", "src/a.c", "src/gen/b.c", "src/x.go",
    "vendor/a/b/c.go", "vendor/c/d.go", "node_modules/pkg/index.js", "pkg/a/b.go",
]  # fmt: skip

PATTERN_SETS = [
    ["**", "!src"],
    [".git", "build", "!build/keep"],
    ["build", "!**/keep"],
    ["docs", "!docs/README.md"],
    ["*", "!src/*.c", "!vendor/a"],
    ["**", "!**/*.go", "vendor"],
    ["vendor", "!vendor/a/b", "node_modules"],
    ["**/*.md", "!docs"],
]


@pytest.mark.parametrize("patterns", PATTERN_SETS)
def test_pruning_never_loses_an_included_file(patterns: list[str]) -> None:
    # Walk the tree the way the context walker will: prune an excluded directory unless
    # might_include_children says an exception could apply below it.
    matcher = IgnoreMatcher(patterns)
    dirs = {"/".join(p.split("/")[:i]) for p in TREE for i in range(1, p.count("/") + 1)}
    pruned = {d for d in dirs if matcher.is_excluded(d) and not matcher.might_include_children(d)}
    for path in TREE:
        ancestors = {"/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)}
        if ancestors & pruned:
            assert matcher.is_excluded(path), f"{path} is included but its directory was pruned"
    assert pruned or matcher.has_exceptions


def test_find_ignore_file_prefers_the_dockerfile_specific_one(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    (context / "sub").mkdir(parents=True)
    assert find_ignore_file(context, context / "Dockerfile") is None
    (context / ".dockerignore").write_text("*.log\n")
    assert find_ignore_file(context, context / "Dockerfile") == context / ".dockerignore"
    assert find_ignore_file(context) == context / ".dockerignore"
    specific = context / "sub" / "app.Dockerfile.dockerignore"
    specific.write_text("!keep.log\n")
    assert find_ignore_file(context, context / "sub" / "app.Dockerfile") == specific
    assert find_ignore_file(context, context / "sub" / "other.Dockerfile") == context / ".dockerignore"
    (context / "Dockerfile.dockerignore").write_text("x\n")
    assert find_ignore_file(context, context / "Dockerfile") == context / "Dockerfile.dockerignore"
    outside = tmp_path / "elsewhere" / "Dockerfile"
    outside.parent.mkdir()
    (outside.parent / "Dockerfile.dockerignore").write_text("y\n")
    assert find_ignore_file(context, outside) == outside.parent / "Dockerfile.dockerignore"


def test_load_ignore_matcher(tmp_path: Path) -> None:
    assert not load_ignore_matcher(tmp_path).patterns
    (tmp_path / ".dockerignore").write_bytes(b"*.log\n!keep.log\n")
    matcher = load_ignore_matcher(tmp_path)
    assert matcher.is_excluded("x.log") and not matcher.is_excluded("keep.log")
    (tmp_path / ".dockerignore").write_text("ok\n[bad\n")
    with pytest.raises(IgnorePatternError, match=r"\.dockerignore: syntax error in pattern"):
        load_ignore_matcher(tmp_path)
