"""ADD: local archives (extracted by content), URLs (downloaded, verified) and heredoc files."""

from __future__ import annotations

import bz2
import email.utils
import gzip
import hashlib
import io
import lzma
import os
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import zstandard

from kiln.build.context import BuildContext
from kiln.build.copy import copy_cache_digest, write_copy_layer
from kiln.build.plan import CopyStep, InlineFile
from kiln.errors import KilnError
from kiln.oci.layer import TarEntry
from kiln.oci.layer_writer import LayerWriter


class CountingWriter(LayerWriter):
    """A real LayerWriter that also counts the entries it was given."""

    entries = 0

    def add_entry(self, entry: TarEntry | tarfile.TarInfo, fileobj: object = None) -> None:  # type: ignore[override]
        self.entries += 1
        super().add_entry(entry, fileobj)  # type: ignore[arg-type]


def build(step: CopyStep, src: Path, dest: Path | None = None, **kw: object) -> tuple[dict[str, tarfile.TarInfo], dict[str, bytes]]:
    out = io.BytesIO()
    writer = LayerWriter(out, "none")
    write_copy_layer(step, src, dest, writer, **kw)  # type: ignore[arg-type]
    writer.close()
    out.seek(0)
    members, data = {}, {}
    with tarfile.open(fileobj=out, mode="r:") as tf:
        names = []
        for m in tf:
            names.append(m.name.rstrip("/"))
            members[m.name.rstrip("/")] = m
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                data[m.name.rstrip("/")] = f.read()
    assert names == sorted(names, key=str.encode)
    return members, data


def add(*sources: str, dest: str, **kw: object) -> CopyStep:
    return CopyStep(sources=sources, dest=dest, line=3, created_by="ADD", extract_archives=True, **kw)  # type: ignore[arg-type]


def make_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.mtime = 1_234_567_890
            for k, v in attrs.items():
                setattr(info, k, v)
            tf.addfile(info, io.BytesIO(data) if data else None)

        member("./", tarfile.DIRTYPE, mode=0o700)
        member("pkg/", tarfile.DIRTYPE, mode=0o750, uid=7, gid=8)
        member("pkg/bin/tool", data=b"#!tool", mode=0o4755, uid=7, gid=8)
        member("pkg/lib/libx.so.1", data=b"ELF", mode=0o644)
        member("pkg/lib/libx.so", tarfile.SYMTYPE, linkname="libx.so.1")
        member("pkg/bin/alias", tarfile.LNKTYPE, linkname="pkg/bin/tool")
        member("/abs/file", data=b"abs")
    return buf.getvalue()


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda b: b,
    "gzip": lambda b: gzip.compress(b, mtime=0),
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_local_archives_are_extracted_by_content(tmp_path: Path, kind: str) -> None:
    (tmp_path / "misleading.name").write_bytes(COMPRESSORS[kind](make_tar()))
    members, data = build(add("misleading.name", dest="/opt/pkgs"), tmp_path, context=BuildContext.open(tmp_path))
    assert set(members) == {
        "opt", "opt/pkgs", "opt/pkgs/pkg", "opt/pkgs/pkg/bin", "opt/pkgs/pkg/bin/alias",
        "opt/pkgs/pkg/bin/tool", "opt/pkgs/pkg/lib", "opt/pkgs/pkg/lib/libx.so",
        "opt/pkgs/pkg/lib/libx.so.1", "opt/pkgs/abs", "opt/pkgs/abs/file",
    }  # fmt: skip
    tool = members["opt/pkgs/pkg/bin/tool"]
    assert (tool.mode, tool.uid, tool.gid, tool.mtime) == (0o4755, 7, 8, 1_234_567_890)
    assert members["opt/pkgs/pkg"].mode == 0o750
    assert members["opt/pkgs"].mode == 0o755  # '.' of the archive does not change the destination
    assert members["opt/pkgs/pkg/lib"].mode == 0o755  # implied parents: 0755 root
    assert members["opt/pkgs/pkg/lib/libx.so"].linkname == "libx.so.1"
    # the hardlink pair: whichever sorts first carries the content
    assert data["opt/pkgs/pkg/bin/alias"] == b"#!tool"
    assert members["opt/pkgs/pkg/bin/tool"].islnk()
    assert members["opt/pkgs/pkg/bin/tool"].linkname == "opt/pkgs/pkg/bin/alias"
    assert data["opt/pkgs/abs/file"] == b"abs"


def test_archive_owners_ignore_chown_but_created_destination_uses_it(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(make_tar())
    members, _ = build(add("a.tar", dest="/srv/x", chown="9:9"), tmp_path, context=BuildContext.open(tmp_path))
    assert (members["srv"].uid, members["srv/x"].uid) == (9, 9)  # made by the ADD: --chown
    assert members["srv/x/pkg/lib"].uid == 0  # implied by the archive: root, as Untar does
    assert members["srv/x/pkg/bin/alias"].uid == 7  # the archive's own owner


def test_copy_never_extracts_and_non_tars_are_copied_as_files(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(make_tar())
    (tmp_path / "notes.gz").write_bytes(gzip.compress(b"just text, not a tar"))
    (tmp_path / "empty.tar").write_bytes(b"\0" * 1024)
    ctx = BuildContext.open(tmp_path)
    members, _ = build(CopyStep(sources=("a.tar",), dest="/d/"), tmp_path, context=ctx)
    assert set(members) == {"d", "d/a.tar"}
    members, data = build(add("notes.gz", "empty.tar", dest="/d/"), tmp_path, context=ctx)
    assert set(members) == {"d", "d/notes.gz", "d/empty.tar"}
    assert gzip.decompress(data["d/notes.gz"]) == b"just text, not a tar"


def _hostile(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tf.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "kind", "linkname", "message"),
    [
        ("../escape", tarfile.REGTYPE, "", "outside the destination"),
        ("a/../../escape", tarfile.REGTYPE, "", "outside the destination"),
        ("dir/link", tarfile.SYMTYPE, "../../etc/passwd", "symlink"),
        ("hard", tarfile.LNKTYPE, "../../etc/passwd", "outside the destination"),
        ("x/.wh.y", tarfile.REGTYPE, "", "whiteouts"),
    ],
)
def test_hostile_archives_are_refused(tmp_path: Path, name: str, kind: bytes, linkname: str, message: str) -> None:
    (tmp_path / "bad.tar").write_bytes(_hostile(name, kind, linkname))
    with pytest.raises(KilnError, match=message):
        build(add("bad.tar", dest="/d"), tmp_path, context=BuildContext.open(tmp_path))


def test_absolute_symlinks_in_archives_are_fine(tmp_path: Path) -> None:
    (tmp_path / "ok.tar").write_bytes(_hostile("etc/localtime", tarfile.SYMTYPE, "/usr/share/zoneinfo/UTC"))
    members, _ = build(add("ok.tar", dest="/"), tmp_path, context=BuildContext.open(tmp_path))
    assert members["etc/localtime"].linkname == "/usr/share/zoneinfo/UTC"


# -- URLs ------------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    files: dict[str, bytes]
    hits: list[str] = field(default_factory=list)


@pytest.fixture
def http_server() -> Iterator[Server]:
    files = {"/dl/tool-1.0.tar.gz": gzip.compress(make_tar(), mtime=0), "/dl/data.bin": b"payload" * 1000}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/dl/data.bin")
                self.end_headers()
                return
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Last-Modified", email.utils.formatdate(1_111_111_111, usegmt=True))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{server.server_address[1]}", files, hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_url_with_checksum_is_downloaded_not_extracted(http_server: Server, tmp_path: Path) -> None:
    body = http_server.files["/dl/tool-1.0.tar.gz"]
    step = add(dest="/opt/", urls=(f"{http_server.url}/dl/tool-1.0.tar.gz",), checksum=sha256(body))
    members, data = build(step, tmp_path)
    assert set(members) == {"opt", "opt/tool-1.0.tar.gz"}
    f = members["opt/tool-1.0.tar.gz"]
    assert (f.mode, f.uid, f.gid, f.mtime) == (0o600, 0, 0, 1_111_111_111)
    assert data["opt/tool-1.0.tar.gz"] == body


def test_url_to_a_file_path_redirects_chown_chmod(http_server: Server, tmp_path: Path) -> None:
    step = add(dest="/srv/blob", urls=(f"{http_server.url}/moved",), chown="5:6", chmod="644")
    members, data = build(step, tmp_path)
    assert set(members) == {"srv", "srv/blob"}
    assert (members["srv/blob"].mode, members["srv/blob"].uid, members["srv/blob"].gid) == (0o644, 5, 6)
    assert (members["srv"].uid, members["srv"].gid) == (5, 6)
    assert data["srv/blob"] == http_server.files["/dl/data.bin"]


def test_checksum_mismatch_writes_nothing(http_server: Server, tmp_path: Path) -> None:
    step = add("local.txt", dest="/d/", urls=(f"{http_server.url}/dl/data.bin",), checksum=sha256(b"other"))
    (tmp_path / "local.txt").write_text("x")
    writer = CountingWriter(io.BytesIO(), "none")
    with pytest.raises(KilnError) as e:
        write_copy_layer(step, tmp_path, None, writer, context=BuildContext.open(tmp_path))
    assert writer.entries == 0
    assert str(e.value).startswith(f"line 3: ADD {http_server.url}/dl/data.bin: checksum mismatch: expected sha256:")


def test_download_errors(http_server: Server, tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="answered 404"):
        build(add(dest="/d/", urls=(f"{http_server.url}/nothing",)), tmp_path)
    with pytest.raises(KilnError, match="invalid checksum"):
        build(add(dest="/d/", urls=(f"{http_server.url}/dl/data.bin",), checksum="md5:abc"), tmp_path)


def test_cache_digest_of_a_url(http_server: Server, tmp_path: Path) -> None:
    url = f"{http_server.url}/dl/data.bin"
    body = http_server.files["/dl/data.bin"]
    pinned = copy_cache_digest(add(dest="/d/", urls=(url,), checksum=sha256(body)), tmp_path, None)
    assert http_server.hits == []  # a checksum is the key: nothing is downloaded
    plain = copy_cache_digest(add(dest="/d/", urls=(url,)), tmp_path, None)
    assert http_server.hits == ["/dl/data.bin"]
    http_server.files["/dl/data.bin"] = b"changed"
    assert copy_cache_digest(add(dest="/d/", urls=(url,)), tmp_path, None) != plain
    assert pinned != plain


# -- heredocs ----------------------------------------------------------------------------------------


def test_inline_files(tmp_path: Path) -> None:
    step = CopyStep(
        sources=(),
        dest="/etc/app/",
        inline=(InlineFile("conf", "a=1\n"), InlineFile("run.sh", "#!/bin/sh\n")),
        chown="3:4",
    )
    members, data = build(step, tmp_path, source_date_epoch=1_700_000_000)
    assert data == {"etc/app/conf": b"a=1\n", "etc/app/run.sh": b"#!/bin/sh\n"}
    for name in ("etc/app/conf", "etc/app/run.sh"):
        assert (members[name].mode, members[name].uid, members[name].gid) == (0o644, 3, 4)
        assert members[name].mtime == 1_700_000_000
    members, data = build(CopyStep(sources=(), dest="/x", inline=(InlineFile("EOF", "hi"),), chmod="755"), tmp_path)
    assert data == {"x": b"hi"} and members["x"].mode == 0o755


def test_unreadable_context_file_reports_an_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    (tmp_path / "secret").write_text("x")
    os.chmod(tmp_path / "secret", 0)
    with pytest.raises(KilnError, match="cannot read"):
        build(add("secret", dest="/d/"), tmp_path, context=BuildContext.open(tmp_path))
    with pytest.raises(KilnError, match="cannot read"):
        copy_cache_digest(add("secret", dest="/d/"), tmp_path, BuildContext.open(tmp_path))
