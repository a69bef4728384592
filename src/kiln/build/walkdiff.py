"""The snapshotter's fallback for kernels where overlayfs cannot be mounted in a user namespace.

Without overlayfs a stack of snapshots cannot be shown as one root file system, and a step's
changes do not collect in an upper directory. So the stack is copied into a plain directory
(`materialize`), every path's stat signature is recorded (`StatIndex.scan`), the step runs
there, and a walk compares the result with the signatures (`write_changes`), looking at
content only where the signature alone cannot tell.

What counts as a change (the layer holds exactly these, sorted by path bytes, parents first):

* a new path; a path whose type changed (the new entry replaces the old one when applied, a
  directory included, so no whiteout is needed);
* a path whose signature differs and whose mode, owner, link target, device, size, xattrs or
  (regular files) content hash differs. A file whose bytes and metadata are the same and whose
  times alone changed (`touch`, or rewritten with the same bytes) is *left out*: it would carry
  nothing but an mtime, which layers clamp or ignore anyway (Docker, kaniko and overlay's
  copy-up would include it). Comparing content needs the content from before the step, which
  lives in the snapshots the root was materialized from: pass them to `StatIndex.scan`; without
  them every differing signature counts as a change.
* a directory whose own mode, owner or xattrs changed, or anything below which changed,
  written with its current metadata. A directory with a new inode (deleted and made again) is
  marked opaque and written with everything below it, as overlay does. Overlay also marks a
  directory opaque when it is made where a non-directory was deleted; here that is not needed
  (a lower non-directory never shows through a directory) and is not done.
* a deleted path gets one whiteout, at the top-most deleted path only.
* when one name of a multiply-linked inode is written, all its names are, so the link survives.

Changes to the root directory's own metadata cannot be expressed in a layer and are ignored.
Mount points under the root (from /proc/self/mountinfo, and anything on another device) are
neither read nor whited out: what a mount shows belongs to no layer.

The file clock ticks coarsely (a few ms), so a change right after the scan could keep a
signature as it was; the scan waits until the clock has passed every ctime it recorded, and
treats what is still not past it as "racy" (compared by content). This assumes a file system
with sub-second timestamps (ext4, xfs, btrfs, tmpfs).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from kiln.build.overlay import is_opaque, is_whiteout
from kiln.errors import BuildError
from kiln.oci.digest import BLOCK_SIZE
from kiln.oci.layer import encode_name
from kiln.oci.layer_writer import LayerWriter
from kiln.oci.xattrs import read_xattrs as read_file_xattrs

log = logging.getLogger(__name__)

_OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_DIR_FLAGS = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FICLONE = 0x40049409  # ioctl: share the source's extents (btrfs, xfs): a copy that costs nothing
_CLOCK_REALTIME_COARSE = 5  # the clock the kernel stamps files with; Python has no name for it
_SETTLE_LIMIT_NS = 50_000_000  # a clock tick is at most 10 ms (HZ=100)
_XATTR_TOLERATED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES)


class Signature(NamedTuple):
    """What stat says about a path; any change to the path changes its ctime, hence this."""

    kind: int  # stat.S_IFMT
    mode: int  # permission bits with setuid/setgid/sticky
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int
    nlink: int
    rdev: int
    link: str  # a symlink's target

    @classmethod
    def of(cls, st: os.stat_result, link: str = "") -> Signature:
        return cls(
            stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size,
            st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino, st.st_nlink, st.st_rdev, link,
        )


# -- reading a stack of snapshots -----------------------------------------------------------------


def _keep_xattr(name: str) -> bool:
    return not name.startswith(_OVERLAY_XATTR_PREFIXES)


def read_xattrs(path: str) -> dict[str, bytes]:
    """A path's xattrs minus overlay's own (security.selinux is kept: it is the file's)."""
    return read_file_xattrs(path, _keep_xattr)


def _top_first(lowers: Sequence[Path]) -> list[str]:
    """Layer roots from the top down to the first opaque one (which hides all below it)."""
    roots = []
    for lower in reversed(lowers):
        roots.append(os.fspath(lower))
        if is_opaque(lower):
            break
    return roots


class _Stack:
    """Path lookup in a stack of overlay-format snapshots, by overlayfs's rules."""

    def __init__(self, lowers: Sequence[Path]) -> None:
        self._dirs: dict[str, list[str]] = {"": _top_first(lowers)}

    def dirs(self, rel: str) -> list[str]:
        """The snapshot directories merged at `rel`, top first; empty when `rel` is no directory."""
        found = self._dirs[""]
        current = ""
        for part in rel.split("/") if rel else ():
            current = f"{current}/{part}" if current else part
            cached = self._dirs.get(current)
            if cached is None:
                cached = []
                for src in found:
                    path = os.path.join(src, part)
                    try:
                        st = os.lstat(path)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        break  # a whiteout or a non-directory hides what is below
                    cached.append(path)
                    if is_opaque(Path(path)):
                        break
                self._dirs[current] = cached
            found = cached
            if not found:
                break
        return found

    def find(self, rel: str) -> tuple[str, os.stat_result] | None:
        """The snapshot path that shows at `rel` (the top-most), or None when nothing does."""
        parent, _, name = rel.rpartition("/")
        for src in self.dirs(parent):
            path = os.path.join(src, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            return None if is_whiteout(st) else (path, st)
        return None


# -- materialize --------------------------------------------------------------------------------


def materialize(lowers: list[Path], target: Path) -> None:
    """Copy the stack ``lowers`` (bottom first) into the empty directory ``target`` as a plain tree.

    Whiteouts and opaque directories are applied; type, mode, owner (when euid is 0), times,
    xattrs (minus overlay's), symlinks, hardlinks within a layer and device nodes (where
    permitted; otherwise skipped with a warning) are kept. Everything is created through
    directory fds without following symlinks, so nothing outside ``target`` is written.
    """
    with os.scandir(target) as it:
        if any(it):
            raise BuildError(f"materialize: {target} is not empty")
    m = _Materializer(target)
    try:
        m.run(lowers)
    except OSError as err:
        raise BuildError(f"materialize into {target}: /{m.current}: {err.strerror or err}") from err
    finally:
        os.close(m.root_fd)


class _Materializer:
    def __init__(self, target: Path) -> None:
        self.root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.chown = os.geteuid() == 0
        self.clone = True
        self.current = ""
        #: (layer, dev, ino) of a multiply-linked source -> where its first name went (None: skipped)
        self.links: dict[tuple[int, int, int], tuple[str, ...] | None] = {}
        self.dirs: list[tuple[tuple[str, ...], os.stat_result]] = []

    def open_dir(self, parts: tuple[str, ...], flags: int = os.O_PATH) -> int:
        """A directory of the target by its path, opened component by component, never following."""
        fd = os.dup(self.root_fd)
        for i, part in enumerate(parts):
            nxt = os.open(part, (flags if i == len(parts) - 1 else os.O_PATH) | _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd

    def run(self, lowers: list[Path]) -> None:
        top = _top_first(lowers)
        if not top:
            return
        stack: list[tuple[tuple[str, ...], list[tuple[int, str]]]] = [((), list(enumerate(top)))]
        root_st = os.lstat(top[0])
        self.dirs.append(((), root_st))
        self._dir_owner_xattrs((), top[0], root_st)
        while stack:
            parts, layers = stack.pop()
            fd = self.open_dir(parts)
            try:
                self._fill(fd, parts, layers, stack)
            finally:
                os.close(fd)
        for parts, st in sorted(self.dirs, key=lambda d: len(d[0]), reverse=True):  # deepest first
            self.current = "/".join(parts)
            dfd = self.open_dir(parts, os.O_RDONLY)
            try:
                os.fchmod(dfd, stat.S_IMODE(st.st_mode))
                os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dfd)

    def _fill(
        self,
        fd: int,
        parts: tuple[str, ...],
        layers: list[tuple[int, str]],
        stack: list[tuple[tuple[str, ...], list[tuple[int, str]]]],
    ) -> None:
        listings = []
        for _, src in layers:
            with os.scandir(src) as it:
                listings.append({e.name: e for e in it})
        top: dict[str, int] = {}
        for pos, listing in enumerate(listings):
            for name in listing:
                top.setdefault(name, pos)
        for name, pos in top.items():
            entry = listings[pos][name]
            child = (*parts, name)
            self.current = "/".join(child)
            st = entry.stat(follow_symlinks=False)
            if is_whiteout(st):
                continue
            if not stat.S_ISDIR(st.st_mode):
                self._leaf(fd, name, entry.path, st, layers[pos][0], child)
                continue
            merged = [(layers[pos][0], entry.path)]
            if not is_opaque(Path(entry.path)):
                for lower in range(pos + 1, len(layers)):
                    below = listings[lower].get(name)
                    if below is None:
                        continue
                    if not below.is_dir(follow_symlinks=False):
                        break  # a whiteout or non-directory hides the rest
                    merged.append((layers[lower][0], below.path))
                    if is_opaque(Path(below.path)):
                        break
            os.mkdir(name, 0o700, dir_fd=fd)
            self._dir_owner_xattrs(child, entry.path, st)
            self.dirs.append((child, st))
            stack.append((child, merged))

    def _dir_owner_xattrs(self, parts: tuple[str, ...], src: str, st: os.stat_result) -> None:
        dfd = self.open_dir(parts, os.O_RDONLY)
        try:
            if self.chown:
                os.fchown(dfd, st.st_uid, st.st_gid)
            self._xattrs(dfd, src)
        finally:
            os.close(dfd)

    def _leaf(self, fd: int, name: str, src: str, st: os.stat_result, layer: int, parts: tuple[str, ...]) -> None:
        key = (layer, st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            first = self.links[key]
            if first is not None:
                pfd = self.open_dir(first[:-1])
                try:
                    os.link(first[-1], name, src_dir_fd=pfd, dst_dir_fd=fd, follow_symlinks=False)
                finally:
                    os.close(pfd)
            return
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFREG:
            self._file(fd, name, src, st)
        else:
            if kind == stat.S_IFLNK:
                os.symlink(os.readlink(src), name, dir_fd=fd)
            elif kind == stat.S_IFIFO:
                os.mkfifo(name, 0o600, dir_fd=fd)
            else:
                try:
                    os.mknod(name, kind | 0o600, st.st_rdev, dir_fd=fd)
                except PermissionError as err:
                    log.warning("materialize: /%s: device node skipped: %s", "/".join(parts), err.strerror)
                    self.links[key] = None
                    return
            if self.chown:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=fd, follow_symlinks=False)
            if kind != stat.S_IFLNK:
                os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=fd)  # we just made it: no symlink
            self._xattrs(f"/proc/self/fd/{fd}/{name}", src)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=fd, follow_symlinks=False)
        if st.st_nlink > 1:
            self.links[key] = parts

    def _file(self, fd: int, name: str, src: str, st: os.stat_result) -> None:
        sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            dfd = os.open(name, _NEW_FILE, 0o600, dir_fd=fd)
            try:
                if st.st_size:
                    self._copy(sfd, dfd)
                if self.chown:
                    os.fchown(dfd, st.st_uid, st.st_gid)
                os.fchmod(dfd, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid
                self._xattrs(dfd, src)
                os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def _copy(self, sfd: int, dfd: int) -> None:
        if self.clone:
            try:
                fcntl.ioctl(dfd, _FICLONE, sfd)
                return
            except OSError:
                self.clone = False  # not on this file system: do not ask again for every file
        try:
            while os.copy_file_range(sfd, dfd, 1 << 30):
                pass
            return
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
                raise
        while chunk := os.read(sfd, BLOCK_SIZE):  # both offsets moved together so far
            view = memoryview(chunk)
            while view:
                view = view[os.write(dfd, view) :]

    def _xattrs(self, target: int | str, src: str) -> None:
        for key, value in sorted(read_xattrs(src).items()):
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as err:
                if err.errno not in _XATTR_TOLERATED:
                    raise
                log.warning("materialize: /%s: xattr %s not set: %s", self.current, key, err.strerror)


# -- signatures ---------------------------------------------------------------------------------


def _mount_points(root: Path) -> set[str]:
    """Paths under ``root`` that something is mounted on, as this process's mount table says."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            table = f.read()
    except OSError:
        return set()  # no /proc: the device check in _walk still catches other file systems
    prefix = os.fsencode(os.path.realpath(root)).rstrip(b"/") + b"/"
    found = set()
    for line in table.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4:
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            if point.startswith(prefix):
                found.add(os.fsdecode(point[len(prefix) :]))
    return found


def _walk(root: Path, skip: Callable[[str], bool] | None = None) -> tuple[dict[str, Signature], set[str]]:
    """Every path under ``root`` with its signature: one lstat per path, symlinks not followed.

    Mount points (a bind-mounted secret the sandbox left, say) are not recorded, nor is what
    they show, but returned apart: their content belongs to no layer, and they must not look
    deleted either.
    """
    found: dict[str, Signature] = {}
    foreign = _mount_points(root)
    root_dev = os.lstat(root).st_dev
    stack = [(os.fspath(root), "")]
    while stack:
        directory, rel = stack.pop()
        with os.scandir(directory) as it:
            for item in it:
                child = f"{rel}/{item.name}" if rel else item.name
                if child in foreign or (skip is not None and skip(child)):
                    continue
                st = item.stat(follow_symlinks=False)
                if st.st_dev != root_dev:
                    foreign.add(child)
                    continue
                link = os.readlink(item.path) if stat.S_ISLNK(st.st_mode) else ""
                found[child] = Signature.of(st, link)
                if stat.S_ISDIR(st.st_mode):
                    stack.append((item.path, child))
    return found, foreign


def hash_file(path: str) -> bytes:
    """sha256 of a regular file's content, read in 1 MiB blocks, the path not followed."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, BLOCK_SIZE):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.digest()


def _coarse_now() -> int:
    return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)


class StatIndex:
    """Signatures of a tree taken before a step; content hashes (from the snapshots) on demand."""

    def __init__(self, root: Path, entries: dict[str, Signature], lowers: Sequence[Path] | None, racy_from: int) -> None:
        self.root = root
        self.entries = entries
        self._stack = _Stack(lowers) if lowers is not None else None
        self._racy_from = racy_from
        self._hashes: dict[str, bytes | None] = {}

    @classmethod
    def scan(cls, root: Path, lowers: Sequence[Path] | None = None) -> StatIndex:
        """Record ``root``; ``lowers`` are the snapshots it was materialized from, if it was.

        A change in the same clock tick as the scan could leave a signature as it was, so the
        scan waits (a tick at most) until the file clock has passed every ctime it saw; any
        path still at or past it is "racy" and compared by content when its signature matches.
        """
        entries, _ = _walk(root)
        newest = max((s.ctime_ns for s in entries.values()), default=0)
        start = time.monotonic_ns()
        while _coarse_now() <= newest and time.monotonic_ns() - start < _SETTLE_LIMIT_NS:
            time.sleep(0.001)
        return cls(root, entries, lowers, _coarse_now())

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, rel: object) -> bool:
        return rel in self.entries

    def __getitem__(self, rel: str) -> Signature:
        return self.entries[rel]

    def get(self, rel: str) -> Signature | None:
        return self.entries.get(rel)

    def racy(self, rel: str) -> bool:
        return self.entries[rel].ctime_ns >= self._racy_from

    def origin(self, rel: str) -> str | None:
        """The snapshot file ``rel`` was copied from, if it provably still shows what it was."""
        sig = self.entries.get(rel)
        if self._stack is None or sig is None:
            return None
        found = self._stack.find(rel)
        if found is None:
            return None
        path, st = found
        if stat.S_IFMT(st.st_mode) != sig.kind or st.st_mtime_ns != sig.mtime_ns:
            return None
        if sig.kind == stat.S_IFREG and st.st_size != sig.size:
            return None
        return path

    def content_hash(self, rel: str) -> bytes | None:
        """sha256 of a regular file's content before the step; None when it cannot be known."""
        if rel not in self._hashes:
            origin = self.origin(rel)
            ok = origin is not None and self.entries[rel].kind == stat.S_IFREG
            self._hashes[rel] = hash_file(origin) if ok and origin is not None else None
        return self._hashes[rel]

    def xattrs(self, rel: str) -> dict[str, bytes] | None:
        origin = self.origin(rel)
        return None if origin is None else read_xattrs(origin)


# -- the walk after a step --------------------------------------------------------------------


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


class _Diff:
    def __init__(self, root: Path, before: StatIndex, skip: Callable[[str], bool] | None) -> None:
        self.root = root
        self.before = before
        self.after, self.foreign = _walk(root, skip)
        self.skip = skip
        self.emit: set[str] = set()
        self.opaque: set[str] = set()
        self.fresh: set[str] = set()  # directories whose whole subtree goes into the layer

    def judge(self) -> None:
        for rel in sorted(self.after, key=encode_name):  # parents first
            a = self.after[rel]
            b = self.before.get(rel)
            is_dir = a.kind == stat.S_IFDIR
            if b is None or _parent(rel) in self.fresh or a.kind != b.kind:
                self.emit.add(rel)
                if is_dir:
                    self.fresh.add(rel)
            elif is_dir and (a.dev, a.ino) != (b.dev, b.ino):
                self.emit.add(rel)
                self.opaque.add(rel)
                self.fresh.add(rel)
            elif self._changed(rel, a, b):
                self.emit.add(rel)
        groups: dict[tuple[int, int], list[str]] = {}
        for rel, a in self.after.items():
            if a.nlink > 1 and a.kind != stat.S_IFDIR:
                groups.setdefault((a.dev, a.ino), []).append(rel)
        for names in groups.values():
            if any(n in self.emit for n in names):
                self.emit.update(names)

    def _changed(self, rel: str, a: Signature, b: Signature) -> bool:
        if a == b and not self.before.racy(rel):
            return False
        if (a.mode, a.uid, a.gid, a.link, a.rdev) != (b.mode, b.uid, b.gid, b.link, b.rdev):
            return True
        path = os.path.join(self.root, rel)
        if a.kind == stat.S_IFREG:
            if a.size != b.size:
                return True
            if (a.dev, a.ino) != (b.dev, b.ino) and (a.nlink > 1 or b.nlink > 1):
                return True  # a hardlink was made or broken
        before_xattrs = self.before.xattrs(rel)
        if before_xattrs is None or before_xattrs != read_xattrs(path):
            return True
        if a.kind == stat.S_IFREG:
            old = self.before.content_hash(rel)
            return old is None or old != hash_file(path)
        return False

    def whiteouts(self) -> list[str]:
        """Deleted paths whose parent is still the same directory (else the parent covers them)."""
        found = []
        for rel in self.before.entries:
            if rel in self.after:
                continue
            parent = _parent(rel)
            if parent:
                p = self.after.get(parent)
                if p is None or p.kind != stat.S_IFDIR or parent in self.fresh:
                    continue
            if rel in self.foreign or (self.skip is not None and self.skip(rel)):
                continue
            found.append(rel)
        return found


def write_changes(root: Path, before: StatIndex, writer: LayerWriter, skip: Callable[[str], bool] | None = None) -> int:
    """Write what changed under ``root`` since ``before`` was scanned; returns the number of
    paths and whiteouts written (opaque markers not counted, as in diff.py).

    ``skip(relative_path)`` leaves out paths that belong to the sandbox, not to the step
    (mount points it had to create), and for a directory everything below it.
    """
    diff = _Diff(root, before, skip)
    diff.judge()
    gone = diff.whiteouts()
    wanted = set(diff.emit)
    for rel in [*diff.emit, *gone]:
        parent = _parent(rel)
        while parent and parent not in wanted:
            wanted.add(parent)
            parent = _parent(parent)
    items = sorted([(encode_name(rel), False, rel) for rel in wanted] + [(encode_name(rel), True, rel) for rel in gone])
    for _, whiteout, rel in items:
        if whiteout:
            writer.add_whiteout(rel)
            continue
        writer.add_path(rel, root / rel)
        if rel in diff.opaque:
            writer.add_opaque(rel)
    return len(items)
