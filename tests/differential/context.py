"""Build contexts described as data: regular files, directories, symlinks, hard links, modes, xattrs.

A context is written as root and then handed to ``builder`` (``chown -R``), so files in it belong
to the user who runs the builds, as they would on a developer's machine.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class File:
    content: bytes | str = b""
    mode: int = 0o644
    xattrs: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Hardlink:
    """A second name for the context file ``source`` (relative to the context)."""

    source: str


Entry = bytes | str | File | Dir | Symlink | Hardlink


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def write_context(root: Path, entries: Mapping[str, Entry], *, uid: int, gid: int) -> None:
    """Create ``entries`` under ``root`` (parents 0755), then give everything to uid:gid.

    Modes are set after the chown, since chown clears setuid/setgid bits."""
    root.mkdir(parents=True, exist_ok=True)
    modes: dict[Path, int] = {}
    for rel, entry in entries.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(entry, str | bytes):
            entry = File(entry)
        if isinstance(entry, File):
            path.write_bytes(entry.data)
            modes[path] = entry.mode
            for key, value in entry.xattrs.items():
                os.setxattr(path, key, value)
        elif isinstance(entry, Dir):
            path.mkdir(exist_ok=True)
            modes[path] = entry.mode
        elif isinstance(entry, Symlink):
            os.symlink(entry.target, path)
        else:
            os.link(root / entry.source, path)
    subprocess.run(["chown", "-R", "--no-dereference", f"{uid}:{gid}", str(root)], check=True)
    for path, mode in modes.items():
        os.chmod(path, mode)


def tar_bytes(
    entries: Mapping[str, bytes | str],
    *,
    compression: str = "",
    owner: tuple[int, int] = (0, 0),
    symlinks: Mapping[str, str] | None = None,
    hardlinks: Mapping[str, str] | None = None,
    gzip: bool = False,
) -> bytes:
    """A small archive for ADD's auto-extraction: files 0644 (0755 if the name ends in .sh), parent
    directories 0750, all owned by ``owner``; ``compression`` is "", "gz", "bz2" or "xz"."""
    buf = io.BytesIO()
    mode = f"w:{'gz' if gzip else compression}" if (gzip or compression) else "w"
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        dirs: set[str] = set()

        def add(name: str, kind: bytes, data: bytes = b"", link: str = "") -> None:
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    dinfo = tarfile.TarInfo(d)
                    dinfo.type, dinfo.mode, dinfo.mtime = tarfile.DIRTYPE, 0o750, 1_600_000_000
                    dinfo.uid, dinfo.gid = owner
                    tar.addfile(dinfo)
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = kind, link, 1_600_000_000
            info.mode = 0o777 if kind == tarfile.SYMTYPE else 0o755 if name.endswith(".sh") else 0o644
            info.uid, info.gid = owner
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for name, content in entries.items():
            add(name, tarfile.REGTYPE, content.encode() if isinstance(content, str) else content)
        for name, target in (symlinks or {}).items():
            add(name, tarfile.SYMTYPE, link=target)
        for name, target in (hardlinks or {}).items():
            add(name, tarfile.LNKTYPE, link=target)
    return buf.getvalue()
