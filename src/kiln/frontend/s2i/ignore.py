""".s2iignore: source paths removed before the build, with s2i's (not Docker's) rules.

Each line of ``.s2iignore`` at the application root is a Go ``filepath.Glob`` pattern relative
to that root (``*`` does not cross ``/``; rules are not recursive: ``*.log`` matches only at
the top, ``logs/*.log`` one level down). A matched directory goes with everything in it.
Lines starting with ``#`` are comments; ``!pattern`` keeps, among the paths matched so far,
those it matches (a later pattern may match them again). The file itself stays.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kiln.build.copy_patterns import go_match
from kiln.errors import KilnError

IGNORE_FILE = ".s2iignore"


def ignored_paths(root: Path, lines: list[str]) -> set[str]:
    """Relative paths (as found on disk) the rules remove."""
    chosen: set[str] = set()
    for raw in lines:
        spec = raw.strip(" ")
        if not spec or spec.startswith("#"):
            continue
        if spec.startswith("!"):
            keep = _clean(spec[1:])
            chosen = {p for p in chosen if not _match(keep, p)}
            continue
        chosen.update(_glob(root, _clean(spec)))
    return chosen


def apply_s2iignore(root: Path) -> list[str]:
    """Remove what ``root/.s2iignore`` lists; the removed paths, sorted."""
    path = root / IGNORE_FILE
    if not path.is_file() or path.is_symlink():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    removed = sorted(ignored_paths(root, lines))
    for rel in removed:
        target = root / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    return removed


def _clean(spec: str) -> str:
    parts = [p for p in spec.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _match(pattern: str, rel: str) -> bool:
    try:
        return go_match(pattern, rel)
    except KilnError:  # a malformed pattern matches nothing, as Go's Match reports ErrBadPattern
        return False


def _glob(root: Path, pattern: str) -> list[str]:
    parts = pattern.split("/") if pattern else []
    found: list[str] = []

    def visit(rel: str, depth: int) -> None:
        if depth == len(parts):
            found.append(rel)
            return
        directory = root / rel if rel else root
        if not directory.is_dir() or directory.is_symlink():
            return
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return
        for name in names:
            if _match(parts[depth], name):
                visit(f"{rel}/{name}" if rel else name, depth + 1)

    if parts:
        visit("", 0)
    return found
