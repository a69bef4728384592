"""Paths inside a root filesystem, resolved the way the contained process would see them.

A hostile image may make /etc or /etc/hosts a symlink to /../../home/someone; mount targets and
placeholder files must still land inside the root. Standard library only.
"""

from __future__ import annotations

import os
import stat

_MAX_SYMLINKS = 40


class PathEscapeError(OSError):
    """A path could not be resolved inside the root (symlink loop, non-directory component)."""


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def resolve_in_root(root: str, path: str) -> str:
    """Resolve ``path`` as if ``root`` were ``/``: symlinks are followed but never leave ``root``.

    Returns the resolved path relative to root ("" is the root itself). Components that do not
    exist are kept literally (``..`` among them is applied lexically).
    """
    done: list[str] = []
    todo = _split(path)
    todo.reverse()
    hops = 0
    while todo:
        part = todo.pop()
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            done.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            done.append(part)
            continue
        hops += 1
        if hops > _MAX_SYMLINKS:
            raise PathEscapeError(40, f"too many symlinks resolving {path}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            done = []
        todo.extend(reversed(_split(target)))
    return "/".join(done)


def ensure_mountpoint(root: str, rel: str, directory: bool) -> list[str]:
    """Make ``root/rel`` exist (a directory or an empty file); return what was created, parents first.

    ``rel`` must come from :func:`resolve_in_root`, so no component is a symlink.
    """
    created: list[str] = []
    parts = _split(rel)
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        full = os.path.join(root, sub)
        last = i == len(parts)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            try:
                if last and not directory:
                    fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                    os.close(fd)
                else:
                    os.mkdir(full, 0o755)
                created.append(sub)
                continue
            except FileExistsError:
                # Another sandbox on this root made it between our lstat and here: it is that
                # run's placeholder (see rootshare); check it like any existing path.
                st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            raise PathEscapeError(40, f"/{sub} is a symlink")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise PathEscapeError(20, f"/{sub} is not a directory")
    return created


def remove_placeholder(root: str, rel: str) -> bool:
    """Remove an empty placeholder file or directory without following symlinks anywhere.

    Returns False if it is gone already or was not empty (then a build step wrote into it and it
    is content, not a placeholder).
    """
    parts = _split(rel)
    if not parts:
        return False
    try:
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        name = parts[-1]
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(name, dir_fd=dir_fd)
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(name, dir_fd=dir_fd)
        else:
            return False
        return True
    except OSError:
        return False
    finally:
        os.close(dir_fd)
