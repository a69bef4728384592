"""Safe layer apply: unpack a layer onto a root file system directory, hostile input or not.

Paths are resolved with chroot semantics, the way container runtimes do: every component is
opened relative to a directory fd with O_NOFOLLOW, and a symlink met on the way is read and
resolved again *inside* the root (an absolute target restarts at the root, '..' stops at
it). So a layer with `a -> /etc` and then `a/passwd` writes `<root>/etc/passwd`, which real
images need (later layers write through `/bin -> usr/bin`), and nothing outside the root is
ever opened. The last component is never followed: an existing entry there is replaced.

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

log = logging.getLogger(__name__)

_PATH_MAX = 4096
_MAX_SYMLINK_HOPS = 40
_O_DIR = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

RealPath = tuple[str, ...]


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
    def __init__(self, root: Path, layer: str, preserve_owner: bool) -> None:
        self.layer = layer
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.chown = preserve_owner and os.geteuid() == 0
        self.real_root = os.geteuid() == 0 and not in_user_namespace()
        self.stats = ApplyStats()
        self.created: set[RealPath] = set()
        self.ancestors: set[RealPath] = set()
        self.dirs: dict[RealPath, tuple[int, int]] = {}
        self.skipped: set[RealPath] = set()
        self._cache: dict[tuple[str, ...], tuple[int, RealPath]] = {}
        self.entry = ""

    def fail(self, reason: str) -> LayerError:
        return LayerError(f"layer {self.layer}: entry {self.entry!r}: {reason}")

    def warn(self, reason: str) -> None:
        message = f"layer {self.layer}: entry {self.entry!r}: {reason}"
        log.warning("%s", message)
        self.stats.warnings.append(message)

    def close(self) -> None:
        self._invalidate()
        os.close(self.root_fd)

    # -- path resolution inside the root ---------------------------------------------------

    def _invalidate(self) -> None:
        """Forget resolved directories: call after anything is removed or replaced."""
        for fd, _ in self._cache.values():
            os.close(fd)
        self._cache.clear()

    def _mark(self, path: RealPath) -> None:
        self.created.add(path)
        for i in range(len(path)):
            self.ancestors.add(path[:i])

    def resolve_dir(self, parts: tuple[str, ...], *, create: bool) -> tuple[int, RealPath] | None:
        """(new fd, real path) of the directory `parts` names, symlinks resolved in the root.

        Missing directories are made (0755) when `create`, else the answer is None.
        """
        if parts in self._cache:
            cached_fd, cached_real = self._cache[parts]
            return os.dup(cached_fd), cached_real
        todo = list(reversed(parts))
        fds: list[int] = []
        real: list[str] = []
        hops = 0
        try:
            while todo:
                part = todo.pop()
                if part in ("", "."):
                    continue
                if part == "..":
                    if real:
                        real.pop()
                        os.close(fds.pop())
                    continue
                at = fds[-1] if fds else self.root_fd
                try:
                    st = os.stat(part, dir_fd=at, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        return None
                    os.mkdir(part, 0o755, dir_fd=at)
                    os.chmod(part, 0o755, dir_fd=at)  # whatever the umask
                    self._mark((*real, part))
                else:
                    if stat.S_ISLNK(st.st_mode):
                        hops += 1
                        if hops > _MAX_SYMLINK_HOPS:
                            raise self.fail("too many levels of symbolic links")
                        target = os.readlink(part, dir_fd=at)
                        if target.startswith("/"):
                            while fds:
                                os.close(fds.pop())
                            real.clear()
                        todo.extend(reversed(target.split("/")))
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        raise self.fail(f"/{'/'.join((*real, part))} is not a directory")
                fds.append(os.open(part, os.O_PATH | _O_DIR, dir_fd=at))
                real.append(part)
            fd = fds.pop() if fds else os.open(".", os.O_PATH | _O_DIR, dir_fd=self.root_fd)
        finally:
            for extra in fds:
                os.close(extra)
        if len(self._cache) >= 256:
            self._invalidate()
        self._cache[parts] = (fd, tuple(real))
        return os.dup(fd), tuple(real)

    def _open_real(self, path: RealPath) -> int | None:
        """An O_RDONLY fd of a directory by its real path, following nothing; None if gone."""
        fd = os.dup(self.root_fd)
        try:
            for part in path:
                try:
                    nxt = os.open(part, os.O_RDONLY | _O_DIR, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        os.close(fd)
                        return None
                    raise
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- removal ------------------------------------------------------------------------------

    def _remove_tree(self, parent: int, name: str) -> None:
        """Remove a directory tree without following symlinks, iteratively (any depth)."""
        top = os.open(name, os.O_RDONLY | _O_DIR, dir_fd=parent)
        stack: list[tuple[int, str, list[str]]] = [(top, name, os.listdir(top))]
        while stack:
            fd, dname, children = stack[-1]
            if children:
                child = children.pop()
                st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    cfd = os.open(child, os.O_RDONLY | _O_DIR, dir_fd=fd)
                    stack.append((cfd, child, os.listdir(cfd)))
                else:
                    os.unlink(child, dir_fd=fd)
                continue
            stack.pop()
            os.close(fd)
            os.rmdir(dname, dir_fd=stack[-1][0] if stack else parent)

    def _purge(self, parent: int, name: str, path: RealPath) -> None:
        """Remove what lower layers have at `path`, keeping everything this layer wrote."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        keep = path in self.created or path in self.ancestors
        if not stat.S_ISDIR(st.st_mode):
            if path not in self.created:
                os.unlink(name, dir_fd=parent)
            return
        if not keep:
            self._remove_tree(parent, name)
            return
        # A directory this layer wrote into: descend and purge only the lower entries.
        top = os.open(name, os.O_RDONLY | _O_DIR, dir_fd=parent)
        stack: list[tuple[int, RealPath, list[str]]] = [(top, path, os.listdir(top))]
        while stack:
            fd, dpath, children = stack[-1]
            if not children:
                os.close(fd)
                stack.pop()
                continue
            child = children.pop()
            cpath = (*dpath, child)
            cst = os.stat(child, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(cst.st_mode):
                if cpath in self.created or cpath in self.ancestors:
                    cfd = os.open(child, os.O_RDONLY | _O_DIR, dir_fd=fd)
                    stack.append((cfd, cpath, os.listdir(cfd)))
                else:
                    self._remove_tree(fd, child)
            elif cpath not in self.created:
                os.unlink(child, dir_fd=fd)

    def _clear_leaf(self, parent: int, leaf: str, *, for_dir: bool) -> bool:
        """Make room for a new entry; True when an existing directory is kept for a dir entry."""
        try:
            st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if for_dir:
                return True
            self._remove_tree(parent, leaf)
        else:
            os.unlink(leaf, dir_fd=parent)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self._invalidate()  # cached resolutions may have gone through it
        return False

    # -- metadata -------------------------------------------------------------------------------

    def _set_xattrs(self, target: int | str, e: TarEntry) -> None:
        for key, value in sorted(e.xattrs.items()):
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
        if len(encode_name(name)) > _PATH_MAX:
            raise self.fail(f"name longer than {_PATH_MAX} bytes")
        if whiteout is not None:
            self._whiteout(*whiteout)
            return
        if not name:
            if e.type is not EntryType.DIR:
                raise self.fail("a non-directory entry names the root")
            self._chown(e, self.root_fd)
            self._set_xattrs(self.root_fd, e)
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
        if e.type in (EntryType.CHAR, EntryType.BLOCK) and not self.real_root:
            self._skip(path, "device node skipped: creating devices needs real root, not a user namespace")
            return
        kept = self._clear_leaf(parent, leaf, for_dir=e.type is EntryType.DIR)
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
            if not kept:
                os.mkdir(leaf, 0o700, dir_fd=parent)
            fd = os.open(leaf, os.O_RDONLY | _O_DIR, dir_fd=parent)
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
                self._skip(path, f"device node skipped: {err.strerror}")
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
        if kind == "opaque":
            resolved = self.resolve_dir(parts, create=False)
            if resolved is None:
                return
            fd, real = resolved
            try:
                listing = os.open(".", os.O_RDONLY | _O_DIR, dir_fd=fd)
                try:
                    children = os.listdir(listing)
                finally:
                    os.close(listing)
                for child in children:
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
        self._invalidate()

    def finish(self) -> None:
        """Directory modes and mtimes, deepest first so search permission lasts until the end."""
        self.entry = ""
        for path in sorted(self.dirs, key=len, reverse=True):
            mode, mtime = self.dirs[path]
            fd = self._open_real(path)
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
) -> ApplyStats:
    """Unpack one layer onto `root`, honouring whiteouts; see the module doc for the rules.

    Ownership is kept (lchown) only when `preserve_owner` and the effective uid is 0 (real
    root or root of a user namespace). Device nodes need real root and are otherwise skipped
    with a warning. On LayerError the root may hold part of the layer, never anything outside.
    """
    applier = _Applier(root, layer_name, preserve_owner)
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
