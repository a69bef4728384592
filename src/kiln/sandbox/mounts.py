"""Building the sandbox's mount tree, run by its PID 1 inside the new mount namespace.

Order: make every inherited mount private, mount the root (overlay or bind) on a staging
directory, mount /proc, a minimal /dev, /sys, /etc/hosts, /etc/resolv.conf and the caller's
mounts under it, optionally make the root read-only, then pivot_root into it and detach the old
root. Standard library only.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from . import libc
from .rootpath import ensure_mountpoint, resolve_in_root
from .spec import Mount, OverlayRootfs, ProcessSpec

Report = Callable[[str], None]  # called with each placeholder created in the root (path inside it)

_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
}
# Host-affecting /proc entries a real-root build step must not write (and files it must not read).
_PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
_PROC_MASKED_FILES = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats")
_PROC_MASKED_DIRS = ("acpi", "scsi")


def make_readonly(path: str, recursive: bool = False) -> None:
    try:
        libc.mount_setattr_rdonly(path, recursive)
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EPERM):
            raise
        libc.mount(None, path, None, libc.MS_REMOUNT | libc.MS_BIND | libc.MS_RDONLY | libc.locked_mount_flags(path))


def write_scaffold(scaffold: str, spec: ProcessSpec) -> None:
    """Fill the bottom overlay layer with every mount point the sandbox may need.

    As the lowest layer it supplies only what the image lacks and never decides the metadata of
    a directory the image has, so mount points never need to be created in (or copied up to)
    the upper directory.
    """
    for target, directory in _mount_targets(spec):
        rel = target.strip("/")
        if rel:
            ensure_mountpoint(scaffold, resolve_in_root(scaffold, rel), directory)


def _mount_targets(spec: ProcessSpec) -> list[tuple[str, bool]]:
    targets = [("/proc", True), ("/dev", True), ("/sys", True)]
    if spec.etc_hosts:
        targets.append(("/etc/hosts", False))
    if spec.resolv_conf:
        targets.append(("/etc/resolv.conf", False))
    for m in spec.mounts:
        targets.append((m.target, m.type == "tmpfs" or os.path.isdir(m.source or "")))
    return targets


def mount_overlay(root: OverlayRootfs, scaffold: str, target: str) -> None:
    """Mount ``root`` (plus ``scaffold`` as the bottom layer) as overlayfs on ``target``.

    Layers are passed as /proc/self/fd/N of O_PATH descriptors: short whatever the real paths
    are (the option string is limited to one page, about 200 layers this way) and free of the
    ``:``/``,`` characters overlayfs options cannot carry.
    """
    fds: list[int] = []

    def ref(path: str) -> str:
        fds.append(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        return f"/proc/self/fd/{fds[-1]}"

    try:
        lowers = ":".join(ref(p) for p in [*root.lowerdirs, scaffold])
        data = f"lowerdir={lowers},upperdir={ref(root.upperdir)},workdir={ref(root.workdir)},userxattr"
        libc.mount("overlay", target, "overlay", 0, data)
    finally:
        for fd in fds:
            os.close(fd)


class RootBuilder:
    """Mounts everything below the staged root ``self.root`` for one sandbox."""

    def __init__(self, spec: ProcessSpec, root: str, report: Report, real_root: bool) -> None:
        self.spec = spec
        self.root = root
        self.report = report
        self.real_root = real_root

    def _target(self, path: str, directory: bool) -> str:
        rel = resolve_in_root(self.root, path)
        for created in ensure_mountpoint(self.root, rel, directory):
            self.report(created)
        return os.path.join(self.root, rel)

    def _bind(self, source: str, target: str, readonly: bool, recursive: bool = True) -> None:
        flags = libc.MS_BIND | (libc.MS_REC if recursive else 0)
        libc.mount(source, target, None, flags)
        if readonly:
            make_readonly(target, recursive)

    def build(self) -> None:
        self._proc()
        self._dev()
        self._sys()
        if self.spec.etc_hosts:
            self._bind(self.spec.etc_hosts, self._target("/etc/hosts", False), True)
        if self.spec.resolv_conf:
            self._bind(self.spec.resolv_conf, self._target("/etc/resolv.conf", False), True)
        for m in self.spec.mounts:
            self._user_mount(m)
        if self.spec.read_only_rootfs:
            make_readonly(self.root, recursive=False)

    def _proc(self) -> None:
        proc = self._target("/proc", True)
        # Only possible because we are PID 1 of a new PID namespace; the kernel also insists that
        # a fully visible proc already exists in this namespace, which is why we never mask proc
        # inside a user namespace (a nested kiln needs to mount its own).
        libc.mount("proc", proc, "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
        if not (self.real_root and self.spec.mask_proc):
            return
        for name in _PROC_READ_ONLY:
            path = os.path.join(proc, name)
            if os.path.exists(path):
                self._bind(path, path, True, recursive=False)
        for name in _PROC_MASKED_FILES:
            path = os.path.join(proc, name)
            if os.path.isfile(path):
                libc.mount("/dev/null", path, None, libc.MS_BIND)
        for name in _PROC_MASKED_DIRS:
            path = os.path.join(proc, name)
            if os.path.isdir(path):
                libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY)

    def _dev(self) -> None:
        dev = self._target("/dev", True)
        libc.mount("tmpfs", dev, "tmpfs", libc.MS_NOSUID | libc.MS_NOEXEC, "mode=755,size=65536k")
        for name in _DEVICES:
            host = f"/dev/{name}"
            if not os.path.exists(host):
                continue
            node = os.path.join(dev, name)
            os.close(os.open(node, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
            libc.mount(host, node, None, libc.MS_BIND)
        for sub in ("pts", "shm", "mqueue"):
            os.mkdir(os.path.join(dev, sub), 0o755)
        pts = os.path.join(dev, "pts")
        try:
            libc.mount("devpts", pts, "devpts", libc.MS_NOSUID | libc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620,gid=5")
        except OSError:
            # gid 5 (tty) is not mapped in a single-id user namespace
            libc.mount("devpts", pts, "devpts", libc.MS_NOSUID | libc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
        shm = os.path.join(dev, "shm")
        libc.mount("shm", shm, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=1777,size=65536k")
        try:
            libc.mount("mqueue", os.path.join(dev, "mqueue"), "mqueue", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
        except OSError:
            os.rmdir(os.path.join(dev, "mqueue"))  # optional; not every kernel or namespace allows it
        for name, link in _DEV_LINKS.items():
            os.symlink(link, os.path.join(dev, name))

    def _sys(self) -> None:
        """A read-only /sys when the kernel allows one; some tools look at it, none needs it."""
        sys_dir = self._target("/sys", True)
        ro = libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
        if self.spec.network == "none":
            try:
                libc.mount("sysfs", sys_dir, "sysfs", ro)
                return
            except OSError:
                pass
        try:
            self._bind("/sys", sys_dir, True, recursive=True)
        except OSError:
            pass  # e.g. /sys partly masked by an outer container; builds do without it

    def _user_mount(self, m: Mount) -> None:
        if m.type == "tmpfs":
            target = self._target(m.target, True)
            flags = libc.MS_NOSUID | libc.MS_NODEV | (libc.MS_RDONLY if m.readonly else 0)
            libc.mount("tmpfs", target, "tmpfs", flags, ",".join(m.options) or None)
            return
        source = m.source or ""
        if not os.path.exists(source):
            raise FileNotFoundError(errno.ENOENT, f"bind mount source {source} does not exist")
        target = self._target(m.target, os.path.isdir(source))
        self._bind(source, target, m.readonly, recursive=True)


def enter_root(root: str) -> None:
    """pivot_root into ``root`` and drop the old root entirely (pivot_root(".", ".") idiom)."""
    os.chdir(root)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")
