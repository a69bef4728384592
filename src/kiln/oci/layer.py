"""The layer tar model shared by the writer, the reader and apply: entries, names, headers.

kiln writes POSIX pax archives (ustar headers plus pax extended headers when a field does
not fit or an entry has xattrs). Owner names are always empty and ownership numeric; there
is no atime or ctime. `encode_header` is a pure function of the entry, so identical entries
give identical bytes on any machine and any Python version.

Names are text decoded from the archive's bytes with UTF-8 and `surrogateescape`, like
`os.fsdecode`, so names that are not UTF-8 round-trip unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

BLOCK: int = 512

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: Entries aufs used for its own bookkeeping; they mean nothing to anyone else.
AUFS_META_PREFIX = ".wh..wh."

_MAX_OCTAL_11 = 0o77777777777
_MAX_OCTAL_7 = 0o7777777


class EntryType(enum.Enum):
    FILE = b"0"
    HARDLINK = b"1"
    SYMLINK = b"2"
    CHAR = b"3"
    BLOCK = b"4"
    DIR = b"5"
    FIFO = b"6"


@dataclass(slots=True)
class TarEntry:
    """One archive member. `mode` holds permission bits only (07777, with setuid/setgid/sticky)."""

    name: str
    type: EntryType
    size: int = 0
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def basename(self) -> str:
        return self.name.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_whiteout(self) -> bool:
        return self.basename.startswith(WHITEOUT_PREFIX)


class BadNameError(ValueError):
    """An archive name that is empty or climbs out of the archive's root."""


def normalize_name(name: str) -> str:
    """The clean relative form of an archive name: './a/', '/a', 'a//b/../a' -> 'a'.

    '..' is resolved lexically and may not climb above the root; the root itself is ''.
    """
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise BadNameError(f"{name!r} climbs out of the root")
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def split_whiteout(name: str) -> tuple[str, str] | None:
    """For a normalized whiteout name, ('whiteout' | 'opaque', the path it names); else None."""
    parent, _, base = name.rpartition("/")
    if not base.startswith(WHITEOUT_PREFIX):
        return None
    if base == OPAQUE_MARKER:
        return "opaque", parent
    if base.startswith(AUFS_META_PREFIX):
        return "meta", name
    target = base[len(WHITEOUT_PREFIX) :]
    if target in ("", ".", ".."):
        raise BadNameError(f"{name!r} whites out {target!r}")
    return "whiteout", f"{parent}/{target}" if parent else target


def whiteout_name(path: str) -> str:
    parent, _, base = normalize_name(path).rpartition("/")
    if not base:
        raise BadNameError(f"cannot white out the root ({path!r})")
    return f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base


def opaque_name(dirpath: str) -> str:
    parent = normalize_name(dirpath)
    return f"{parent}/{OPAQUE_MARKER}" if parent else OPAQUE_MARKER


def encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def pax_record(key: str, value: bytes) -> bytes:
    """One `"%d %s=%s\\n"` record; the length counts its own digits."""
    body = b" " + key.encode("utf-8") + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode("ascii") + body


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def _ustar(
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
) -> bytes:
    header = b"".join(
        [
            name[:100].ljust(100, b"\x00"),
            _octal(mode, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b" " * 8,
            typeflag,
            linkname[:100].ljust(100, b"\x00"),
            b"ustar\x0000",
            b"\x00" * 64,  # uname, gname: kiln records ownership numerically only
            _octal(devmajor, 8),
            _octal(devminor, 8),
            b"\x00" * 167,  # prefix and padding: long names go in pax records instead
        ]
    )
    checksum = b"%06o\x00 " % sum(header)
    return header[:148] + checksum + header[156:]


def padding(size: int) -> bytes:
    return b"\x00" * (-size % BLOCK)


def _needs_pax(raw: bytes) -> bool:
    return len(raw) > 100 or not raw.isascii()


def encode_header(entry: TarEntry) -> bytes:
    """The header blocks (a pax extended header if needed, then ustar) for an entry."""
    name = encode_name(entry.name)
    link = encode_name(entry.linkname)
    records: list[bytes] = []
    binary = False
    for key, text, raw in (("path", entry.name, name), ("linkpath", entry.linkname, link)):
        if _needs_pax(raw):
            records.append(pax_record(key, raw))
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                binary = True
    size, uid, gid, mtime = entry.size, entry.uid, entry.gid, entry.mtime
    if size > _MAX_OCTAL_11:
        records.append(pax_record("size", str(size).encode()))
        size = 0
    if uid > _MAX_OCTAL_7:
        records.append(pax_record("uid", str(uid).encode()))
        uid = 0
    if gid > _MAX_OCTAL_7:
        records.append(pax_record("gid", str(gid).encode()))
        gid = 0
    if not 0 <= mtime <= _MAX_OCTAL_11:
        records.append(pax_record("mtime", str(mtime).encode()))
        mtime = 0
    if entry.devmajor > _MAX_OCTAL_7 or entry.devminor > _MAX_OCTAL_7:
        raise ValueError(f"{entry.name!r}: device number too large for a tar header")
    for key in sorted(entry.xattrs):
        records.append(pax_record("SCHILY.xattr." + key, entry.xattrs[key]))
    out = b""
    if records:
        if binary:
            # POSIX: path values that are not UTF-8 are only valid after hdrcharset=BINARY.
            records.insert(0, pax_record("hdrcharset", b"BINARY"))
        body = b"".join(records)
        out = _ustar(b"PaxHeaders/" + name[:89], 0o644, 0, 0, len(body), 0, b"x") + body + padding(len(body))
    return out + _ustar(
        name,
        entry.mode & 0o7777,
        uid,
        gid,
        size,
        mtime,
        entry.type.value,
        link,
        entry.devmajor,
        entry.devminor,
    )


#: Two zero blocks end an archive.
END_OF_ARCHIVE = b"\x00" * (2 * BLOCK)
