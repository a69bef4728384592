"""Path patterns of COPY/ADD: Go `filepath.Match` for sources, dockerignore rules for filters.

Two pattern languages meet in a COPY:

- source paths use Go's `filepath.Match` one component at a time (`*`, `?`, `[...]` with `^`
  negation and ranges, `\\` escapes; no `**`), as BuildKit resolves them;
- `--exclude` and the `--parents` selection use the dockerignore language of
  moby/patternmatcher (`kiln.build.ignore`): `**` spans directories, a pattern matching a
  directory matches everything below it, `!` patterns are exceptions, and matching is
  incremental from the parent directory's results.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from kiln.build.ignore import IgnoreMatcher, IgnorePatternError
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


# -- dockerignore patterns (kiln.build.ignore) used as filters ------------------------------------


def filters(patterns: Sequence[str], what: str) -> IgnoreMatcher | None:
    """A matcher for `--exclude` or `--parents` patterns (None when there are none)."""
    if not patterns:
        return None
    try:
        return IgnoreMatcher(patterns)
    except IgnorePatternError as e:
        raise PatternError(f"{what}: {e.message}") from None


def may_select_below(matcher: IgnoreMatcher, directory: str) -> bool:
    """Might a (non-`!`) pattern select something inside `directory`? Conservative."""
    return any(not p.exclusion and p.could_match_under(directory) for p in matcher.patterns)
