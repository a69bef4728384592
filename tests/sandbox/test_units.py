"""Pure parts of the sandbox: id maps, in-root path resolution, spec codec, output buffering."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.errors import SandboxError
from kiln.sandbox.caps import CAP_NUMBERS, has_capability
from kiln.sandbox.idmap import (
    IdRange,
    Mapping,
    SubIdRange,
    identity_ranges,
    map_text,
    newidmap_args,
    parse_id_map,
    parse_subid,
    rootless_ranges,
)
from kiln.sandbox.process import OutputBuffer
from kiln.sandbox.rootpath import PathEscapeError, ensure_mountpoint, remove_placeholder, resolve_in_root
from kiln.sandbox.spec import Mount, OverlayRootfs, ProcessSpec

SUBUID = """
# comment
alice:100000:65536
1001:300000:1000
bob:200000:65536
alice:500000:10
broken:line
alice:x:5
"""


def test_parse_subid_matches_name_or_uid_and_skips_junk() -> None:
    assert parse_subid(SUBUID, "alice", 1000) == [SubIdRange(100000, 65536), SubIdRange(500000, 10)]
    assert parse_subid(SUBUID, "carol", 1001) == [SubIdRange(300000, 1000)]
    assert parse_subid(SUBUID, "nobody", 4242) == []


def test_rootless_ranges_put_the_caller_at_zero_then_the_subordinate_ranges() -> None:
    ranges = rootless_ranges(1000, [SubIdRange(100000, 65536), SubIdRange(500000, 10)])
    assert ranges == (IdRange(0, 1000, 1), IdRange(1, 100000, 65536), IdRange(65537, 500000, 10))
    assert newidmap_args(ranges[:2]) == ["0", "1000", "1", "1", "100000", "65536"]
    assert map_text(ranges[:1]) == "0 1000 1\n"


def test_mapping_properties() -> None:
    full = Mapping(rootless_ranges(1000, [SubIdRange(100000, 65536)]), rootless_ranges(1000, [SubIdRange(100000, 65536)]))
    assert full.is_full and not full.is_initial and full.size == 65537
    assert full.maps_uid(65536) and not full.maps_uid(65537)
    single = Mapping((IdRange(0, 1000, 1),), (IdRange(0, 1000, 1),), setgroups_allowed=False)
    assert single.size == 1 and not single.is_full
    host = Mapping(parse_id_map("         0          0 4294967295\n"), parse_id_map("0 0 4294967295"))
    assert host.is_initial and host.is_full
    gap = Mapping((IdRange(0, 1000, 1), IdRange(2, 100000, 65536)), (IdRange(0, 1000, 1),))
    assert gap.size == 1
    assert identity_ranges(full.uids) == (IdRange(0, 0, 1), IdRange(1, 1, 65536))


def test_capability_parsing() -> None:
    status = "Name:\tx\nCapEff:\t0000000000200001\n"
    assert has_capability("CAP_SYS_ADMIN", status) and has_capability("CAP_CHOWN", status)
    assert not has_capability("CAP_SETUID", status)
    assert CAP_NUMBERS["CAP_SYS_ADMIN"] == 21


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr" / "etc").mkdir(parents=True)
    (root / "usr" / "etc" / "hosts").write_text("")
    os.symlink("/usr/etc", root / "etc")  # absolute: must resolve against root, not the host
    os.symlink("../../../../../../tmp", root / "up")  # climbs above root: clamped at root
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    (root / "file").write_text("")
    return root


def test_resolve_in_root_keeps_symlinks_inside(tree: Path) -> None:
    assert resolve_in_root(str(tree), "/etc/hosts") == "usr/etc/hosts"
    assert resolve_in_root(str(tree), "/etc/../etc/missing/x") == "usr/etc/missing/x"
    assert resolve_in_root(str(tree), "/up/x") == "tmp/x"
    assert resolve_in_root(str(tree), "/../../..") == ""
    with pytest.raises(PathEscapeError):
        resolve_in_root(str(tree), "/loop1/x")


def test_ensure_mountpoint_creates_only_missing_parts_and_remove_undoes_them(tree: Path) -> None:
    created = ensure_mountpoint(str(tree), "a/b/c", directory=False)
    assert created == ["a", "a/b", "a/b/c"]
    assert (tree / "a" / "b" / "c").is_file()
    assert ensure_mountpoint(str(tree), "a/b/c", directory=False) == []
    with pytest.raises(PathEscapeError):
        ensure_mountpoint(str(tree), "file/x", directory=True)
    for rel in reversed(created):
        assert remove_placeholder(str(tree), rel)
    assert not (tree / "a").exists()


def test_ensure_mountpoint_racing_itself_never_fails_and_creates_each_part_once(tree: Path) -> None:
    """Sandboxes sharing a root create the same mount points at once (CI saw "File exists")."""
    import threading

    for _round in range(40):
        start = threading.Barrier(8)
        results: list[list[str]] = []
        errors: list[BaseException] = []

        def one(start: threading.Barrier = start, results: list[list[str]] = results, errors: list[BaseException] = errors) -> None:
            start.wait()
            try:
                results.append(ensure_mountpoint(str(tree), "m/etc/resolv.conf", directory=False))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        made = [rel for created in results for rel in created]
        assert sorted(made) == ["m", "m/etc", "m/etc/resolv.conf"]  # each part by exactly one run
        for rel in ("m/etc/resolv.conf", "m/etc", "m"):
            assert remove_placeholder(str(tree), rel)


def test_remove_placeholder_keeps_content_and_never_follows_symlinks(tree: Path, tmp_path: Path) -> None:
    ensure_mountpoint(str(tree), "d/sub", directory=True)
    (tree / "d" / "sub" / "written-by-step").write_text("data")
    assert not remove_placeholder(str(tree), "d/sub")
    outside = tmp_path / "outside"
    (outside / "victim").mkdir(parents=True)
    os.symlink(str(outside), tree / "swapped")
    assert not remove_placeholder(str(tree), "swapped/victim")
    assert (outside / "victim").is_dir()


def test_spec_json_round_trip_and_validation() -> None:
    spec = ProcessSpec(
        rootfs=OverlayRootfs(("/l2", "/l1"), "/u", "/w"),
        argv=["sh", "-c", "true"],
        env={"A": "b"},
        cwd="/src",
        uid=5,
        gid=6,
        additional_gids=[7],
        mounts=[Mount("bind", "/ctx", "/host/ctx", readonly=True), Mount("tmpfs", "/t", options=("size=1m",))],
        network="none",
        read_only_rootfs=True,
        capabilities=None,
    )
    again = ProcessSpec.from_json(spec.to_json())
    assert again.to_json() == spec.to_json()
    assert ProcessSpec.from_json({"rootfs": "/r", "argv": ["x"]}).capabilities == spec.__class__(rootfs="/r", argv=["x"]).capabilities
    for bad, message in [
        (ProcessSpec(rootfs="/r", argv=[]), "empty command"),
        (ProcessSpec(rootfs="/r", argv=["x"], cwd="rel"), "not absolute"),
        (ProcessSpec(rootfs="/r", argv=["x"], mounts=[Mount("bind", "/t")]), "no source"),
        (ProcessSpec(rootfs="/r", argv=["x"], capabilities=("CAP_NOPE",)), "CAP_NOPE"),
        (ProcessSpec(rootfs=OverlayRootfs((), "/u", "/w"), argv=["x"]), "lower"),
    ]:
        with pytest.raises(SandboxError, match=message):
            bad.validate()


def test_output_buffer_splits_lines_and_bounds_the_tail() -> None:
    lines: list[bytes] = []
    buf = OutputBuffer(lines.append, tail_limit=5)
    buf.feed(b"ab")
    assert lines == []
    buf.feed(b"c\nde\nf")
    assert lines == [b"abc\n", b"de\n"]
    buf.close()
    assert lines == [b"abc\n", b"de\n", b"f"]
    assert buf.tail == b"\nde\nf"  # the last 5 bytes
    big: list[bytes] = []
    huge = OutputBuffer(big.append, tail_limit=10)
    huge.feed(b"x" * 70000)
    assert [len(b) for b in big] == [70000]  # a line longer than 64 KiB is passed on anyway


def test_root_share_last_one_out_removes_every_recorded_placeholder(tmp_path: Path) -> None:
    from kiln.sandbox.rootshare import RootShare

    root, locks = tmp_path / "root", str(tmp_path / "locks")
    (root / "made").mkdir(parents=True)
    (root / "made" / "by-b").touch()
    (root / "by-a").touch()
    first, second = RootShare(str(root), locks), RootShare(str(root), locks)
    first.leave(["by-a", "made/by-b"])  # the second run still uses the root: nothing goes
    assert (root / "by-a").exists() and (root / "made" / "by-b").exists()
    second.leave(["made"])  # a parent recorded after its child is still removed after it
    assert sorted(p.name for p in root.iterdir()) == []
    third = RootShare(str(root), locks)
    third.leave([])  # an empty ledger is fine
