"""Notice a controller that stopped making progress, so it can be restarted instead of sitting idle.

Every unit of controller work (a kopf handler call, a resync of one build, a trigger evaluation)
runs inside :meth:`Watchdog.track`. Each call has its own timeouts (API requests time out after
10 s), so work still in flight long after ``limit`` seconds means a thread waits on something that
will not come (a lock, a wedged connection pool). The kopf event loop is probed the same way: a
no-op scheduled on it must run within ``limit``.

A wedged controller is restarted (crash-only: every decision is re-derived from the API server,
so a restart loses nothing): the controller dumps every thread's stack and exits, and its
Deployment's liveness probe (``/healthz``, which reports :meth:`Watchdog.problem`) catches the
case where even the watchdog's own thread cannot run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Stall:
    what: str
    seconds: float

    def __str__(self) -> str:
        return f"{self.what} in flight for {self.seconds:.0f} s"


class Watchdog:
    def __init__(self, limit: float, clock: Callable[[], float] = time.monotonic) -> None:
        if limit <= 0:
            raise ValueError("the watchdog limit must be positive")
        self.limit = limit
        self.clock = clock
        self._inflight: dict[int, tuple[str, float]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_stall: Stall | None = None

    @contextlib.contextmanager
    def track(self, what: str) -> Iterator[None]:
        """Run the body as one unit of work named ``what``."""
        token = next(self._ids)
        with self._lock:
            self._inflight[token] = (what, self.clock())
        try:
            yield
        finally:
            with self._lock:
                del self._inflight[token]

    def watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Also probe ``loop`` (the operator's event loop) in :meth:`run`."""
        self._loop = loop

    def stalls(self) -> list[Stall]:
        """Work in flight for longer than the limit, oldest first."""
        now = self.clock()
        with self._lock:
            ages = [Stall(what, now - started) for what, started in self._inflight.values()]
        found = sorted((s for s in ages if s.seconds > self.limit), key=lambda s: -s.seconds)
        if self._loop_stall is not None:
            found.insert(0, self._loop_stall)
        return found

    def problem(self) -> str | None:
        """None while the controller makes progress; else what is stuck (for /healthz and the log)."""
        found = self.stalls()
        if not found:
            return None
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        return f"{found[0]}{more}"

    def probe_loop(self) -> None:
        """Schedule a no-op on the watched event loop; record a stall if it does not run in time."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        ran = threading.Event()
        started = self.clock()
        try:
            loop.call_soon_threadsafe(ran.set)
        except RuntimeError:  # the loop closed meanwhile: the operator is stopping
            return
        if ran.wait(self.limit):
            self._loop_stall = None
        else:
            self._loop_stall = Stall("the operator's event loop (a no-op waited)", self.clock() - started)

    def run(self, stop: threading.Event, on_stall: Callable[[str], None], every: float = 5.0) -> None:
        """Check every ``every`` seconds until ``stop``; call ``on_stall`` with the problem once found."""
        while not stop.wait(every):
            self.probe_loop()
            problem = self.problem()
            if problem is not None:
                on_stall(problem)
                return
