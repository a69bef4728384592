"""Remembered content hashes of build-context files, keyed by what stat says about them.

A file whose (path, device, inode, size, mtime_ns, ctime_ns) is unchanged since it was hashed
has the same content: editors, git and cp all change at least one of these. So an unchanged
context gets its cache key from stat calls alone, without reading a byte.

Racy writes: a file changed within the timestamp granularity right after it was hashed
could keep its stat data. Like git's racy-clean rule, a hash is only remembered when the
file's mtime and ctime are older than `racy_window_ns` at the time of hashing.

The table lives in SQLite (stdlib) under the store's state directory. A build asks about every
file of its context, so `preload(prefix)` reads the rows below the context root in one range
query (the primary key is the path) and answers those lookups from memory; a context with more
than `PRELOAD_MAX_ROWS` remembered files is asked about row by row, to keep memory bounded. Several builds may use
it at once: WAL mode lets readers run beside a writer, each writer transaction is short
(one batch at the end of a hashing pass) and a busy database is retried. It is only a cache:
if it cannot be opened or written, builds go on hashing files, with a warning.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files_v1 (
    path BLOB PRIMARY KEY,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL
)
"""

StatKey = tuple[int, int, int, int, int]  # dev, ino, size, mtime_ns, ctime_ns


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class StatCache:
    """path (bytes: names need not be UTF-8) + stat key -> sha256 hex, in SQLite; counts hits and misses."""

    RETRIES = 20
    #: At most this many rows are held in memory by `preload` (about 25 MiB at most).
    PRELOAD_MAX_ROWS = 50_000

    def __init__(self, path: Path | None, *, racy_window_ns: int = 2_000_000_000) -> None:
        self.path = path
        self.racy_window_ns = racy_window_ns
        self.hits = 0
        self.misses = 0
        self._pending: list[tuple[bytes, int, int, int, int, int, str]] = []
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, possibly used by several build threads
        #: path prefix -> rows below it, as read by `preload`.
        self._preloaded: dict[bytes, dict[bytes, tuple[StatKey, str]]] = {}
        if path is not None:
            try:
                self._db = self._retry(lambda: self._open(path))
            except (sqlite3.Error, OSError) as e:
                log.warning("stat cache %s unusable (%s); hashing every context file", path, e)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _retry(self, op: Callable[[], T]) -> T:
        delay = 0.01
        for attempt in range(self.RETRIES):
            try:
                return op()
            except sqlite3.OperationalError as e:
                if ("locked" not in str(e) and "busy" not in str(e)) or attempt == self.RETRIES - 1:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise AssertionError("unreachable")

    def preload(self, prefix: bytes) -> None:
        """Read every row whose path starts with `prefix` (a directory path ending in '/') at once,
        so lookups below it cost no query. Rows remembered later by another build are missed
        (the file is hashed again), never misread: a lookup still compares the stat key."""
        if self._db is None or not prefix.endswith(b"/") or prefix in self._preloaded:
            return
        db = self._db
        # Every path below `prefix` sorts in [prefix, prefix with its last '/' raised to '0').
        upper = prefix[:-1] + b"0"
        limit = self.PRELOAD_MAX_ROWS
        try:
            with self._lock:
                rows = self._retry(
                    lambda: db.execute(
                        "SELECT path, dev, ino, size, mtime_ns, ctime_ns, sha256 FROM files_v1"
                        " WHERE path >= ? AND path < ? LIMIT ?",
                        (prefix, upper, limit + 1),
                    ).fetchall()
                )
        except sqlite3.Error as e:
            self._disable(e)
            return
        if len(rows) > limit:
            return  # too many to hold: ask row by row
        self._preloaded[prefix] = {bytes(r[0]): ((r[1], r[2], r[3], r[4], r[5]), str(r[6])) for r in rows}

    def _from_preload(self, path: bytes) -> tuple[bool, tuple[StatKey, str] | None]:
        """(whether a preload covers `path`, its row if there is one)."""
        for prefix, rows in self._preloaded.items():
            if path.startswith(prefix):
                return True, rows.get(path)
        return False, None

    def lookup(self, path: bytes, st: os.stat_result) -> str | None:
        if self._db is None:
            self.misses += 1
            return None
        if self._preloaded:
            covered, got = self._from_preload(path)
            if covered:
                if got is not None and got[0] == stat_key(st):
                    self.hits += 1
                    return got[1]
                self.misses += 1
                return None
        db = self._db
        try:
            with self._lock:
                row = self._retry(
                    lambda: db.execute(
                        "SELECT dev, ino, size, mtime_ns, ctime_ns, sha256 FROM files_v1 WHERE path = ?", (path,)
                    ).fetchone()
                )
        except sqlite3.Error as e:
            self._disable(e)
            row = None
        if row is not None and tuple(row[:5]) == stat_key(st):
            self.hits += 1
            return str(row[5])
        self.misses += 1
        return None

    def remember(self, path: bytes, st: os.stat_result, sha256: str, hashed_at_ns: int) -> None:
        """Queue a hash computed when the clock read `hashed_at_ns` (written by `flush`)."""
        if self._db is None:
            return
        if hashed_at_ns - max(st.st_mtime_ns, st.st_ctime_ns) < self.racy_window_ns:
            return  # racy: the file may still change within its timestamp granularity
        with self._lock:
            self._pending.append((path, *stat_key(st), sha256))
            for prefix, rows in self._preloaded.items():
                if path.startswith(prefix):
                    rows[path] = (stat_key(st), sha256)
                    break

    def flush(self) -> None:
        with self._lock:
            if self._db is None or not self._pending:
                self._pending.clear()
                return
            db, rows = self._db, self._pending
            self._pending = []

        def write() -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO files_v1 (path, dev, ino, size, mtime_ns, ctime_ns, sha256)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        try:
            with self._lock:
                self._retry(write)
        except sqlite3.Error as e:
            self._disable(e)

    def _disable(self, err: Exception) -> None:
        log.warning("stat cache %s failed (%s); hashing every context file from now on", self.path, err)
        if self._db is not None:
            self._db.close()
        self._db = None

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None
