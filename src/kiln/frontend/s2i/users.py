"""Who assembles, and ``--allowed-uids``: which users a build may run scripts as.

The assemble user is ``--assemble-user``, else the image's ``io.openshift.s2i.assemble-user``
label, else its ``USER`` (empty means root). With ``--allowed-uids`` the user must be numeric
(``1001`` or ``1001:0``), as s2i requires: a name could only be checked against the image's
/etc/passwd, which means its layers, and the point of the check is to refuse a builder before
anything of it is pulled or run. Root (an empty user, ``0``) is outside every range that
starts at 1.

Ranges are s2i's: ``1-`` (1 and up), ``1000-2000``, ``5``, comma-separated: ``1-10,20-``.

    >>> ranges = parse_allowed_uids("1-10,20-")
    >>> [uid_allowed(u, ranges) for u in (0, 5, 15, 20, 70000)]
    [False, True, False, True, True]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kiln.errors import KilnError, UsageError
from kiln.frontend.s2i.labels import ASSEMBLE_USER

MAX_UID = 2**31 - 1


class UserNotAllowedError(KilnError):
    """A builder (or runtime) image would run scripts as a user outside --allowed-uids."""


@dataclass(frozen=True)
class UidRange:
    low: int
    high: int | None  # None: no upper bound

    def __contains__(self, uid: int) -> bool:
        return uid >= self.low and (self.high is None or uid <= self.high)

    def __str__(self) -> str:
        if self.high == self.low:
            return str(self.low)
        return f"{self.low}-{'' if self.high is None else self.high}"


def parse_allowed_uids(text: str) -> tuple[UidRange, ...]:
    ranges = []
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        if not _number(low) or (high and not _number(high)) or (not dash and high):
            raise UsageError(f"--allowed-uids {text!r}: expected ranges like 1-, 1000-2000 or 1-10,20-")
        lo = int(low)
        hi = None if dash and not high else int(high) if high else lo
        if hi is not None and hi < lo:
            raise UsageError(f"--allowed-uids {text!r}: range {part} is empty")
        ranges.append(UidRange(lo, hi))
    return tuple(ranges)


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) <= MAX_UID


def uid_allowed(uid: int, ranges: tuple[UidRange, ...]) -> bool:
    return any(uid in r for r in ranges)


def effective_user(requested: str | None, labels: Mapping[str, str], image_user: str | None) -> str:
    """The user scripts run as: the request, else the assemble-user label, else the image's USER."""
    return (requested or "").strip() or labels.get(ASSEMBLE_USER, "").strip() or (image_user or "").strip()


def check_allowed(user: str, ranges: tuple[UidRange, ...] | None, *, image: str, role: str = "assemble") -> None:
    """Raise UserNotAllowedError unless ``user`` is numeric and inside ``ranges`` (None: no check)."""
    if ranges is None:
        return
    shown = ",".join(map(str, ranges))
    uid_text = user.partition(":")[0] or "0"
    if not _number(uid_text):
        raise UserNotAllowedError(
            f"image {image}: {role} user {user!r} is not numeric; with --allowed-uids ({shown}) the "
            "image (or --assemble-user) must name a numeric user"
        )
    if not uid_allowed(int(uid_text), ranges):
        who = "root" if int(uid_text) == 0 else f"uid {int(uid_text)}"
        raise UserNotAllowedError(f"image {image}: {role} would run as {who}, outside --allowed-uids {shown}")


def chown_spec(user: str) -> str:
    """``--chown`` for files the user gets: its group if it names one, else 0 (as s2i does)."""
    uid, _, gid = user.partition(":")
    return f"{uid or '0'}:{gid or '0'}"
