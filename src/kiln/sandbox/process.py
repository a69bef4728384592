"""Run one command in a sandbox: spawn the helper, stream its output, enforce the timeout.

The caller must be root: real root, or uid 0 in the user namespace made by
:func:`kiln.sandbox.userns.ensure_userns`.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import SandboxError

from . import launch
from .rootshare import shared_root
from .spec import ExecFailedError, OutputCallback, OverlayRootfs, ProcessResult, ProcessSpec
from .staging import roots_dir, staging_dir

_CHUNK = 65536
_MAX_LINE = 65536  # a longer line without newline is passed on in pieces
_KILL_GRACE = 10.0  # seconds the supervisor gets to empty the namespace before we kill it too


class OutputBuffer:
    """Splits a byte stream into lines for a callback and keeps a bounded tail."""

    def __init__(self, callback: OutputCallback | None, tail_limit: int) -> None:
        self.callback = callback
        self.tail_limit = tail_limit
        self._pending = b""
        self._tail = bytearray()

    def feed(self, data: bytes) -> None:
        self._tail += data
        if len(self._tail) > self.tail_limit:
            del self._tail[: len(self._tail) - self.tail_limit]
        if self.callback is None:
            return
        self._pending += data
        while True:
            newline = self._pending.find(b"\n")
            if newline < 0:
                if len(self._pending) >= _MAX_LINE:
                    self.callback(self._pending)
                    self._pending = b""
                return
            line, self._pending = self._pending[: newline + 1], self._pending[newline + 1 :]
            self.callback(line)

    def close(self) -> None:
        if self.callback is not None and self._pending:
            self.callback(self._pending)
        self._pending = b""

    @property
    def tail(self) -> bytes:
        return bytes(self._tail)


@dataclass
class _Reports:
    pid1: int | None = None
    exit: int | None = None
    signal: int | None = None
    init_signal: int | None = None
    error: str | None = None
    error_code: int = 125
    error_kind: str = "setup"
    placeholders: list[str] = field(default_factory=list)
    _partial: bytes = b""

    def feed(self, data: bytes) -> None:
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue  # torn by a concurrent writer (only possible beyond PIPE_BUF)
            if isinstance(message, dict):
                self._apply(message)

    def _apply(self, message: dict[str, Any]) -> None:
        if "pid1" in message:
            self.pid1 = int(message["pid1"])
        if "placeholder" in message:
            self.placeholders.append(str(message["placeholder"]))
        if "exit" in message:
            self.exit = int(message["exit"])
        if "signal" in message:
            self.signal = int(message["signal"])
        if "init_signal" in message:
            self.init_signal = int(message["init_signal"])
        if "error" in message and self.error is None:
            self.error = str(message["error"])
            self.error_code = int(message.get("code", 125))
            self.error_kind = str(message.get("kind", "setup"))


def run(spec: ProcessSpec) -> ProcessResult:
    """Run ``spec`` to completion and report how it ended.

    Raises :class:`ExecFailedError` if the command could not be started and :class:`SandboxError`
    if the sandbox could not be built. A timeout kills every process of the sandbox and returns
    a result with ``timed_out`` set. KeyboardInterrupt (or any exception from ``on_output``) kills
    the sandbox too, waits until it is gone, then propagates.
    """
    spec.validate()
    if os.geteuid() != 0:
        raise SandboxError("sandbox: kiln must run as root or inside its user namespace (ensure_userns)")
    base = spec.rootfs.upperdir if isinstance(spec.rootfs, OverlayRootfs) else spec.rootfs
    with staging_dir() as staging, shared_root(base, roots_dir(staging)) as placeholders:
        return _run_staged(spec, staging, placeholders)


def _spec_fd(spec: ProcessSpec) -> int:
    fd = os.memfd_create("kiln-sandbox-spec", 0)
    os.write(fd, spec.dumps())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _run_staged(spec: ProcessSpec, staging: str, placeholders: list[str]) -> ProcessResult:
    started = time.monotonic()
    deadline = None if spec.timeout is None else started + spec.timeout
    out_r, out_w = os.pipe()
    report_r, report_w = os.pipe()
    spec_fd = _spec_fd(spec)
    stdin_r, stdin_w = os.pipe() if spec.stdin is not None else (os.open(os.devnull, os.O_RDONLY), -1)
    try:
        proc = subprocess.Popen(
            launch.python_argv("kiln.sandbox.init", str(spec_fd), str(report_w), str(os.getpid()), staging),
            stdin=stdin_r,
            stdout=out_w,
            stderr=out_w,
            pass_fds=(spec_fd, report_w),
            start_new_session=True,  # a ^C at kiln's terminal goes to kiln only; kiln kills the sandbox
            cwd="/",
            env={"LC_ALL": "C.UTF-8"},
        )
    except OSError as exc:
        for fd in (out_r, report_r, stdin_w):
            if fd >= 0:
                os.close(fd)
        raise SandboxError(f"cannot start the sandbox helper: {exc}") from exc
    finally:
        for fd in (out_w, report_w, spec_fd, stdin_r):
            os.close(fd)
    output = OutputBuffer(spec.on_output, spec.tail_limit)
    reports = _Reports()
    timed_out = False
    stdin = _StdinFeeder(stdin_w, spec.stdin or b"")
    try:
        timed_out = _pump(proc, out_r, report_r, stdin, deadline, output, reports)
        output.close()  # a last line without newline
    except BaseException:
        _kill(proc)
        raise
    finally:
        stdin.close()
        for fd in (out_r, report_r):
            os.close(fd)
        placeholders.extend(reports.placeholders)  # removed by shared_root once no run uses the root
    duration = time.monotonic() - started
    return _result(proc, reports, output.tail, timed_out, duration)


class _StdinFeeder:
    """Writes the spec's stdin bytes without blocking, then closes the pipe (EOF for the command)."""

    def __init__(self, fd: int, data: bytes) -> None:
        self.fd = fd
        self.data = data
        self.offset = 0
        if fd >= 0:
            os.set_blocking(fd, False)

    def write(self) -> bool:
        """Write what the pipe takes; True once everything is written (or the reader is gone)."""
        try:
            self.offset += os.write(self.fd, self.data[self.offset : self.offset + _CHUNK])
        except BlockingIOError:
            return False
        except BrokenPipeError:
            return True
        return self.offset >= len(self.data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _pump(
    proc: subprocess.Popen[bytes],
    out_r: int,
    report_r: int,
    stdin: _StdinFeeder,
    deadline: float | None,
    output: OutputBuffer,
    reports: _Reports,
) -> bool:
    """Move bytes until output and reports reach EOF (the sandbox is gone). True if timed out."""
    timed_out = False
    kill_deadline: float | None = None
    handlers: dict[int, Callable[[bytes], None]] = {out_r: output.feed, report_r: reports.feed}
    with selectors.DefaultSelector() as sel:
        for fd in handlers:
            sel.register(fd, selectors.EVENT_READ)
        if stdin.fd >= 0:
            sel.register(stdin.fd, selectors.EVENT_WRITE)
        while handlers:
            next_deadline = kill_deadline if timed_out else deadline
            events = sel.select(None if next_deadline is None else max(0.0, next_deadline - time.monotonic()))
            if not events and next_deadline is not None and time.monotonic() >= next_deadline:
                if timed_out:
                    _kill_group(proc)  # the supervisor did not finish in time
                    kill_deadline = None
                else:
                    timed_out = True
                    _request_kill(proc)
                    kill_deadline = time.monotonic() + _KILL_GRACE
                continue
            for key, _ in events:
                if key.fd == stdin.fd:
                    if stdin.write():
                        sel.unregister(stdin.fd)
                        stdin.close()
                    continue
                data = os.read(key.fd, _CHUNK)
                if data:
                    handlers[key.fd](data)
                else:
                    sel.unregister(key.fd)
                    del handlers[key.fd]
    proc.wait()
    return timed_out


def _request_kill(proc: subprocess.Popen[bytes]) -> None:
    """Ask the supervisor to SIGKILL PID 1 (and so the namespace); it exits once all are gone."""
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the sandbox and wait until none of its processes is left."""
    _request_kill(proc)
    try:
        proc.wait(_KILL_GRACE)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Last resort when the supervisor is stuck: SIGKILL it and PID 1 (its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _result(
    proc: subprocess.Popen[bytes], reports: _Reports, tail: bytes, timed_out: bool, duration: float
) -> ProcessResult:
    placeholders = tuple(reports.placeholders)
    if timed_out:
        return ProcessResult(128 + signal.SIGKILL, signal.SIGKILL, True, tail, duration, placeholders)
    if reports.error is not None:
        if reports.error_kind == "exec":
            raise ExecFailedError(reports.error, reports.error_code)
        raise SandboxError(reports.error)
    if reports.signal is not None:
        return ProcessResult(128 + reports.signal, reports.signal, False, tail, duration, placeholders)
    if reports.exit is not None:
        return ProcessResult(reports.exit, None, False, tail, duration, placeholders)
    if reports.init_signal is not None:
        # Someone outside kiln killed the sandbox's PID 1.
        sig = reports.init_signal
        return ProcessResult(128 + sig, sig, False, tail, duration, placeholders)
    detail = tail.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
    raise SandboxError(f"sandbox helper failed: {detail[0]}")
