"""Detached daemons recorded by PID file, and stopped by that PID (never by name).

A PID file holds ``PID START_TIME`` (field 22 of /proc/PID/stat), so a PID reused by an
unrelated process after ours died is never signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19]  # field 22 overall


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    argv: Sequence[str],
    *,
    pid_file: Path,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> int:
    """Start ``argv`` in its own session with output to ``log_file``; record it in ``pid_file``.

    ``die_with_parent``: SIGKILL it when the calling thread's process dies (pytest sessions), so a
    killed test run leaves nothing behind. `make cluster-up` daemons outlive the command.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    pid_file.write_text(f"{proc.pid} {start_time(proc.pid) or '?'}\n")
    # The Popen object is dropped on purpose: the daemon outlives this call. Reaping is done in
    # stop() (when we are its parent) or by init (after `make cluster-up` exits).
    _orphans.append(proc)
    return proc.pid


_orphans: list[subprocess.Popen[bytes]] = []


def recorded_pid(pid_file: Path) -> int | None:
    """The PID in ``pid_file`` if that very process is still alive, else None."""
    try:
        text = pid_file.read_text().split()
    except OSError:
        return None
    if not text:
        return None
    pid = int(text[0])
    now = start_time(pid)
    if now is None or (len(text) > 1 and text[1] != "?" and text[1] != now):
        return None
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            _reap(pid)
            return None
    return pid


def _reap(pid: int) -> None:
    for proc in _orphans:
        if proc.pid == pid:
            proc.poll()
            return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid_file: Path) -> bool:
    return recorded_pid(pid_file) is not None


def stop(pid_file: Path, *, grace: float = 10.0) -> bool:
    """SIGTERM the recorded process, SIGKILL it after ``grace`` seconds. True if one was running."""
    pid = recorded_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid_file, grace):
        pid = recorded_pid(pid_file)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid_file, 10.0)
    pid_file.unlink(missing_ok=True)
    return True


def wait_gone(pid_file: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = recorded_pid(pid_file)
        if pid is None:
            return True
        _reap(pid)
        time.sleep(0.05)
    return recorded_pid(pid_file) is None


def wait_until(check: Callable[[], bool], timeout: float, what: str, *, pid_file: Path | None = None,
               log_file: Path | None = None) -> None:
    """Poll ``check`` until true; fail early if the process behind ``pid_file`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        if pid_file is not None and not alive(pid_file):
            raise RuntimeError(f"{what}: the process exited{_tail(log_file)}")
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f}s{_tail(log_file)}")


def _tail(log_file: Path | None, lines: int = 30) -> str:
    if log_file is None:
        return ""
    try:
        text = log_file.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"; last lines of {log_file}:\n" + "\n".join(text)
