"""`COPY --chmod` values: octal (`755`, `0644`, `4755`) or symbolic (`u+x,g-w,o=r,a+X`).

Octal replaces all twelve permission bits of every copied file and directory. Symbolic
clauses are applied in order to each entry's own mode, as chmod(1) does: `who` is any of
`ugoa` (none means `a`; there is no umask inside a build), the operator is `+`, `-` or `=`,
and the permissions are any of `rwxXst` or a single one of `ugo` (copy that class's bits).
`X` adds execute only to directories and to files that already have an execute bit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from kiln.errors import KilnError

_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o1007}  # class bits incl. that class's special bit
_CLAUSE = re.compile(r"^([ugoa]*)((?:[-+=][rwxXst]*|[-+=][ugo])+)$")
_OP = re.compile(r"([-+=])([ugo](?![rwxXst])|[rwxXst]*)")

ModeFn = Callable[[int, bool], int]


class ChmodError(KilnError):
    """A --chmod value that is neither octal nor a valid symbolic mode."""


@dataclass(frozen=True)
class Chmod:
    """A parsed --chmod: `apply(mode, is_dir)` gives the new permission bits (07777)."""

    text: str
    octal: int | None
    clauses: tuple[tuple[int, str, str], ...] = ()  # (who mask, op, perms)

    def apply(self, mode: int, is_dir: bool) -> int:
        if self.octal is not None:
            return self.octal
        mode &= 0o7777
        for who, op, perms in self.clauses:
            mode = _apply_clause(mode, is_dir, who, op, perms)
        return mode


def parse_chmod(text: str) -> Chmod:
    """Parse a --chmod value; errors name the value as BuildKit's do."""
    if text and text.isascii() and text.isdigit():
        try:
            value = int(text, 8)
        except ValueError:
            value = -1
        if not 0 <= value <= 0o7777:
            raise ChmodError(f"invalid chmod parameter: {text!r}. it should be octal string and between 0 and 07777")
        return Chmod(text, value)
    clauses: list[tuple[int, str, str]] = []
    for clause in text.split(","):
        m = _CLAUSE.match(clause)
        if not m:
            raise ChmodError(
                f"invalid chmod parameter: {text!r}: expected octal (e.g. 0755) or symbolic (e.g. u+x,g-w,o=r)"
            )
        who_text = m.group(1) or "a"
        who = 0
        for c in who_text:
            who |= 0o7777 if c == "a" else _WHO[c]
        for op, perms in _OP.findall(m.group(2)):
            clauses.append((who, op, perms))
    return Chmod(text, None, tuple(clauses))


def _apply_clause(mode: int, is_dir: bool, who: int, op: str, perms: str) -> int:
    if perms in ("u", "g", "o"):
        # copy the rwx bits of one class to the selected classes
        shift = {"u": 6, "g": 3, "o": 0}[perms]
        rwx = (mode >> shift) & 0o7
        bits = (rwx << 6 | rwx << 3 | rwx) & who & 0o777
    else:
        bits = 0
        for p in perms:
            if p == "r":
                bits |= 0o444
            elif p == "w":
                bits |= 0o222
            elif p == "x" or (p == "X" and (is_dir or mode & 0o111)):
                bits |= 0o111
            elif p == "s":
                bits |= 0o6000
            elif p == "t":
                bits |= 0o1000
        bits &= who
    if op == "+":
        return mode | bits
    if op == "-":
        return mode & ~bits
    # '=': clear the selected classes' rwx (and their special bits), then set
    clear = who & 0o777
    if who & 0o700:
        clear |= 0o4000
    if who & 0o070:
        clear |= 0o2000
    if who & 0o007:
        clear |= 0o1000
    return (mode & ~clear) | bits
