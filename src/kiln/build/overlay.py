"""Overlay mounts for steps, and reading an overlay upper directory back as a layer.

Snapshots are stored in overlayfs's own format (whiteouts are 0:0 character devices, opaque
directories carry the ``user.overlay.opaque`` xattr), so any stack of them mounts directly as
lower directories and a step's upper directory becomes the next snapshot as it is.
``userxattr`` is what lets an unprivileged user namespace mount overlayfs (Linux >= 5.11).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kiln.errors import SandboxError
from kiln.sandbox import libc
from kiln.sandbox.mounts import make_readonly

OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")
_FORBIDDEN_IN_PATH = (":", ",", "\\")


def _check_path(p: Path) -> str:
    s = str(p)
    if any(c in s for c in _FORBIDDEN_IN_PATH):
        raise SandboxError(f"overlay: path {s!r} contains a character overlayfs options cannot carry")
    return s


def mount_overlay(target: Path, lowers: list[Path], upper: Path | None = None, work: Path | None = None) -> None:
    """Mount an overlay at ``target``. ``lowers[0]`` is the *bottom* layer (image order)."""
    if not lowers and upper is None:
        raise SandboxError("overlay: nothing to mount")
    top_first = [_check_path(p) for p in reversed(lowers)]
    if upper is None:
        if len(top_first) == 1:
            libc.mount(top_first[0], str(target), None, libc.MS_BIND | libc.MS_REC)
            make_readonly(str(target))  # copes with flags the user namespace has locked
            return
        opts = f"lowerdir={':'.join(top_first)},userxattr"
        libc.mount("overlay", str(target), "overlay", libc.MS_RDONLY, opts)
        return
    assert work is not None
    if not top_first:
        # overlayfs needs a lower layer; an empty one stands for scratch.
        empty = upper.parent / "empty-lower"
        empty.mkdir(exist_ok=True)
        top_first = [_check_path(empty)]
    opts = f"lowerdir={':'.join(top_first)},upperdir={_check_path(upper)},workdir={_check_path(work)},userxattr"
    libc.mount("overlay", str(target), "overlay", 0, opts)


def umount(target: Path) -> None:
    libc.umount2(str(target), libc.MNT_DETACH)


_OVERLAY_USABLE: bool | None = None


def overlay_usable(scratch: Path) -> bool:
    """Can this process mount overlayfs? ``KILN_SNAPSHOTTER=walk|overlay`` overrides the probe."""
    global _OVERLAY_USABLE
    forced = os.environ.get("KILN_SNAPSHOTTER", "auto")
    if forced in ("walk", "overlay"):
        return forced == "overlay"
    if _OVERLAY_USABLE is None:
        scratch.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(dir=scratch, prefix="probe-"))
        try:
            for d in ("l1", "l2", "m"):
                (probe / d).mkdir()
            mount_overlay(probe / "m", [probe / "l1", probe / "l2"])
            umount(probe / "m")
            _OVERLAY_USABLE = True
        except OSError:
            _OVERLAY_USABLE = False
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    return _OVERLAY_USABLE


@contextlib.contextmanager
def merged_view(lowers: list[Path], scratch: Path) -> Iterator[Path]:
    """A read-only view of a stack of snapshots, for probing (COPY dest, USER names, --from).

    Without overlayfs the view is a materialized copy (slower, same content).
    """
    scratch.mkdir(parents=True, exist_ok=True)
    if lowers and not overlay_usable(scratch):
        from kiln.build.walkdiff import materialize

        copy = Path(tempfile.mkdtemp(dir=scratch, prefix="view-copy-"))
        try:
            materialize(lowers, copy)
            yield copy
        finally:
            shutil.rmtree(copy, ignore_errors=True)
        return
    if not lowers:
        empty = Path(tempfile.mkdtemp(dir=scratch, prefix="empty-"))
        try:
            yield empty
        finally:
            os.rmdir(empty)
        return
    target = Path(tempfile.mkdtemp(dir=scratch, prefix="view-"))
    mount_overlay(target, lowers)
    try:
        yield target
    finally:
        umount(target)
        os.rmdir(target)


def enter_private_mount_namespace() -> None:
    """Give this process its own mount namespace so every mount it makes dies with it."""
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: Path) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def make_whiteout(path: Path) -> None:
    """An overlay whiteout; unprivileged creation of 0:0 devices is allowed since Linux 5.8."""
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def make_opaque(path: Path) -> None:
    os.setxattr(path, OPAQUE_XATTRS[0], b"y", follow_symlinks=False)
