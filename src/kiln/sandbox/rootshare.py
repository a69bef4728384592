"""Placeholders in a root directory that several sandboxes use at once.

A sandbox creates empty mount points (``/etc/resolv.conf``, ``/proc``...) that its root lacks and
removes them when it ends. Two sandboxes on one root directory would race: the first to end
removes a mount point the other still needs. So every run holds a shared lock on the root while
it runs, records its placeholders in a ledger next to the lock, and only a run that can take the
lock exclusively at its end (the last one out) removes what the ledger lists. A run killed
outright leaves its lines in the ledger; the next last-one-out removes them. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator

from .rootpath import remove_placeholder


class RootShare:
    """Held for the life of one sandbox on ``root`` (a directory, or an overlay's upper dir)."""

    def __init__(self, root: str, lock_dir: str) -> None:
        self.root = root
        key = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:32]
        os.makedirs(lock_dir, 0o700, exist_ok=True)
        self._ledger = os.path.join(lock_dir, f"{key}.ledger")
        self._fd = os.open(os.path.join(lock_dir, f"{key}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_SH)  # waits while a last-one-out is removing placeholders

    def leave(self, placeholders: list[str]) -> None:
        """Record ``placeholders``, and remove every recorded one if no other run is using the root."""
        try:
            if placeholders:
                fd = os.open(self._ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, "".join(f"{rel}\n" for rel in placeholders).encode())
                finally:
                    os.close(fd)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another run still uses the root; the last one out removes these
            self._remove_recorded()
        finally:
            os.close(self._fd)

    def _remove_recorded(self) -> None:
        try:
            with open(self._ledger, encoding="utf-8") as f:
                recorded = set(f.read().splitlines())
        except FileNotFoundError:
            return
        # Deepest first: a directory one run created may hold a file another run created.
        for rel in sorted(recorded, key=lambda r: (-r.count("/"), r)):
            if rel:
                remove_placeholder(self.root, rel)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._ledger)


@contextlib.contextmanager
def shared_root(root: str, lock_dir: str) -> Iterator[list[str]]:
    """Yield a list the caller fills with the run's placeholders; they are handled on exit."""
    share = RootShare(root, lock_dir)
    placeholders: list[str] = []
    try:
        yield placeholders
    finally:
        share.leave(placeholders)
