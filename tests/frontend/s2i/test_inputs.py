"""S2I inputs without images: users and --allowed-uids, labels, script lookup, .s2iignore, sources."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from kiln.errors import UsageError
from kiln.frontend.s2i.ignore import apply_s2iignore, ignored_paths
from kiln.frontend.s2i.labels import SourceInfo, output_labels
from kiln.frontend.s2i.prepare import builder_tag
from kiln.frontend.s2i.scripts import NotThere, ScriptsError, locate, locations
from kiln.frontend.s2i.source import DEFAULT_EXCLUDE, SourceError, copy_tree, extract_tarball, fetch_source
from kiln.frontend.s2i.users import (
    UserNotAllowedError,
    check_allowed,
    chown_spec,
    effective_user,
    parse_allowed_uids,
)

# -- users -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "x", "1-2-3", "5-1", "-5", "1,,2", "99999999999-"])
def test_bad_allowed_uids(text: str) -> None:
    with pytest.raises(UsageError):
        parse_allowed_uids(text)


def test_allowed_users() -> None:
    ranges = parse_allowed_uids("1000-2000,5")
    check_allowed("1000", ranges, image="b")
    check_allowed("2000:0", ranges, image="b")
    check_allowed("5", ranges, image="b")
    for user, why in [("", "root"), ("0", "root"), ("999", "uid 999"), ("2001:0", "uid 2001"), ("app", "not numeric")]:
        with pytest.raises(UserNotAllowedError, match=why):
            check_allowed(user, ranges, image="b")
    check_allowed("root", None, image="b")  # no --allowed-uids: no check


def test_effective_user_and_chown() -> None:
    labels = {"io.openshift.s2i.assemble-user": "1001"}
    assert effective_user("42", labels, "7") == "42"
    assert effective_user(None, labels, "7") == "1001"
    assert effective_user(None, {}, "7") == "7"
    assert effective_user(None, {}, None) == ""
    assert [chown_spec(u) for u in ("1001", "app:staff", "")] == ["1001:0", "app:staff", "0:0"]


def test_builder_tag() -> None:
    assert builder_tag("localhost/app:1") == "localhost/app:1-s2i-builder"
    assert builder_tag("app") == "docker.io/library/app:latest-s2i-builder"


# -- labels ------------------------------------------------------------------------------------


def test_output_labels() -> None:
    builder = {"io.k8s.display-name": "Builder", "io.openshift.s2i.scripts-url": "image:///s", "io.openshift.s2i.build.commit.id": "stale", "x": "1"}
    info = SourceInfo(location="https://git.test/app.git", ref="main", commit_id="abc", author_name="Ada", author_email="ada@x", date="d", message="m", context_dir="sub")
    got = output_labels(builder, builder, builder_ref="b:1", tag="app:1", info=info)
    assert got == {
        "io.k8s.display-name": "Builder",
        "io.openshift.s2i.scripts-url": "image:///s",
        "x": "1",
        "io.openshift.s2i.build.image": "b:1",
        "io.openshift.s2i.build.commit.author": "Ada <ada@x>",
        "io.openshift.s2i.build.commit.date": "d",
        "io.openshift.s2i.build.commit.id": "abc",
        "io.openshift.s2i.build.commit.ref": "main",
        "io.openshift.s2i.build.commit.message": "m",
        "io.openshift.s2i.build.source-location": "https://git.test/app.git",
        "io.openshift.s2i.build.source-context-dir": "sub",
    }
    runtime = {"io.k8s.display-name": "Runtime", "rt": "y"}
    got = output_labels(runtime, {"io.k8s.description": "D", "other": "no"}, builder_ref="b", tag="t", info=SourceInfo(location="/src"))
    assert got == {"io.k8s.display-name": "Runtime", "io.k8s.description": "D", "rt": "y",
                   "io.openshift.s2i.build.image": "b", "io.openshift.s2i.build.source-location": "/src"}  # fmt: skip
    assert output_labels({}, {}, builder_ref="b", tag="app:2", info=SourceInfo())["io.k8s.display-name"] == "app:2"


# -- scripts -----------------------------------------------------------------------------------


def fetcher(available: dict[str, bytes]):  # type: ignore[no-untyped-def]
    def fetch(url: str) -> bytes:
        if url in available:
            return available[url]
        raise NotThere(f"{url}: HTTP 404")

    return fetch


def test_script_lookup_order() -> None:
    where = locations("http://s/", "image:///label")
    source = fetcher({"assemble": b"from-source", "run": b"source-run"})
    found = locate(["assemble", "run", "save-artifacts"], where, fetcher({"http://s/assemble": b"from-url"}), source)
    assert (found["assemble"].origin, found["assemble"].content) == ("--scripts-url http://s/", b"from-url")
    assert (found["run"].origin, found["run"].content) == (".s2i/bin in the source", b"source-run")
    assert found["save-artifacts"].image_path == "/label/save-artifacts" and not found["save-artifacts"].uploaded
    nothing = fetcher({})
    found = locate(["assemble"], locations(None, None), nothing, nothing)
    assert found["assemble"].image_path == "/usr/libexec/s2i/assemble"
    found = locate(["assemble"], locations("image:///mine/", "http://label"), nothing, fetcher({"assemble": b"x"}))
    assert found["assemble"].image_path == "/mine/assemble"  # an image:// URL is trusted: the search stops
    with pytest.raises(ScriptsError, match="could not download any scripts from http://gone"):
        locate(["assemble", "run"], locations("http://gone", None), nothing, nothing)


# -- .s2iignore --------------------------------------------------------------------------------


def tree(root: Path, files: list[str]) -> None:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)


def test_s2iignore_rules(tmp_path: Path) -> None:
    tree(tmp_path, ["a.log", "b.log", "keep.log", "logs/x.log", "logs/deep/y.log", "tmp/t", "src/main.py"])
    lines = ["# comment", "*.log", "!keep.log", "logs/*.log", "tmp", "", "[bad"]
    assert ignored_paths(tmp_path, lines) == {"a.log", "b.log", "logs/x.log", "tmp"}
    (tmp_path / ".s2iignore").write_text("\n".join(lines))
    assert apply_s2iignore(tmp_path) == ["a.log", "b.log", "logs/x.log", "tmp"]
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == [".s2iignore", "keep.log", "logs/deep/y.log", "src/main.py"]


# -- sources -----------------------------------------------------------------------------------


def test_copy_tree_excludes_and_keeps_links_modes_and_times(tmp_path: Path) -> None:
    src = tmp_path / "src"
    tree(src, [".git/HEAD", "sub/.git", "app.py", "vendor/.gitkeep", "bin/tool"])
    os.chmod(src / "bin/tool", 0o755)
    os.utime(src / "app.py", (1_000_000, 1_000_000))
    os.symlink("app.py", src / "link")
    os.symlink("/etc", src / "abs-link")
    copy_tree(src, tmp_path / "out", re.compile(DEFAULT_EXCLUDE))
    out = tmp_path / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["abs-link", "app.py", "bin", "bin/tool", "link", "sub", "vendor", "vendor/.gitkeep"]
    assert os.readlink(out / "abs-link") == "/etc" and os.readlink(out / "link") == "app.py"
    assert os.stat(out / "bin/tool").st_mode & 0o777 == 0o755 and os.stat(out / "app.py").st_mtime == 1_000_000


def test_tarball_is_unpacked_safely(tmp_path: Path) -> None:
    good = tmp_path / "good.tgz"
    with tarfile.open(good, "w:gz") as tar:
        for name, data in [("./app/a.txt", b"a"), ("app/b.sh", b"#!/bin/sh\n")]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o4755, 123
            import io

            tar.addfile(info, io.BytesIO(data))
    extract_tarball(good, tmp_path / "g")
    assert (tmp_path / "g/app/a.txt").read_bytes() == b"a"
    assert os.stat(tmp_path / "g/app/b.sh").st_mode & 0o7777 == 0o755  # no setuid from an archive
    for evil in (["../up"], ["/abs"], ["lnk", "lnk/inside"]):
        path = tmp_path / "evil.tar"
        with tarfile.open(path, "w") as tar:
            for name in evil:
                info = tarfile.TarInfo(name)
                if name == "lnk":
                    info.type, info.linkname = tarfile.SYMTYPE, "/tmp"
                tar.addfile(info)
        with pytest.raises(SourceError):
            extract_tarball(path, tmp_path / f"e{len(list(tmp_path.iterdir()))}")


def _git(repo: Path, *args: str) -> None:
    env = {"GIT_AUTHOR_NAME": "A", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "A", "GIT_COMMITTER_EMAIL": "a@x", "HOME": str(repo), "PATH": os.environ["PATH"]}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def test_fetch_source_from_a_local_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tree(repo, ["app.py", "web/index.html", "web/.s2iignore"])
    (repo / "web/.s2iignore").write_text("*.tmp\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "a very long subject line " * 5)
    (repo / "web/uncommitted.tmp").write_text("x")
    (repo / "web/uncommitted.txt").write_text("x")
    info = fetch_source(str(repo), tmp_path / "cloned", context_dir="web")
    assert sorted(p.name for p in (tmp_path / "cloned").iterdir()) == [".s2iignore", "index.html"]
    assert info.ref == "main" and len(info.commit_id) == 40 and info.author_name == "A" and info.context_dir == "web"
    assert len(info.message) <= 80 and info.message.startswith("a very long subject line")
    copied = fetch_source(str(repo), tmp_path / "copied", context_dir="web", force_copy=True)
    assert sorted(p.name for p in (tmp_path / "copied").iterdir()) == [".s2iignore", "index.html", "uncommitted.txt"]
    assert copied.commit_id == info.commit_id
    with pytest.raises(SourceError, match="--context-dir"):
        fetch_source(str(repo), tmp_path / "x", context_dir="../..")
    with pytest.raises(SourceError, match="not a git repository"):
        fetch_source(str(repo / "web"), tmp_path / "y", ref="main")
    with pytest.raises(SourceError, match="no such directory"):
        fetch_source(str(tmp_path / "missing"), tmp_path / "z")
