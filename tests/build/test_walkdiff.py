"""The overlay-less snapshotter: materialize a stack, scan, mutate, write the changes as a layer.

Every scenario runs confined (tests/oci/confine.py): a forked child with a private mount
namespace whose whole file system is the test's directory, so a kiln bug that followed one of
the lowers' hostile symlinks (`/etc`, `../../..`) could not reach the host. The lowers are
made with plain os calls in overlayfs's own format, not with kiln's code.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.build.diff import write_upper_as_layer
from kiln.build.overlay import enter_private_mount_namespace, mount_overlay, umount
from kiln.build.walkdiff import StatIndex, materialize, write_changes
from kiln.errors import BuildError
from kiln.oci.apply import apply_layer
from kiln.oci.compression import NONE
from kiln.oci.layer_writer import LayerWriter
from kiln.sandbox import libc
from tests.oci.confine import confined
from tests.oci.tarcraft import Node, snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="confined() and chown need root (the suite runs as root)")

Entry = tuple[str, str, int, int, int, str]  # name, tar type, mode, uid, gid, linkname
Tree = tuple[dict[str, Node], list[list[str]]]


# -- building overlay-format lowers by hand --------------------------------------------------------


def put(root: Path, rel: str, data: bytes = b"x", mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, *owner)
    os.chmod(path, mode)
    return path


def mkdir(root: Path, rel: str, mode: int = 0o755, owner: tuple[int, int] = (0, 0)) -> Path:
    path = root / rel
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, *owner)
    os.chmod(path, mode)
    return path


def whiteout(root: Path, rel: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    os.mknod(root / rel, stat.S_IFCHR, os.makedev(0, 0))


def opaque(root: Path, rel: str) -> None:
    os.setxattr(root / rel, "user.overlay.opaque", b"y")


def make_lowers(base: Path) -> list[Path]:
    l0, l1, l2 = base / "l0", base / "l1", base / "l2"
    for layer in (l0, l1, l2):
        layer.mkdir()
        os.chmod(layer, 0o755)
    # l0: a small distribution
    put(l0, "etc/passwd", b"root:x:0:0\n")
    os.setxattr(l0 / "etc/passwd", "user.kiln", b"1")
    put(l0, "etc/group", b"root:x:0:\n")
    put(l0, "etc/hosts", b"127.0.0.1 localhost\n")
    put(l0, "etc/shadow", b"root:*:1\n", 0o640, (0, 42))
    put(l0, "bin/busybox", b"\x7fELF busybox", 0o755)
    put(l0, "bin/sh", b"\x7fELF sh", 0o755)
    put(l0, "bin/su", b"\x7fELF su", 0o4755)
    put(l0, "usr/lib/libc.so", b"libc", 0o755)
    os.symlink("libc.so", l0 / "usr/lib/libc.so.6")
    put(l0, "data/a.txt", b"a")
    put(l0, "data/c.txt", b"c")
    put(l0, "data/h1", b"h1")
    put(l0, "data/pair1", b"pair")
    os.link(l0 / "data/pair1", l0 / "data/pair2")
    put(l0, "old/x", b"x")
    put(l0, "old/deeper/y", b"y")
    put(l0, "opq/gone.txt", b"gone")
    put(l0, "thing", b"a file below a directory")
    put(l0, "quiet/same.txt", b"same")
    put(l0, "quiet/rewrite.txt", b"rewrite")
    put(l0, "var/cache/apt/pkgcache.bin", b"cache")
    put(l0, "var/cache/apt/srcpkgcache.bin", b"cache2")
    put(l0, "var/log/dpkg.log", b"log")
    put(l0, "srv/thing", b"will become a directory")
    put(l0, "opt/app/keep.txt", b"keep")
    put(l0, "opt/app/lib/mod.py", b"mod")
    put(l0, "home/user/.profile", b"PS1=$\n", 0o644, (1000, 1000))
    mkdir(l0, "home/user", 0o700, (1000, 1000))
    mkdir(l0, "tmp", 0o1777)
    os.mknod(l0 / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(l0 / "null", 0o666)  # whatever the umask
    os.mkfifo(l0 / "fifo", 0o600)
    os.symlink("/etc", l0 / "evil")  # hostile links: followed, they would leave the root
    os.symlink("../../../../..", l0 / "up")
    # l1: edits in overlay format
    mkdir(l1, "etc", 0o750)
    whiteout(l1, "etc/hosts")
    put(l1, "etc/passwd", b"root:x:0:0\nuser:x:1000:1000\n")
    os.setxattr(l1 / "etc/passwd", "user.kiln", b"2")
    whiteout(l1, "old")
    mkdir(l1, "opq")
    opaque(l1, "opq")
    put(l1, "opq/new.txt", b"new")
    mkdir(l1, "bin")
    os.symlink("busybox", l1 / "bin/sh")
    put(l1, "thing/inside", b"a directory over a file")
    put(l1, "srv2/a", b"a")
    put(l1, "data/a.txt", b"A")
    whiteout(l1, "never-existed")
    # l2: a file over l1's directory; a directory over l0's hostile symlink
    put(l2, "srv2", b"now a file")
    put(l2, "evil/passwd", b"must land inside the root")
    return [l0, l1, l2]


# -- reading trees and layers ----------------------------------------------------------------------


def tree(root: Path) -> Tree:
    """Type, mode, owner, content or link target, xattrs of every path; and hardlink groups."""
    groups: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append(os.path.relpath(path, root))
    return snapshot(root), sorted(sorted(g) for g in groups.values() if len(g) > 1)


def layer_entries(data: bytes) -> list[Entry]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, m.type.decode(), m.mode, m.uid, m.gid, m.linkname) for m in tar.getmembers()]


def write_layer(fill: Callable[[LayerWriter], object]) -> bytes:
    buf = io.BytesIO()
    with LayerWriter(buf, NONE) as writer:
        fill(writer)
    return buf.getvalue()


def names(entries: list[Entry]) -> list[str]:
    return [e[0] for e in entries]


def mount_proc() -> None:
    """In a confined child (its own mount namespace, "/" a tmpfs): a /proc of its own."""
    os.mkdir("/proc")
    libc.mount("proc", "/proc", "proc")


# -- mutations, as a RUN step would make them ----------------------------------------------------


def mutate(root: Path) -> None:
    put(root, "new/dir/file.txt", b"new")  # add, with new parents
    put(root, "etc/added", b"added")
    with open(root / "etc/passwd", "ab") as f:  # modify content
        f.write(b"extra:x:2:2\n")
    os.chmod(root / "usr/lib/libc.so", 0o600)  # chmod only
    os.chown(root / "home/user/.profile", 2000, 2000)  # chown only
    os.unlink(root / "etc/group")  # delete a file
    walkdiff_rmtree(root / "var/cache")  # delete a tree: one whiteout
    walkdiff_rmtree(root / "var/log")  # replace a directory with a file
    put(root, "var/log", b"a file now")
    os.unlink(root / "srv/thing")  # replace a file with a directory
    put(root, "srv/thing/child", b"child")
    os.rename(root / "data/c.txt", root / "data/d.txt")  # rename
    st = os.lstat(root / "quiet/same.txt")  # times only: not a change
    os.utime(root / "quiet/same.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    (root / "quiet/rewrite.txt").write_bytes(b"rewrite")  # the same bytes again: not a change
    os.unlink(root / "usr/lib/libc.so.6")  # symlink retarget
    os.symlink("libc-2.so", root / "usr/lib/libc.so.6")
    os.link(root / "data/h1", root / "data/h2")  # hardlink
    # A directory deleted and made again: opaque. The old one is held open so that its inode
    # number cannot be reused for the new one (ext4 would; see test_reused_directory_inode).
    held = os.open(root / "opt/app", os.O_RDONLY)
    walkdiff_rmtree(root / "opt/app")
    put(root, "opt/app/keep.txt", b"keep")
    os.close(held)
    os.setxattr(root / "etc/shadow", "user.note", b"x")  # xattr only


def walkdiff_rmtree(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            p = os.path.join(dirpath, name)
            os.unlink(p) if os.path.islink(p) else os.rmdir(p)
    os.rmdir(path)


# Derived by hand from make_lowers and mutate: (name, tar type, mode, uid, gid, linkname).
EXPECTED: list[Entry] = [
    ("data", "5", 0o755, 0, 0, ""),
    ("data/.wh.c.txt", "0", 0o644, 0, 0, ""),
    ("data/d.txt", "0", 0o644, 0, 0, ""),
    ("data/h1", "0", 0o644, 0, 0, ""),
    ("data/h2", "1", 0o644, 0, 0, "data/h1"),
    ("etc", "5", 0o750, 0, 0, ""),
    ("etc/added", "0", 0o644, 0, 0, ""),
    ("etc/.wh.group", "0", 0o644, 0, 0, ""),
    ("etc/passwd", "0", 0o644, 0, 0, ""),
    ("etc/shadow", "0", 0o640, 0, 42, ""),
    ("home", "5", 0o755, 0, 0, ""),
    ("home/user", "5", 0o700, 1000, 1000, ""),
    ("home/user/.profile", "0", 0o644, 2000, 2000, ""),
    ("new", "5", 0o755, 0, 0, ""),
    ("new/dir", "5", 0o755, 0, 0, ""),
    ("new/dir/file.txt", "0", 0o644, 0, 0, ""),
    ("opt", "5", 0o755, 0, 0, ""),
    ("opt/app", "5", 0o755, 0, 0, ""),
    ("opt/app/.wh..wh..opq", "0", 0o644, 0, 0, ""),
    ("opt/app/keep.txt", "0", 0o644, 0, 0, ""),
    ("srv", "5", 0o755, 0, 0, ""),
    ("srv/thing", "5", 0o755, 0, 0, ""),
    ("srv/thing/child", "0", 0o644, 0, 0, ""),
    ("usr", "5", 0o755, 0, 0, ""),
    ("usr/lib", "5", 0o755, 0, 0, ""),
    ("usr/lib/libc.so", "0", 0o600, 0, 0, ""),
    ("usr/lib/libc.so.6", "2", 0o777, 0, 0, "libc-2.so"),
    ("var", "5", 0o755, 0, 0, ""),
    ("var/.wh.cache", "0", 0o644, 0, 0, ""),
    ("var/log", "0", 0o644, 0, 0, ""),
]


def run_scenario(
    base: Path, change: Callable[[Path], None] = mutate, *, with_lowers: bool = True
) -> tuple[list[Path], Path, bytes]:
    lowers = make_lowers(base)
    root = base / "root"
    root.mkdir()
    materialize(lowers, root)
    before = StatIndex.scan(root, lowers if with_lowers else None)
    change(root)
    return lowers, root, write_layer(lambda w: write_changes(root, before, w))


# -- materialize ----------------------------------------------------------------------------------


def test_materialize_applies_whiteouts_opaque_dirs_and_keeps_metadata(tmp_path: Path) -> None:
    def scenario() -> Tree:
        lowers = make_lowers(tmp_path)
        root = tmp_path / "root"
        root.mkdir()
        materialize(lowers, root)
        return tree(root)

    (got, links) = confined(tmp_path, scenario)
    def f(content: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0, x: tuple[tuple[str, bytes], ...] = ()) -> Node:
        return Node("file", mode, uid, gid, hashlib.sha256(content).hexdigest(), x)

    d = Node("dir", 0o755, 0, 0)
    expected = {
        "etc": Node("dir", 0o750, 0, 0),
        "etc/passwd": f(b"root:x:0:0\nuser:x:1000:1000\n", x=(("user.kiln", b"2"),)),
        "etc/group": f(b"root:x:0:\n"),
        "etc/shadow": f(b"root:*:1\n", 0o640, 0, 42),
        "bin": d,
        "bin/busybox": f(b"\x7fELF busybox", 0o755),
        "bin/sh": Node("symlink", 0o777, 0, 0, "busybox"),
        "bin/su": f(b"\x7fELF su", 0o4755),
        "usr": d,
        "usr/lib": d,
        "usr/lib/libc.so": f(b"libc", 0o755),
        "usr/lib/libc.so.6": Node("symlink", 0o777, 0, 0, "libc.so"),
        "data": d,
        "data/a.txt": f(b"A"),
        "data/c.txt": f(b"c"),
        "data/h1": f(b"h1"),
        "data/pair1": f(b"pair"),
        "data/pair2": f(b"pair"),
        "opq": d,
        "opq/new.txt": f(b"new"),
        "thing": d,
        "thing/inside": f(b"a directory over a file"),
        "srv2": f(b"now a file"),
        "evil": d,
        "evil/passwd": f(b"must land inside the root"),
        "up": Node("symlink", 0o777, 0, 0, "../../../../.."),
        "quiet": d,
        "quiet/same.txt": f(b"same"),
        "quiet/rewrite.txt": f(b"rewrite"),
        "var": d,
        "var/cache": d,
        "var/cache/apt": d,
        "var/cache/apt/pkgcache.bin": f(b"cache"),
        "var/cache/apt/srcpkgcache.bin": f(b"cache2"),
        "var/log": d,
        "var/log/dpkg.log": f(b"log"),
        "srv": d,
        "srv/thing": f(b"will become a directory"),
        "opt": d,
        "opt/app": d,
        "opt/app/keep.txt": f(b"keep"),
        "opt/app/lib": d,
        "opt/app/lib/mod.py": f(b"mod"),
        "home": d,
        "home/user": Node("dir", 0o700, 1000, 1000),
        "home/user/.profile": f(b"PS1=$\n", 0o644, 1000, 1000),
        "tmp": Node("dir", 0o1777, 0, 0),
        "null": Node("char", 0o666, 0, 0, "1:3"),
        "fifo": Node("fifo", 0o600, 0, 0),
    }
    assert got == expected
    assert links == [["data/pair1", "data/pair2"]]  # a hardlink within a layer stays one


def test_materialize_keeps_times_and_writes_nothing_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(b"host")

    def scenario() -> tuple[int, int, list[str]]:
        lowers = make_lowers(tmp_path)
        os.symlink(str(outside), lowers[0] / "out")  # an absolute link to a real directory...
        put(lowers[1], "out/pwned", b"x")  # ...that a directory in a later layer covers
        root = tmp_path / "root"
        root.mkdir()
        materialize(lowers, root)
        return (
            os.lstat(lowers[0] / "bin/su").st_mtime_ns,
            os.lstat(root / "bin/su").st_mtime_ns,
            sorted(os.listdir(outside)),
        )

    src_mtime, dst_mtime, listing = confined(tmp_path, scenario)
    assert dst_mtime == src_mtime
    assert listing == ["passwd"]
    assert (outside / "passwd").read_bytes() == b"host"


def test_materialize_refuses_a_non_empty_target_and_accepts_an_empty_stack(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    materialize([], target)
    assert os.listdir(target) == []
    (target / "f").write_bytes(b"")
    with pytest.raises(BuildError, match="not empty"):
        materialize([], target)


def test_materialize_matches_the_overlay_mount(tmp_path: Path) -> None:
    def scenario() -> tuple[Tree, Tree]:
        lowers = make_lowers(tmp_path)
        root = tmp_path / "root"
        root.mkdir()
        materialize(lowers, root)
        view = tmp_path / "view"
        view.mkdir()
        enter_private_mount_namespace()
        mount_overlay(view, lowers)
        try:
            return tree(root), tree(view)
        finally:
            umount(view)

    mine, theirs = confined(tmp_path, scenario)
    assert mine[0] == theirs[0]


# -- write_changes ----------------------------------------------------------------------------------


def test_write_changes_writes_exactly_what_changed(tmp_path: Path) -> None:
    _, _, layer = confined(tmp_path, lambda: run_scenario(tmp_path))
    assert layer_entries(layer) == EXPECTED


def test_layer_entries_are_sorted_parents_first(tmp_path: Path) -> None:
    _, _, layer = confined(tmp_path, lambda: run_scenario(tmp_path))
    found = names(layer_entries(layer))
    seen: set[str] = set()
    for name in found:
        parent = name.rpartition("/")[0]
        assert not parent or parent in seen, f"{name} before its parent"
        seen.add(name)
    keys = [n.replace(".wh..wh..opq", "").replace(".wh.", "").rstrip("/").encode() for n in found]
    assert [k for k in keys if k] == sorted(k for k in keys if k)


def test_round_trip_applies_to_the_mutated_tree(tmp_path: Path) -> None:
    def scenario() -> tuple[Tree, Tree]:
        lowers, root, layer = run_scenario(tmp_path)
        top = tmp_path / "l3"
        top.mkdir()
        apply_layer(io.BytesIO(layer), top, layer_name="sha256:walkdiff", whiteouts="overlay")
        again = tmp_path / "again"
        again.mkdir()
        materialize([*lowers, top], again)
        return tree(root), tree(again)

    mutated, applied = confined(tmp_path, scenario)
    assert applied == mutated
    assert ["data/h1", "data/h2"] in applied[1]


def more_changes(root: Path) -> None:
    os.rename(root / "opt/app", root / "opt/app2")  # rename a directory
    walkdiff_rmtree(root / "var/log")  # a directory becomes a symlink
    os.symlink("/dev/null", root / "var/log")
    os.unlink(root / "usr/lib/libc.so.6")  # a symlink becomes a directory
    mkdir(root, "usr/lib/libc.so.6")
    os.unlink(root / "etc/group")  # a file becomes a fifo
    os.mkfifo(root / "etc/group", 0o644)
    os.chmod(root / "etc/group", 0o644)
    os.mknod(root / "data/zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # a device node
    os.chmod(root / "bin/busybox", 0o4755)  # setuid
    os.unlink(root / "quiet/rewrite.txt")  # deleted and written again, the same: no change
    put(root, "quiet/rewrite.txt", b"rewrite")
    os.unlink(root / "data/pair2")  # one name of a hardlink pair goes


def test_more_changes_and_their_round_trip(tmp_path: Path) -> None:
    def scenario() -> tuple[bytes, Tree, Tree]:
        mount_proc()  # apply_layer makes device nodes only where /proc says it is real root
        lowers, root, layer = run_scenario(tmp_path, more_changes)
        top = tmp_path / "l3"
        top.mkdir()
        apply_layer(io.BytesIO(layer), top, layer_name="sha256:more", whiteouts="overlay")
        again = tmp_path / "again"
        again.mkdir()
        materialize([*lowers, top], again)
        return layer, tree(root), tree(again)

    layer, mutated, applied = confined(tmp_path, scenario)
    assert [(n, t) for n, t, *_ in layer_entries(layer)] == [
        ("bin", "5"),
        ("bin/busybox", "0"),
        ("data", "5"),
        ("data/.wh.pair2", "0"),
        ("data/zero", "3"),
        ("etc", "5"),
        ("etc/group", "6"),
        ("opt", "5"),
        ("opt/.wh.app", "0"),
        ("opt/app2", "5"),
        ("opt/app2/keep.txt", "0"),
        ("opt/app2/lib", "5"),
        ("opt/app2/lib/mod.py", "0"),
        ("usr", "5"),
        ("usr/lib", "5"),
        ("usr/lib/libc.so.6", "5"),
        ("var", "5"),
        ("var/log", "2"),
    ]
    assert dict((n, m) for n, _, m, *_ in layer_entries(layer))["bin/busybox"] == 0o4755
    assert applied == mutated


def test_without_lowers_every_signature_change_counts(tmp_path: Path) -> None:
    _, _, layer = confined(tmp_path, lambda: run_scenario(tmp_path, with_lowers=False))
    found = set(names(layer_entries(layer)))
    assert {"quiet", "quiet/same.txt", "quiet/rewrite.txt"} <= found
    assert set(names(EXPECTED)) <= found


def test_a_racy_signature_is_checked_by_content(tmp_path: Path) -> None:
    """A write in the scan's clock tick may leave the signature as it was: racy paths are hashed."""

    def scenario() -> tuple[list[str], list[str]]:
        lowers = make_lowers(tmp_path)
        root = tmp_path / "root"
        root.mkdir()
        materialize(lowers, root)
        st = os.lstat(root / "etc/group")
        with open(root / "etc/group", "r+b") as f:
            f.write(b"ROOT")  # same size
        os.utime(root / "etc/group", ns=(st.st_atime_ns, st.st_mtime_ns))
        # Signatures taken *after* the write stand for "the tick hid the change".
        entries = StatIndex.scan(root).entries
        racy = StatIndex(root, entries, lowers, racy_from=0)
        settled = StatIndex(root, entries, lowers, racy_from=1 << 62)
        return (
            names(layer_entries(write_layer(lambda w: write_changes(root, racy, w)))),
            names(layer_entries(write_layer(lambda w: write_changes(root, settled, w)))),
        )

    racy, settled = confined(tmp_path, scenario)
    assert racy == ["etc", "etc/group"]
    assert settled == []


def test_stat_index_hashes_content_lazily_from_the_snapshots(tmp_path: Path) -> None:
    def scenario() -> tuple[bytes | None, bytes | None, bytes | None, int]:
        lowers = make_lowers(tmp_path)
        root = tmp_path / "root"
        root.mkdir()
        materialize(lowers, root)
        index = StatIndex.scan(root, lowers)
        (root / "data/a.txt").write_bytes(b"changed")
        return (
            index.content_hash("data/a.txt"),
            StatIndex.scan(root).content_hash("data/a.txt"),
            index.content_hash("data"),
            len(index._hashes),
        )

    before, unknown, of_dir, hashed = confined(tmp_path, scenario)
    assert before == hashlib.sha256(b"A").digest()  # what the file held when scanned
    assert unknown is None  # without the snapshots the old content is unknown
    assert of_dir is None
    assert hashed == 2


@pytest.mark.parametrize("proc", [True, False], ids=["mountinfo", "device-only"])
def test_skip_and_mount_points_neither_appear_nor_look_deleted(tmp_path: Path, proc: bool) -> None:
    def change(root: Path) -> None:
        (root / "proc").mkdir()  # made by the sandbox
        walkdiff_rmtree(root / "tmp")  # gone, but that is the sandbox's business
        put(root, "run/secrets/token", b"")
        put(root, "run/secrets/other", b"")
        Path("/secret").write_bytes(b"s3cr3t")  # the confined "/" is a tmpfs: another device
        libc.mount("/secret", str(root / "run/secrets/token"), None, libc.MS_BIND)
        put(tmp_path, "same-fs-secret", b"s3cr3t")  # the same device: only mountinfo tells
        libc.mount(str(tmp_path / "same-fs-secret"), str(root / "run/secrets/other"), None, libc.MS_BIND)
        put(root, "etc/added", b"added")

    def scenario() -> list[Entry]:
        if proc:
            mount_proc()
        lowers = make_lowers(tmp_path)
        root = tmp_path / "root"
        root.mkdir()
        materialize(lowers, root)
        before = StatIndex.scan(root, lowers)
        change(root)
        skip = {"proc", "tmp"}.__contains__
        return layer_entries(write_layer(lambda w: write_changes(root, before, w, skip)))

    found = names(confined(tmp_path, scenario))
    if proc:
        assert found == ["etc", "etc/added", "run", "run/secrets"]
    else:  # without /proc a bind mount from the same device cannot be told apart: a known gap
        assert found == ["etc", "etc/added", "run", "run/secrets", "run/secrets/other"]


def test_unchanged_tree_gives_an_empty_layer(tmp_path: Path) -> None:
    _, _, layer = confined(tmp_path, lambda: run_scenario(tmp_path, lambda root: None))
    assert layer_entries(layer) == []


def test_reused_directory_inode_gives_whiteouts_instead_of_opaque(tmp_path: Path) -> None:
    """A directory made again under its old inode number cannot be told from the old one: what
    is gone is whited out one by one instead of an opaque marker; the tree is the same."""

    def scenario() -> tuple[list[str], Tree, Tree]:
        lowers = make_lowers(tmp_path)
        root = tmp_path / "root"
        root.mkdir()
        materialize(lowers, root)
        before = StatIndex.scan(root, lowers)
        walkdiff_rmtree(root / "opt/app")
        put(root, "opt/app/keep.txt", b"keep")
        put(root, "opt/app/more.txt", b"more")
        sig = before.entries["opt/app"]
        now = os.lstat(root / "opt/app")
        before.entries["opt/app"] = sig._replace(dev=now.st_dev, ino=now.st_ino)  # as if reused
        layer = write_layer(lambda w: write_changes(root, before, w))
        top = tmp_path / "l3"
        top.mkdir()
        apply_layer(io.BytesIO(layer), top, layer_name="sha256:reuse", whiteouts="overlay")
        again = tmp_path / "again"
        again.mkdir()
        materialize([*lowers, top], again)
        return names(layer_entries(layer)), tree(root), tree(again)

    found, mutated, applied = confined(tmp_path, scenario)
    assert found == ["opt", "opt/app", "opt/app/.wh.lib", "opt/app/more.txt"]
    assert applied == mutated


def test_same_paths_as_the_overlay_upper(tmp_path: Path) -> None:
    """The same step on an overlay mount: write_upper_as_layer and write_changes agree."""

    def scenario() -> tuple[bytes, bytes]:
        lowers, _, walked = run_scenario(tmp_path)
        upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
        for d in (upper, work, merged):
            d.mkdir()
        enter_private_mount_namespace()
        mount_overlay(merged, lowers, upper, work)
        try:
            mutate(merged)
        finally:
            umount(merged)
        return walked, write_layer(lambda w: write_upper_as_layer(upper, w))

    walked, overlaid = confined(tmp_path, scenario)
    mine = set(names(layer_entries(walked)))
    theirs = set(names(layer_entries(overlaid)))
    # Documented differences: overlay copies up files whose times alone changed, and marks a
    # directory made where a file was deleted opaque (a lower file never shows through anyway).
    assert theirs - mine == {"quiet", "quiet/same.txt", "quiet/rewrite.txt", "srv/thing/.wh..wh..opq"}
    assert mine - theirs == set()
