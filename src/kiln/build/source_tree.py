"""A directory COPY reads from: a stage or image rootfs, or (subclassed) the build context.

All paths are '/'-separated and relative to the tree's root ('' is the root itself). The tree
decides what is visible (the build context hides what .dockerignore excludes), who owns what
(the context's files belong to root in the image whoever owns them on disk) and how contents
are hashed (the context remembers hashes by stat data). Nothing here follows a symlink out
of the root: `resolve` is chroot-style.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from kiln.build.rootpath import host_path, resolve_in_root
from kiln.errors import KilnError
from kiln.oci.digest import BLOCK_SIZE
from kiln.oci.layer import encode_name
from kiln.oci.xattrs import read_xattrs

#: Versions the record format below; bump it and every cache key changes.
DIGEST_VERSION = b"kiln-source-digest-v1\n"


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def type_char(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISLNK(mode):
        return "l"
    if stat.S_ISCHR(mode):
        return "c"
    if stat.S_ISBLK(mode):
        return "b"
    if stat.S_ISFIFO(mode):
        return "p"
    return "s"


class SourceReadError(KilnError):
    """A source file or directory that exists but cannot be read."""


class SourceTree:
    """A plain directory: everything visible, ownership and modes as on disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self.bytes_hashed = 0
        self.files_hashed = 0

    def host(self, rel: str) -> Path:
        return host_path(self.root, rel)

    def raw_lstat(self, rel: str) -> os.stat_result | None:
        try:
            return os.lstat(self.host(rel))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise

    def lstat(self, rel: str) -> os.stat_result | None:
        """lstat of a visible entry, None when it does not exist (or is hidden)."""
        return self.raw_lstat(rel)

    def listdir(self, rel: str) -> list[str]:
        """Names of the visible children of directory `rel`, sorted by their bytes."""
        try:
            return sorted(os.listdir(self.host(rel)), key=encode_name)
        except OSError as e:
            raise SourceReadError(f"{self.root}: cannot list {rel or '.'}: {e.strerror}") from None

    def resolve(self, rel: str) -> str:
        """`rel` with symlinks followed, never leaving the root."""
        return resolve_in_root(self.root, rel)

    def owner(self, st: os.stat_result) -> tuple[int, int]:
        return st.st_uid, st.st_gid

    def readlink(self, rel: str) -> str:
        return os.readlink(self.host(rel))

    def xattrs(self, rel: str) -> dict[str, bytes]:
        return read_xattrs(self.host(rel))

    def hash_file(self, rel: str) -> str:
        """sha256 hex of a regular file's content, read in large blocks."""
        h = hashlib.sha256()
        try:
            with open(self.host(rel), "rb", buffering=0) as f:
                while chunk := f.read(BLOCK_SIZE):
                    h.update(chunk)
                    self.bytes_hashed += len(chunk)
        except OSError as e:
            raise SourceReadError(f"{self.root}: cannot read {rel}: {e.strerror}") from None
        self.files_hashed += 1
        return h.hexdigest()

    def sha256(self, rel: str, st: os.stat_result) -> str:
        return self.hash_file(rel)

    def record(self, name: str, rel: str, st: os.stat_result) -> bytes:
        """One line of a content digest: everything about the entry that reaches a layer except
        its mtime (a touched but unchanged file must not miss the cache)."""
        kind = type_char(st)
        uid, gid = self.owner(st)
        extra = ""
        if kind == "f":
            extra = self.sha256(rel, st)
        elif kind == "l":
            extra = self.readlink(rel)
        elif kind in "cb":
            extra = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
        xattrs = ",".join(f"{k}={v.hex()}" for k, v in self.xattrs(rel).items()) if kind != "l" else ""
        fields = [name, kind, f"{stat.S_IMODE(st.st_mode):o}", str(uid), str(gid), extra, xattrs]
        return "\0".join(fields).encode("utf-8", "surrogateescape") + b"\n"

    def flush(self) -> None:
        """Persist whatever the tree learned (the context's hash cache); a no-op here."""
