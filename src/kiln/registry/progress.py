"""Progress reporting for transfers: a protocol the CLI renders, and a sink that ignores it all."""

from __future__ import annotations

from typing import Protocol

#: Final states passed to :meth:`ProgressSink.done`.
EXISTS = "exists"  # the destination already had it
MOUNTED = "mounted"  # linked from another repository of the same registry
PUSHED = "pushed"
PULLED = "pulled"
COPIED = "copied"
CACHED = "cached"  # already in the local store
FAILED = "failed"


class ProgressSink(Protocol):
    """Receives transfer events. Called from worker threads: implementations must be thread-safe.

    ``id`` is a blob or manifest digest, ``label`` a short human name ("layer 2/5", "config"),
    ``total`` the size in bytes when known. ``advance`` may go backwards (negative ``n``) when a
    transfer restarts from an earlier offset.
    """

    def start(self, id: str, label: str, total: int | None) -> None: ...

    def advance(self, id: str, n: int) -> None: ...

    def done(self, id: str, status: str) -> None: ...


class NullProgress:
    """Discards every event."""

    def start(self, id: str, label: str, total: int | None) -> None:
        pass

    def advance(self, id: str, n: int) -> None:
        pass

    def done(self, id: str, status: str) -> None:
        pass
