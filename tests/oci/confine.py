"""Run hostile-layer code where an escape cannot hurt the machine.

Escape tests feed kiln layers built to break out of their root (``..``, absolute links to
``/``, whiteouts of ``etc``). If kiln had a bug, running them on the host would damage the
host itself (it happened once: /etc was wiped). So each call runs in a forked child with a
private mount namespace whose ``/`` is an empty tmpfs holding only the test's directory,
bind-mounted at its real path. Absolute paths mean the same thing inside and out, the
sentinels outside the root are still checked, and anything else an escape reaches is tmpfs.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_CLONE_NEWNS = 0x00020000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enter(keep: Path) -> None:
    _check(_libc.unshare(_CLONE_NEWNS), "unshare")
    _check(_libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    new_root = tempfile.mkdtemp(prefix="confine-")
    _check(_libc.mount(b"tmpfs", new_root.encode(), b"tmpfs", 0, b"size=64m"), "tmpfs")
    inner = Path(new_root) / str(keep).lstrip("/")
    inner.mkdir(parents=True)
    _check(_libc.mount(str(keep).encode(), str(inner).encode(), None, _MS_BIND | _MS_REC, None), "bind")
    os.chroot(new_root)
    os.chdir("/")


def confined(keep: Path, fn: Callable[[], T]) -> T:
    """``fn()`` in a child whose whole file system is ``keep``; its result or exception comes back."""
    if os.geteuid() != 0:
        raise RuntimeError("confined() needs root (the suite runs as root)")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            _enter(keep.resolve())
            payload = pickle.dumps(("ok", fn()))
        except BaseException as exc:
            try:
                payload = pickle.dumps(("err", exc))
            except Exception:
                payload = pickle.dumps(("err", RuntimeError(traceback.format_exc())))
        with os.fdopen(write_fd, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"confined child died without a result (status {status})")
    kind, value = pickle.loads(data)
    if kind == "err":
        raise value
    return value  # type: ignore[no-any-return]
