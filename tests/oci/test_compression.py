"""Compression: one-pass hashing sink, deterministic gzip, sniffing decompressor."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import subprocess

import pytest
import zstandard

from kiln.errors import UsageError
from kiln.oci.compression import (
    DEFAULT_GZIP_LEVEL,
    DEFAULT_ZSTD_LEVEL,
    CompressingSink,
    detect_compression,
    open_decompressed,
    resolve_level,
)

DATA = os.urandom(3 << 20) + b"layer " * 400_000 + os.urandom(777)


def compress(
    data: bytes, compression: str, level: int | None = None, step: int = 1 << 30
) -> tuple[bytes, tuple[str, str, int]]:
    out = io.BytesIO()
    sink = CompressingSink(out, compression, level)
    for i in range(0, len(data), step):
        sink.write(data[i : i + step])
    diff_id, digest, size = sink.finish()
    return out.getvalue(), (diff_id, digest, size)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_one_pass_hashes_match_hashlib(compression: str) -> None:
    blob, (diff_id, digest, size) = compress(DATA, compression, step=100_003)
    assert diff_id == "sha256:" + hashlib.sha256(DATA).hexdigest()
    assert digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert size == len(blob)
    if compression == "gzip":
        assert gzip.decompress(blob) == DATA
    elif compression == "zstd":
        assert zstandard.ZstdDecompressor().decompressobj().decompress(blob) == DATA
    else:
        assert blob == DATA


def test_gzip_is_readable_by_gzip_tool(tmp_path: os.PathLike[str]) -> None:
    blob, _ = compress(DATA, "gzip")
    path = os.path.join(tmp_path, "x.gz")
    with open(path, "wb") as f:
        f.write(blob)
    out = subprocess.run(["gzip", "-dc", path], capture_output=True, check=True).stdout
    assert out == DATA


def test_gzip_header_has_no_time_or_name() -> None:
    blob, _ = compress(b"hello", "gzip")
    magic, method, flags, mtime, _xfl, os_byte = struct.unpack("<2sBBIBB", blob[:10])
    assert (magic, method, flags, mtime, os_byte) == (b"\x1f\x8b", 8, 0, 0, 255)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_output_depends_only_on_bytes_not_write_sizes(compression: str) -> None:
    # ISA-L output changes with how input is split; the sink must hide that.
    outputs = {compress(DATA, compression, step=step)[0] for step in (1 << 30, 1 << 20, 65_537, 512)}
    assert len(outputs) == 1


def test_levels_default_and_validation() -> None:
    assert resolve_level("gzip", None) == DEFAULT_GZIP_LEVEL
    assert resolve_level("zstd", None) == DEFAULT_ZSTD_LEVEL
    assert DEFAULT_GZIP_LEVEL in (1, 2) and DEFAULT_ZSTD_LEVEL == 3
    assert resolve_level("none", None) is None
    for compression, level in [("gzip", 9), ("gzip", -1), ("zstd", 0), ("zstd", 23), ("none", 1)]:
        with pytest.raises(UsageError):
            resolve_level(compression, level)
    with pytest.raises(UsageError, match="unknown layer compression"):
        CompressingSink(io.BytesIO(), "bzip2")


def test_levels_change_output() -> None:
    fast, _ = compress(DATA, "zstd", 1)
    slow, _ = compress(DATA, "zstd", 19)
    assert len(slow) < len(fast)
    g0, _ = compress(DATA, "gzip", 0)
    g3, _ = compress(DATA, "gzip", 3)
    assert len(g3) < len(g0)


def test_detect_compression() -> None:
    assert detect_compression(b"\x1f\x8b\x08\x00") == "gzip"
    assert detect_compression(b"\x28\xb5\x2f\xfd") == "zstd"
    assert detect_compression(b"\x50\x2a\x4d\x18") == "zstd"  # skippable frame first
    assert detect_compression(b"etc/") == "none"
    assert detect_compression(b"") == "none"


def _read(stream: io.BytesIO, compression: str | None = None) -> bytes:
    with open_decompressed(stream, compression) as plain:
        return plain.read()


def test_open_decompressed_reads_each_compression_from_other_writers() -> None:
    # gzip with a file name and a timestamp, as the gzip tool writes it
    named = io.BytesIO()
    with gzip.GzipFile("layer.tar", "wb", fileobj=named, mtime=1234567) as g:
        g.write(DATA)
    assert _read(io.BytesIO(named.getvalue()), "gzip") == DATA
    assert _read(io.BytesIO(zstandard.ZstdCompressor(level=5).compress(DATA)), "zstd") == DATA
    assert _read(io.BytesIO(DATA), "none") == DATA
    assert _read(io.BytesIO(b"")) == b""


def test_open_decompressed_multi_member_and_multi_frame() -> None:
    members = gzip.compress(b"first ") + gzip.compress(b"second")
    assert _read(io.BytesIO(members)) == b"first second"
    c = zstandard.ZstdCompressor()
    assert _read(io.BytesIO(c.compress(b"one ") + c.compress(b"two"))) == b"one two"


def test_magic_bytes_win_over_a_wrong_label() -> None:
    assert _read(io.BytesIO(zstandard.ZstdCompressor().compress(DATA)), "gzip") == DATA
    assert _read(io.BytesIO(gzip.compress(DATA)), "zstd") == DATA
    assert _read(io.BytesIO(DATA), "gzip") == DATA


def test_open_decompressed_streams_from_a_non_seekable_source() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = memoryview(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: memoryview) -> int:  # type: ignore[override]
            n = min(len(b), len(self._data), 1000)  # short reads, like a socket
            b[:n] = self._data[:n]
            self._data = self._data[n:]
            return n

    blob, _ = compress(DATA, "gzip")
    with open_decompressed(Pipe(blob)) as plain:  # type: ignore[arg-type]
        assert plain.read() == DATA
