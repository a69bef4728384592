"""A directory tree confined to its root: chroot-style path resolution through directory fds.

Every component is opened relative to its parent's fd with O_NOFOLLOW. A symlink met on the
way is read and resolved again *inside* the root: an absolute target restarts at the root
and '..' stops there, as in a chroot or a container. Nothing outside the root can be
reached, whatever symlinks the tree holds. The tree is assumed to have no concurrent writer
(it is being unpacked by us); the fds make that a matter of correctness, not of safety.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

#: Linux's limit; the same bound keeps a hostile name from costing unbounded work.
PATH_MAX = 4096
MAX_SYMLINK_HOPS = 40
DIR_FLAGS = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

RealPath = tuple[str, ...]


class RootPathError(Exception):
    """A path that cannot be resolved inside the root (not a directory, a symlink loop)."""


class RootDir:
    """Resolves and edits paths under `root`; resolved directories are cached until removals."""

    def __init__(self, root: Path) -> None:
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._cache: dict[tuple[str, ...], tuple[int, RealPath]] = {}

    def close(self) -> None:
        self.invalidate()
        os.close(self.fd)

    def invalidate(self) -> None:
        """Forget resolved directories; call after removing or replacing a directory or symlink."""
        for fd, _ in self._cache.values():
            os.close(fd)
        self._cache.clear()

    def resolve_dir(
        self,
        parts: tuple[str, ...],
        *,
        create: bool,
        on_create: Callable[[RealPath], None] | None = None,
    ) -> tuple[int, RealPath] | None:
        """(new O_PATH fd, real path) of the directory `parts` names; the caller closes the fd.

        A missing directory is made (0755, `on_create` is told) when `create`; otherwise the
        answer is None. Raises RootPathError for a non-directory on the way or a symlink loop.
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
                at = fds[-1] if fds else self.fd
                try:
                    st = os.stat(part, dir_fd=at, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        return None
                    os.mkdir(part, 0o755, dir_fd=at)
                    os.chmod(part, 0o755, dir_fd=at)  # whatever the umask
                    if on_create is not None:
                        on_create((*real, part))
                else:
                    if stat.S_ISLNK(st.st_mode):
                        hops += 1
                        if hops > MAX_SYMLINK_HOPS:
                            raise RootPathError("too many levels of symbolic links")
                        target = os.readlink(part, dir_fd=at)
                        if target.startswith("/"):
                            while fds:
                                os.close(fds.pop())
                            real.clear()
                        todo.extend(reversed(target.split("/")))
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        raise RootPathError(f"/{'/'.join((*real, part))} is not a directory")
                fds.append(os.open(part, os.O_PATH | DIR_FLAGS, dir_fd=at))
                real.append(part)
            fd = fds.pop() if fds else os.open(".", os.O_PATH | DIR_FLAGS, dir_fd=self.fd)
        finally:
            for extra in fds:
                os.close(extra)
        if len(self._cache) >= 256:
            self.invalidate()
        self._cache[parts] = (fd, tuple(real))
        return os.dup(fd), tuple(real)

    def open_real(self, path: RealPath) -> int | None:
        """An O_RDONLY fd of a directory by its real path, following nothing; None if gone."""
        fd = os.dup(self.fd)
        try:
            for part in path:
                try:
                    nxt = os.open(part, os.O_RDONLY | DIR_FLAGS, dir_fd=fd)
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


def list_dir(parent: int, name: str) -> list[str]:
    fd = os.open(name, os.O_RDONLY | DIR_FLAGS, dir_fd=parent)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def remove_tree(parent: int, name: str) -> None:
    """Remove a directory tree without following symlinks, iteratively (any depth)."""
    top = os.open(name, os.O_RDONLY | DIR_FLAGS, dir_fd=parent)
    stack: list[tuple[int, str, list[str]]] = [(top, name, os.listdir(top))]
    try:
        while stack:
            fd, dname, children = stack[-1]
            if children:
                child = children.pop()
                st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    cfd = os.open(child, os.O_RDONLY | DIR_FLAGS, dir_fd=fd)
                    stack.append((cfd, child, os.listdir(cfd)))
                else:
                    os.unlink(child, dir_fd=fd)
                continue
            stack.pop()
            os.close(fd)
            os.rmdir(dname, dir_fd=stack[-1][0] if stack else parent)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def walk_keeping(parent: int, name: str, path: RealPath, keep: Callable[[RealPath], bool]) -> None:
    """Remove everything under directory `name` except the paths `keep` accepts.

    A kept directory is descended into, so only what it holds is judged; an entry that is not
    kept goes, with its whole subtree.
    """
    top = os.open(name, os.O_RDONLY | DIR_FLAGS, dir_fd=parent)
    stack: list[tuple[int, RealPath, list[str]]] = [(top, path, os.listdir(top))]
    try:
        while stack:
            fd, dpath, children = stack[-1]
            if not children:
                os.close(fd)
                stack.pop()
                continue
            child = children.pop()
            cpath = (*dpath, child)
            st = os.stat(child, dir_fd=fd, follow_symlinks=False)
            if keep(cpath):
                if stat.S_ISDIR(st.st_mode):
                    cfd = os.open(child, os.O_RDONLY | DIR_FLAGS, dir_fd=fd)
                    stack.append((cfd, cpath, os.listdir(cfd)))
            elif stat.S_ISDIR(st.st_mode):
                remove_tree(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
