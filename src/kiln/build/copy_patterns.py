"""Path patterns of COPY/ADD: Go `filepath.Match` for sources, dockerignore rules for filters.

Two pattern languages meet in a COPY:

- source paths use Go's `filepath.Match` one component at a time (`*`, `?`, `[...]` with `^`
  negation and ranges, `\\` escapes; no `**`), as BuildKit resolves them;
- `--exclude` and the `--parents` selection use the dockerignore language of
  moby/patternmatcher: `**` spans directories, a pattern that matches a directory matches
  everything below it, and `!` patterns are exceptions. Matching is incremental (a child
  starts from its parent's per-pattern results), exactly like `MatchesUsingParentResults`,
  so walking a tree costs one regex test per pattern and entry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from kiln.build.rootpath import split_path
from kiln.errors import KilnError


class PatternError(KilnError):
    """A malformed wildcard or filter pattern."""


# -- Go filepath.Match ---------------------------------------------------------------------------


def contains_wildcards(name: str) -> bool:
    """fsutil's test: an unescaped `*`, `?` or `[` anywhere."""
    i = 0
    while i < len(name):
        c = name[i]
        if c == "\\":
            i += 2
            continue
        if c in "*?[":
            return True
        i += 1
    return False


@lru_cache(maxsize=1024)
def _go_glob_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i, n = 0, len(pattern)

    def bad() -> PatternError:
        return PatternError(f"syntax error in pattern {pattern!r}")

    def esc_char(j: int) -> tuple[str, int]:
        if j >= n or pattern[j] in "-]":
            raise bad()
        if pattern[j] == "\\":
            j += 1
            if j >= n:
                raise bad()
        return pattern[j], j + 1

    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "\\":
            if i + 1 >= n:
                raise bad()
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif c == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            if negate:
                i += 1
            ranges: list[str] = []
            nrange = 0
            while True:
                if i < n and pattern[i] == "]" and nrange:
                    i += 1
                    break
                lo, i = esc_char(i)
                hi = lo
                if i >= n:
                    raise bad()
                if pattern[i] == "-":
                    hi, i = esc_char(i + 1)
                    if i >= n:
                        raise bad()
                nrange += 1
                if hi >= lo:  # Go accepts an inverted range; it just matches nothing
                    ranges.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
            if ranges:
                out.append(("[^" if negate else "[") + "".join(ranges) + "]")
            else:
                out.append("." if negate else "(?!)")
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def go_match(pattern: str, name: str) -> bool:
    """Go `filepath.Match(pattern, name)` for one path component (or several, '/'-separated)."""
    return _go_glob_regex(pattern).fullmatch(name) is not None


def check_go_pattern(pattern: str) -> None:
    for part in split_path(pattern):
        _go_glob_regex(part)


# -- dockerignore patterns ------------------------------------------------------------------------

_SHOULD_ESCAPE = set(".+()|{}$")


def _docker_regex(pattern: str) -> re.Pattern[str]:
    out = ["^"]
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        i += 1
        if in_class and c not in "\\]":
            out.append(c)  # class contents pass through, as patternmatcher hands them to regexp
        elif c == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(".*" if i >= n else "(.*/)?")
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c in _SHOULD_ESCAPE:
            out.append("\\" + c)
        elif c == "\\":
            if i < n:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                out.append("\\\\")
        elif c in "[]":
            in_class = c == "["
            out.append(c)
        else:
            out.append(re.escape(c) if c == "^" else c)
    out.append("$")
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as e:
        raise PatternError(f"invalid pattern {pattern!r}: {e}") from None


def clean_pattern(pattern: str) -> str:
    """Go `filepath.Clean` of a pattern, without a leading '/' (dockerignore strips it)."""
    absolute = pattern.startswith("/")
    parts: list[str] = []
    for part in split_path(pattern):
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append(part)
        else:
            parts.append(part)
    return "/".join(parts) or "."


@dataclass(frozen=True)
class _Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]
    parts: tuple[str, ...]

    def match(self, path: str) -> bool:
        return self.regex.match(path) is not None


#: Per-pattern "this path or a parent matched" flags, handed from a directory to its children.
MatchInfo = tuple[bool, ...]


class PatternSet:
    """dockerignore-style patterns with `!` exceptions (moby/patternmatcher semantics)."""

    def __init__(self, patterns: Sequence[str], *, what: str = "pattern") -> None:
        self.patterns: list[_Pattern] = []
        for raw in patterns:
            text = raw.strip()
            if not text:
                continue
            exclusion = text.startswith("!")
            if exclusion:
                text = text[1:].strip()
                if not text:
                    raise PatternError(f"{what}: illegal exclusion pattern: {raw!r}")
            text = clean_pattern(text)
            self.patterns.append(_Pattern(text, exclusion, _docker_regex(text), tuple(text.split("/"))))
        self.has_exceptions = any(p.exclusion for p in self.patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, path: str, parent: MatchInfo | None = None) -> tuple[bool, MatchInfo]:
        """Whether `path` matches, and the flags its children need (see the module doc)."""
        matched = False
        flags: list[bool] = []
        for i, pattern in enumerate(self.patterns):
            m = parent[i] if parent else False
            if not m:
                if pattern.exclusion != matched:
                    flags.append(False)
                    continue
                m = pattern.match(path)
                if not m and parent is None and "/" in path:
                    parts = path.split("/")
                    m = any(pattern.match("/".join(parts[: j + 1])) for j in range(len(parts) - 1))
            flags.append(m)
            if m:
                matched = not pattern.exclusion
        return matched, tuple(flags)

    def matches(self, path: str) -> bool:
        return self.match(path)[0]

    def could_match_below(self, dirpath: str, *, exceptions: bool) -> bool:
        """Might a pattern of the kind asked for match something strictly inside `dirpath`?

        Conservative (True when unsure): it only lets walkers skip whole subtrees that no
        pattern can reach, like fsutil's prefix pruning.
        """
        dparts = split_path(dirpath)
        for p in self.patterns:
            if p.exclusion != exceptions:
                continue
            ok = True
            for i, d in enumerate(dparts):
                if i >= len(p.parts):
                    break  # the pattern names an ancestor: it covers everything below
                if "**" in p.parts[i]:
                    break
                if not _segment_regex(p.parts[i]).fullmatch(d):
                    ok = False
                    break
            if ok:
                return True
        return False


@lru_cache(maxsize=1024)
def _segment_regex(part: str) -> re.Pattern[str]:
    return re.compile(_docker_regex(part).pattern[1:-1], re.DOTALL)
