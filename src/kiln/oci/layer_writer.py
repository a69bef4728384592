"""Streaming, deterministic layer writer.

Entries go straight to a compressing sink that computes the DiffID, the digest and the size
in the same pass; file contents are copied in fixed-size blocks, so a layer of any size
takes about one block of memory.

Callers add entries in the order they want them in the archive and add parent directories
themselves; `add_tree` does both for a directory tree (sorted by path bytes, parents first,
hardlinks detected by (st_dev, st_ino)). Output depends only on the entries: owner names are
empty, ownership numeric, there is no atime/ctime, and with `source_date_epoch` every mtime
is clamped to min(mtime, epoch).
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from kiln.errors import LayerError, UsageError
from kiln.oci.compression import GZIP, NONE, CompressingSink
from kiln.oci.digest import BLOCK_SIZE, Digest
from kiln.oci.layer import (
    END_OF_ARCHIVE,
    BadNameError,
    EntryType,
    TarEntry,
    encode_header,
    encode_name,
    normalize_name,
    opaque_name,
    padding,
    whiteout_name,
)
from kiln.oci.mediatypes import layer_type
from kiln.oci.xattrs import default_xattr_filter, read_xattrs

log = logging.getLogger(__name__)

#: (uid, gid) forced on entries, as for `COPY --chown`.
Owner = tuple[int, int]


@dataclass(frozen=True, slots=True)
class LayerInfo:
    digest: Digest
    diff_id: Digest
    size: int
    media_type: str
    uncompressed_size: int


_TARINFO_TYPES = {
    tarfile.REGTYPE: EntryType.FILE,
    tarfile.AREGTYPE: EntryType.FILE,
    tarfile.CONTTYPE: EntryType.FILE,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.FIFOTYPE: EntryType.FIFO,
}


def entry_from_tarinfo(info: tarfile.TarInfo) -> TarEntry:
    if info.type not in _TARINFO_TYPES:
        raise LayerError(f"entry {info.name!r}: tar type {info.type!r} cannot go into a layer")
    xattrs = {
        key[len("SCHILY.xattr.") :]: value.encode("utf-8", "surrogateescape")
        for key, value in info.pax_headers.items()
        if key.startswith("SCHILY.xattr.")
    }
    return TarEntry(
        name=info.name,
        type=_TARINFO_TYPES[info.type],
        size=info.size if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) else 0,
        mode=info.mode,
        uid=info.uid,
        gid=info.gid,
        mtime=int(info.mtime),
        linkname=info.linkname,
        devmajor=info.devmajor,
        devminor=info.devminor,
        xattrs=xattrs,
    )


class LayerWriter:
    """Writes one layer tar, compressed, to `out` (which the caller keeps and closes)."""

    def __init__(
        self,
        out: BinaryIO,
        compression: str = GZIP,
        level: int | None = None,
        source_date_epoch: int | None = None,
        *,
        fmt: str = "oci",
        xattr_filter: Callable[[str], bool] = default_xattr_filter,
    ) -> None:
        if fmt not in ("oci", "docker"):
            raise UsageError(f"unknown image format {fmt!r}: expected 'oci' or 'docker'")
        if fmt == "docker" and compression == NONE:
            raise UsageError("docker images have no uncompressed layer type; use gzip")
        self._sink = CompressingSink(out, compression, level)
        self.media_type = layer_type(fmt, compression)
        self.source_date_epoch = source_date_epoch
        self._xattr_filter = xattr_filter
        self._inodes: dict[tuple[int, int], str] = {}
        self._info: LayerInfo | None = None
        self._broken = False

    def __enter__(self) -> LayerWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._broken = True
            self._sink.abort()  # nothing reaches `out` once the layer is given up

    # -- low level -----------------------------------------------------------------------

    def add_entry(self, entry: TarEntry | tarfile.TarInfo, fileobj: BinaryIO | None = None) -> None:
        """Write one entry; a regular file's content (exactly `size` bytes) comes from `fileobj`."""
        if self._info is not None or self._broken:
            raise LayerError("layer writer: entry added after the layer was finished or failed")
        e = entry_from_tarinfo(entry) if isinstance(entry, tarfile.TarInfo) else entry
        try:
            name = normalize_name(e.name)
            link = normalize_name(e.linkname) if e.type is EntryType.HARDLINK else e.linkname
        except BadNameError as err:
            raise LayerError(f"layer writer: entry {e.name!r}: {err}") from None
        if not name:
            raise LayerError(f"layer writer: entry {e.name!r} names the root")
        mtime = e.mtime
        if self.source_date_epoch is not None:
            mtime = min(mtime, self.source_date_epoch)
        size = e.size if e.type is EntryType.FILE else 0
        header = TarEntry(
            name=name + "/" if e.type is EntryType.DIR else name,
            type=e.type,
            size=size,
            mode=e.mode & 0o7777,
            uid=e.uid,
            gid=e.gid,
            mtime=mtime,
            linkname=link,
            devmajor=e.devmajor,
            devminor=e.devminor,
            xattrs=e.xattrs,
        )
        self._broken = True  # until the entry is complete: a half-written entry poisons the layer
        self._sink.write(encode_header(header))
        if size:
            if fileobj is None:
                raise LayerError(f"layer writer: entry {name!r}: {size} bytes announced, no content")
            self._copy(fileobj, size, name)
        self._broken = False

    def _copy(self, src: BinaryIO, size: int, name: str) -> None:
        left = size
        while left:
            chunk = src.read(min(left, BLOCK_SIZE))
            if not chunk:
                raise LayerError(
                    f"layer writer: entry {name!r}: content ended after {size - left} of {size} bytes "
                    "(did the file change while it was read?)"
                )
            self._sink.write(chunk)
            left -= len(chunk)
        self._sink.write(padding(size))

    # -- typed helpers ---------------------------------------------------------------------

    def add_file(
        self,
        name: str,
        data: BinaryIO,
        size: int,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: int = 0,
        *,
        xattrs: dict[str, bytes] | None = None,
    ) -> None:
        entry = TarEntry(name, EntryType.FILE, size, mode, uid, gid, mtime, xattrs=dict(xattrs or {}))
        self.add_entry(entry, data)

    def add_dir(
        self,
        name: str,
        mode: int = 0o755,
        uid: int = 0,
        gid: int = 0,
        mtime: int = 0,
        *,
        xattrs: dict[str, bytes] | None = None,
    ) -> None:
        self.add_entry(TarEntry(name, EntryType.DIR, 0, mode, uid, gid, mtime, xattrs=dict(xattrs or {})))

    def add_symlink(self, name: str, target: str, uid: int = 0, gid: int = 0, mtime: int = 0) -> None:
        self.add_entry(TarEntry(name, EntryType.SYMLINK, 0, 0o777, uid, gid, mtime, linkname=target))

    def add_hardlink(self, name: str, target: str, uid: int = 0, gid: int = 0, mtime: int = 0) -> None:
        """`target` is the archive name of an entry written earlier in this layer."""
        self.add_entry(TarEntry(name, EntryType.HARDLINK, 0, 0o644, uid, gid, mtime, linkname=target))

    def add_device(
        self,
        name: str,
        type: EntryType,
        major: int = 0,
        minor: int = 0,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: int = 0,
    ) -> None:
        """A character or block device node, or a fifo (EntryType.CHAR / BLOCK / FIFO)."""
        if type not in (EntryType.CHAR, EntryType.BLOCK, EntryType.FIFO):
            raise LayerError(f"layer writer: entry {name!r}: {type.name} is not a device or fifo")
        self.add_entry(TarEntry(name, type, 0, mode, uid, gid, mtime, devmajor=major, devminor=minor))

    def add_whiteout(self, path: str) -> None:
        """Mark `path` (of a lower layer) deleted: an empty `.wh.<name>` entry beside it."""
        try:
            name = whiteout_name(path)
        except BadNameError as err:
            raise LayerError(f"layer writer: whiteout {path!r}: {err}") from None
        self.add_entry(TarEntry(name, EntryType.FILE, 0, 0o644))

    def add_opaque(self, dirpath: str) -> None:
        """Hide everything lower layers have in `dirpath` (the layer's own entries stay)."""
        try:
            name = opaque_name(dirpath)
        except BadNameError as err:
            raise LayerError(f"layer writer: opaque {dirpath!r}: {err}") from None
        self.add_entry(TarEntry(name, EntryType.FILE, 0, 0o644))

    # -- from the file system --------------------------------------------------------------

    def add_path(self, name: str, path: Path, *, owner: Owner | None = None) -> None:
        """One file system object as entry `name`, with its lstat metadata and xattrs.

        A non-directory whose inode was already written under another name becomes a
        hardlink to that name. Sockets cannot be archived and are skipped with a warning.
        """
        st = os.lstat(path)
        uid, gid = owner if owner is not None else (st.st_uid, st.st_gid)
        kind = stat.S_IFMT(st.st_mode)
        base = TarEntry(name, EntryType.FILE, 0, stat.S_IMODE(st.st_mode), uid, gid, int(st.st_mtime))
        if kind == stat.S_IFSOCK:
            log.warning("%s: sockets cannot be stored in a layer; skipped", path)
            return
        if kind != stat.S_IFDIR and st.st_nlink > 1:
            first = self._inodes.setdefault((st.st_dev, st.st_ino), name)
            if first != name:
                base.type, base.linkname = EntryType.HARDLINK, first
                self.add_entry(base)
                return
        base.xattrs = read_xattrs(path, self._xattr_filter)
        if kind == stat.S_IFREG:
            base.size = st.st_size
            with open(path, "rb", buffering=0) as f:
                self.add_entry(base, f)
            return
        if kind == stat.S_IFDIR:
            base.type = EntryType.DIR
        elif kind == stat.S_IFLNK:
            base.type, base.linkname = EntryType.SYMLINK, os.readlink(path)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            base.type = EntryType.CHAR if kind == stat.S_IFCHR else EntryType.BLOCK
            base.devmajor, base.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        else:
            base.type = EntryType.FIFO
        self.add_entry(base)

    def add_tree(
        self,
        root: Path,
        prefix: str = "",
        include: Callable[[str], bool] | None = None,
        *,
        owner: Owner | None = None,
    ) -> None:
        """Everything under `root`, sorted by path bytes, named `prefix/<relative path>`.

        `root` itself is written (as directory `prefix`) only when `prefix` is not empty.
        `include(relative_path)` returning False leaves a path out, and for a directory its
        whole subtree.
        """
        try:
            prefix = normalize_name(prefix)
        except BadNameError as err:
            raise LayerError(f"layer writer: prefix {prefix!r}: {err}") from None
        found: list[tuple[bytes, str, str]] = []
        stack = [(os.fspath(root), "")]
        while stack:
            directory, rel = stack.pop()
            with os.scandir(directory) as it:
                for item in it:
                    child = f"{rel}/{item.name}" if rel else item.name
                    if include is not None and not include(child):
                        continue
                    found.append((encode_name(child), child, item.path))
                    if item.is_dir(follow_symlinks=False):
                        stack.append((item.path, child))
        found.sort()
        if prefix:
            self.add_path(prefix, root, owner=owner)
        for _, rel, path in found:
            self.add_path(f"{prefix}/{rel}" if prefix else rel, Path(path), owner=owner)

    # -- finishing ---------------------------------------------------------------------------

    def close(self) -> LayerInfo:
        """End the archive and the compressed stream; returns the layer's descriptor facts."""
        if self._info is None:
            if self._broken:
                self._sink.abort()
                raise LayerError("layer writer: cannot finish a layer after a failed entry")
            self._sink.write(END_OF_ARCHIVE)
            diff_id, digest, size = self._sink.finish()
            self._info = LayerInfo(digest, diff_id, size, self.media_type, self._sink.uncompressed_size)
        return self._info

    def result(self) -> LayerInfo:
        return self.close()
