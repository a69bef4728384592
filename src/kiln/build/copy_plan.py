"""The entries of a COPY layer, keyed by their path in the image, before any byte is written.

Sources are mapped onto destination paths here, collisions are settled the way fsutil's copy
(COPY) or Docker's Untar (ADD of an archive) settle them, and every entry gets its parents:
directories that exist in the destination rootfs are repeated with their current metadata
(so applying the layer changes nothing about them), missing ones are created 0755, owned by
the `--chown` owner (or root) as BuildKit's `MkdirAll` does. `sorted_entries` returns the
layer in archive order: sorted by path bytes, parents first.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from kiln.build.rootpath import resolve_in_root, split_path
from kiln.build.source_tree import SourceTree
from kiln.errors import KilnError
from kiln.oci.layer import WHITEOUT_PREFIX, EntryType, TarEntry, encode_name


class CopyError(KilnError):
    """A COPY/ADD whose sources cannot be placed at its destination."""


@dataclass
class Planned:
    """One layer entry and where its content comes from."""

    entry: TarEntry
    path: Path | None = None  # a host file holding the content
    data: bytes | None = None  # inline content
    opener: Callable[[], BinaryIO] | None = None  # e.g. an archive member
    link_key: object | None = None  # entries sharing a key are hardlinks of one file

    def open(self) -> BinaryIO:
        if self.path is not None:
            return open(self.path, "rb", buffering=0)
        if self.opener is not None:
            return self.opener()
        return io.BytesIO(self.data or b"")


class DestPlan:
    """Planned entries of one layer; `rootfs` None means "do not look" (--link, scratch)."""

    def __init__(
        self,
        rootfs: Path | None,
        *,
        created_owner: tuple[int, int],
        created_mtime: int,
        what: str,
        line: int,
    ) -> None:
        self.rootfs = rootfs
        self._rootfs_tree = SourceTree(rootfs) if rootfs is not None else None
        self.created_owner = created_owner
        self.created_mtime = created_mtime
        self.what = what
        self.where = f"line {line}: " if line else ""
        self.entries: dict[str, Planned] = {}

    def fail(self, message: str) -> CopyError:
        return CopyError(f"{self.where}{self.what} failed: {message}")

    # -- the destination rootfs ----------------------------------------------------------------

    def resolve_dest(self, path: str) -> str:
        """The destination inside the rootfs, symlinks followed inside it (none with --link)."""
        if self.rootfs is None:
            return "/".join(p for p in split_path(path) if p != "..")
        return resolve_in_root(self.rootfs, path)

    def existing(self, rel: str) -> os.stat_result | None:
        if self._rootfs_tree is None:
            return None
        return self._rootfs_tree.raw_lstat(rel)

    def is_dir(self, rel: str) -> bool:
        if rel in self.entries:
            return self.entries[rel].entry.type is EntryType.DIR
        st = self.existing(rel)
        return st is not None and stat.S_ISDIR(st.st_mode)

    # -- adding ----------------------------------------------------------------------------------

    def put(self, rel: str, planned: Planned, *, archive: bool = False) -> None:
        """Plan `planned` at `rel`. COPY refuses to swap a directory and a non-directory
        (fsutil's "cannot copy to non-directory" / "cannot replace to directory"); an archive
        member replaces whatever was there, as Docker's Untar does."""
        if not rel:
            return  # the root keeps its metadata
        name = rel.rpartition("/")[2]
        if name.startswith(WHITEOUT_PREFIX):
            raise self.fail(f"/{rel}: names starting with {WHITEOUT_PREFIX} are reserved for layer whiteouts")
        new_dir = planned.entry.type is EntryType.DIR
        old = self.entries.get(rel)
        if old is not None:
            old_dir = old.entry.type is EntryType.DIR
            if old_dir and not new_dir:
                if not archive:
                    raise self.fail(f"cannot replace to directory /{rel} with file")
                prefix = rel + "/"
                for key in [k for k in self.entries if k.startswith(prefix)]:
                    del self.entries[key]
            elif new_dir and not old_dir and not archive:
                raise self.fail(f"cannot copy to non-directory: /{rel}")
        elif not archive:
            st = self.existing(rel)
            if st is not None:
                if stat.S_ISDIR(st.st_mode) and not new_dir:
                    raise self.fail(f"cannot replace to directory /{rel} with file")
                if new_dir and not stat.S_ISDIR(st.st_mode):
                    raise self.fail(f"cannot copy to non-directory: /{rel}")
        planned.entry.name = rel
        self.entries[rel] = planned

    def ensure_dir(self, rel: str, owner: tuple[int, int] | None = None) -> None:
        """`rel` as a directory: planned already, existing (kept as is) or created (by
        `owner`, default the plan's created-directory owner)."""
        if not rel or rel in self.entries:
            if rel and self.entries[rel].entry.type is not EntryType.DIR:
                raise self.fail(f"cannot copy to non-directory: /{rel}")
            return
        st = self.existing(rel)
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                raise self.fail(f"cannot copy to non-directory: /{rel}")
            assert self._rootfs_tree is not None
            entry = TarEntry(
                rel,
                EntryType.DIR,
                mode=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                mtime=int(st.st_mtime),
                xattrs=self._rootfs_tree.xattrs(rel),
            )
        else:
            uid, gid = owner or self.created_owner
            entry = TarEntry(rel, EntryType.DIR, mode=0o755, uid=uid, gid=gid, mtime=self.created_mtime)
        self.entries[rel] = Planned(entry)

    def ensure_parents(self, rel: str, owner: tuple[int, int] | None = None) -> None:
        parts = split_path(rel)
        for i in range(1, len(parts)):
            self.ensure_dir("/".join(parts[:i]), owner)

    # -- output ----------------------------------------------------------------------------------

    def sorted_entries(self) -> list[Planned]:
        for rel in list(self.entries):
            self.ensure_parents(rel)
        ordered = sorted(self.entries.items(), key=lambda kv: encode_name(kv[0]))
        out: list[Planned] = []
        first_of: dict[object, str] = {}
        for rel, planned in ordered:
            key = planned.link_key
            if key is not None and planned.entry.type is EntryType.FILE:
                first = first_of.setdefault(key, rel)
                if first != rel:
                    link = replace(planned.entry, type=EntryType.HARDLINK, size=0, linkname=first, xattrs={})
                    out.append(Planned(link))
                    continue
            out.append(planned)
        return out
