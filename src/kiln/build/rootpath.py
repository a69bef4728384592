"""Resolving a path inside a root directory as if that directory were `/`.

A build reads and writes root file systems it does not trust (an image's rootfs, a stage, the
build context): a symlink in them may point anywhere, including `/etc/shadow` of the host or
`../../..`. Every lookup goes through `resolve_in_root`, which follows symlinks the way the
kernel would inside a chroot: absolute targets restart at the root, `..` stops at the root.
So the result always names something under the root, like Go's `securejoin` and continuity's
`fs.RootPath`, which BuildKit uses for the same job.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from kiln.errors import KilnError

#: Linux gives up after 40 links in one lookup; a loop is reported, not followed forever.
MAX_SYMLINKS = 40


class SymlinkLoopError(KilnError):
    """Too many symlinks while resolving a path inside a root."""


def split_path(path: str) -> list[str]:
    """The non-empty, non-'.' components of a slash path."""
    return [p for p in path.split("/") if p not in ("", ".")]


def clean_path(path: str) -> str:
    """Lexically cleaned relative form, `..` clamped at the root: '../a/./b/../c' -> 'a/c'."""
    out: list[str] = []
    for part in split_path(path):
        if part == "..":
            if out:
                out.pop()
        else:
            out.append(part)
    return "/".join(out)


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> str:
    """`path` with every symlink resolved inside `root`; the result is relative to `root`.

    Components that do not exist are kept literally (a later mkdir creates them). With
    `follow_last=False` a symlink as the final component is not followed (lstat semantics).
    The result never climbs out of `root` whatever the links say.
    """
    done: list[str] = []
    todo = split_path(path)
    todo.reverse()
    links = 0
    missing = False
    while todo:
        part = todo.pop()
        if part == "..":
            if done:
                done.pop()
            if missing:
                missing = not os.path.lexists(root.joinpath(*done))
            continue
        if missing:
            done.append(part)
            continue
        candidate = root.joinpath(*done, part)
        try:
            st = os.lstat(candidate)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                missing = True
                done.append(part)
                continue
            raise
        if not stat.S_ISLNK(st.st_mode) or (not todo and not follow_last):
            done.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise SymlinkLoopError(f"too many levels of symbolic links resolving {path!r} in {root}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            done = []
        new = split_path(target)
        new.reverse()
        todo.extend(new)
    return "/".join(done)


def host_path(root: Path, rel: str) -> Path:
    """The host path of a root-relative path returned by `resolve_in_root`."""
    return root.joinpath(*split_path(rel)) if rel else root
