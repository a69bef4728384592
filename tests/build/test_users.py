"""User/group resolution against a rootfs: USER (runtime) rules and COPY --chown rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.build.rootpath import SymlinkLoopError, clean_path, resolve_in_root
from kiln.build.users import UnknownUserError, resolve_chown, resolve_user
from kiln.errors import KilnError

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment line
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1001:App:/home/app:/bin/sh
broken:x:notanumber:5::/:/bin/sh

web:x:33:33::/var/www:/bin/false
"""

GROUP = """\
root:x:0:
daemon:x:1:
appgrp:x:1001:
staff:x:50:app,web
audio:x:29:app
wheel:x:10:root
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    etc = tmp_path / "rootfs" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    return tmp_path / "rootfs"


# -- USER ------------------------------------------------------------------------------


def test_user_by_name_gets_passwd_gid_and_supplementary_groups(rootfs: Path) -> None:
    assert resolve_user(rootfs, "app") == (1000, 1001, (50, 29))


def test_user_root_by_name_and_empty_spec(rootfs: Path) -> None:
    assert resolve_user(rootfs, "root") == (0, 0, (10,))
    assert resolve_user(rootfs, "") == (0, 0, (10,))


def test_numeric_user_in_passwd_uses_its_gid(rootfs: Path) -> None:
    assert resolve_user(rootfs, "1000") == (1000, 1001, (50, 29))


def test_numeric_user_not_in_passwd_gets_gid_zero(rootfs: Path) -> None:
    assert resolve_user(rootfs, "4242") == (4242, 0, ())


def test_explicit_group_overrides_gid_and_drops_supplementary(rootfs: Path) -> None:
    assert resolve_user(rootfs, "app:staff") == (1000, 50, ())
    assert resolve_user(rootfs, "app:777") == (1000, 777, ())
    assert resolve_user(rootfs, "1234:5678") == (1234, 5678, ())


def test_unknown_user_name_is_an_error_naming_it(rootfs: Path) -> None:
    with pytest.raises(UnknownUserError, match="'nobody'"):
        resolve_user(rootfs, "nobody")


def test_unknown_group_name_is_an_error_naming_it(rootfs: Path) -> None:
    with pytest.raises(UnknownUserError, match="'nogroup'"):
        resolve_user(rootfs, "app:nogroup")


def test_missing_passwd_allows_numeric_ids_only(tmp_path: Path) -> None:
    empty = tmp_path / "scratch"
    empty.mkdir()
    assert resolve_user(empty, "1000") == (1000, 0, ())
    assert resolve_user(empty, "1000:2000") == (1000, 2000, ())
    assert resolve_user(None, "7") == (7, 0, ())
    with pytest.raises(UnknownUserError, match="no /etc/passwd"):
        resolve_user(empty, "app")


def test_malformed_passwd_line_is_skipped(rootfs: Path) -> None:
    with pytest.raises(UnknownUserError):
        resolve_user(rootfs, "broken")
    assert resolve_user(rootfs, "web") == (33, 33, (50,))


@pytest.mark.parametrize("spec", ["a:b:c", ":5", "5:"])
def test_malformed_specs(rootfs: Path, spec: str) -> None:
    with pytest.raises(KilnError):
        resolve_user(rootfs, spec)


def test_out_of_range_id(rootfs: Path) -> None:
    with pytest.raises(KilnError, match="out of range"):
        resolve_user(rootfs, str(2**31))


def test_passwd_symlink_is_resolved_inside_the_rootfs(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "passwd").write_text("svc:x:900:901::/:/bin/sh\n")
    # absolute target: must be read as <root>/data/passwd, never the host's /data/passwd
    os.symlink("/data/passwd", root / "etc" / "passwd")
    assert resolve_user(root, "svc") == (900, 901, ())
    # a link climbing out is clamped at the root, so the host's /etc/passwd is never read
    os.remove(root / "etc" / "passwd")
    os.symlink("../../../../../../etc/os-release", root / "etc" / "passwd")
    assert Path("/etc/os-release").exists()
    with pytest.raises(UnknownUserError, match="no /etc/passwd"):
        resolve_user(root, "root")
    # a link to itself through the root is a loop, reported rather than followed forever
    os.remove(root / "etc" / "passwd")
    os.symlink("../../../../etc/passwd", root / "etc" / "passwd")
    with pytest.raises(SymlinkLoopError):
        resolve_user(root, "root")


# -- COPY --chown ----------------------------------------------------------------------------


def test_chown_name_uses_passwd_uid_and_primary_gid(rootfs: Path) -> None:
    assert resolve_chown(rootfs, "app") == (1000, 1001)


def test_chown_numeric_uid_alone_uses_it_as_gid(rootfs: Path) -> None:
    # BuildKit: "--chown=1000" is 1000:1000 even though passwd says gid 1001
    assert resolve_chown(rootfs, "1000") == (1000, 1000)
    assert resolve_chown(None, "55") == (55, 55)


def test_chown_with_group_name_and_number(rootfs: Path) -> None:
    assert resolve_chown(rootfs, "app:staff") == (1000, 50)
    assert resolve_chown(rootfs, "10:20") == (10, 20)
    assert resolve_chown(rootfs, "1000:appgrp") == (1000, 1001)


def test_chown_unknown_user_and_group(rootfs: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownUserError, match="no user named 'ghost'"):
        resolve_chown(rootfs, "ghost")
    with pytest.raises(UnknownUserError, match="no group named 'ghosts'"):
        resolve_chown(rootfs, "app:ghosts")
    with pytest.raises(UnknownUserError, match="no /etc/passwd"):
        resolve_chown(tmp_path, "app")


# -- rootpath ------------------------------------------------------------------------------------


def test_clean_path_clamps_at_root() -> None:
    assert clean_path("../../x") == "x"
    assert clean_path("/a/./b/../c/") == "a/c"
    assert clean_path(".") == ""


def test_resolve_in_root_follows_links_inside(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    os.symlink("usr/bin", tmp_path / "bin")
    os.symlink("/usr", tmp_path / "abs")
    os.symlink("../../..", tmp_path / "usr" / "up")
    assert resolve_in_root(tmp_path, "/bin/sh") == "usr/bin/sh"
    assert resolve_in_root(tmp_path, "abs/bin") == "usr/bin"
    assert resolve_in_root(tmp_path, "usr/up/etc") == "etc"
    assert resolve_in_root(tmp_path, "bin", follow_last=False) == "bin"
    assert resolve_in_root(tmp_path, "missing/../bin/x") == "usr/bin/x"


def test_resolve_in_root_detects_loops(tmp_path: Path) -> None:
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(SymlinkLoopError):
        resolve_in_root(tmp_path, "a/x")
