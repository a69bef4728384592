"""Layer compression: a one-pass compressing, hashing sink and a sniffing decompressor.

Writing computes three things in the same pass over the data: the DiffID (sha256 of the
uncompressed tar), the digest (sha256 of the compressed bytes) and the compressed size.

gzip is written with ISA-L's raw deflate and a gzip member header kiln writes itself, so the
header never carries a timestamp or file name: the same tar gives the same bytes everywhere.
Reading trusts the magic bytes over the announced media type, because registries mislabel.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Final, cast

import zstandard
from isal import igzip, isal_zlib

from kiln.errors import UsageError
from kiln.oci.digest import BLOCK_SIZE, Digest

GZIP: Final = "gzip"
ZSTD: Final = "zstd"
NONE: Final = "none"
COMPRESSIONS: Final = (GZIP, ZSTD, NONE)

#: On a tar of Python's stdlib, ISA-L level 1 deflates an order of magnitude faster than zlib -6
#: for about 15% more bytes; level 2 was about 25% slower for 1% fewer bytes, level 3 3x slower.
DEFAULT_GZIP_LEVEL: Final = 1
DEFAULT_ZSTD_LEVEL: Final = 3

_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
#: gzip member header: deflate, no flags, mtime 0, no extra flags, OS 255 ("unknown").
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
#: Compressed chunks handed to the writer thread and not yet written: bounds the memory the
#: pipeline holds to about this many blocks.
_MAX_QUEUED: Final = 4


def check_compression(compression: str) -> str:
    if compression not in COMPRESSIONS:
        raise UsageError(
            f"unknown layer compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}"
        )
    return compression


def resolve_level(compression: str, level: int | None) -> int | None:
    """The effective level for a compression, validating a caller's choice."""
    check_compression(compression)
    if compression == NONE:
        if level is not None:
            raise UsageError("a compression level was given for an uncompressed layer")
        return None
    if compression == GZIP:
        lo, hi, default = isal_zlib.ISAL_BEST_SPEED, isal_zlib.ISAL_BEST_COMPRESSION, DEFAULT_GZIP_LEVEL
    else:
        lo, hi, default = 1, int(zstandard.MAX_COMPRESSION_LEVEL), DEFAULT_ZSTD_LEVEL
    if level is None:
        return default
    if not lo <= level <= hi:
        raise UsageError(f"{compression} level {level} is out of range {lo}..{hi}")
    return level


def detect_compression(head: bytes) -> str:
    """'gzip', 'zstd' or 'none' from the first bytes of a blob."""
    if head.startswith(_GZIP_MAGIC):
        return GZIP
    if head.startswith(_ZSTD_MAGIC):
        return ZSTD
    # zstd skippable frames (magic 0x184D2A50..5F, little endian) may precede the data frame.
    if len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        return ZSTD
    return NONE


class CompressingSink:
    """A write-only stream that compresses into `out` and hashes both sides on the way.

    Small writes (tar headers) are gathered into blocks so the compressor and hashes see
    large buffers; large writes pass straight through.

    Two threads share the work: the caller's thread hashes the uncompressed bytes and
    compresses them, a writer thread (one per sink, so chunks keep their order) hashes the
    compressed bytes and writes them to `out` (whose own work, such as the store's digest
    check, runs there too). hashlib and ISA-L release the GIL on large buffers, so on two cores
    a layer is written in about the time of its slower half. At most `_MAX_QUEUED` compressed
    chunks wait for the writer, so memory stays at a few blocks. `out` is written only from
    the writer thread, and never after `finish` or `abort` returns.
    """

    def __init__(self, out: BinaryIO, compression: str = GZIP, level: int | None = None) -> None:
        self.compression = check_compression(compression)
        self.level = resolve_level(compression, level)
        self._out = out
        self._diff = hashlib.sha256()
        self._blob = hashlib.sha256()
        self._pending = bytearray()
        self.uncompressed_size = 0
        self.size = 0
        self._crc = 0
        self._closed = False
        self._deflate: isal_zlib.Compress | None = None
        self._zstd: zstandard.ZstdCompressionObj | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._queued: deque[Future[None]] = deque()
        self._write_failed = False
        if compression == GZIP:
            assert self.level is not None
            self._deflate = isal_zlib.compressobj(self.level, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
            self._emit(_GZIP_HEADER)
        elif compression == ZSTD:
            assert self.level is not None
            self._zstd = zstandard.ZstdCompressor(level=self.level, write_checksum=True).compressobj()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        # ISA-L's output depends on how its input is split, so the compressor only ever sees
        # whole BLOCK_SIZE blocks (and one short last block): the bytes out are then a
        # function of the bytes in, whatever sizes the caller writes in.
        if self._closed:
            raise ValueError("write to a finished layer sink")
        view = memoryview(data).cast("B")
        n = len(view)
        if self._pending:
            take = BLOCK_SIZE - len(self._pending)
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < BLOCK_SIZE:
                return n
            self._drain()
        while len(view) >= BLOCK_SIZE:
            self._push(view[:BLOCK_SIZE])
            view = view[BLOCK_SIZE:]
        if view:
            self._pending += view
        return n

    def finish(self) -> tuple[Digest, Digest, int]:
        """Flush everything; returns (diff_id, digest, compressed size)."""
        if not self._closed:
            self._closed = True
            try:
                self._drain()
                if self._deflate is not None:
                    self._emit(self._deflate.flush(isal_zlib.Z_FINISH))
                    self._emit(struct.pack("<II", self._crc, self.uncompressed_size & 0xFFFFFFFF))
                elif self._zstd is not None:
                    self._emit(self._zstd.flush())
                self._settle()
            except BaseException:
                self.abort()
                raise
            self._stop_writer()
            flush = getattr(self._out, "flush", None)
            if flush is not None:
                flush()
        return (
            Digest("sha256:" + self._diff.hexdigest()),
            Digest("sha256:" + self._blob.hexdigest()),
            self.size,
        )

    def abort(self) -> None:
        """Give up on the stream: wait for the writer thread (its errors are moot now) and stop it."""
        self._closed = True
        while self._queued:
            self._queued.popleft().exception()  # waits; the error itself no longer matters
        self._stop_writer()

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def _settle(self) -> None:
        """Wait until every queued chunk is written; raise the writer thread's first error."""
        while self._queued:
            self._queued.popleft().result()

    def _drain(self) -> None:
        if self._pending:
            self._push(self._pending)
            self._pending = bytearray()

    def _push(self, data: bytes | bytearray | memoryview) -> None:
        self._diff.update(data)
        self.uncompressed_size += len(data)
        if self._deflate is not None:
            self._crc = isal_zlib.crc32(data, self._crc)
            self._emit(self._deflate.compress(data))
        elif self._zstd is not None:
            self._emit(self._zstd.compress(data))
        else:
            self._emit(data)

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        """Queue a chunk for the writer thread (a copy unless it is immutable bytes already)."""
        if not data:
            return
        chunk = data if isinstance(data, bytes) else bytes(data)
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-layer-writer")
        self._queued.append(self._writer.submit(self._write_out, chunk))
        while len(self._queued) > _MAX_QUEUED:
            self._queued.popleft().result()

    def _write_out(self, data: bytes) -> None:
        """On the writer thread, in the order chunks were queued."""
        if self._write_failed:
            return  # an earlier chunk failed: the stream is broken, the caller hears of it once
        try:
            self._write_all(data)
        except BaseException:
            self._write_failed = True
            raise

    def _write_all(self, data: bytes) -> None:
        self._blob.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            written = self._out.write(view)
            # Raw (unbuffered) files may write less than asked; buffered ones return None or all.
            if written is None or written >= len(view):
                break
            view = view[written:]


class _Prefixed(io.RawIOBase):
    """Replays bytes already sniffed from a stream, then reads on from the stream."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        want = len(buffer)
        if self._head:
            n = min(want, len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(want)
        buffer[: len(data)] = data
        return len(data)


def _read_head(stream: BinaryIO, size: int) -> bytes:
    head = b""
    while len(head) < size:
        chunk = stream.read(size - len(head))
        if not chunk:
            break
        head += chunk
    return head


def open_decompressed(stream: BinaryIO, compression: str | None = None) -> BinaryIO:
    """A readable stream of the uncompressed tar inside `stream`.

    `compression` is what the media type announced; the magic bytes win when they disagree,
    since mislabelled layers are common (an uncompressed tar cannot start with either magic).
    The returned stream does not close `stream`.
    """
    if compression is not None:
        check_compression(compression)
    head = _read_head(stream, 4)
    actual = detect_compression(head)
    raw = io.BufferedReader(_Prefixed(head, stream), buffer_size=BLOCK_SIZE)
    if actual == GZIP:
        return cast(BinaryIO, igzip.GzipFile(fileobj=raw, mode="rb"))  # type: ignore[no-untyped-call]
    if actual == ZSTD:
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=BLOCK_SIZE, read_across_frames=True, closefd=False
        )
        return cast(BinaryIO, io.BufferedReader(cast(io.RawIOBase, reader), buffer_size=BLOCK_SIZE))
    return cast(BinaryIO, raw)
