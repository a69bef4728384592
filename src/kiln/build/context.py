"""The build context: a directory, minus what its .dockerignore excludes, hashed cheaply.

What COPY can see is what BuildKit would have transferred: every path the ignore rules do
not exclude, plus excluded directories that still hold a re-included (`!pattern`) path
(they come along as that path's parents). Walks never descend into an excluded directory
unless an exception pattern could re-include something below it.

Files from the context are owned by root in the image, whoever owns them on disk, so the
context reports 0:0 for everything. Content hashes come from a `StatCache` when the file's
stat data is unchanged since it was last hashed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.build.ignore import (
    IgnoreMatcher,
    IgnorePatternError,
    MatchInfo,
    find_ignore_file,
    read_ignore_patterns,
)
from kiln.build.source_tree import DIGEST_VERSION, SourceTree, join
from kiln.build.statcache import StatCache
from kiln.errors import KilnError
from kiln.oci.digest import Digest
from kiln.oci.xattrs import read_xattrs

if TYPE_CHECKING:
    from kiln.oci.store import Store

STATCACHE_NAME = "statcache.sqlite"


class ContextError(KilnError):
    """A build context that cannot be read."""


@dataclass
class ContextStats:
    cache_hits: int = 0
    cache_misses: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0


class BuildContext(SourceTree):
    """A context directory with its ignore rules; see the module doc."""

    def __init__(
        self,
        root: Path,
        ignore_patterns: Sequence[str] = (),
        *,
        stat_cache: StatCache | None = None,
        ignore_file: Path | None = None,
    ) -> None:
        super().__init__(root)
        if not self.root.is_dir():
            raise ContextError(f"build context {root} is not a directory")
        try:
            self.ignore = IgnoreMatcher(ignore_patterns)
        except IgnorePatternError as e:
            raise ContextError(f"{ignore_file or '.dockerignore'}: {e.message}") from None
        self.ignore_file = ignore_file
        self.stat_cache = stat_cache if stat_cache is not None else StatCache(None)
        self._info: dict[str, tuple[bool, MatchInfo]] = {}
        self._has_visible: dict[str, bool] = {}
        self._root_str = str(self.root)
        self._root_prefix = self._root_str.rstrip("/") + "/"
        self._preloaded = False

    @classmethod
    def open(
        cls, root: Path, *, dockerfile: Path | None = None, stat_cache: StatCache | None = None
    ) -> BuildContext:
        """A context with the ignore file that applies to `dockerfile` (if any)."""
        ignore_file = find_ignore_file(Path(root), dockerfile)
        try:
            text = ignore_file.read_bytes().decode("utf-8", "surrogateescape") if ignore_file else ""
        except OSError as e:
            raise ContextError(f"{ignore_file}: cannot read: {e.strerror}") from None
        return cls(root, read_ignore_patterns(text), stat_cache=stat_cache, ignore_file=ignore_file)

    @classmethod
    def for_store(cls, root: Path, store: Store, *, dockerfile: Path | None = None) -> BuildContext:
        """A context whose hash cache persists in the store's state directory."""
        return cls.open(root, dockerfile=dockerfile, stat_cache=StatCache(store.state_dir / STATCACHE_NAME))

    @property
    def stats(self) -> ContextStats:
        return ContextStats(self.stat_cache.hits, self.stat_cache.misses, self.files_hashed, self.bytes_hashed)

    # -- visibility ------------------------------------------------------------------------

    def _match(self, rel: str) -> tuple[bool, MatchInfo]:
        got = self._info.get(rel)
        if got is None:
            parent = rel.rpartition("/")[0]
            parent_info = self._match(parent)[1] if parent else None
            got = self.ignore.match(rel, parent_info)
            if len(self._info) < 100_000:
                self._info[rel] = got
        return got

    def excluded(self, rel: str) -> bool:
        """Whether the ignore rules exclude `rel` (or one of its parents, barring exceptions)."""
        return bool(rel) and bool(self.ignore.patterns) and self._match(rel)[0]

    def _holds_visible(self, rel: str) -> bool:
        """An excluded directory still exists in the context if something below is re-included."""
        got = self._has_visible.get(rel)
        if got is None:
            got = False
            if self.ignore.might_include_children(rel):
                for name in self._raw_listdir(rel):
                    child = join(rel, name)
                    st = self.raw_lstat(child)
                    if st is not None and self._visible(child, st):
                        got = True
                        break
            self._has_visible[rel] = got
        return got

    def _visible(self, rel: str, st: os.stat_result) -> bool:
        if not self.excluded(rel):
            return True
        return stat.S_ISDIR(st.st_mode) and self._holds_visible(rel)

    def lstat(self, rel: str) -> os.stat_result | None:
        st = self.raw_lstat(rel)
        if st is None or not self.ignore.patterns:
            return st
        return st if self._visible(rel, st) else None

    def _raw_listdir(self, rel: str) -> list[str]:
        return super().listdir(rel)

    def listdir(self, rel: str) -> list[str]:
        names = self._raw_listdir(rel)
        if not self.ignore.patterns:
            return names
        out = []
        for name in names:
            child = join(rel, name)
            st = self.raw_lstat(child)
            if st is not None and self._visible(child, st):
                out.append(name)
        return out

    def walk(self, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
        """Every visible entry below directory `rel`, parents before children, sorted."""
        stack = [iter([join(rel, n) for n in self.listdir(rel)])]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                continue
            st = self.raw_lstat(child)
            if st is None:
                continue
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(iter([join(child, n) for n in self.listdir(child)]))

    # -- per-file fast paths ---------------------------------------------------------------
    # A context is walked, stat-ed and looked up in the hash cache once per file; building a
    # pathlib.Path for each of those calls cost more than the system calls themselves.

    def _host_str(self, rel: str) -> str:
        """``str(self.host(rel))`` without pathlib, for the clean relative paths walks produce."""
        if not rel:
            return self._root_str
        if rel.startswith(("/", "./")) or rel.endswith(("/", "/.")) or "//" in rel or "/./" in rel or rel == ".":
            return str(self.host(rel))
        return self._root_prefix + rel

    def raw_lstat(self, rel: str) -> os.stat_result | None:
        try:
            return os.lstat(self._host_str(rel))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise

    def xattrs(self, rel: str) -> dict[str, bytes]:
        return read_xattrs(self._host_str(rel))

    # -- ownership and content -----------------------------------------------------------

    def owner(self, st: os.stat_result) -> tuple[int, int]:
        return 0, 0

    def sha256(self, rel: str, st: os.stat_result) -> str:
        if not self._preloaded:
            # One range query for the whole context instead of one query per file.
            self._preloaded = True
            self.stat_cache.preload(os.fsencode(self._root_prefix))
        key = os.fsencode(self._host_str(rel))
        cached = self.stat_cache.lookup(key, st)
        if cached is not None:
            return cached
        started = time.time_ns()
        digest = self.hash_file(rel)
        self.stat_cache.remember(key, st, digest, started)
        return digest

    def flush(self) -> None:
        self.stat_cache.flush()

    def digest_of(self, paths: Sequence[str], excludes: Sequence[str] = ()) -> Digest:
        """Content digest of the entries `paths` select (Go wildcards allowed; a directory
        brings its whole visible subtree), minus `excludes` (dockerignore patterns relative
        to the context root). Paths, types, modes, owners, link targets and contents count;
        mtimes do not."""
        from kiln.build.copy_patterns import filters
        from kiln.build.copy_select import expand_source, walk_item

        excl = filters(excludes, "exclude")
        h = hashlib.sha256(DIGEST_VERSION)
        for index, spec in enumerate(paths):
            for item in expand_source(self, spec, index=index, what="context digest", line=0):
                h.update(f"item\0{item.rel}\0{item.real}\n".encode("utf-8", "surrogateescape"))
                for node in walk_item(self, item, excludes=excl, exclude_prefix=item.real):
                    h.update(self.record(node.rel, node.src, node.st))
        self.flush()
        return Digest("sha256:" + h.hexdigest())
