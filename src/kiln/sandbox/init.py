"""The sandbox helper process: ``init SPEC_FD REPORT_FD PARENT_PID STAGING``.

Started by :func:`kiln.sandbox.process.run` as ``python -I -S`` (standard library only). Three
processes take part:

* the *supervisor* (this process, in kiln's PID namespace) unshares a PID namespace, forks its
  PID 1, and waits for it; on SIGTERM/SIGINT/SIGHUP it SIGKILLs PID 1, which takes every process
  of the namespace with it. Its wait returns only once the namespace is empty.
* *PID 1* unshares mount/IPC/UTS(/net) namespaces, builds the root (see :mod:`.mounts`),
  pivots into it, forks the command and reaps every orphan until the command exits.
* the *command* drops capabilities and ids and execs argv.

Each reports to kiln on REPORT_FD with one JSON object per line (atomic pipe writes).
Both the supervisor and PID 1 carry a parent-death SIGKILL, so a killed kiln ends the sandbox.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import socket
import stat
import struct
import sys
from typing import Any, NoReturn

from . import libc
from .caps import limit_bounding_set
from .idmap import read_mapping
from .mounts import RootBuilder, enter_root, mount_overlay, write_scaffold
from .spec import OverlayRootfs, ProcessSpec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TERMINATE = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_RESET = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


class Reporter:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, **message: Any) -> None:
        # One write per message: below PIPE_BUF (always, but for absurdly long paths) it cannot
        # interleave with another process's message.
        line = json.dumps(message).encode() + b"\n"
        try:
            os.write(self.fd, line)
        except OSError:
            pass  # kiln is gone; our death signal follows

    def placeholder(self, rel: str) -> None:
        self.send(placeholder=rel)

    def fail(self, message: str, code: int, kind: str = "setup") -> NoReturn:
        """Report why the sandbox (``setup``) or the command (``exec``) could not start; exit."""
        self.send(error=message[:3000], code=code, kind=kind)
        os._exit(code)


def main() -> None:
    spec_fd, report_fd, parent = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    staging = sys.argv[4]
    os.set_inheritable(report_fd, False)
    reporter = Reporter(report_fd)
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)  # kiln died before the death signal was armed
    with os.fdopen(spec_fd, "rb") as f:
        spec = ProcessSpec.from_json(json.loads(f.read()))
    # Until PID 1 exists and our handlers are in place, a kill request must wait (not be lost).
    signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINATE)
    try:
        libc.unshare(libc.CLONE_NEWPID)
    except OSError as exc:
        reporter.fail(f"cannot create a PID namespace: {exc.strerror}", 1)
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(alive_w)
        _pid1(spec, reporter, alive_r, staging)
    os.close(alive_r)
    reporter.send(pid1=pid)
    _supervise(pid, reporter)


def _supervise(pid: int, reporter: Reporter) -> NoReturn:
    reaped = False

    def kill_namespace(signum: int, frame: object) -> None:
        if not reaped:
            os.kill(pid, signal.SIGKILL)

    for s in _TERMINATE:
        signal.signal(s, kill_namespace)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _TERMINATE)
    try:
        # WNOWAIT: PID 1 stays a zombie (its pid not reusable) until the handler can no longer run.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass
    signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINATE)
    reaped = True
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        reporter.send(init_signal=os.WTERMSIG(status))
    os._exit(0)


def _pid1(spec: ProcessSpec, reporter: Reporter, alive_r: int, staging: str) -> NoReturn:
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([alive_r], [], [], 0)[0]:
            os._exit(1)  # EOF: the supervisor died before our death signal was armed
        os.close(alive_r)
        for s in _TERMINATE:
            # As PID 1 we only get signals we handle; default dispositions make us immune to
            # kill(1, ...) from inside and leave SIGKILL from the supervisor as the way out.
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _TERMINATE)
        real_root = read_mapping("self").is_initial
        flags = libc.CLONE_NEWNS | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS
        if spec.network == "none":
            flags |= libc.CLONE_NEWNET
        libc.unshare(flags)
        # Nothing we mount may propagate back to the host.
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        root = os.path.join(staging, "root")
        if isinstance(spec.rootfs, OverlayRootfs):
            scaffold = os.path.join(staging, "scaffold")
            write_scaffold(scaffold, spec)
            mount_overlay(spec.rootfs, scaffold, root)
        else:
            if not os.path.isdir(spec.rootfs):
                raise FileNotFoundError(errno.ENOENT, f"root filesystem {spec.rootfs} is not a directory")
            libc.mount(spec.rootfs, root, None, libc.MS_BIND | libc.MS_REC)
        RootBuilder(spec, root, reporter.placeholder, real_root).build()
        libc.sethostname(spec.hostname)
        if spec.network == "none":
            _loopback_up()
        enter_root(root)
    except OSError as exc:
        reporter.fail(f"sandbox setup failed: {_describe(exc)}", 125)
    child = os.fork()
    if child == 0:
        _exec_command(spec, reporter)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        if pid == child:
            break
    if os.WIFSIGNALED(status):
        reporter.send(signal=os.WTERMSIG(status))
    else:
        reporter.send(exit=os.WEXITSTATUS(status))
    # Leaving kills every process still in the namespace (daemons a build step left behind).
    os._exit(0)


def _describe(exc: OSError) -> str:
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _find_executable(name: str, path: str) -> str | None:
    if "/" in name:
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _exec_command(spec: ProcessSpec, reporter: Reporter) -> NoReturn:
    os.setsid()
    for s in _RESET:
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        if spec.capabilities is not None:
            limit_bounding_set(spec.capabilities)
    except OSError as exc:
        reporter.fail(f"cannot limit capabilities: {exc.strerror}", 125, "exec")
    try:
        os.chdir(spec.cwd)
    except OSError as exc:
        reporter.fail(f"working directory {spec.cwd}: {exc.strerror}", 125, "exec")
    try:
        if read_mapping("self").setgroups_allowed:
            os.setgroups(spec.additional_gids)
        elif spec.additional_gids:
            reporter.fail("supplementary groups need a full uid/gid mapping (see newgidmap, /etc/subgid)", 125, "exec")
        os.setresgid(spec.gid, spec.gid, spec.gid)
        os.setresuid(spec.uid, spec.uid, spec.uid)
    except OSError as exc:
        mapping = read_mapping("self")
        reporter.fail(
            f"cannot switch to uid {spec.uid} gid {spec.gid}: {exc.strerror} (user namespace maps {mapping.describe()})",
            125,
            "exec",
        )
    path = spec.env.get("PATH", DEFAULT_PATH)
    program = _find_executable(spec.argv[0], path)
    if program is None:
        reporter.fail(f'exec "{spec.argv[0]}": executable file not found in PATH={path}', 127, "exec")
    try:
        os.execve(program, spec.argv, spec.env)
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        reporter.fail(f"exec {program}: {exc.strerror}", code, "exec")
