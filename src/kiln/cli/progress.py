"""Progress rendering: rich bars on a terminal, plain lines otherwise (CI logs, pipes)."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from kiln.registry.progress import NullProgress

if TYPE_CHECKING:
    # rich is imported only when bars are drawn: it costs a CLI start-up tens of milliseconds,
    # and piped, CI and --progress quiet runs never use it.
    from rich.console import Console
    from rich.progress import TaskID


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def choose_mode(mode: str, stream: TextIO | None = None) -> str:
    """'auto' becomes 'tty' on a terminal and 'plain' elsewhere; 'quiet' prints nothing."""
    if mode != "auto":
        return mode
    s = stream or sys.stderr
    return "tty" if s.isatty() else "plain"


class PlainTransferProgress:
    """One line when a blob starts and one when it ends; safe from worker threads."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._out = stream or sys.stderr
        self._lock = threading.Lock()
        self._labels: dict[str, tuple[str, int | None, float]] = {}
        self._moved: dict[str, int] = {}

    def _line(self, text: str) -> None:
        with self._lock:
            print(text, file=self._out, flush=True)

    def start(self, id: str, label: str, total: int | None) -> None:
        self._labels[id] = (label, total, time.monotonic())
        self._moved[id] = 0

    def advance(self, id: str, n: int) -> None:
        with self._lock:
            self._moved[id] = self._moved.get(id, 0) + n

    def done(self, id: str, status: str) -> None:
        label, total, t0 = self._labels.get(id, (id[:19], None, time.monotonic()))
        size = human_size(total if total is not None else self._moved.get(id, 0))
        short = id.split(":", 1)[-1][:12]
        self._line(f"{label} {short}: {status} ({size}, {time.monotonic() - t0:.1f}s)")

    def close(self) -> None:
        pass


class RichTransferProgress:
    """Live bars with size and speed, one per blob."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()
        self._progress.start()

    def start(self, id: str, label: str, total: int | None) -> None:
        short = id.split(":", 1)[-1][:12]
        with self._lock:
            self._tasks[id] = self._progress.add_task(f"{label} {short}", total=total, status="")

    def advance(self, id: str, n: int) -> None:
        task = self._tasks.get(id)
        if task is not None:
            self._progress.advance(task, n)

    def done(self, id: str, status: str) -> None:
        task = self._tasks.get(id)
        if task is not None:
            t = self._progress.tasks[task]
            self._progress.update(task, completed=t.total or t.completed, status=status)

    def close(self) -> None:
        self._progress.stop()


class QuietProgress(NullProgress):
    def close(self) -> None:
        pass


class TransferProgress:
    """Context manager choosing the renderer for a progress mode."""

    def __init__(self, mode: str = "auto") -> None:
        self.mode = choose_mode(mode)
        self.sink: RichTransferProgress | PlainTransferProgress | QuietProgress
        if self.mode == "tty":
            self.sink = RichTransferProgress()
        elif self.mode == "quiet":
            self.sink = QuietProgress()
        else:
            self.sink = PlainTransferProgress()

    def __enter__(self) -> RichTransferProgress | PlainTransferProgress | QuietProgress:
        return self.sink

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.sink.close()
