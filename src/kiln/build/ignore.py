""".dockerignore rules, matched the way Docker and BuildKit match them (moby/patternmatcher).

- one pattern per line; a line starting with `#` is a comment; blank lines are skipped;
- patterns are cleaned like Go's filepath.Clean and a leading `/` is dropped (`/a` means `a`);
- `*` and `?` stay within one path component, `**` matches any number of components;
- `!pattern` re-includes what earlier patterns excluded; the last matching pattern wins;
- a pattern that matches a directory excludes everything below it.

    >>> m = IgnoreMatcher.from_text("**/*.log\\nbuild\\n!build/keep\\n")
    >>> [m.is_excluded(p) for p in ("a/b/x.log", "build/out", "build/keep", "src/main.c")]
    [True, True, False, False]
    >>> m.might_include_children("build"), m.might_include_children("node_modules")
    (True, False)

A context walker prunes an excluded directory only when `might_include_children(dir)` is False;
`match()` lets it reuse the parent directory's results instead of re-checking every ancestor.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError


class IgnorePatternError(KilnError):
    """A .dockerignore pattern that is not a valid glob."""


def go_clean(path: str) -> str:
    """Go's path.Clean: no `.`/empty components, `..` resolved lexically, "" becomes "."."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp != "..":
            parts.append(comp)
        elif parts and parts[-1] != "..":
            parts.pop()
        elif not rooted:
            parts.append("..")
    cleaned = "/".join(parts)
    return "/" + cleaned if rooted else cleaned or "."


def read_ignore_patterns(text: str) -> list[str]:
    """The patterns of a .dockerignore file, normalised (moby/patternmatcher/ignorefile.ReadAll)."""
    patterns = []
    for number, line in enumerate(text.split("\n")):
        line = line.removesuffix("\r")
        if number == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


_EXACT, _PREFIX, _SUFFIX, _REGEXP = range(4)


class IgnorePattern:
    """One pattern: `text` is cleaned and without its `!`; `exclusion` marks a `!` pattern."""

    __slots__ = ("_kind", "_regex", "exclusion", "text")

    def __init__(self, text: str, exclusion: bool = False) -> None:
        self.text = text
        self.exclusion = exclusion
        self._kind, self._regex = _compile(text)

    def __repr__(self) -> str:
        return f"IgnorePattern({'!' if self.exclusion else ''}{self.text})"

    def matches(self, path: str) -> bool:
        """Whether this pattern matches `path` itself (no parent directories considered)."""
        if self._kind == _EXACT:
            return path == self.text
        if self._kind == _PREFIX:
            return path.startswith(self.text[:-2])
        if self._kind == _SUFFIX:
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self._regex is not None
        return self._regex.match(path) is not None

    def could_match_under(self, directory: str) -> bool:
        """Conservatively: might this pattern match `directory`, one of its ancestors, or
        something inside it? Character classes and escapes are assumed to match anything."""
        if "[" in self.text or "\\" in self.text:
            return True
        parts = directory.split("/")
        for index, comp in enumerate(self.text.split("/")):
            if index >= len(parts) or "**" in comp:
                return True
            if not _component_regex(comp).fullmatch(parts[index]):
                return False
        return True


def _component_regex(comp: str) -> re.Pattern[str]:
    return re.compile("".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in comp))


def _compile(pattern: str) -> tuple[int, re.Pattern[str] | None]:
    """patternmatcher's translation: plain text is an exact match, `x/**` a prefix match,
    `**/x` a suffix match, anything else a regex."""
    regex = "^"
    kind = _EXACT
    pos, index = 0, 0
    while pos < len(pattern):
        ch = pattern[pos]
        pos += 1
        if ch == "*":
            if pattern.startswith("*", pos):
                pos += 1
                if pattern.startswith("/", pos):
                    pos += 1  # `**/` is `**`
                if pos == len(pattern):
                    if kind == _EXACT:
                        kind = _PREFIX
                    else:
                        regex += ".*"
                        kind = _REGEXP
                else:
                    regex += "(.*/)?"  # any number of components, even none
                    kind = _REGEXP
                if index == 0:
                    kind = _SUFFIX
            else:
                regex += "[^/]*"
                kind = _REGEXP
        elif ch == "?":
            regex += "[^/]"
            kind = _REGEXP
        elif ch in ".+()|{}$":
            regex += "\\" + ch
        elif ch == "\\":
            if pos < len(pattern):
                regex += "\\" + pattern[pos]
                pos += 1
                kind = _REGEXP
            else:
                regex += "\\\\"
        elif ch in "[]":
            regex += ch
            kind = _REGEXP
        else:
            regex += ch
        index += 1
    if kind != _REGEXP:
        return kind, None
    try:
        with warnings.catch_warnings():
            # `[[` is a valid class in Go's syntax; Python only warns that it may change meaning
            warnings.simplefilter("ignore", FutureWarning)
            return kind, re.compile(regex + r"\Z")
    except re.error as e:
        raise IgnorePatternError(f"invalid .dockerignore pattern {pattern!r}: {e}") from None


def _check_glob(pattern: str) -> None:
    """Reject what Go's filepath.Match calls a bad pattern: a dangling escape or a malformed
    character class (`[`, `[]`, `[a-`, ...)."""
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                raise IgnorePatternError(f"syntax error in pattern {pattern!r}: trailing backslash")
            i += 2
            continue
        if ch != "[":
            i += 1
            continue
        i += 1
        if i < n and pattern[i] == "^":
            i += 1
        ranges = 0
        while True:
            if i < n and pattern[i] == "]" and ranges > 0:
                i += 1
                break
            i = _class_char(pattern, i)
            if i < n and pattern[i] == "-":
                i = _class_char(pattern, i + 1)
            ranges += 1


def _class_char(pattern: str, i: int) -> int:
    # one (possibly escaped) character of a class; something must follow it
    if i >= len(pattern) or pattern[i] in "-]":
        raise IgnorePatternError(f"syntax error in pattern {pattern!r}: bad character class")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise IgnorePatternError(f"syntax error in pattern {pattern!r}: bad character class")
    if i + 1 >= len(pattern):
        raise IgnorePatternError(f"syntax error in pattern {pattern!r}: unterminated character class")
    return i + 1


@dataclass(frozen=True)
class MatchInfo:
    """Per-pattern results for a directory, handed to `match()` for its entries."""

    parent_matched: tuple[bool, ...] = ()


class IgnoreMatcher:
    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: list[IgnorePattern] = []
        for raw in patterns:
            text = raw.strip()
            if not text:
                continue
            text = go_clean(text)
            exclusion = text.startswith("!")
            if exclusion:
                if text == "!":
                    raise IgnorePatternError('illegal exclusion pattern: "!"')
                text = text[1:]
            _check_glob(text)
            self.patterns.append(IgnorePattern(text, exclusion))
        self.has_exceptions = any(p.exclusion for p in self.patterns)

    @classmethod
    def from_text(cls, text: str) -> IgnoreMatcher:
        return cls(read_ignore_patterns(text))

    def is_excluded(self, path: str) -> bool:
        """Whether the context path (slash-separated, relative to the root) is excluded, either
        itself or through a directory above it (patternmatcher.MatchesOrParentMatches)."""
        path = go_clean(path)
        if path == ".":
            return False  # the context root itself is never excluded
        parents = path.split("/")[:-1]
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue  # only an exception can change an exclusion, and the other way round
            hit = pattern.matches(path) or any(
                pattern.matches("/".join(parents[: i + 1])) for i in range(len(parents))
            )
            if hit:
                matched = not pattern.exclusion
        return matched

    def match(self, path: str, parent: MatchInfo | None = None) -> tuple[bool, MatchInfo]:
        """Like `is_excluded`, reusing the results for the parent directory
        (patternmatcher.MatchesUsingParentResults); returns the info to pass to the children."""
        inherited = parent.parent_matched if parent else ()
        if inherited and len(inherited) != len(self.patterns):
            raise ValueError("MatchInfo comes from another matcher")
        path = go_clean(path)
        if path == ".":
            return False, MatchInfo()
        parents = path.split("/")[:-1]
        matched = False
        results = []
        for i, pattern in enumerate(self.patterns):
            hit = inherited[i] if inherited else False
            if not hit:
                if pattern.exclusion != matched:
                    results.append(False)
                    continue
                hit = pattern.matches(path)
                if not hit and not inherited:
                    hit = any(pattern.matches("/".join(parents[: j + 1])) for j in range(len(parents)))
            results.append(hit)
            if hit:
                matched = not pattern.exclusion
        return matched, MatchInfo(tuple(results))

    def might_include_children(self, directory: str) -> bool:
        """Whether an excluded directory may still hold re-included entries (a later `!` pattern
        could match inside it), so the walker must descend instead of pruning it."""
        directory = go_clean(directory)
        return any(p.exclusion and p.could_match_under(directory) for p in self.patterns)


def find_ignore_file(context_dir: Path, dockerfile_path: Path | None = None) -> Path | None:
    """The ignore file for a build: `<Dockerfile>.dockerignore` next to the Dockerfile wins
    over `.dockerignore` at the context root. A relative `dockerfile_path` is taken from the
    current directory, as the CLI's `-f` is."""
    if dockerfile_path is not None:
        specific = dockerfile_path.with_name(dockerfile_path.name + ".dockerignore")
        if specific.is_file():
            return specific
    root = context_dir / ".dockerignore"
    return root if root.is_file() else None


def load_ignore_matcher(context_dir: Path, dockerfile_path: Path | None = None) -> IgnoreMatcher:
    """The matcher for a build context; an empty one when there is no ignore file."""
    path = find_ignore_file(context_dir, dockerfile_path)
    if path is None:
        return IgnoreMatcher([])
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    try:
        return IgnoreMatcher.from_text(text)
    except IgnorePatternError as e:
        raise IgnorePatternError(f"{path}: {e.message}") from None
