"""Running blob transfers on a bounded pool, stopping early when one fails."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")


class Aborted(Exception):
    """Raised inside a task when another task already failed."""


def run_all(tasks: Sequence[Callable[[threading.Event], T]], concurrency: int) -> list[T]:
    """Run ``tasks`` (each gets an abort Event to poll) on ``concurrency`` threads; results in order.

    The first failure sets the abort event, cancels tasks not yet started and is re-raised once
    the running ones have stopped, so no thread outlives the call.
    """
    if not tasks:
        return []
    abort = threading.Event()
    with ThreadPoolExecutor(
        max_workers=max(1, min(concurrency, len(tasks))), thread_name_prefix="kiln-blob"
    ) as pool:
        futures: list[Future[T]] = [pool.submit(t, abort) for t in tasks]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            abort.set()
            for f in futures:
                f.cancel()
            wait(futures)
            # Prefer the first real error over the Aborted of tasks that stopped because of it.
            errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
            real = next((e for e in errors if not isinstance(e, Aborted)), errors[0])
            assert real is not None
            raise real
    return [f.result() for f in futures]
