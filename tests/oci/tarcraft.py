"""Helpers for layer tests: hand-made (possibly hostile) tars, tree snapshots, a sentinel dir.

Hostile tars are written with the standard library's `tarfile`, not with kiln's writer, so
the tests do not depend on the code under test to produce their input.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path


def reg(
    name: str, data: bytes = b"x", mode: int = 0o644, **kw: object
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def directory(name: str, mode: int = 0o755, **kw: object) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    for k, v in kw.items():
        setattr(info, k, v)
    return info, None


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mode = 0o777
    return info, None


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info, None


def craft(*members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> io.BytesIO:
    """An uncompressed tar of `members`, in the given order, ready to read."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    content: str = ""  # sha256 of a file, target of a symlink, "major:minor" of a device
    xattrs: tuple[tuple[str, bytes], ...] = ()
    mtime: int = 0


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def snapshot(root: Path, *, mtimes: bool = False) -> dict[str, Node]:
    """Everything under `root` by relative path, without following symlinks."""
    found: dict[str, Node] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            fmt = stat.S_IFMT(st.st_mode)
            content = ""
            if fmt == stat.S_IFREG:
                with open(path, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
                kind = "file"
            elif fmt == stat.S_IFLNK:
                content, kind = os.readlink(path), "symlink"
            elif fmt == stat.S_IFDIR:
                kind = "dir"
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                content = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
                kind = "char" if fmt == stat.S_IFCHR else "block"
            else:
                kind = "fifo" if fmt == stat.S_IFIFO else "other"
            found[os.path.relpath(path, root)] = Node(
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                content,
                _xattrs(path),
                int(st.st_mtime) if mtimes and kind != "symlink" else 0,
            )
    return found


class Arena:
    """`root/` to apply into and `outside/` with sentinels that must never change."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.outside = base / "outside"
        self.root.mkdir()
        (self.outside / "etc").mkdir(parents=True)
        (self.outside / "etc" / "passwd").write_bytes(b"host passwd\n")
        (self.outside / "secret").write_bytes(b"secret\n")
        self._before = snapshot(self.outside, mtimes=True)
        self._inodes = {p.name: os.lstat(p).st_nlink for p in self.outside.rglob("*")}

    def assert_untouched(self) -> None:
        assert sorted(os.listdir(self.base)) == ["outside", "root"]
        assert snapshot(self.outside, mtimes=True) == self._before
        assert {p.name: os.lstat(p).st_nlink for p in self.outside.rglob("*")} == self._inodes
