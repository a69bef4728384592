"""The build log, in the shape of BuildKit's plain progress: numbered steps, live output, times, CACHED."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Protocol, TextIO


class BuildLog(Protocol):
    def step(self, label: str) -> StepLog: ...

    def info(self, text: str) -> None: ...


class StepLog(Protocol):
    def output(self, data: bytes) -> None: ...

    def cached(self) -> None: ...

    def done(self) -> None: ...

    def error(self, message: str) -> None: ...

    def tail(self) -> str: ...


class PlainBuildLog:
    """Thread-safe line log; parallel stages interleave by line, each line tagged with its step."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False, color: bool = False) -> None:
        self._out = stream or sys.stderr
        self._lock = threading.Lock()
        self._counter = 0
        self.quiet = quiet
        self.color = color

    def _emit(self, text: str, style: str = "") -> None:
        if self.quiet:
            return
        with self._lock:
            if self.color and style:
                text = f"\x1b[{style}m{text}\x1b[0m"
            print(text, file=self._out, flush=True)

    def step(self, label: str) -> PlainStepLog:
        with self._lock:
            self._counter += 1
            n = self._counter
        self._emit(f"#{n} {label}", "1")
        return PlainStepLog(self, n)

    def info(self, text: str) -> None:
        self._emit(text)


class PlainStepLog:
    TAIL_LINES = 20

    def __init__(self, log: PlainBuildLog, n: int) -> None:
        self._log = log
        self._n = n
        self._t0 = time.monotonic()
        self._partial = b""
        self._tail: deque[str] = deque(maxlen=self.TAIL_LINES)

    def output(self, data: bytes) -> None:
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        for raw in lines:
            self._line(raw)

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self._tail.append(text)
        self._log._emit(f"#{self._n} {time.monotonic() - self._t0:.3f} {text}")

    def _flush(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def cached(self) -> None:
        self._log._emit(f"#{self._n} CACHED", "34")

    def done(self) -> None:
        self._flush()
        self._log._emit(f"#{self._n} DONE {time.monotonic() - self._t0:.1f}s", "32")

    def error(self, message: str) -> None:
        self._flush()
        self._log._emit(f"#{self._n} ERROR: {message}", "31")

    def tail(self) -> str:
        self._flush()
        return "\n".join(self._tail)
