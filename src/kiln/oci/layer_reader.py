"""Streaming layer reader: entries one at a time, contents as bounded streams.

Reads ustar, pax (per-file and global) and GNU long-name archives from any compression.
Nothing is buffered beyond one block and one entry's metadata; metadata records larger
than `MAX_META_SIZE` are refused so a hostile layer cannot make kiln allocate gigabytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import urllib.parse
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import BinaryIO, cast

import zstandard
from isal import isal_zlib

from kiln.errors import DigestMismatchError, LayerError
from kiln.oci.compression import open_decompressed
from kiln.oci.digest import BLOCK_SIZE, Digest
from kiln.oci.layer import BLOCK, EntryType, TarEntry, decode_name

__all__ = ["MAX_META_SIZE", "iter_layer", "open_decompressed"]

#: Largest pax header or GNU long name kiln accepts (real ones are a few KiB at most).
MAX_META_SIZE = 1 << 20

#: isal's stub declares its error class as an instance; it is a class at run time.
_DECODE_ERRORS = (OSError, EOFError, zstandard.ZstdError, cast(type[Exception], isal_zlib.error))
_TYPES = {t.value: t for t in EntryType}


class _Source:
    """The decompressed tar: exact reads, hashing (DiffID) and error translation."""

    def __init__(self, stream: BinaryIO, layer: str) -> None:
        self._stream = stream
        self.layer = layer
        self.hasher = hashlib.sha256()
        self.offset = 0

    def read(self, n: int) -> bytes:
        try:
            data = self._stream.read(n)
        except _DECODE_ERRORS as e:
            raise LayerError(f"layer {self.layer}: cannot decompress at byte {self.offset}: {e}") from e
        self.hasher.update(data)
        self.offset += len(data)
        return data

    def read_exact(self, n: int, what: str) -> bytes:
        parts: list[bytes] = []
        left = n
        while left:
            data = self.read(min(left, BLOCK_SIZE))
            if not data:
                raise LayerError(f"layer {self.layer}: truncated archive in {what}")
            parts.append(data)
            left -= len(data)
        return b"".join(parts)

    def skip(self, n: int, what: str) -> None:
        while n:
            data = self.read(min(n, BLOCK_SIZE))
            if not data:
                raise LayerError(f"layer {self.layer}: truncated archive in {what}")
            n -= len(data)

    def drain(self) -> None:
        while self.read(BLOCK_SIZE):
            pass


class _EntryReader(io.RawIOBase):
    """The content of one entry; valid until the iterator moves on."""

    def __init__(self, src: _Source, size: int, name: str) -> None:
        super().__init__()
        self._src = src
        self.remaining = size
        self._name = name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError(f"content of {self._name!r} read after the layer reader moved on")
        want = self.remaining if size is None or size < 0 else min(size, self.remaining)
        if want <= 0:
            return b""
        data = self._src.read(want)
        if not data:
            raise LayerError(f"layer {self._src.layer}: entry {self._name!r}: truncated content")
        self.remaining -= len(data)
        return data


def _number(field: bytes, what: str, layer: str) -> int:
    if field and field[0] & 0x80:
        # GNU base-256: 0x80 marks a positive, 0xff a negative big-endian number.
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise LayerError(f"layer {layer}: bad {what} field {field!r} in a tar header") from None


def _parse_pax(data: bytes, layer: str) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        try:
            space = data.index(b" ", pos)
            length = int(data[pos:space])
        except ValueError:
            raise LayerError(f"layer {layer}: malformed pax header at record offset {pos}") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise LayerError(f"layer {layer}: malformed pax record at offset {pos}")
        key, _, value = record[:-1].partition(b"=")
        records[decode_name(key)] = value
        pos += length
    return records


def _pax_int(value: bytes, key: str, layer: str) -> int:
    try:
        number = Decimal(value.decode("ascii"))
        if not number.is_finite():
            raise InvalidOperation
    except (InvalidOperation, UnicodeDecodeError):
        raise LayerError(f"layer {layer}: bad pax {key} value {value!r}") from None
    return math.floor(number)


def _apply_pax(entry: TarEntry, pax: dict[str, bytes], layer: str) -> None:
    for key, value in pax.items():
        if key == "path":
            entry.name = decode_name(value)
        elif key == "linkpath":
            entry.linkname = decode_name(value)
        elif key in ("size", "uid", "gid", "mtime"):
            setattr(entry, key, _pax_int(value, key, layer))
        elif key.startswith("SCHILY.xattr."):
            entry.xattrs[key[len("SCHILY.xattr.") :]] = value
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
            try:
                entry.xattrs[name] = base64.b64decode(value + b"=" * (-len(value) % 4))
            except binascii.Error:
                raise LayerError(f"layer {layer}: entry {entry.name!r}: bad {key} value") from None
        elif key.startswith("GNU.sparse."):
            raise LayerError(f"layer {layer}: entry {entry.name!r}: sparse files are not supported")


def _parse_header(block: bytes, layer: str) -> tuple[bytes, TarEntry, bytes]:
    """(typeflag, entry without pax, raw linkname) from a header block."""
    stored = _number(block[148:156], "checksum", layer)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    # Some old writers summed the header as signed chars.
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b >= 128)
    name = block[:100].split(b"\x00", 1)[0]
    if stored not in (unsigned, signed):
        raise LayerError(f"layer {layer}: bad tar header checksum (entry {decode_name(name)!r})")
    if block[257:263] == b"ustar\x00":
        prefix = block[345:500].split(b"\x00", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    entry = TarEntry(
        name=decode_name(name),
        type=EntryType.FILE,
        size=_number(block[124:136], "size", layer),
        mode=_number(block[100:108], "mode", layer) & 0o7777,
        uid=_number(block[108:116], "uid", layer),
        gid=_number(block[116:124], "gid", layer),
        mtime=_number(block[136:148], "mtime", layer),
        linkname=decode_name(block[157:257].split(b"\x00", 1)[0]),
        devmajor=_number(block[329:337], "devmajor", layer),
        devminor=_number(block[337:345], "devminor", layer),
    )
    return block[156:157], entry, name


def iter_layer(
    stream: BinaryIO,
    compression: str | None = None,
    *,
    layer_name: str = "layer",
    diff_id: Digest | None = None,
) -> Iterator[tuple[TarEntry, BinaryIO]]:
    """Yield (entry, content) for each member of a layer, streaming.

    The content stream is only valid until the next entry is requested; for anything but a
    regular file it is empty. After the last entry the rest of the input is read, so a caller
    hashing the compressed stream sees all of it; the DiffID is checked if `diff_id` is given.
    """
    src = _Source(open_decompressed(stream, compression), layer_name)
    global_pax: dict[str, bytes] = {}
    pax: dict[str, bytes] = {}
    long_name: bytes | None = None
    long_link: bytes | None = None
    while True:
        block = src.read(BLOCK)
        if len(block) < BLOCK and block:
            block += src.read_exact(BLOCK - len(block), "a header")
        if not block or block == bytes(BLOCK):
            break  # end of archive (a missing end marker is tolerated, as GNU tar does)
        typeflag, entry, _ = _parse_header(block, layer_name)
        if entry.size < 0:
            raise LayerError(f"layer {layer_name}: entry {entry.name!r}: negative size")
        data_size = entry.size
        if typeflag in (b"x", b"g", b"L", b"K"):
            if data_size > MAX_META_SIZE:
                raise LayerError(f"layer {layer_name}: a {data_size}-byte tar metadata record is too large")
            data = src.read_exact(data_size, f"metadata before {entry.name!r}")
            src.skip(-data_size % BLOCK, "padding")
            if typeflag == b"x":
                pax = _parse_pax(data, layer_name)
            elif typeflag == b"g":
                global_pax.update(_parse_pax(data, layer_name))
                global_pax = {k: v for k, v in global_pax.items() if v}
            elif typeflag == b"L":
                long_name = data.split(b"\x00", 1)[0]
            else:
                long_link = data.split(b"\x00", 1)[0]
            continue
        if long_name is not None:
            entry.name = decode_name(long_name)
        if long_link is not None:
            entry.linkname = decode_name(long_link)
        merged = {**global_pax, **pax}
        _apply_pax(entry, {k: v for k, v in merged.items() if v}, layer_name)
        pax, long_name, long_link = {}, None, None
        data_size = entry.size
        if typeflag in (b"0", b"7") or (typeflag == b"\x00" and not entry.name.endswith("/")):
            entry.type = EntryType.FILE
        elif typeflag in (b"\x00", b"D"):
            entry.type = EntryType.DIR
        elif typeflag == b"V":
            src.skip(data_size + (-data_size % BLOCK), "a volume header")
            continue
        elif typeflag in _TYPES:
            entry.type = _TYPES[typeflag]
        else:
            what = "sparse files are" if typeflag == b"S" else f"tar entry type {typeflag!r} is"
            raise LayerError(f"layer {layer_name}: entry {entry.name!r}: {what} not supported")
        if entry.type is not EntryType.FILE:
            entry.size = 0
        content = _EntryReader(src, entry.size, entry.name)
        try:
            yield entry, cast(BinaryIO, content)
        finally:
            rest = content.remaining
            content.close()
        src.skip((data_size - entry.size) + rest + (-data_size % BLOCK), f"entry {entry.name!r}")
    src.drain()
    got = Digest("sha256:" + src.hasher.hexdigest())
    if diff_id is not None and got != diff_id:
        raise DigestMismatchError(f"layer {layer_name}: DiffID mismatch: expected {diff_id}, got {got}")
