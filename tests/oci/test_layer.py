"""Layer writer and reader: formats, determinism, one-pass hashes, streaming memory."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import stat
import subprocess
import tarfile
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import zstandard

from kiln.errors import DigestMismatchError, LayerError, UsageError
from kiln.oci import mediatypes as mt
from kiln.oci.digest import Digest
from kiln.oci.layer import EntryType, TarEntry, encode_header, normalize_name
from kiln.oci.layer_reader import MAX_META_SIZE, iter_layer
from kiln.oci.layer_writer import LayerWriter
from tests.oci.tarcraft import craft, directory, reg

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service, v2


def write(
    fill: Callable[[LayerWriter], object], compression: str = "gzip", **kw: Any
) -> tuple[bytes, LayerWriter]:
    out = io.BytesIO()
    with LayerWriter(out, compression, **kw) as w:
        fill(w)
    return out.getvalue(), w


def read_all(blob: bytes, **kw: object) -> list[tuple[TarEntry, bytes]]:
    return [(e, r.read()) for e, r in iter_layer(io.BytesIO(blob), **kw)]  # type: ignore[arg-type]


def test_round_trip_of_every_entry_type() -> None:
    long_dir = "d/" + "x" * 150 + "/" + "y" * 120
    weird = os.fsdecode(b"caf\xe9-latin1")  # not UTF-8: must come back byte for byte

    def fill(w: LayerWriter) -> None:
        w.add_dir("d", 0o1777, 1, 2, 100)
        w.add_file("d/suid", io.BytesIO(b"#!x"), 3, 0o4755, 0, 0, 100, xattrs={"security.capability": CAP})
        w.add_file("d/sgid", io.BytesIO(b""), 0, 0o2711, 5, 6, 100, xattrs={"user.k": b"v\x00\xff"})
        w.add_hardlink("d/link", "d/suid")
        w.add_symlink("d/abs", "/" + "t" * 200)
        w.add_device("d/null", EntryType.CHAR, 1, 3, 0o666)
        w.add_device("d/sda", EntryType.BLOCK, 8, 0, 0o660)
        w.add_device("d/fifo", EntryType.FIFO, mode=0o600)
        w.add_file(long_dir, io.BytesIO(b"long"), 4, uid=3_000_000, gid=70_000_000)
        w.add_file(weird, io.BytesIO(b"w"), 1)
        w.add_file("é/ünïcode", io.BytesIO(b"u"), 1)

    blob, _ = write(fill)
    got = {e.name: (e, data) for e, data in read_all(blob)}
    assert list(got) == [
        "d/",
        "d/suid",
        "d/sgid",
        "d/link",
        "d/abs",
        "d/null",
        "d/sda",
        "d/fifo",
        long_dir,
        weird,
        "é/ünïcode",
    ]
    d = got["d/"][0]
    assert (d.type, d.mode, d.uid, d.gid, d.mtime) == (EntryType.DIR, 0o1777, 1, 2, 100)
    suid, data = got["d/suid"]
    assert (suid.mode, data, suid.xattrs) == (0o4755, b"#!x", {"security.capability": CAP})
    assert got["d/sgid"][0].mode == 0o2711 and got["d/sgid"][0].xattrs == {"user.k": b"v\x00\xff"}
    assert (got["d/link"][0].type, got["d/link"][0].linkname) == (EntryType.HARDLINK, "d/suid")
    assert got["d/abs"][0].linkname == "/" + "t" * 200
    assert (got["d/null"][0].type, got["d/null"][0].devmajor, got["d/null"][0].devminor) == (
        EntryType.CHAR,
        1,
        3,
    )
    assert (got["d/sda"][0].type, got["d/sda"][0].devmajor) == (EntryType.BLOCK, 8)
    assert got["d/fifo"][0].type is EntryType.FIFO
    big = got[long_dir][0]
    assert (big.uid, big.gid, got[long_dir][1]) == (3_000_000, 70_000_000, b"long")
    assert got[weird][1] == b"w"


def test_python_tarfile_and_gnu_tar_read_kiln_layers(tmp_path: Path) -> None:
    def fill(w: LayerWriter) -> None:
        w.add_dir("bin", 0o755)
        w.add_file(
            "bin/" + "p" * 130, io.BytesIO(b"abc"), 3, 0o4755, 7, 8, 5, xattrs={"security.capability": CAP}
        )
        w.add_symlink("sh", "bin/" + "p" * 130)

    blob, _ = write(fill)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["bin", "bin/" + "p" * 130, "sh"]
        f = members[1]
        assert (f.mode, f.uid, f.gid, f.uname, f.gname) == (0o4755, 7, 8, "", "")
        assert f.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == CAP
        assert not any(k in f.pax_headers for k in ("atime", "ctime", "uname", "gname"))
    (tmp_path / "l.tgz").write_bytes(blob)
    listing = subprocess.run(
        ["tar", "-tvzf", str(tmp_path / "l.tgz")], capture_output=True, text=True, check=True
    )
    assert "-rwsr-xr-x 7/8" in " ".join(listing.stdout.split())


def make_tree(base: Path, mtime: int) -> Path:
    root = base / "tree"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a-b").mkdir()
    (root / "a").write_bytes(b"a")
    (root / "b" / "deep" / "f").write_bytes(os.urandom(0) + b"f" * 5000)
    (root / "b" / "z").write_bytes(b"z")
    os.link(root / "b" / "z", root / "a-b" / "z-link")
    (root / "sym").symlink_to("b/deep/f")
    os.chmod(root / "a", 0o4711)
    for p in [*root.rglob("*"), root]:
        os.utime(p, (mtime, mtime), follow_symlinks=False)
    return root


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_same_tree_same_digest_anywhere(tmp_path: Path, compression: str) -> None:
    epoch = 1_000_000
    one = make_tree(tmp_path / "one", epoch + 10)
    two = make_tree(tmp_path / "two", epoch + 99_999)
    blobs = [
        write(partial(LayerWriter.add_tree, root=r), compression, source_date_epoch=epoch) for r in (one, two)
    ]
    assert blobs[0][0] == blobs[1][0]
    assert blobs[0][1].result() == blobs[1][1].result()
    entries = read_all(blobs[0][0])
    assert all(e.mtime == epoch for e, _ in entries)
    names = [normalize_name(e.name) for e, _ in entries]
    assert names == sorted(names, key=lambda n: n.encode())
    assert names == ["a", "a-b", "a-b/z-link", "b", "b/deep", "b/deep/f", "b/z", "sym"]
    # hardlink: the first name in path order carries the data
    assert [(e.type, e.linkname) for e, _ in entries if e.name in ("a-b/z-link", "b/z")] == [
        (EntryType.FILE, ""),
        (EntryType.HARDLINK, "a-b/z-link"),
    ]
    # without clamping the mtimes differ, and so do the digests: the check above is not vacuous
    free = [write(partial(LayerWriter.add_tree, root=r), compression)[1].result().digest for r in (one, two)]
    assert free[0] != free[1]


def test_mtimes_below_epoch_are_kept(tmp_path: Path) -> None:
    root = make_tree(tmp_path, 500)
    blob, _ = write(lambda w: w.add_tree(root), source_date_epoch=1000)
    assert {e.mtime for e, _ in read_all(blob)} == {500}


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_result_hashes_are_those_of_the_bytes(tmp_path: Path, compression: str) -> None:
    root = make_tree(tmp_path, 1)
    blob, w = write(lambda w: w.add_tree(root), compression)
    info = w.result()
    decoders: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.decompress,
        "zstd": zstandard.ZstdDecompressor().decompressobj().decompress,
        "none": bytes,
    }
    plain = decoders[compression](blob)
    assert info.digest == Digest.of(blob)
    assert info.diff_id == Digest.of(plain)
    assert info.size == len(blob) and info.uncompressed_size == len(plain)
    assert info.media_type == mt.layer_type("oci", compression)
    # and the reader verifies the DiffID it computes while reading
    read_all(blob, diff_id=info.diff_id)
    with pytest.raises(DigestMismatchError, match="DiffID mismatch"):
        read_all(blob, diff_id=Digest.of(b"other"))


def test_media_types_and_format_checks() -> None:
    assert LayerWriter(io.BytesIO(), "gzip", fmt="docker").media_type == mt.DOCKER_LAYER_GZIP
    assert LayerWriter(io.BytesIO(), "zstd").media_type == mt.OCI_LAYER_ZSTD
    with pytest.raises(UsageError):
        LayerWriter(io.BytesIO(), "none", fmt="docker")
    with pytest.raises(UsageError):
        LayerWriter(io.BytesIO(), "gzip", fmt="appc")


def test_add_tree_prefix_include_owner_and_sockets(tmp_path: Path) -> None:
    root = make_tree(tmp_path, 1)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    try:
        blob, _ = write(
            lambda w: w.add_tree(root, "app/", lambda rel: not rel.startswith("b"), owner=(1000, 1001))
        )
    finally:
        sock.close()
    entries = read_all(blob)
    assert [e.name for e, _ in entries] == ["app/", "app/a", "app/a-b/", "app/a-b/z-link", "app/sym"]
    assert {(e.uid, e.gid) for e, _ in entries} == {(1000, 1001)}


def test_add_path_reads_xattrs(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    try:
        os.setxattr(f, "user.kiln", b"\x00bin")
    except OSError:
        pytest.skip("no user xattrs on this file system")
    os.setxattr(f, "security.capability", CAP)
    blob, _ = write(lambda w: w.add_path("f", f))
    assert read_all(blob)[0][0].xattrs == {"security.capability": CAP, "user.kiln": b"\x00bin"}


def test_whiteouts_written() -> None:
    def fill(w: LayerWriter) -> None:
        w.add_whiteout("/etc/old.conf")
        w.add_opaque("var/cache/")
        w.add_whiteout("top")

    blob, _ = write(fill)
    assert [(e.name, e.type, e.size) for e, _ in read_all(blob)] == [
        ("etc/.wh.old.conf", EntryType.FILE, 0),
        ("var/cache/.wh..wh..opq", EntryType.FILE, 0),
        (".wh.top", EntryType.FILE, 0),
    ]
    with pytest.raises(LayerError):
        write(lambda w: w.add_whiteout("/"))


def test_writer_refuses_bad_names_and_short_content() -> None:
    for bad in ("../x", "a/../../x", "", "./"):
        with pytest.raises(LayerError):
            write(partial(LayerWriter.add_file, name=bad, data=io.BytesIO(b"x"), size=1))
    with pytest.raises(LayerError, match="ended after 2 of 5 bytes"):
        write(lambda w: w.add_file("f", io.BytesIO(b"ab"), 5))
    out = io.BytesIO()
    w = LayerWriter(out)
    with pytest.raises(LayerError):
        w.add_file("f", io.BytesIO(b"ab"), 5)
    with pytest.raises(LayerError, match="failed entry"):
        w.close()


def test_add_entry_accepts_tarinfo() -> None:
    info = tarfile.TarInfo("./x")
    info.size, info.mode, info.uid = 2, 0o600, 9
    info.pax_headers = {"SCHILY.xattr.user.a": "b"}
    blob, _ = write(lambda w: w.add_entry(info, io.BytesIO(b"hi")))
    [(e, data)] = read_all(blob)
    assert (e.name, e.mode, e.uid, e.xattrs, data) == ("x", 0o600, 9, {"user.a": b"b"}, b"hi")


def test_writing_a_large_file_does_not_hold_it_in_memory(tmp_path: Path) -> None:
    big = tmp_path / "big"
    chunk = os.urandom(1 << 20)
    with open(big, "wb") as f:
        for i in range(64):
            f.write(chunk[i:] + chunk[:i])  # incompressible, and not one block repeated
    out = open(tmp_path / "layer.tgz", "wb")  # noqa: SIM115
    tracemalloc.start()
    try:
        with LayerWriter(out) as w:
            w.add_path("big", big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        out.close()
    assert peak < 8 << 20, f"peak {peak} bytes while writing 64 MiB"
    # and reading it back streams too
    tracemalloc.start()
    try:
        h = hashlib.sha256()
        with open(tmp_path / "layer.tgz", "rb") as f:
            for _, content in iter_layer(f):
                while block := content.read(1 << 20):
                    h.update(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} bytes while reading 64 MiB"
    with open(big, "rb") as f:
        assert h.hexdigest() == hashlib.sha256(f.read()).hexdigest()


# -- reading layers written by others ------------------------------------------------------------


def test_reads_gnu_ustar_and_pax_variants() -> None:
    long = "dir/" + "n" * 120 + "/file"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        blob = craft(directory("dir"), reg(long, b"data", uid=9_000_000), fmt=fmt).getvalue()
        got = read_all(blob)
        assert [(e.name.rstrip("/"), e.uid, d) for e, d in got] == [
            ("dir", 0, b""),
            (long, 9_000_000, b"data"),
        ]
    ustar = "p" * 90 + "/" + "q" * 90  # fits only with the ustar prefix field
    got = read_all(craft(reg(ustar, b"u"), fmt=tarfile.USTAR_FORMAT).getvalue())
    assert [(e.name, d) for e, d in got] == [(ustar, b"u")]


def test_reads_global_pax_headers_and_libarchive_xattrs() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"uid": "77"}) as tar:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"LIBARCHIVE.xattr.user.k%3Dv": "aGVsbG8", "mtime": "12.75"}
        tar.addfile(info)
    [(e, _)] = read_all(buf.getvalue())
    assert (e.uid, e.mtime, e.xattrs) == (77, 12, {"user.k=v": b"hello"})


def test_reads_a_layer_made_by_gnu_tar(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"content")
    os.link(src / "d" / "f", src / "d" / "g")
    (src / "d" / "s").symlink_to("f")
    out = tmp_path / "gnu.tar.gz"
    subprocess.run(["tar", "-czf", str(out), "--format=gnu", "-C", str(src), "."], check=True)
    got = {e.name: (e, d) for e, d in read_all(out.read_bytes(), compression="gzip")}
    assert got["./d/f"][1] == b"content"
    assert got["./d/g"][0].type is EntryType.HARDLINK and got["./d/g"][0].linkname == "./d/f"
    assert got["./d/s"][0].linkname == "f"


def test_unread_content_is_skipped_and_stale_readers_refuse() -> None:
    blob = craft(reg("a", b"A" * 3000), reg("b", b"B" * 10)).getvalue()
    it = iter_layer(io.BytesIO(blob))
    first, content = next(it)
    assert (first.name, content.read(5)) == ("a", b"AAAAA")
    second, content2 = next(it)
    assert (second.name, content2.read()) == ("b", b"B" * 10)
    with pytest.raises(ValueError):
        content.read()


def test_reader_consumes_the_whole_input() -> None:
    blob = gzip.compress(craft(reg("a")).getvalue() + b"\x00" * 8192)
    stream = io.BytesIO(blob)
    read_all_stream = list(iter_layer(stream))
    assert len(read_all_stream) == 1 and stream.tell() == len(blob)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:600], "truncated"),
        (lambda b: b[:148] + b"0000000\x00" + b[156:], "checksum"),
        (lambda b: b[:156] + b"S" + b[157:], "sparse"),
        (lambda b: b[:156] + b"Z" + b[157:], "not supported"),
    ],
)
def test_reader_rejects_broken_archives(mangle: object, message: str) -> None:
    raw = craft(reg("name", b"x" * 700), fmt=tarfile.USTAR_FORMAT).getvalue()
    broken = mangle(raw)  # type: ignore[operator]
    if message in ("sparse", "not supported"):  # keep the checksum right so the type is what fails
        header = bytearray(broken[:512])
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\x00 " % sum(header)
        broken = bytes(header) + broken[512:]
    with pytest.raises(LayerError, match=message):
        read_all(broken)


def test_reader_refuses_huge_metadata_and_corrupt_compression() -> None:
    header = encode_header(TarEntry("x", EntryType.FILE))
    big = bytearray(header)
    big[156:157] = b"x"  # a pax header announcing more than MAX_META_SIZE bytes
    big[124:136] = b"%011o\x00" % (MAX_META_SIZE + 1)
    big[148:156] = b" " * 8
    big[148:156] = b"%06o\x00 " % sum(big)
    with pytest.raises(LayerError, match="too large"):
        read_all(bytes(big) + b"\x00" * 1024)
    good = gzip.compress(craft(reg("a", os.urandom(5000))).getvalue())
    corrupt = good[:40] + bytes(b ^ 0xFF for b in good[40:80]) + good[80:]
    with pytest.raises(LayerError, match="layer cafe: cannot decompress"):
        read_all(corrupt, layer_name="cafe")


def test_tar_header_checksum_and_mode_bits() -> None:
    header = encode_header(TarEntry("f", EntryType.FILE, 0, 0o7777 | stat.S_IFREG))
    assert len(header) == 512
    assert int(header[100:107], 8) == 0o7777  # file type bits never leak into the mode field
    stored = int(header[148:154], 8)
    assert stored == sum(header[:148]) + 8 * 32 + sum(header[156:])
