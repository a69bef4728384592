"""Child side of :func:`kiln.sandbox.userns.run_in_userns`.

``bootstrap READY_FD GO_FD PARENT_PID ARGV...``: unshare a user namespace, report on READY_FD, wait
on GO_FD until the parent has written our uid/gid maps, become uid/gid 0 and exec ARGV.
Standard library only: this runs under ``python -I -S``.
"""

from __future__ import annotations

import os
import signal
import sys

from . import libc


def _fail(fd: int, message: str) -> None:
    try:
        os.write(fd, f"error: {message}".encode())
    finally:
        os._exit(125)


def main() -> None:
    ready_w, go_r, parent = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    argv = sys.argv[4:]
    try:
        libc.unshare(libc.CLONE_NEWUSER)
    except OSError as exc:
        _fail(ready_w, f"{exc.strerror} (are unprivileged user namespaces enabled?)")
    os.write(ready_w, b"ok")
    os.close(ready_w)
    if os.read(go_r, 2) != b"go":
        os._exit(125)  # the parent could not write our maps and has reported why
    os.close(go_r)
    try:
        os.setresgid(0, 0, 0)
        with open("/proc/self/setgroups") as f:
            if f.read().strip() == "allow":
                os.setgroups([])
        os.setresuid(0, 0, 0)
        # Set after the credential change, which would clear it: if kiln's outer process dies,
        # this one (and its sandboxes, through their own death signals) dies too.
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError as exc:
        print(f"kiln: cannot become root in the user namespace: {exc}", file=sys.stderr)
        os._exit(125)
    if os.getppid() != parent:
        os._exit(125)  # the parent died before the death signal was armed
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"kiln: cannot exec {argv[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127)
