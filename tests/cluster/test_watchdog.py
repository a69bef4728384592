"""The controller's watchdog: work stuck in flight is noticed, reported and ends the process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from kiln.cluster.watchdog import Watchdog

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_work_in_flight_past_the_limit_is_a_stall_and_finished_work_is_forgotten() -> None:
    clock = Clock()
    dog = Watchdog(60, clock=clock)
    with dog.track("resync"):
        clock.now += 59
        assert dog.problem() is None
        with dog.track("build ns/a-1"):
            clock.now += 2
            assert dog.problem() == "resync in flight for 61 s"
            clock.now += 57
            assert [str(s) for s in dog.stalls()] == ["resync in flight for 118 s"]  # the build's 59 s are not past the limit
            clock.now += 2
            assert [str(s) for s in dog.stalls()] == ["resync in flight for 120 s", "build ns/a-1 in flight for 61 s"]
            assert dog.problem() == "resync in flight for 120 s (and 1 more)"
    assert dog.problem() is None  # both finished: a slow unit that ends is not a stall


def test_an_exception_ends_the_unit_too() -> None:
    clock = Clock()
    dog = Watchdog(1, clock=clock)
    with pytest.raises(RuntimeError), dog.track("evaluate"):
        raise RuntimeError("boom")
    clock.now += 10
    assert dog.stalls() == []


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Watchdog(0)


def test_a_blocked_event_loop_is_a_stall_and_a_running_one_is_not() -> None:
    dog = Watchdog(0.3)
    loop = asyncio.new_event_loop()
    release = threading.Event()
    blocked = threading.Event()

    async def block() -> None:
        blocked.set()
        release.wait()  # on purpose: a synchronous wait inside the loop, as a wedged handler would

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        dog.watch_loop(loop)
        dog.probe_loop()
        assert dog.problem() is None
        asyncio.run_coroutine_threadsafe(block(), loop)
        assert blocked.wait(5)
        dog.probe_loop()
        problem = dog.problem()
        assert problem is not None and problem.startswith("the operator's event loop")
        release.set()
        dog.probe_loop()
        assert dog.problem() is None
    finally:
        release.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_run_reports_the_stall_once_and_stops() -> None:
    dog = Watchdog(0.2)
    seen: list[str] = []
    stuck = threading.Event()

    def wedged() -> None:
        with dog.track("build ns/x-1"):
            stuck.wait(10)

    worker = threading.Thread(target=wedged, daemon=True)
    worker.start()
    runner = threading.Thread(target=dog.run, args=(threading.Event(), seen.append, 0.05))
    runner.start()
    runner.join(5)
    stuck.set()
    worker.join(5)
    assert not runner.is_alive()
    assert len(seen) == 1 and seen[0].startswith("build ns/x-1 in flight for ")


def test_a_wedged_controller_dumps_every_stack_and_exits_with_code_3() -> None:
    """The controller's own stall handler, in a real process: a thread waits forever inside a unit of work."""
    program = textwrap.dedent(
        """
        import logging, threading
        from kiln.cluster import controller
        from kiln.cluster.watchdog import Watchdog

        logging.basicConfig(level=logging.INFO)
        controller.STATE.watchdog = dog = Watchdog(0.3)

        def reconcile_forever():
            with controller._tracked("build ns/stuck-1"):
                threading.Event().wait()

        threading.Thread(target=reconcile_forever, name="stuck", daemon=True).start()
        dog.run(threading.Event(), controller._wedged, every=0.05)
        raise SystemExit("the watchdog returned instead of ending the process")
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "controller wedged: build ns/stuck-1 in flight for" in done.stderr
    assert "in reconcile_forever" in done.stderr  # the stuck thread's stack, from faulthandler
