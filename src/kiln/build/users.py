"""User and group specs (`USER`, `COPY --chown`, `RUN` mounts) resolved against a rootfs.

Names are looked up in the image's own `/etc/passwd` and `/etc/group` (read through
`resolve_in_root`, so a symlinked /etc cannot make kiln read the host's files). Two rule sets
exist because Docker has two:

- `resolve_user` is the runtime rule of `USER` (runc's GetExecUser, which Docker and BuildKit
  both use): a name must exist; a numeric uid may be absent from passwd (then its gid is 0);
  the primary gid comes from passwd; supplementary gids are the groups that list the user's
  name, and only when no group was given explicitly.
- `resolve_chown` is the `COPY --chown` rule of BuildKit: a name gives its passwd uid and gid,
  a bare number N gives N:N, a group part overrides the gid.

kiln refuses unknown names on both paths (BuildKit maps an unknown `--chown` name to 0,
silently; Docker's classic builder and buildah refuse it, which is the safer choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln.build.rootpath import host_path, resolve_in_root
from kiln.errors import KilnError

#: Same limits as runc: ids are non-negative 31-bit numbers.
MAX_ID = 2**31 - 1


class UnknownUserError(KilnError):
    """A user or group name that the image's passwd or group file does not define."""


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str = "/"


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...] = ()


def _parse_id(text: str) -> int | None:
    """A decimal id, or None when `text` is not a number (so it is a name)."""
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    if value > MAX_ID:
        raise KilnError(f"id {text} is out of range (0..{MAX_ID})")
    return value


def _read_db(rootfs: Path | None, path: str) -> list[list[str]] | None:
    """Colon-separated lines of a passwd-style file, or None if the image has no such file."""
    if rootfs is None:
        return None
    real = host_path(rootfs, resolve_in_root(rootfs, path))
    try:
        data = real.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as e:
        raise KilnError(f"cannot read {path} of the image: {e.strerror}") from None
    rows = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rows.append(line.split(":"))
    return rows


def read_passwd(rootfs: Path | None) -> list[PasswdEntry] | None:
    rows = _read_db(rootfs, "/etc/passwd")
    if rows is None:
        return None
    out = []
    for row in rows:
        row += [""] * (7 - len(row))
        uid, gid = _safe_id(row[2]), _safe_id(row[3])
        if row[0] and uid is not None and gid is not None:
            out.append(PasswdEntry(row[0], uid, gid, row[5] or "/"))
    return out


def read_group(rootfs: Path | None) -> list[GroupEntry] | None:
    rows = _read_db(rootfs, "/etc/group")
    if rows is None:
        return None
    out = []
    for row in rows:
        row += [""] * (4 - len(row))
        gid = _safe_id(row[2])
        if row[0] and gid is not None:
            members = tuple(m.strip() for m in row[3].split(",") if m.strip())
            out.append(GroupEntry(row[0], gid, members))
    return out


def _safe_id(text: str) -> int | None:
    """A malformed id in an image's passwd line makes the line unusable, not the build fail."""
    try:
        return _parse_id(text.strip())
    except KilnError:
        return None


def _split_spec(spec: str, what: str) -> tuple[str, str | None]:
    if spec.count(":") > 1:
        raise KilnError(f"{what} {spec!r}: expected user[:group]")
    user, sep, group = spec.partition(":")
    if not user:
        raise KilnError(f"{what} {spec!r}: the user part is empty")
    if sep and not group:
        raise KilnError(f"{what} {spec!r}: the group part is empty")
    return user, (group if sep else None)


def _lookup_group(rootfs: Path | None, group: str, what: str, spec: str) -> int:
    gid = _parse_id(group)
    if gid is not None:
        return gid
    groups = read_group(rootfs)
    for entry in groups or []:
        if entry.name == group:
            return entry.gid
    where = "/etc/group of the image" if groups is not None else "the image (it has no /etc/group)"
    raise UnknownUserError(f"{what} {spec!r}: no group named {group!r} in {where}")


def resolve_user(rootfs: Path | None, spec: str) -> tuple[int, int, tuple[int, ...]]:
    """(uid, gid, supplementary gids) for a `USER` spec: name, uid, name:group, uid:gid.

    An empty spec means root. `rootfs` None means an image with no files (numeric ids only).
    """
    if not spec:
        spec = "0"
    user, group = _split_spec(spec, "user")
    uid_arg = _parse_id(user)
    passwd = read_passwd(rootfs)
    matched: PasswdEntry | None = None
    for entry in passwd or []:
        if (uid_arg is not None and entry.uid == uid_arg) or (uid_arg is None and entry.name == user):
            matched = entry
            break
    if matched is not None:
        uid, gid = matched.uid, matched.gid
    elif uid_arg is not None:
        uid, gid = uid_arg, 0
    else:
        where = "/etc/passwd of the image" if passwd is not None else "the image (it has no /etc/passwd)"
        raise UnknownUserError(f"unable to find user {user!r}: no matching entry in {where}")
    if group is not None:
        return uid, _lookup_group(rootfs, group, "user", spec), ()
    sgids: list[int] = []
    if matched is not None:
        for g in read_group(rootfs) or []:
            if matched.name in g.members:
                sgids.append(g.gid)
    return uid, gid, tuple(sgids)


@dataclass(frozen=True)
class ProcessUser:
    """Who a RUN step or a container runs as, as runc sets it up."""

    uid: int
    gid: int
    groups: tuple[int, ...]  # the primary gid first, then supplementary ones (BuildKit >= 0.11.4)
    home: str  # from passwd; "/" for a uid the image does not know


def resolve_process_user(rootfs: Path | None, spec: str) -> ProcessUser:
    uid, gid, supplementary = resolve_user(rootfs, spec)
    home = next((e.home for e in read_passwd(rootfs) or [] if e.uid == uid), "/")
    return ProcessUser(uid, gid, tuple(dict.fromkeys((gid, *supplementary))), home or "/")


def resolve_chown(rootfs: Path | None, spec: str) -> tuple[int, int]:
    """(uid, gid) for `COPY --chown=user[:group]` as BuildKit resolves it."""
    user, group = _split_spec(spec, "--chown")
    uid = _parse_id(user)
    if uid is not None:
        gid = uid
    else:
        passwd = read_passwd(rootfs)
        found = next((e for e in passwd or [] if e.name == user), None)
        if found is None:
            where = "/etc/passwd of the destination image" if passwd is not None else (
                "the destination image (it has no /etc/passwd)"
            )
            raise UnknownUserError(f"--chown={spec}: no user named {user!r} in {where}")
        uid, gid = found.uid, found.gid
    if group is not None:
        gid = _lookup_group(rootfs, group, "--chown", spec)
    return uid, gid
