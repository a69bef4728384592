"""Scratch directories for a sandbox: where its root is mounted and its scratch layer lives.

They live in ``$TMPDIR/kiln-sandbox-<host uid>/<pid>-<random>``. A kiln killed outright cannot
remove its own; the next run removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

from .idmap import read_mapping


def _host_uid() -> int:
    """Our uid as the host sees it (uid 0 of kiln's user namespace is the user who ran kiln)."""
    uid = os.geteuid()
    for r in read_mapping("self").uids:
        if r.inside <= uid < r.inside + r.count:
            return r.outside + uid - r.inside
    return uid


def _base() -> str | None:
    """Our private parent directory, or None if someone else owns that name."""
    base = os.path.join(tempfile.gettempdir(), f"kiln-sandbox-{_host_uid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(base, 0o700)
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return None  # a symlink or another user's directory: do not use it
    return base


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, not yet reaped by its new parent, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def sweep(base: str) -> None:
    """Remove scratch directories of kiln processes that no longer exist."""
    for name in os.listdir(base):
        pid, _, _ = name.partition("-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def roots_dir(staging: str) -> str:
    """Where runs sharing a root directory coordinate (see rootshare); per-run if we have no base."""
    base = _base()
    return os.path.join(base if base is not None else staging, "roots")


@contextlib.contextmanager
def staging_dir() -> Iterator[str]:
    """A fresh directory with empty ``root`` and ``scaffold`` subdirectories, removed afterwards."""
    base = _base()
    if base is not None:
        sweep(base)
        path = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base)
    else:
        path = tempfile.mkdtemp(prefix="kiln-sandbox-")
    try:
        os.mkdir(os.path.join(path, "root"), 0o755)
        os.mkdir(os.path.join(path, "scaffold"), 0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
