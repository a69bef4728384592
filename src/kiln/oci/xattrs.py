"""Extended attributes as layers carry them (PAX ``SCHILY.xattr.*``)."""

from __future__ import annotations

import os
from collections.abc import Callable


def default_xattr_filter(name: str) -> bool:
    """xattrs that describe the file, not the machine or the overlay that holds it."""
    if name == "security.selinux":
        return False  # host labels differ per machine; the runtime relabels anyway
    return not name.startswith(("trusted.overlay.", "user.overlay."))


def read_xattrs(path: str | os.PathLike[str], keep: Callable[[str], bool] = default_xattr_filter) -> dict[str, bytes]:
    """A path's xattrs that ``keep`` accepts, sorted by name, never following a symlink."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}  # the file system has no xattrs
    found: dict[str, bytes] = {}
    for key in sorted(names):
        if keep(key):
            try:
                found[key] = os.getxattr(path, key, follow_symlinks=False)
            except OSError:
                continue  # removed since it was listed
    return found
