"""Safe layer apply: unpack a layer onto a root file system directory, hostile input or not.

Paths are resolved with chroot semantics (see rootdir.py), the way container runtimes do:
a symlink met on the way is resolved again *inside* the root. So a layer with `a -> /etc`
and then `a/passwd` writes `<root>/etc/passwd`, which real images need (later layers write
through `/bin -> usr/bin`), and nothing outside the root is ever opened. The last component
is never followed: an existing entry there is replaced (a directory stays for a directory).

Refused with LayerError (naming layer and entry): names that climb out of the root lexically
(`a/../../x`), whiteouts of such names, hardlinks to such names, to directories or to nothing.
A hardlink whose target is a symlink links the symlink itself (link(2) without following), so
it cannot reach the host file the symlink names; it is not refused.

Whiteouts and opaque markers only hide what lower layers put there: entries this layer wrote
(in any order relative to the marker) are kept. Directory modes and mtimes are set at the end,
after their children were written.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from kiln.errors import LayerError
from kiln.oci.digest import BLOCK_SIZE, Digest
from kiln.oci.layer import BadNameError, EntryType, TarEntry, encode_name, normalize_name, split_whiteout
from kiln.oci.layer_reader import iter_layer
from kiln.oci.rootdir import (
    DIR_FLAGS,
    PATH_MAX,
    RealPath,
    RootDir,
    RootPathError,
    list_dir,
    remove_tree,
    walk_keeping,
)

log = logging.getLogger(__name__)

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

#: Opaque marker of overlayfs mounted with `userxattr` (how kiln mounts it, rootless or not).
OVERLAY_OPAQUE_XATTR = "user.overlay.opaque"
_OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


def _is_overlay_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


@dataclass
class ApplyStats:
    entries: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    specials: int = 0
    whiteouts: int = 0
    skipped: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)


def in_user_namespace() -> bool:
    """True unless this process is in the initial user namespace (or /proc cannot tell)."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return True


class _Applier:
    def __init__(self, root: Path, layer: str, preserve_owner: bool, whiteouts: str) -> None:
        if whiteouts not in ("apply", "overlay"):
            raise ValueError(f"whiteouts must be 'apply' or 'overlay', not {whiteouts!r}")
        self.overlay = whiteouts == "overlay"
        self.layer = layer
        self.tree = RootDir(root)
        self.chown = preserve_owner and os.geteuid() == 0
        self.real_root = os.geteuid() == 0 and not in_user_namespace()
        self.stats = ApplyStats()
        self.created: set[RealPath] = set()
        self.ancestors: set[RealPath] = set()
        self.dirs: dict[RealPath, tuple[int, int]] = {}
        self.skipped: set[RealPath] = set()
        self.entry = ""

    def fail(self, reason: str) -> LayerError:
        return LayerError(f"layer {self.layer}: entry {self.entry!r}: {reason}")

    def warn(self, reason: str) -> None:
        message = f"layer {self.layer}: entry {self.entry!r}: {reason}"
        log.warning("%s", message)
        self.stats.warnings.append(message)

    def close(self) -> None:
        self.tree.close()

    def _mark(self, path: RealPath) -> None:
        self.created.add(path)
        for i in range(len(path)):
            self.ancestors.add(path[:i])

    def _kept(self, path: RealPath) -> bool:
        return path in self.created or path in self.ancestors

    def resolve_dir(self, parts: tuple[str, ...], *, create: bool) -> tuple[int, RealPath] | None:
        try:
            return self.tree.resolve_dir(parts, create=create, on_create=self._mark)
        except RootPathError as err:
            raise self.fail(str(err)) from None

    def _purge(self, parent: int, name: str, path: RealPath) -> None:
        """Remove what lower layers have at `path`, keeping everything this layer wrote."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            if path not in self.created:
                os.unlink(name, dir_fd=parent)
        elif self._kept(path):
            walk_keeping(parent, name, path, self._kept)
        else:
            remove_tree(parent, name)

    def _clear_leaf(self, parent: int, leaf: str, *, for_dir: bool) -> os.stat_result | None:
        """Make room for a new entry (a directory stays for a dir entry); returns what was there."""
        try:
            st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            if for_dir:
                return st
            remove_tree(parent, leaf)
        else:
            os.unlink(leaf, dir_fd=parent)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self.tree.invalidate()  # cached resolutions may have gone through it
        return st

    # -- metadata -------------------------------------------------------------------------------

    def _set_xattrs(self, target: int | str, e: TarEntry) -> None:
        for key, value in sorted(e.xattrs.items()):
            if key.startswith(_OVERLAY_XATTR_PREFIXES):
                # overlayfs would obey them (redirects, opaque dirs): a layer may not carry them.
                self.warn(f"xattr {key} dropped")
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as err:
                unsupported = err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT)
                denied = err.errno in (errno.EPERM, errno.EACCES)
                privileged = key.startswith(("security.", "trusted."))
                user_on_special = key.startswith("user.") and e.type not in (EntryType.FILE, EntryType.DIR)
                if unsupported or (denied and ((privileged and not self.real_root) or user_on_special)):
                    self.warn(f"xattr {key} not set: {err.strerror}")
                else:
                    raise self.fail(f"cannot set xattr {key}: {err.strerror}") from None

    def _chown(self, e: TarEntry, fd: int | None = None, parent: int = -1, leaf: str = "") -> None:
        if not self.chown:
            return
        try:
            if fd is not None:
                os.fchown(fd, e.uid, e.gid)
            else:
                os.chown(leaf, e.uid, e.gid, dir_fd=parent, follow_symlinks=False)
        except OSError as err:
            if err.errno == errno.EINVAL:
                raise self.fail(f"owner {e.uid}:{e.gid} is not mapped in this user namespace") from None
            raise

    @staticmethod
    def _ns(e: TarEntry) -> tuple[int, int]:
        return (e.mtime * 1_000_000_000, e.mtime * 1_000_000_000)

    # -- entries ----------------------------------------------------------------------------------

    def apply(self, e: TarEntry, content: BinaryIO) -> None:
        self.entry = e.name
        self.stats.entries += 1
        try:
            name = normalize_name(e.name)
            whiteout = split_whiteout(name)
        except BadNameError as err:
            raise self.fail(str(err)) from None
        if len(encode_name(name)) > PATH_MAX:
            raise self.fail(f"name longer than {PATH_MAX} bytes")
        if whiteout is not None:
            self._whiteout(*whiteout)
            return
        if not name:
            if e.type is not EntryType.DIR:
                raise self.fail("a non-directory entry names the root")
            self._chown(e, self.tree.fd)
            self._set_xattrs(self.tree.fd, e)
            self.dirs[()] = (e.mode, e.mtime)
            return
        dirname, _, leaf = name.rpartition("/")
        resolved = self.resolve_dir(tuple(dirname.split("/")) if dirname else (), create=True)
        assert resolved is not None
        parent, real = resolved
        try:
            self._create(e, content, parent, leaf, (*real, leaf))
        finally:
            os.close(parent)

    def _create(self, e: TarEntry, content: BinaryIO, parent: int, leaf: str, path: RealPath) -> None:
        if e.type is EntryType.HARDLINK:
            self._hardlink(e, parent, leaf, path)
            return
        prev = self._clear_leaf(parent, leaf, for_dir=e.type is EntryType.DIR)
        self._mark(path)
        proc_path = f"/proc/self/fd/{parent}/{leaf}"
        if e.type is EntryType.FILE:
            fd = os.open(leaf, _FILE_FLAGS, 0o600, dir_fd=parent)
            try:
                while chunk := content.read(BLOCK_SIZE):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    self.stats.bytes += len(chunk)
                self._chown(e, fd)
                os.fchmod(fd, e.mode)
                self._set_xattrs(fd, e)
                os.utime(fd, ns=self._ns(e))
            finally:
                os.close(fd)
            self.stats.files += 1
        elif e.type is EntryType.DIR:
            if prev is None or not stat.S_ISDIR(prev.st_mode):
                os.mkdir(leaf, 0o700, dir_fd=parent)
            if self.overlay and prev is not None and _is_overlay_whiteout(prev):
                self._set_opaque(parent, leaf)  # a new directory where a lower one was deleted
            fd = os.open(leaf, os.O_RDONLY | DIR_FLAGS, dir_fd=parent)
            try:
                self._chown(e, fd)
                self._set_xattrs(fd, e)
            finally:
                os.close(fd)
            self.dirs[path] = (e.mode, e.mtime)
            self.stats.dirs += 1
        elif e.type is EntryType.SYMLINK:
            os.symlink(e.linkname, leaf, dir_fd=parent)
            self._chown(e, None, parent, leaf)
            self._set_xattrs(proc_path, e)
            os.utime(leaf, ns=self._ns(e), dir_fd=parent, follow_symlinks=False)
            self.stats.symlinks += 1
        else:
            self._special(e, parent, leaf, path, proc_path)

    def _skip(self, path: RealPath, reason: str) -> None:
        self.stats.skipped += 1
        self.skipped.add(path)
        self.warn(reason)

    def _special(self, e: TarEntry, parent: int, leaf: str, path: RealPath, proc_path: str) -> None:
        if e.type is EntryType.FIFO:
            os.mkfifo(leaf, 0o600, dir_fd=parent)
        else:
            kind = stat.S_IFCHR if e.type is EntryType.CHAR else stat.S_IFBLK
            try:
                os.mknod(leaf, kind | 0o600, os.makedev(e.devmajor, e.devminor), dir_fd=parent)
            except PermissionError as err:
                # Only real root may (not root of a user namespace, nor without CAP_MKNOD).
                self._skip(path, f"device node skipped: {err.strerror} (devices need real root)")
                return
        self._chown(e, None, parent, leaf)
        # We just made this node, so it is no symlink; chmod cannot be told not to follow.
        os.chmod(leaf, e.mode, dir_fd=parent)
        self._set_xattrs(proc_path, e)
        os.utime(leaf, ns=self._ns(e), dir_fd=parent, follow_symlinks=False)
        self.stats.specials += 1

    def _hardlink(self, e: TarEntry, parent: int, leaf: str, path: RealPath) -> None:
        try:
            target = normalize_name(e.linkname)
        except BadNameError:
            raise self.fail(f"hardlink target {e.linkname!r} is outside the root") from None
        if not target:
            raise self.fail("hardlink to the root")
        tdir, _, tleaf = target.rpartition("/")
        resolved = self.resolve_dir(tuple(tdir.split("/")) if tdir else (), create=False)
        if resolved is None:
            raise self.fail(f"hardlink target {e.linkname!r} does not exist")
        tparent, treal = resolved
        try:
            try:
                tst = os.stat(tleaf, dir_fd=tparent, follow_symlinks=False)
            except FileNotFoundError:
                if (*treal, tleaf) in self.skipped:
                    self._skip(path, f"hardlink to skipped {e.linkname!r} skipped too")
                    return
                raise self.fail(f"hardlink target {e.linkname!r} does not exist") from None
            if stat.S_ISDIR(tst.st_mode):
                raise self.fail(f"hardlink target {e.linkname!r} is a directory")
            if (*treal, tleaf) == path:
                return
            try:
                st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == (tst.st_dev, tst.st_ino):
                    return
            except FileNotFoundError:
                pass
            self._clear_leaf(parent, leaf, for_dir=False)
            os.link(tleaf, leaf, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tparent)
        self._mark(path)
        self.stats.hardlinks += 1

    def _whiteout(self, kind: str, target: str) -> None:
        if kind == "meta":
            return  # aufs bookkeeping
        self.stats.whiteouts += 1
        parts = tuple(target.split("/")) if target else ()
        if self.overlay:
            self._overlay_whiteout(kind, parts)
            return
        if kind == "opaque":
            resolved = self.resolve_dir(parts, create=False)
            if resolved is None:
                return
            fd, real = resolved
            try:
                for child in list_dir(fd, "."):
                    self._purge(fd, child, (*real, child))
            finally:
                os.close(fd)
        else:
            resolved = self.resolve_dir(parts[:-1], create=False)
            if resolved is None:
                return
            fd, real = resolved
            try:
                self._purge(fd, parts[-1], (*real, parts[-1]))
            finally:
                os.close(fd)
        self.tree.invalidate()

    def _overlay_whiteout(self, kind: str, parts: tuple[str, ...]) -> None:
        """Record a whiteout the way overlayfs does; the lower layers live in other directories."""
        resolved = self.resolve_dir(parts if kind == "opaque" else parts[:-1], create=True)
        assert resolved is not None
        fd, _ = resolved
        try:
            if kind == "opaque":
                self._set_opaque(fd, ".")
                return
            try:
                st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                os.mknod(parts[-1], stat.S_IFCHR, os.makedev(0, 0), dir_fd=fd)
                return
            # This layer wrote the path itself: a non-directory hides the lower one already,
            # a directory must not show the lower one's contents through.
            if stat.S_ISDIR(st.st_mode):
                self._set_opaque(fd, parts[-1])
        finally:
            os.close(fd)

    def _set_opaque(self, parent: int, name: str) -> None:
        fd = os.open(name, os.O_RDONLY | DIR_FLAGS, dir_fd=parent)
        try:
            os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
        except OSError as err:
            raise self.fail(f"cannot mark a directory opaque for overlayfs: {err.strerror}") from None
        finally:
            os.close(fd)

    def finish(self) -> None:
        """Directory modes and mtimes, deepest first so search permission lasts until the end."""
        self.entry = ""
        for path in sorted(self.dirs, key=len, reverse=True):
            mode, mtime = self.dirs[path]
            fd = self.tree.open_real(path)
            if fd is None:
                continue  # removed or replaced later in the layer
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime * 1_000_000_000, mtime * 1_000_000_000))
            finally:
                os.close(fd)


def apply_layer(
    stream: BinaryIO,
    root: Path,
    *,
    compression: str | None = None,
    layer_name: str,
    preserve_owner: bool = True,
    diff_id: Digest | None = None,
    whiteouts: str = "apply",
) -> ApplyStats:
    """Unpack one layer onto `root`, honouring whiteouts; see the module doc for the rules.

    Ownership is kept (lchown) only when `preserve_owner` and the effective uid is 0 (real
    root or root of a user namespace). Device nodes need real root and are otherwise skipped
    with a warning. On LayerError the root may hold part of the layer, never anything outside.

    `whiteouts="apply"` deletes what whiteouts name from `root` (a flattened rootfs);
    `"overlay"` unpacks one layer into its own (empty) directory in overlayfs's format:
    whiteouts become 0:0 character devices and opaque directories get `user.overlay.opaque`.
    """
    applier = _Applier(root, layer_name, preserve_owner, whiteouts)
    try:
        for entry, content in iter_layer(stream, compression, layer_name=layer_name, diff_id=diff_id):
            try:
                applier.apply(entry, content)
            except OSError as err:
                raise applier.fail(err.strerror or str(err)) from err
        try:
            applier.finish()
        except OSError as err:
            raise LayerError(f"layer {layer_name}: setting directory metadata: {err}") from err
    finally:
        applier.close()
    return applier.stats
