"""`ADD <local tar>`: recognising an archive by its bytes and listing what it extracts to.

An ADD source is extracted when, after undoing gzip, bzip2, xz or zstd (found by magic
bytes, never by file name), its first block is a valid tar header: BuildKit's test. An empty
tar or a compressed non-tar is copied as a plain file instead.

Extraction follows Docker's `archive.Untar`: ownership, modes and times come from the archive;
names are cleaned and may not climb out of the destination; a relative symlink whose target
would land outside the destination is refused, as is a hardlink to outside; `.` is skipped;
parents the archive does not list are created 0755 root-owned.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import lzma
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from kiln.build.copy_plan import DestPlan, Planned
from kiln.build.rootpath import clean_path, split_path
from kiln.errors import KilnError, LayerError
from kiln.oci.digest import BLOCK_SIZE
from kiln.oci.layer import BLOCK
from kiln.oci.layer_writer import entry_from_tarinfo

_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


class ArchiveError(KilnError):
    """A local archive that ADD cannot extract safely."""


def sniff_compression(head: bytes) -> str:
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return "none"


def open_decompressed(path: Path, compression: str) -> BinaryIO:
    if compression == "gzip":
        return cast(BinaryIO, gzip.open(path, "rb"))
    if compression == "bzip2":
        return cast(BinaryIO, bz2.open(path, "rb"))
    if compression == "xz":
        return cast(BinaryIO, lzma.open(path, "rb"))
    if compression == "zstd":
        raw = open(path, "rb")  # noqa: SIM115 - closed with the reader below
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return cast(BinaryIO, reader)
    return open(path, "rb")


def _valid_header(block: bytes) -> bool:
    if len(block) < BLOCK or block == b"\x00" * BLOCK:
        return False
    field = block[148:156].replace(b"\x00", b" ").strip()
    try:
        want = int(field, 8) if field else -1
    except ValueError:
        return False
    blanked = block[:148] + b" " * 8 + block[156:BLOCK]
    unsigned = sum(blanked)
    signed = sum(b - 256 if b > 127 else b for b in blanked)
    return want in (unsigned, signed)


def archive_compression(path: Path) -> str | None:
    """The compression of `path` if it is a tar archive ADD should extract, else None."""
    try:
        with open(path, "rb") as f:
            compression = sniff_compression(f.read(8))
        with open_decompressed(path, compression) as stream:
            head = b""
            while len(head) < BLOCK:
                chunk = stream.read(BLOCK - len(head))
                if not chunk:
                    break
                head += chunk
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError):
        return None  # a truncated or corrupt compressed file is copied as it is, like Docker
    return compression if _valid_header(head) else None


@contextlib.contextmanager
def open_tar(path: Path, compression: str, tmp_dir: Path | None = None) -> Iterator[tarfile.TarFile]:
    """A random-access TarFile; compressed archives are first inflated to a temp file once."""
    if compression == "none":
        with tarfile.open(path, "r:") as tf:
            yield tf
        return
    with tempfile.TemporaryFile(dir=tmp_dir, prefix="kiln-add-") as tmp:
        try:
            with open_decompressed(path, compression) as src:
                shutil.copyfileobj(src, tmp, BLOCK_SIZE)
        except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as e:
            raise ArchiveError(f"{path.name}: cannot decompress ({compression}): {e}") from None
        tmp.seek(0)
        with tarfile.open(fileobj=tmp, mode="r:") as tf:
            yield tf


def member_path(name: str, what: str) -> str:
    """The cleaned, destination-relative path of an archive member; refuses escapes.

    Docker joins the name onto the destination and checks the result is still inside it,
    so `/etc/x` lands in `<dest>/etc/x` while `../x` is an error.
    """
    if name.startswith("/"):
        return clean_path(name)  # Go's Clean clamps '..' at '/' before the join
    depth = 0
    for part in split_path(name):
        depth += -1 if part == ".." else 1
        if depth < 0:
            raise ArchiveError(f"{what}: archive member {name!r} would be extracted outside the destination")
    return clean_path(name)


def check_symlink(rel: str, target: str, what: str) -> None:
    """Docker refuses relative symlinks that point outside the extraction directory."""
    if target.startswith("/"):
        return
    depth = len(split_path(rel)) - 1
    for part in split_path(target):
        depth += -1 if part == ".." else 1
        if depth < 0:
            raise ArchiveError(f"{what}: archive member {rel!r} is a symlink to {target!r}, outside the destination")


def plan_archive(
    plan: DestPlan,
    dest: str,
    path: Path,
    compression: str,
    *,
    stack: contextlib.ExitStack,
    tmp_dir: Path | None = None,
) -> None:
    """Plan the members of archive `path` under directory `dest` (kept open on `stack`)."""
    what = f"{plan.where}{plan.what} {path.name}"
    plan.ensure_parents(dest)
    plan.ensure_dir(dest)
    tf = stack.enter_context(open_tar(path, compression, tmp_dir))
    try:
        members = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArchiveError(f"{what}: cannot read the archive: {e}") from None
    for m in members:
        rel = member_path(m.name, what)
        if not rel:
            continue  # '.': the destination keeps its metadata
        target = f"{dest}/{rel}" if dest else rel
        plan.ensure_parents(target, (0, 0))  # Untar makes missing parents 0755 root, --chown or not
        if m.issym():
            check_symlink(rel, m.linkname, what)
        if m.islnk():
            linked = member_path(m.linkname, what)
            source = plan.entries.get(f"{dest}/{linked}" if dest else linked)
            if source is None:
                raise ArchiveError(f"{what}: hardlink {m.name!r} points to {m.linkname!r}, which is not in the archive")
            if source.link_key is None:
                source.link_key = object()
            plan.put(target, replace_planned(source, source.link_key), archive=True)
            continue
        try:
            entry = entry_from_tarinfo(m)
        except LayerError as e:
            raise ArchiveError(f"{what}: {e}") from None
        opener = None
        if m.isreg() and m.size:
            opener = _member_opener(tf, m)
        plan.put(target, Planned(entry, opener=opener), archive=True)


def replace_planned(source: Planned, key: object) -> Planned:
    return Planned(dataclasses.replace(source.entry), source.path, source.data, source.opener, key)


def _member_opener(tf: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], BinaryIO]:
    def open_member() -> BinaryIO:
        f = tf.extractfile(member)
        if f is None:
            raise ArchiveError(f"archive member {member.name!r} has no content")
        return cast(BinaryIO, f)

    return open_member
