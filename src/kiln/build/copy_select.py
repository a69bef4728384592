"""Which files a COPY/ADD source selects, as BuildKit (tonistiigi/fsutil `copy`) selects them.

A source path is cleaned as if rooted (`../x` is `x`; nothing escapes the source root). If
it has wildcards, the part before the first wildcard component is resolved (symlinks
followed inside the root) and the rest is matched one component at a time with Go's
`filepath.Match`; a matching directory is taken whole, not searched further. Every match
(or the literal path) is then followed if it is a symlink, still inside the root, and names
its destination by its own base name: `COPY link /d/` copies the link's target as `/d/link`.

A selected directory contributes its contents. `--exclude` patterns are matched against
paths relative to the directory being copied (BuildKit's rule; `**/x` reaches any depth);
a wildcard match itself is also tested, relative to the wildcard's base directory, as the
Dockerfile reference's `COPY --exclude=*.txt hom* /mydir/` example promises. With
`--parents` the source is split at an optional `/./` pivot: everything the rest of the path
matches below the pivot is copied with its directories, created from the source's own.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from kiln.build.copy_patterns import PatternError, contains_wildcards, filters, go_match, may_select_below
from kiln.build.ignore import IgnoreMatcher, MatchInfo
from kiln.build.rootpath import clean_path, split_path
from kiln.build.source_tree import SourceTree, join
from kiln.errors import KilnError


class SourceError(KilnError):
    """A COPY/ADD source that selects nothing or cannot be read."""


@dataclass(frozen=True)
class SourceItem:
    """One top-level thing a source path selected."""

    index: int  # which source of the instruction
    spec: str  # as written
    rel: str  # the matched path, before following a symlink ('' is the root)
    real: str  # the path actually read (symlinks followed inside the root)
    st: os.stat_result  # lstat of `real`
    name: str  # the base name it is copied under into a directory
    includes: IgnoreMatcher | None = None  # --parents: what below `real` is selected

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


@dataclass(frozen=True)
class SourceNode:
    rel: str  # relative to the item ('' is the item itself)
    src: str  # tree path to read
    st: os.stat_result


def _follow(tree: SourceTree, rel: str) -> tuple[str, os.stat_result] | None:
    real = tree.resolve(rel)
    st = tree.lstat(real)
    return None if st is None else (real, st)


def _wildcard_matches(tree: SourceTree, base: str, pattern: list[str]) -> list[str]:
    """Paths below directory `base` matching the component patterns; whole dirs stop descent."""
    out: list[str] = []

    def visit(directory: str, depth: int) -> None:
        for name in tree.listdir(directory):
            if not go_match(pattern[depth], name):
                continue
            child = join(directory, name)
            if depth == len(pattern) - 1:
                out.append(child)
                continue
            st = tree.lstat(child)
            if st is not None and stat.S_ISDIR(st.st_mode):
                visit(child, depth + 1)

    visit(base, 0)
    return out


def expand_source(
    tree: SourceTree,
    spec: str,
    *,
    index: int,
    what: str,
    line: int,
    excludes: IgnoreMatcher | None = None,
) -> list[SourceItem]:
    """The items one source path selects; an error (naming path and line) if none."""
    where = f"line {line}: " if line else ""
    cleaned = clean_path(spec)
    parts = split_path(cleaned)
    first_wild = next((i for i, p in enumerate(parts) if contains_wildcards(p)), None)
    items: list[SourceItem] = []
    if first_wild is None:
        found = _follow(tree, cleaned)
        if found is None:
            raise SourceError(
                f"{where}{what} failed: file not found in build context or excluded by .dockerignore: "
                f"stat {cleaned or '.'}: file does not exist (source {spec!r})"
            )
        real, st = found
        return [SourceItem(index, spec, cleaned, real, st, parts[-1] if parts else "")]
    base = tree.resolve("/".join(parts[:first_wild]))
    base_st = tree.lstat(base)
    pattern = parts[first_wild:]
    matches = []
    if base_st is not None and stat.S_ISDIR(base_st.st_mode):
        try:
            matches = _wildcard_matches(tree, base, pattern)
        except PatternError as e:
            raise SourceError(f"{where}{what} failed: bad source pattern {spec!r}: {e}") from None
    for rel in matches:
        if excludes is not None and excludes.is_excluded(rel[len(base) + 1 :] if base else rel):
            continue
        found = _follow(tree, rel)
        if found is None:  # a dangling symlink (or one to an excluded file): BuildKit fails too
            raise SourceError(
                f"{where}{what} failed: {rel}: the symlink's target is not in the build context or the source "
                f"(source {spec!r})"
            )
        real, st = found
        items.append(SourceItem(index, spec, rel, real, st, rel.rpartition("/")[2]))
    if not items:
        raise SourceError(f"{where}{what} failed: no source files were specified: {spec!r} matched nothing")
    return items


def expand_parents_source(tree: SourceTree, spec: str, *, index: int, what: str, line: int) -> list[SourceItem]:
    """`--parents`: the pivot directory (before `/./`, else the root) with an include pattern."""
    where = f"line {line}: " if line else ""
    pivot, sep, rest = spec.partition("/./")
    if not sep:
        pivot, rest = "", spec
    pattern = clean_path(rest)
    if not pattern:
        pattern = "**"
    includes = filters([pattern], "--parents")
    if not contains_wildcards(pivot) and not contains_wildcards(pattern):
        required = join(clean_path(pivot), pattern)
        if _follow(tree, required) is None:
            raise SourceError(
                f"{where}{what} failed: file not found in build context or excluded by .dockerignore: "
                f"stat {required}: file does not exist (source {spec!r})"
            )
    pivots = expand_source(tree, pivot or ".", index=index, what=what, line=line)
    out = []
    for item in pivots:
        if not item.is_dir:
            raise SourceError(f"{where}{what} --parents: {pivot!r} is not a directory (source {spec!r})")
        out.append(SourceItem(index, spec, item.rel, item.real, item.st, item.name, includes))
    return out


def walk_item(
    tree: SourceTree,
    item: SourceItem,
    *,
    excludes: IgnoreMatcher | None = None,
    exclude_prefix: str = "",
) -> Iterator[SourceNode]:
    """The item and, for a directory, everything selected below it (unsorted).

    `excludes` are matched against paths relative to the item, or to `exclude_prefix` joined
    with them when given. Directories that are not selected themselves but hold selected
    entries are yielded too (before those entries), as fsutil creates them lazily.
    """
    yield SourceNode("", item.real, item.st)
    if not item.is_dir:
        return
    excl = excludes
    incl = item.includes
    emitted: set[str] = set()
    root_einfo = excl.match(exclude_prefix)[1] if excl is not None and exclude_prefix else None
    # frames: (dir relative to the item, exclude info, include info, unselected ancestors)
    stack: list[tuple[str, MatchInfo | None, MatchInfo | None, tuple[SourceNode, ...]]] = [
        ("", root_einfo, None, ())
    ]
    while stack:
        rel, einfo, iinfo, pending = stack.pop()
        for name in tree.listdir(join(item.real, rel)):
            child = join(rel, name)
            src = join(item.real, child)
            st = tree.lstat(src)
            if st is None:
                continue
            selected, child_iinfo = incl.match(child, iinfo) if incl is not None else (True, None)
            excl_path = join(exclude_prefix, child)
            excluded, child_einfo = excl.match(excl_path, einfo) if excl is not None else (False, None)
            is_dir = stat.S_ISDIR(st.st_mode)
            node = SourceNode(child, src, st)
            if selected and not excluded:
                for anc in pending:
                    if anc.rel not in emitted:
                        emitted.add(anc.rel)
                        yield anc
                yield node
                if is_dir:
                    emitted.add(child)
                    stack.append((child, child_einfo, child_iinfo, ()))
                continue
            if not is_dir:
                continue
            if excl is not None and excluded and not excl.might_include_children(excl_path):
                continue
            if incl is not None and not selected and not may_select_below(incl, child):
                continue
            stack.append((child, child_einfo, child_iinfo, (*pending, node)))
