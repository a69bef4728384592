"""COPY semantics: each rule checked on real directories, by reading the layer back with tarfile."""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.build.context import BuildContext
from kiln.build.copy import CopyResult, write_copy_layer
from kiln.build.plan import CopyStep
from kiln.errors import KilnError
from kiln.oci.layer_writer import LayerWriter

ROOT = os.geteuid() == 0


@dataclass
class Layer:
    members: dict[str, tarfile.TarInfo]
    data: dict[str, bytes]
    order: list[str]
    result: CopyResult

    def __getitem__(self, name: str) -> tarfile.TarInfo:
        return self.members[name]

    def __contains__(self, name: str) -> bool:
        return name in self.members

    @property
    def names(self) -> set[str]:
        return set(self.members)


def build(
    step: CopyStep,
    src: Path,
    dest: Path | None = None,
    *,
    context: BuildContext | None = None,
    epoch: int | None = None,
) -> Layer:
    out = io.BytesIO()
    writer = LayerWriter(out, "none", source_date_epoch=epoch)
    result = write_copy_layer(step, src, dest, writer, context=context, source_date_epoch=epoch)
    writer.close()
    out.seek(0)
    members: dict[str, tarfile.TarInfo] = {}
    data: dict[str, bytes] = {}
    order: list[str] = []
    with tarfile.open(fileobj=out, mode="r:") as tf:
        for m in tf:
            name = m.name.rstrip("/")
            order.append(name)
            members[name] = m
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                data[name] = f.read()
    # every layer: sorted by path bytes, no duplicates, every parent directory present
    assert order == sorted(order, key=lambda n: n.encode("utf-8", "surrogateescape"))
    assert len(order) == len(set(order))
    for name in order:
        parent = name.rpartition("/")[0]
        if parent:
            assert parent in members and members[parent].isdir(), f"{name}: parent {parent} missing"
    return Layer(members, data, order, result)


@pytest.fixture
def ctx_dir(tmp_path: Path) -> Path:
    c = tmp_path / "ctx"
    (c / "src" / "sub").mkdir(parents=True)
    (c / "a.txt").write_text("A")
    (c / "b.txt").write_text("BB")
    (c / "readme.md").write_text("md")
    (c / "src" / "one.py").write_text("one")
    (c / "src" / "sub" / "two.py").write_text("two")
    (c / "src" / "sub" / "notes.md").write_text("notes")
    os.chmod(c / "src" / "one.py", 0o755)
    os.utime(c / "a.txt", (1_600_000_000, 1_600_000_000))
    return c


@pytest.fixture
def ctx(ctx_dir: Path) -> BuildContext:
    return BuildContext.open(ctx_dir)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    (r / "usr" / "bin").mkdir(parents=True)
    (r / "etc").mkdir()
    (r / "opt").mkdir(mode=0o750)
    os.chmod(r / "opt", 0o750)
    os.utime(r / "opt", (1_500_000_000, 1_500_000_000))
    os.symlink("usr/bin", r / "bin")
    os.symlink("/etc", r / "conf")
    (r / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
    (r / "etc" / "group").write_text("root:x:0:\napp:x:1001:\nstaff:x:50:app\n")
    (r / "etc" / "hostname").write_text("box")
    return r


def copy(*sources: str, dest: str, **kw: object) -> CopyStep:
    return CopyStep(sources=sources, dest=dest, line=7, created_by="COPY", **kw)  # type: ignore[arg-type]


# -- destinations ------------------------------------------------------------------------------


def test_file_to_a_new_path_becomes_that_file(ctx: BuildContext, ctx_dir: Path, rootfs: Path) -> None:
    layer = build(copy("a.txt", dest="/srv/data/x"), ctx_dir, rootfs, context=ctx)
    assert layer.order == ["srv", "srv/data", "srv/data/x"]
    assert layer.data["srv/data/x"] == b"A"
    for d in ("srv", "srv/data"):
        assert layer[d].mode == 0o755 and (layer[d].uid, layer[d].gid) == (0, 0) and layer[d].mtime == 0
    assert layer["srv/data/x"].mtime == 1_600_000_000  # source mtime kept
    assert layer.result == CopyResult(files=1, bytes=1)


def test_trailing_slash_makes_the_destination_a_directory(ctx: BuildContext, ctx_dir: Path, rootfs: Path) -> None:
    layer = build(copy("a.txt", dest="/srv/"), ctx_dir, rootfs, context=ctx)
    assert layer.names == {"srv", "srv/a.txt"}


def test_existing_directory_receives_the_file_and_keeps_its_metadata(
    ctx: BuildContext, ctx_dir: Path, rootfs: Path
) -> None:
    layer = build(copy("a.txt", dest="/opt"), ctx_dir, rootfs, context=ctx)
    assert layer.names == {"opt", "opt/a.txt"}
    assert layer["opt"].mode == 0o750 and layer["opt"].mtime == 1_500_000_000


def test_relative_destination_is_relative_to_workdir(ctx: BuildContext, ctx_dir: Path) -> None:
    layer = build(copy("a.txt", dest="sub/", workdir="/app"), ctx_dir, None, context=ctx)
    assert "app/sub/a.txt" in layer
    layer = build(copy("a.txt", "b.txt", dest=".", workdir="/app/"), ctx_dir, None, context=ctx)
    assert {"app/a.txt", "app/b.txt"} <= layer.names


def test_destination_symlinks_are_followed_inside_the_rootfs(ctx: BuildContext, ctx_dir: Path, rootfs: Path) -> None:
    layer = build(copy("a.txt", dest="/bin/"), ctx_dir, rootfs, context=ctx)
    assert layer.names == {"usr", "usr/bin", "usr/bin/a.txt"}
    # an absolute link resolves against the rootfs, never the host's /etc
    layer = build(copy("a.txt", dest="/conf/x"), ctx_dir, rootfs, context=ctx)
    assert layer.names == {"etc", "etc/x"}


def test_link_does_not_look_at_the_destination(ctx: BuildContext, ctx_dir: Path, rootfs: Path) -> None:
    layer = build(copy("a.txt", dest="/opt", link=True), ctx_dir, rootfs, context=ctx)
    assert layer.names == {"opt"} and layer["opt"].isfile()  # not opt/a.txt: /opt is not probed
    layer = build(copy("a.txt", dest="/bin/", link=True), ctx_dir, rootfs, context=ctx)
    assert layer.names == {"bin", "bin/a.txt"} and layer["bin"].mode == 0o755


def test_more_than_one_source_needs_a_directory_destination(ctx: BuildContext, ctx_dir: Path) -> None:
    msg = "line 7: COPY failed: When using COPY with more than one source file, the destination must be a directory and end with a /"
    with pytest.raises(KilnError) as e:
        build(copy("a.txt", "b.txt", dest="/x"), ctx_dir, context=ctx)
    assert str(e.value) == msg
    with pytest.raises(KilnError, match="more than one source file"):
        build(copy("*.txt", dest="/x"), ctx_dir, context=ctx)
    layer = build(copy("a*.txt", dest="/x"), ctx_dir, context=ctx)  # one match: a file is fine
    assert layer["x"].isfile() and layer.data["x"] == b"A"


def test_directory_destination_that_is_a_file_in_the_image(ctx: BuildContext, ctx_dir: Path, rootfs: Path) -> None:
    with pytest.raises(KilnError, match="cannot copy to non-directory: /etc/hostname"):
        build(copy("src", dest="/etc/hostname"), ctx_dir, rootfs, context=ctx)
    (rootfs / "srv").mkdir()
    (rootfs / "srv" / "sub").write_text("a file where the source has a directory")
    with pytest.raises(KilnError, match="cannot copy to non-directory: /srv/sub"):
        build(copy("src", dest="/srv"), ctx_dir, rootfs, context=ctx)


# -- sources --------------------------------------------------------------------------------------


def test_directory_source_copies_its_contents(ctx: BuildContext, ctx_dir: Path) -> None:
    layer = build(copy("src", dest="/app"), ctx_dir, context=ctx)
    assert layer.names == {"app", "app/one.py", "app/sub", "app/sub/two.py", "app/sub/notes.md"}
    assert layer["app/one.py"].mode == 0o755
    assert layer["app"].mode == 0o755


def test_dot_copies_the_whole_visible_context(ctx_dir: Path) -> None:
    (ctx_dir / ".dockerignore").write_text("*.md\nsrc/sub\n")
    context = BuildContext.open(ctx_dir)
    layer = build(copy(".", dest="/"), ctx_dir, context=context)
    assert layer.names == {".dockerignore", "a.txt", "b.txt", "src", "src/one.py"}


def test_wildcards_follow_go_filepath_match(ctx: BuildContext, ctx_dir: Path) -> None:
    def names(pattern: str) -> set[str]:
        return build(copy(pattern, dest="/d/"), ctx_dir, context=ctx).names - {"d"}

    assert names("*.txt") == {"d/a.txt", "d/b.txt"}
    assert names("?.txt") == {"d/a.txt", "d/b.txt"}
    assert names("[a].txt") == {"d/a.txt"}
    assert names("[^a].txt") == {"d/b.txt"}
    assert names("[a-b].t?t") == {"d/a.txt", "d/b.txt"}
    assert names("src/*/two.py") == {"d/two.py"}
    assert names("s*") == {"d/one.py", "d/sub", "d/sub/two.py", "d/sub/notes.md"}  # a dir: its contents


def test_no_match_is_one_clear_error(ctx: BuildContext, ctx_dir: Path) -> None:
    with pytest.raises(KilnError) as e:
        build(copy("*.nothing", dest="/d/"), ctx_dir, context=ctx)
    assert str(e.value) == "line 7: COPY failed: no source files were specified: '*.nothing' matched nothing"
    with pytest.raises(KilnError, match=r"^line 7: COPY failed: file not found .* \(source 'missing.txt'\)$"):
        build(copy("missing.txt", dest="/d/"), ctx_dir, context=ctx)


def test_ignored_files_are_not_in_the_context(ctx_dir: Path) -> None:
    (ctx_dir / ".dockerignore").write_text("a.txt\n")
    context = BuildContext.open(ctx_dir)
    with pytest.raises(KilnError, match=r"excluded by \.dockerignore"):
        build(copy("a.txt", dest="/d/"), ctx_dir, context=context)
    assert build(copy("*.txt", dest="/d/"), ctx_dir, context=context).names == {"d", "d/b.txt"}


def test_sources_cannot_climb_out_of_the_context(ctx: BuildContext, ctx_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("outside")
    layer = build(copy("../a.txt", dest="/d/"), ctx_dir, context=ctx)  # cleaned to a.txt
    assert layer.data["d/a.txt"] == b"A"
    with pytest.raises(KilnError, match="file not found"):
        build(copy("../secret", dest="/d/"), ctx_dir, context=ctx)


def test_symlinks(ctx_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("outside")
    os.symlink("a.txt", ctx_dir / "alias")
    os.symlink("../one.py", ctx_dir / "src" / "sub" / "up")
    os.symlink(str(tmp_path / "secret"), ctx_dir / "abs")
    os.symlink("../../../../../../../../secret", ctx_dir / "climb")
    context = BuildContext.open(ctx_dir)
    # a named source that is a link is followed (inside the context) and keeps its own name
    layer = build(copy("alias", dest="/d/"), ctx_dir, context=context)
    assert layer["d/alias"].isfile() and layer.data["d/alias"] == b"A"
    # links inside a copied directory stay links, target unchanged
    layer = build(copy("src", dest="/d"), ctx_dir, context=context)
    assert layer["d/sub/up"].issym() and layer["d/sub/up"].linkname == "../one.py"
    # links out of the context resolve inside it, where the target does not exist
    for name in ("abs", "climb"):
        with pytest.raises(KilnError, match="file not found"):
            build(copy(name, dest="/d/"), ctx_dir, context=context)


# -- ownership, modes, times ----------------------------------------------------------------------


def test_chown_by_name_applies_to_files_links_and_created_dirs(ctx_dir: Path, rootfs: Path) -> None:
    os.symlink("one.py", ctx_dir / "src" / "link")
    context = BuildContext.open(ctx_dir)
    layer = build(copy("src", dest="/srv/app", chown="app"), ctx_dir, rootfs, context=context)
    for name in ("srv", "srv/app", "srv/app/one.py", "srv/app/sub", "srv/app/link"):
        assert (layer[name].uid, layer[name].gid) == (1000, 1001), name
    layer = build(copy("a.txt", dest="/opt/", chown="1000:staff"), ctx_dir, rootfs, context=context)
    assert (layer["opt/a.txt"].uid, layer["opt/a.txt"].gid) == (1000, 50)
    assert (layer["opt"].uid, layer["opt"].gid) == ((0, 0) if ROOT else (os.getuid(), os.getgid()))


def test_chown_numeric_without_passwd_and_unknown_names(ctx: BuildContext, ctx_dir: Path) -> None:
    layer = build(copy("a.txt", dest="/x", chown="42"), ctx_dir, None, context=ctx)
    assert (layer["x"].uid, layer["x"].gid) == (42, 42)
    with pytest.raises(KilnError) as e:
        build(copy("a.txt", dest="/x", chown="ghost"), ctx_dir, None, context=ctx)
    assert str(e.value).startswith("line 7: COPY failed: --chown=ghost: no user named 'ghost'")


def test_context_files_belong_to_root_stage_files_keep_owners(ctx_dir: Path, tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    (stage / "bin").mkdir(parents=True)
    (stage / "bin" / "tool").write_text("#!/bin/sh\n")
    uid, gid = (1234, 5678) if ROOT else (os.getuid(), os.getgid())
    if ROOT:
        os.chown(ctx_dir / "a.txt", uid, gid)
        os.chown(stage / "bin" / "tool", uid, gid)
    layer = build(copy("a.txt", dest="/x"), ctx_dir, context=BuildContext.open(ctx_dir))
    assert (layer["x"].uid, layer["x"].gid) == (0, 0)
    layer = build(copy("/bin/tool", dest="/x"), stage)  # --from a stage: no context
    assert (layer["x"].uid, layer["x"].gid) == (uid, gid)


def test_chmod_octal_applies_to_files_and_dirs_not_links_nor_destination(ctx_dir: Path, rootfs: Path) -> None:
    os.symlink("one.py", ctx_dir / "src" / "link")
    context = BuildContext.open(ctx_dir)
    layer = build(copy("src", dest="/opt", chmod="0640"), ctx_dir, rootfs, context=context)
    assert layer["opt/one.py"].mode == 0o640
    assert layer["opt/sub"].mode == 0o640
    assert layer["opt/link"].mode == 0o777
    assert layer["opt"].mode == 0o750  # the destination itself keeps its mode
    layer = build(copy("a.txt", dest="/x", chmod="4755"), ctx_dir, None, context=context)
    assert layer["x"].mode == 0o4755


def test_chmod_symbolic(ctx: BuildContext, ctx_dir: Path) -> None:
    layer = build(copy("src", dest="/d", chmod="u+x,g-w,o=r,a+X"), ctx_dir, context=ctx)
    # one.py 0755 -> o=r makes 0754 -> a+X (an x bit is set) makes 0755
    assert layer["d/one.py"].mode == 0o755
    # two.py 0644 -> u+x 0744 -> o=r 0744 -> a+X sees u's new x bit: 0755 (as chmod(1) does)
    assert layer["d/sub/two.py"].mode == 0o755
    layer = build(copy("src", dest="/d", chmod="go-r,a+X"), ctx_dir, context=ctx)
    assert layer["d/sub/two.py"].mode == 0o600  # no x bit anywhere: X adds nothing to a file
    assert layer["d/sub"].mode == 0o711  # but does to a directory


def test_bad_chmod_is_an_error(ctx: BuildContext, ctx_dir: Path) -> None:
    for bad in ("999", "u+q", "88888", "u+x,"):
        with pytest.raises(KilnError, match=r"^line 7: COPY failed: invalid chmod parameter"):
            build(copy("a.txt", dest="/x", chmod=bad), ctx_dir, context=ctx)


def test_created_dirs_use_source_date_epoch(ctx: BuildContext, ctx_dir: Path) -> None:
    layer = build(copy("a.txt", dest="/p/q/r"), ctx_dir, context=ctx, epoch=1_700_000_000)
    assert layer["p"].mtime == layer["p/q"].mtime == 1_700_000_000
    assert layer["p/q/r"].mtime == 1_600_000_000  # older than the epoch: kept


# -- --exclude, --parents ---------------------------------------------------------------------------


def test_exclude_patterns_are_relative_to_the_copied_directory(ctx: BuildContext, ctx_dir: Path) -> None:
    layer = build(copy("src", dest="/d", excludes=("*.py",)), ctx_dir, context=ctx)
    assert layer.names == {"d", "d/sub", "d/sub/two.py", "d/sub/notes.md"}
    layer = build(copy("src", dest="/d", excludes=("**/*.py",)), ctx_dir, context=ctx)
    assert layer.names == {"d", "d/sub", "d/sub/notes.md"}
    layer = build(copy(".", dest="/d", excludes=("src", "!src/sub/two.py")), ctx_dir, context=ctx)
    assert {"d/src", "d/src/sub", "d/src/sub/two.py"} <= layer.names
    assert "d/src/one.py" not in layer and "d/src/sub/notes.md" not in layer


def test_exclude_applies_to_wildcard_matches(ctx: BuildContext, ctx_dir: Path) -> None:
    layer = build(copy("*", dest="/d/", excludes=("*.txt",)), ctx_dir, context=ctx)
    assert "d/a.txt" not in layer and "d/readme.md" in layer


def test_parents_keep_the_directory_structure(ctx_dir: Path) -> None:
    os.chmod(ctx_dir / "src" / "sub", 0o700)
    context = BuildContext.open(ctx_dir)
    layer = build(copy("a.txt", "src/sub/two.py", dest="/out/", parents=True), ctx_dir, context=context)
    assert layer.names == {"out", "out/a.txt", "out/src", "out/src/sub", "out/src/sub/two.py"}
    assert layer["out/src/sub"].mode == 0o700  # created from the source directory
    layer = build(copy("src/./sub/*.py", dest="/out/", parents=True), ctx_dir, context=context)
    assert layer.names == {"out", "out/sub", "out/sub/two.py"}
    layer = build(copy("src/**/*.md", dest="/out", parents=True), ctx_dir, context=context)
    assert layer.names == {"out", "out/src", "out/src/sub", "out/src/sub/notes.md"}


# -- layer shape -------------------------------------------------------------------------------------


def test_hardlinks_inside_a_copy_stay_hardlinks(ctx_dir: Path) -> None:
    os.link(ctx_dir / "src" / "one.py", ctx_dir / "src" / "again.py")
    layer = build(copy("src", dest="/d"), ctx_dir, context=BuildContext.open(ctx_dir))
    assert layer["d/again.py"].isfile() and layer.data["d/again.py"] == b"one"
    assert layer["d/one.py"].islnk() and layer["d/one.py"].linkname == "d/again.py"


def test_whiteout_names_are_refused(ctx_dir: Path) -> None:
    (ctx_dir / ".wh.x").write_text("")
    with pytest.raises(KilnError, match="reserved for layer whiteouts"):
        build(copy(".wh.x", dest="/d/"), ctx_dir, context=BuildContext.open(ctx_dir))


def test_special_files_fifo(ctx_dir: Path) -> None:
    os.mkfifo(ctx_dir / "pipe")
    layer = build(copy("pipe", dest="/d/"), ctx_dir, context=BuildContext.open(ctx_dir))
    assert layer["d/pipe"].isfifo()


def test_names_that_are_not_utf8_round_trip(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9")
    (tmp_path / name).write_text("x")
    out = io.BytesIO()
    writer = LayerWriter(out, "none")
    write_copy_layer(copy(name, dest="/d/"), tmp_path, None, writer, context=BuildContext.open(tmp_path))
    writer.close()
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:", encoding="utf-8", errors="surrogateescape") as tf:
        assert [m.name for m in tf] == ["d", "d/" + name]


def test_low_level_failures_name_the_instruction(ctx_dir: Path) -> None:
    os.symlink("loop2", ctx_dir / "loop1")
    os.symlink("loop1", ctx_dir / "loop2")
    with pytest.raises(KilnError, match=r"^line 7: COPY failed: too many levels of symbolic links"):
        build(copy("loop1", dest="/d/"), ctx_dir, context=BuildContext.open(ctx_dir))
    with pytest.raises(KilnError, match=r"^line 7: COPY failed: --exclude: "):
        build(copy(".", dest="/d/", excludes=("!",)), ctx_dir, context=BuildContext.open(ctx_dir))


def test_dangling_symlink_matched_by_a_wildcard(ctx_dir: Path) -> None:
    os.symlink("nowhere", ctx_dir / "zz-dangling")
    with pytest.raises(KilnError, match=r"^line 7: COPY failed: zz-dangling: the symlink's target"):
        build(copy("zz*", dest="/d/"), ctx_dir, context=BuildContext.open(ctx_dir))
    # inside a copied directory a dangling link is just a link
    os.symlink("nowhere", ctx_dir / "src" / "dangling")
    layer = build(copy("src", dest="/d"), ctx_dir, context=BuildContext.open(ctx_dir))
    assert layer["d/dangling"].issym()
