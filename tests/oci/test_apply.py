"""Safe layer apply: hostile layers, whiteouts, replacement rules, metadata, round trips."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.errors import DigestMismatchError, LayerError
from kiln.oci.apply import OVERLAY_OPAQUE_XATTR, apply_layer
from kiln.oci.digest import Digest
from kiln.oci.layer import EntryType
from kiln.oci.layer_writer import LayerWriter
from tests.oci.confine import confined
from tests.oci.tarcraft import Arena, craft, directory, hardlink, reg, snapshot, symlink

CAP = bytes.fromhex("0100000200200000000000000000000000000000")


def user_xattrs_supported(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


@pytest.fixture
def arena(tmp_path: Path) -> Arena:
    return Arena(tmp_path)


def apply(stream: io.BytesIO, root: Path, name: str = "sha256:layer", **kw: object) -> object:
    # Confined: if apply_layer had an escape bug, it must not reach the real host (see confine.py).
    keep = root.parent if root.parent != Path("/") else root
    return confined(keep, lambda: apply_layer(stream, root, layer_name=name, **kw))  # type: ignore[arg-type]


# -- hostile layers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "entry", "reason"),
    [
        ([reg("../secret", b"pwned")], "../secret", "climbs out"),
        ([reg("a/../../secret", b"pwned")], "a/../../secret", "climbs out"),
        ([directory("a"), reg("./a/../../../outside/secret")], "./a/../../../outside/secret", "climbs out"),
        ([hardlink("h", "../outside/secret")], "h", "outside the root"),
        ([hardlink("h", "a/../../outside/secret")], "h", "outside the root"),
        ([reg("../.wh.outside")], "../.wh.outside", "climbs out"),
        ([reg("a/.wh..")], "a/.wh..", "whites out"),
        ([reg("a/.wh.")], "a/.wh.", "whites out"),
        ([symlink("x", "y"), symlink("y", "x"), reg("x/f")], "x/f", "too many levels"),
        ([reg("f"), reg("f/g")], "f/g", "not a directory"),
        ([hardlink("h", "nothing")], "h", "does not exist"),
        ([directory("d"), hardlink("h", "d")], "h", "is a directory"),
        ([reg("x" * 300 + "/" + "y" * 4000)], "x" * 300 + "/" + "y" * 4000, "longer than"),
    ],
)
def test_hostile_entries_are_refused(arena: Arena, members: list, entry: str, reason: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(LayerError) as err:
        apply(craft(*members), arena.root, "sha256:evil")
    assert f"layer sha256:evil: entry {entry!r}" in str(err.value)
    assert reason in str(err.value)
    arena.assert_untouched()


def test_absolute_names_land_inside_the_root(arena: Arena) -> None:
    host_path = str(arena.outside / "etc" / "passwd")
    apply(craft(reg("/etc/passwd", b"image"), reg(host_path, b"image2"), reg("./x", b"x")), arena.root)
    assert (arena.root / "etc" / "passwd").read_bytes() == b"image"
    assert (arena.root / host_path.lstrip("/")).read_bytes() == b"image2"
    assert (arena.root / "x").read_bytes() == b"x"
    arena.assert_untouched()


def test_symlinked_dirs_are_followed_inside_the_root(arena: Arena) -> None:
    outside = str(arena.outside)
    apply(
        craft(
            directory("etc"),
            symlink("a", "/etc"),
            reg("a/passwd", b"through a"),
            symlink("rel", "../../../../outside"),
            reg("rel/secret", b"through rel"),
            symlink("abs", outside),
            reg("abs/secret", b"through abs"),
            symlink("chain1", "chain2"),
            symlink("chain2", "../.."),
            reg("chain1/etc/shadow", b"through chain"),
        ),
        arena.root,
    )
    assert (arena.root / "etc" / "passwd").read_bytes() == b"through a"
    assert (arena.root / "outside" / "secret").read_bytes() == b"through rel"
    assert (arena.root / outside.lstrip("/") / "secret").read_bytes() == b"through abs"
    assert (arena.root / "etc" / "shadow").read_bytes() == b"through chain"
    assert os.readlink(arena.root / "abs") == outside  # stored verbatim, never followed by us
    arena.assert_untouched()


def test_later_layers_write_through_symlinked_dirs(arena: Arena) -> None:
    """busybox/debian style: /bin -> usr/bin in one layer, bin/tool in the next."""
    apply(craft(directory("usr"), directory("usr/bin"), symlink("bin", "usr/bin")), arena.root)
    apply(craft(reg("bin/tool", b"t", mode=0o755)), arena.root)
    assert (arena.root / "usr" / "bin" / "tool").read_bytes() == b"t"
    assert (arena.root / "bin").is_symlink()


def test_hardlinks_never_reach_host_files(arena: Arena) -> None:
    secret = str(arena.outside / "secret")
    # through an intermediate symlink: resolved inside the root, where there is nothing
    with pytest.raises(LayerError, match="entry 'h': hardlink target 'esc/secret' does not exist"):
        apply(craft(symlink("esc", str(arena.outside)), hardlink("h", "esc/secret")), arena.root)
    # to an absolute host path: that is a path inside the root too
    with pytest.raises(LayerError, match="does not exist"):
        apply(craft(hardlink("h2", secret)), arena.root)
    # to a symlink leading out: the link is a second name of the symlink, not of the host file
    apply(craft(symlink("evil", secret), hardlink("h3", "evil")), arena.root)
    assert os.readlink(arena.root / "h3") == secret
    assert os.lstat(arena.root / "h3").st_ino == os.lstat(arena.root / "evil").st_ino
    arena.assert_untouched()


def test_whiteouts_through_symlinks_stay_inside(arena: Arena) -> None:
    apply(craft(symlink("s", str(arena.outside)), symlink("t", "/../outside")), arena.root)
    apply(
        craft(
            reg("s/.wh.secret"),
            reg("s/.wh..wh..opq"),
            reg("t/etc/.wh.passwd"),
            reg(str(arena.outside / ".wh.secret")),
        ),
        arena.root,
    )
    arena.assert_untouched()
    apply(craft(reg(".wh.s")), arena.root)  # whiting out a symlink removes the link only
    assert not os.path.lexists(arena.root / "s")
    arena.assert_untouched()


def test_replacing_a_symlink_to_the_host_replaces_the_link(arena: Arena) -> None:
    apply(craft(symlink("f", str(arena.outside / "secret")), symlink("d", str(arena.outside))), arena.root)
    apply(craft(reg("f", b"new"), directory("d"), reg("d/secret", b"inner")), arena.root)
    assert not (arena.root / "f").is_symlink() and (arena.root / "f").read_bytes() == b"new"
    assert not (arena.root / "d").is_symlink() and (arena.root / "d" / "secret").read_bytes() == b"inner"
    arena.assert_untouched()


# Names come from a small pool drawn per example (plus paths below them), so entries often
# meet: a file over a symlink, a write, whiteout or hardlink through one, across two layers.
# Targets mostly point at the sentinels.
SEGMENTS = ["a", "b", "..", ".", "", "OUTSIDE", "secret", "etc", ".wh.a", ".wh..wh..opq", ".wh..."]
LEAVES = ["secret", "etc", "passwd", "..", ".wh.secret", ".wh..wh..opq", "etc/passwd"]
ESCAPES = ["OUTSIDE", "OUTSIDE/secret", "OUTSIDE/etc", "/", "..", "../..", "../../outside", "b/../.."]
segment_lists = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3)


@st.composite
def layer_stacks(draw: st.DrawFn) -> list[list[tuple[str, list[str], list[str] | str]]]:
    """A first layer that mostly plants symlinks, then layers that write, link and white out."""
    pool = draw(st.lists(segment_lists, min_size=1, max_size=3))
    names = st.one_of(
        st.sampled_from(pool),
        st.tuples(st.sampled_from(pool), st.sampled_from(LEAVES)).map(lambda t: [*t[0], t[1]]),
    )
    targets = st.one_of(st.sampled_from(ESCAPES), st.sampled_from(ESCAPES), names)
    setup = st.tuples(st.sampled_from(["symlink", "symlink", "dir", "file"]), names, targets)
    attack = st.tuples(st.sampled_from(["file", "file", "dir", "symlink", "hardlink"]), names, targets)
    first = draw(st.lists(setup, min_size=1, max_size=6))
    return [first, *draw(st.lists(st.lists(attack, min_size=1, max_size=6), min_size=1, max_size=2))]


def _path(segments: list[str], outside: str) -> str:
    return "/".join(segments).replace("OUTSIDE", outside.strip("/"))


def _member(kind: str, name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    if kind == "file":
        return reg(name, b"pwned")
    if kind == "dir":
        return directory(name, mode=0o700)
    return symlink(name, target) if kind == "symlink" else hardlink(name, target)


def _apply_all(root: Path, layers: list[list[tuple[tarfile.TarInfo, bytes | None]]]) -> None:
    """Apply each layer; after a refused entry, go on with the rest as another layer, so the
    refusals do not hide what the later entries would do."""
    for n, members in enumerate(layers):
        while members:
            try:
                apply_layer(craft(*members), root, layer_name=f"layer{n}")
                break
            except LayerError as err:
                prefix = f"layer layer{n}: entry "
                assert str(err).startswith(prefix)
                # tarfile writes directory names with a trailing slash
                names = [m[0].name + "/" * (m[0].isdir() and not m[0].name.endswith("/")) for m in members]
                bad = next(i for i, name in enumerate(names) if str(err).startswith(f"{prefix}{name!r}:"))
                members = members[bad + 1 :]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=layer_stacks())
def test_no_layer_touches_anything_outside_the_root(layers: list) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        arena = Arena(Path(tmp))
        outside = str(arena.outside)
        built = [
            [
                _member(
                    kind,
                    _path(segments, outside),
                    (_path(target, outside) if isinstance(target, list) else target).replace(
                        "OUTSIDE", outside
                    ),
                )
                for kind, segments, target in layer
            ]
            for layer in layers
        ]
        # One confined child per example (see confine.py): an escape can only reach the arena.
        confined(Path(tmp), lambda: _apply_all(arena.root, built))
        arena.assert_untouched()


# -- whiteouts ---------------------------------------------------------------------------------


def lower(root: Path) -> None:
    apply(
        craft(
            directory("a"),
            reg("a/x"),
            reg("a/y"),
            reg("b"),
            directory("c"),
            reg("c/old"),
            directory("c/sub"),
            reg("c/sub/deep"),
            directory("d"),
            reg("d/old"),
            reg("e", b"lower"),
        ),
        root,
        "lower",
    )


def test_whiteouts_and_opaque_dirs_hide_lower_layers(tmp_path: Path) -> None:
    lower(tmp_path)
    stats = apply(
        craft(
            reg(".wh.b"),
            reg("a/.wh.x"),
            reg("c/new"),  # written before the opaque marker: it belongs to this layer and stays
            reg("c/.wh..wh..opq"),
            reg("c/later"),
            reg("d/new"),
            reg(".wh.d"),  # whiting out a directory spares what this layer put in it
            reg("e", b"upper"),
            reg(".wh.e"),  # a whiteout only hides lower layers' entries
            reg(".wh.missing"),
            reg("nodir/.wh.x"),
            reg(".wh..wh.plnk"),  # aufs bookkeeping: ignored
        ),
        tmp_path,
    )
    assert sorted(snapshot(tmp_path)) == ["a", "a/y", "c", "c/later", "c/new", "d", "d/new", "e"]
    assert (tmp_path / "e").read_bytes() == b"upper"
    assert stats.whiteouts == 7  # type: ignore[attr-defined]


def test_writer_whiteouts_round_trip_through_apply(tmp_path: Path) -> None:
    lower(tmp_path)
    out = io.BytesIO()
    with LayerWriter(out) as w:
        w.add_whiteout("a/x")
        w.add_opaque("c")
        w.add_file("c/fresh", io.BytesIO(b"f"), 1)
        w.add_whiteout("b")
    out.seek(0)
    apply(out, tmp_path)
    assert sorted(snapshot(tmp_path)) == ["a", "a/y", "c", "c/fresh", "d", "d/old", "e"]


def test_overlay_mode_records_whiteouts_for_overlayfs(tmp_path: Path) -> None:
    if not user_xattrs_supported(tmp_path):
        pytest.skip("no user xattrs here")
    stats = apply(
        craft(
            reg("etc/.wh.passwd"),
            reg("var/.wh..wh..opq"),
            reg("var/keep"),
            reg(".wh.opt"),
            directory("opt"),  # a new directory where a lower one was deleted
            reg(
                "x",
                pax_headers={
                    "SCHILY.xattr.trusted.overlay.redirect": "/etc",
                    "SCHILY.xattr.user.overlay.opaque": "y",
                },
            ),
        ),
        tmp_path,
        whiteouts="overlay",
    )
    wo = os.lstat(tmp_path / "etc" / "passwd")
    assert stat.S_ISCHR(wo.st_mode) and wo.st_rdev == 0
    assert os.getxattr(tmp_path / "var", OVERLAY_OPAQUE_XATTR) == b"y"
    assert (tmp_path / "var" / "keep").exists()
    assert os.getxattr(tmp_path / "opt", OVERLAY_OPAQUE_XATTR) == b"y"
    assert os.listxattr(tmp_path / "x") == []  # a layer may not steer overlayfs
    assert any("trusted.overlay.redirect dropped" in w for w in stats.warnings)  # type: ignore[attr-defined]


# -- replacement rules and metadata --------------------------------------------------------------


def test_replacement_rules(tmp_path: Path) -> None:
    apply(
        craft(
            directory("d", mode=0o700),
            reg("d/keep"),
            reg("f"),
            symlink("s", "f"),
            directory("gone"),
            reg("gone/x"),
        ),
        tmp_path,
    )
    apply(
        craft(
            directory("d", mode=0o751), reg("f", b"new"), reg("s", b"was a link"), reg("gone", b"now a file")
        ),
        tmp_path,
    )
    assert (tmp_path / "d" / "keep").exists()  # a dir over a dir keeps its contents
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o751  # and takes the new metadata
    assert (tmp_path / "f").read_bytes() == b"new"
    assert not (tmp_path / "s").is_symlink() and (tmp_path / "s").read_bytes() == b"was a link"
    assert (tmp_path / "gone").read_bytes() == b"now a file"


def test_hardlinked_file_is_not_modified_in_place(tmp_path: Path) -> None:
    apply(craft(reg("a", b"one"), hardlink("b", "a")), tmp_path)
    assert os.stat(tmp_path / "a").st_ino == os.stat(tmp_path / "b").st_ino
    apply(craft(reg("b", b"two")), tmp_path)
    assert (tmp_path / "a").read_bytes() == b"one" and (tmp_path / "b").read_bytes() == b"two"


def test_ownership_modes_and_dir_mtimes(tmp_path: Path) -> None:
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    root_a.mkdir()
    root_b.mkdir()
    members = [
        directory("d", mode=0o2775, uid=1000, gid=1001, mtime=111),
        reg(
            "d/suid",
            b"x",
            mode=0o4755,
            uid=1000,
            gid=1001,
            mtime=222,
            pax_headers={"SCHILY.xattr.security.capability": CAP.decode("utf-8", "surrogateescape")},
        ),
        directory("d/sticky", mode=0o1777, uid=5, gid=5, mtime=333),
        reg("d/sticky/f", mode=0o600, uid=6, gid=7, mtime=444),
        symlink("d/link", "suid"),
    ]
    apply(craft(*members), root_a)
    snap = snapshot(root_a, mtimes=True)
    assert snap["d"].mode == 0o2775 and snap["d"].mtime == 111  # mtime kept despite children
    assert (snap["d"].uid, snap["d"].gid) == (1000, 1001)
    assert snap["d/suid"].mode == 0o4755 and (snap["d/suid"].uid, snap["d/suid"].gid) == (1000, 1001)
    assert dict(snap["d/suid"].xattrs).get("security.capability") == CAP  # set after chown
    assert snap["d/sticky"].mode == 0o1777 and snap["d/sticky"].mtime == 333
    assert (snap["d/sticky/f"].uid, snap["d/sticky/f"].gid, snap["d/sticky/f"].mtime) == (6, 7, 444)
    apply(craft(*members), root_b, preserve_owner=False)
    assert {(n.uid, n.gid) for n in snapshot(root_b).values()} == {(os.geteuid(), os.getegid())}


def can_mknod(where: Path) -> bool:
    probe = where / ".mknod-probe"
    try:
        os.mknod(probe, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        return False
    probe.unlink()
    return True


def test_devices_and_fifos(tmp_path: Path) -> None:
    out = io.BytesIO()
    with LayerWriter(out, "none") as w:
        w.add_device("null", EntryType.CHAR, 1, 3, 0o666)
        w.add_device("loop9", EntryType.BLOCK, 7, 9, 0o660)
        w.add_device("fifo", EntryType.FIFO, mode=0o620)
        w.add_hardlink("null2", "null")
    out.seek(0)
    stats = apply(out, tmp_path)
    snap = snapshot(tmp_path)
    assert (snap["fifo"].kind, snap["fifo"].mode) == ("fifo", 0o620)
    if can_mknod(tmp_path):
        assert stats.skipped == 0  # type: ignore[attr-defined]
        assert (snap["null"].kind, snap["null"].content, snap["null"].mode) == ("char", "1:3", 0o666)
        assert (snap["loop9"].kind, snap["loop9"].content) == ("block", "7:9")
        assert os.stat(tmp_path / "null2").st_ino == os.stat(tmp_path / "null").st_ino
    else:
        assert "null" not in snap and "device node skipped" in stats.warnings[0]  # type: ignore[attr-defined]


ROOTLESS_SCRIPT = """
import sys
from pathlib import Path
from kiln.errors import LayerError
from kiln.oci.apply import apply_layer
with open(sys.argv[1], "rb") as f:
    stats = apply_layer(f, Path(sys.argv[2]), layer_name="L")
print("skipped", stats.skipped, stats.warnings[0])
with open(sys.argv[3], "rb") as f:
    try:
        apply_layer(f, Path(sys.argv[2]), layer_name="L2")
    except LayerError as e:
        print("error", e)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to map uid 0 in a new user namespace")
def test_in_a_user_namespace_devices_are_skipped_and_unmapped_owners_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    layer = craft(reg("f"), special("fifo", tarfile.FIFOTYPE), special("dev/null", tarfile.CHRTYPE, 1, 3))
    (tmp_path / "l1.tar").write_bytes(layer.getvalue())
    (tmp_path / "l2.tar").write_bytes(craft(reg("owned", uid=4242)).getvalue())
    script = tmp_path / "s.py"
    script.write_text(ROOTLESS_SCRIPT)
    cmd = [
        "unshare",
        "--user",
        "--map-root-user",
        sys.executable,
        str(script),
        str(tmp_path / "l1.tar"),
        str(tmp_path / "root"),
        str(tmp_path / "l2.tar"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no user namespaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert "skipped 1 layer L: entry 'dev/null': device node skipped" in done.stdout
    assert "error layer L2: entry 'owned': owner 4242:0 is not mapped" in done.stdout
    assert not (tmp_path / "root" / "dev" / "null").exists()
    assert stat.S_ISFIFO(os.lstat(tmp_path / "root" / "fifo").st_mode)


def special(name: str, kind: bytes, major: int = 0, minor: int = 0) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = major, minor
    return info, None


def test_round_trip_tree_to_layer_to_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "tmp").mkdir(mode=0o1777)
    os.chmod(src / "tmp", 0o1777)
    (src / "usr" / "bin" / "tool").write_bytes(os.urandom(300_000))
    os.chmod(src / "usr" / "bin" / "tool", 0o4755)
    os.chown(src / "usr" / "bin" / "tool", 1000, 1001)
    os.chmod(src / "usr" / "bin" / "tool", 0o4755)
    os.link(src / "usr" / "bin" / "tool", src / "usr" / "bin" / "tool2")
    (src / "bin").symlink_to("usr/bin")
    os.lchown(src / "bin", 7, 8)
    os.mkfifo(src / "pipe", 0o640)
    (src / "empty").write_bytes(b"")
    if user_xattrs_supported(tmp_path):
        os.setxattr(src / "empty", "user.note", b"\x00\x01binary")
        os.setxattr(src / "usr", "user.dir", b"d")
    os.setxattr(src / "usr" / "bin" / "tool", "security.capability", CAP)
    for p in [*src.rglob("*"), src]:
        os.utime(p, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    for compression in ("gzip", "zstd", "none"):
        out = io.BytesIO()
        with LayerWriter(out, compression) as w:
            w.add_tree(src)
        info = w.result()
        dst = tmp_path / f"dst-{compression}"
        dst.mkdir()
        out.seek(0)
        apply(out, dst, compression=compression, diff_id=info.diff_id)
        assert snapshot(dst, mtimes=True) == snapshot(src, mtimes=True)
        assert os.stat(dst / "usr/bin/tool").st_ino == os.stat(dst / "usr/bin/tool2").st_ino


def test_apply_checks_the_diff_id(tmp_path: Path) -> None:
    with pytest.raises(DigestMismatchError, match="layer L: DiffID mismatch"):
        apply(craft(reg("a")), tmp_path, "L", diff_id=Digest.of(b"not this"))


def test_root_entry_updates_root_metadata(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    apply(craft(directory("./", mode=0o750, mtime=5), reg("./a")), root)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o750 and int(os.stat(root).st_mtime) == 5
    with pytest.raises(LayerError, match="names the root"):
        apply(craft(reg("./")), root)
