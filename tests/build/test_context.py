"""The build context: ignore rules, what walks visit, content digests and the stat cache."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from kiln.build.context import STATCACHE_NAME, BuildContext
from kiln.build.copy import copy_cache_digest
from kiln.build.ignore import find_ignore_file
from kiln.build.plan import CopyStep
from kiln.build.statcache import StatCache
from kiln.errors import KilnError
from kiln.oci.store import Store

MiB = 1 << 20


@pytest.fixture
def ctx_dir(tmp_path: Path) -> Path:
    c = tmp_path / "ctx"
    for rel, text in {
        "app/main.py": "print(1)",
        "app/util.py": "x = 2",
        "app/data/big.bin": "0" * 3000,
        "node_modules/left-pad/index.js": "module.exports = 1",
        "node_modules/keep/README": "keep me",
        "docs/a.md": "# a",
        "Dockerfile": "FROM scratch",
        "build/out.o": "obj",
    }.items():
        (c / rel).parent.mkdir(parents=True, exist_ok=True)
        (c / rel).write_text(text)
    return c


def visible(ctx: BuildContext) -> list[str]:
    return [rel for rel, _ in ctx.walk()]


# -- ignore rules ------------------------------------------------------------------------------------


def test_without_ignore_file_everything_is_visible(ctx_dir: Path) -> None:
    ctx = BuildContext.open(ctx_dir)
    assert ctx.ignore_file is None
    assert "node_modules/left-pad/index.js" in visible(ctx)


def test_dockerignore_with_exceptions(ctx_dir: Path) -> None:
    (ctx_dir / ".dockerignore").write_text(
        "\ufeff# comment\nnode_modules\n!node_modules/keep\n  build/  \n**/*.md\n/app/data\n"
    )
    ctx = BuildContext.open(ctx_dir)
    assert visible(ctx) == [
        ".dockerignore",
        "Dockerfile",
        "app",
        "app/main.py",
        "app/util.py",
        "docs",  # only its .md file is excluded
        "node_modules",  # excluded, but holds a re-included path
        "node_modules/keep",
        "node_modules/keep/README",
    ]
    assert ctx.lstat("node_modules/left-pad") is None
    assert ctx.lstat("docs") is not None and ctx.lstat("docs/a.md") is None
    assert ctx.excluded("build/out.o")


def test_dockerfile_specific_ignore_file_wins(ctx_dir: Path, tmp_path: Path) -> None:
    (ctx_dir / ".dockerignore").write_text("app\n")
    dockerfile = tmp_path / "elsewhere" / "prod.Dockerfile"
    dockerfile.parent.mkdir()
    dockerfile.write_text("FROM scratch")
    assert find_ignore_file(ctx_dir, dockerfile) == ctx_dir / ".dockerignore"
    (dockerfile.parent / "prod.Dockerfile.dockerignore").write_text("docs\n")
    ctx = BuildContext.open(ctx_dir, dockerfile=dockerfile)
    assert ctx.ignore_file == dockerfile.parent / "prod.Dockerfile.dockerignore"
    assert ctx.lstat("app/main.py") is not None and ctx.lstat("docs/a.md") is None


class ListingContext(BuildContext):
    """Records which directories were listed."""

    listed: list[str]

    def _raw_listdir(self, rel: str) -> list[str]:
        self.listed.append(rel)
        return super()._raw_listdir(rel)


def test_excluded_directories_are_not_descended(ctx_dir: Path) -> None:
    (ctx_dir / ".dockerignore").write_text("node_modules\n")
    ctx = ListingContext.open(ctx_dir)
    assert isinstance(ctx, ListingContext)
    ctx.listed = []
    visible(ctx)
    assert not any(d.startswith("node_modules") for d in ctx.listed)
    # with an exception that may apply inside, it has to look
    (ctx_dir / ".dockerignore").write_text("node_modules\n!node_modules/keep\n")
    ctx = ListingContext.open(ctx_dir)
    assert isinstance(ctx, ListingContext)
    ctx.listed = []
    visible(ctx)
    assert "node_modules" in ctx.listed and "node_modules/left-pad" not in ctx.listed


def test_bad_context(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="not a directory"):
        BuildContext.open(tmp_path / "missing")


# -- digests -------------------------------------------------------------------------------------------


def test_digest_ignores_mtimes_but_not_content_mode_or_names(ctx_dir: Path) -> None:
    base = BuildContext.open(ctx_dir).digest_of(["app"])
    os.utime(ctx_dir / "app" / "main.py", (1, 1))
    assert BuildContext.open(ctx_dir).digest_of(["app"]) == base
    os.chmod(ctx_dir / "app" / "main.py", 0o600)
    moded = BuildContext.open(ctx_dir).digest_of(["app"])
    assert moded != base
    (ctx_dir / "app" / "main.py").write_text("print(2)")
    assert BuildContext.open(ctx_dir).digest_of(["app"]) not in (base, moded)
    os.rename(ctx_dir / "app" / "util.py", ctx_dir / "app" / "util2.py")
    assert len({BuildContext.open(ctx_dir).digest_of(["app"]), base, moded}) == 3


def test_digest_of_patterns_and_excludes(ctx_dir: Path) -> None:
    ctx = BuildContext.open(ctx_dir)
    everything = ctx.digest_of(["."])
    assert ctx.digest_of(["."], excludes=["docs"]) != everything
    before = ctx.digest_of(["app/*.py"])
    (ctx_dir / "docs" / "a.md").write_text("changed")
    assert ctx.digest_of(["app/*.py"]) == before  # not selected: no effect
    assert ctx.digest_of(["."], excludes=["docs"]) == BuildContext.open(ctx_dir).digest_of(["."], excludes=["docs"])
    with pytest.raises(KilnError, match="matched nothing"):
        ctx.digest_of(["*.nothing"])


def test_digest_does_not_depend_on_the_context_owner(ctx_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs chown")
    base = BuildContext.open(ctx_dir).digest_of(["app"])
    os.chown(ctx_dir / "app" / "main.py", 4321, 4321)
    assert BuildContext.open(ctx_dir).digest_of(["app"]) == base


def test_names_that_are_not_utf8(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.txt")  # latin-1 bytes: a surrogate-escaped str
    (tmp_path / name).write_text("x")
    db = tmp_path / "c.sqlite"
    key = BuildContext.open(tmp_path, stat_cache=StatCache(db, racy_window_ns=0)).digest_of([name])
    again = BuildContext.open(tmp_path, stat_cache=StatCache(db, racy_window_ns=0))
    assert again.digest_of([name]) == key and again.stats.cache_hits == 1


def test_symlink_targets_count(ctx_dir: Path) -> None:
    os.symlink("main.py", ctx_dir / "app" / "link")
    base = BuildContext.open(ctx_dir).digest_of(["app"])
    os.remove(ctx_dir / "app" / "link")
    os.symlink("util.py", ctx_dir / "app" / "link")
    assert BuildContext.open(ctx_dir).digest_of(["app"]) != base


# -- the stat cache ----------------------------------------------------------------------------------


def test_unchanged_context_is_keyed_without_reading(tmp_path: Path) -> None:
    ctx_dir = tmp_path / "big"
    ctx_dir.mkdir()
    for i in range(70):
        (ctx_dir / f"blob{i:02}").write_bytes(os.urandom(64) * (MiB // 64))  # 70 MiB in all
    db = tmp_path / "state" / STATCACHE_NAME
    first = BuildContext.open(ctx_dir, stat_cache=StatCache(db, racy_window_ns=0))
    key = first.digest_of(["."])
    assert first.stats.bytes_hashed == 70 * MiB and first.stats.cache_hits == 0
    second = BuildContext.open(ctx_dir, stat_cache=StatCache(db, racy_window_ns=0))
    assert second.digest_of(["."]) == key
    assert second.stats.bytes_hashed == 0 and second.stats.cache_hits == 70
    # one changed file: only it is read again
    (ctx_dir / "blob07").write_bytes(b"new")
    third = BuildContext.open(ctx_dir, stat_cache=StatCache(db, racy_window_ns=0))
    assert third.digest_of(["."]) != key
    assert third.stats.bytes_hashed == 3 and third.stats.cache_hits == 69


def test_racy_files_are_not_remembered(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("fresh")
    db = tmp_path / "cache.sqlite"
    BuildContext.open(tmp_path, stat_cache=StatCache(db)).digest_of(["f"])  # default 2 s window
    again = BuildContext.open(tmp_path, stat_cache=StatCache(db))
    again.digest_of(["f"])
    assert again.stats.cache_hits == 0 and again.stats.bytes_hashed == 5


def test_store_backed_cache_and_copy_digest(tmp_path: Path, ctx_dir: Path) -> None:
    store = Store(tmp_path / "store")
    step = CopyStep(sources=("app",), dest="/app")
    ctx = BuildContext.for_store(ctx_dir, store)
    ctx.stat_cache.racy_window_ns = 0
    key = copy_cache_digest(step, ctx_dir, ctx)
    assert (store.state_dir / STATCACHE_NAME).is_file()
    again = BuildContext.for_store(ctx_dir, store)
    assert copy_cache_digest(step, ctx_dir, again) == key
    assert again.stats.bytes_hashed == 0 and again.stats.cache_hits == 3
    os.utime(ctx_dir / "app" / "util.py", (5, 5))  # touched, not changed: same key, one re-read
    touched = BuildContext.for_store(ctx_dir, store)
    assert copy_cache_digest(step, ctx_dir, touched) == key
    assert touched.stats.bytes_hashed == len("x = 2")
    excluded = CopyStep(sources=("app",), dest="/app", excludes=("data",))
    assert copy_cache_digest(excluded, ctx_dir, touched) != key


def test_concurrent_builds_share_the_cache(tmp_path: Path, ctx_dir: Path) -> None:
    db = tmp_path / "shared.sqlite"
    results: list[str] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            for _ in range(5):
                ctx = BuildContext.open(ctx_dir, stat_cache=StatCache(db, racy_window_ns=0))
                results.append(ctx.digest_of(["."]))
                ctx.stat_cache.close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 40 and len(set(results)) == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM files_v1").fetchone()[0] == 8


def test_corrupt_cache_is_only_a_warning(tmp_path: Path, ctx_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "bad.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    expected = BuildContext.open(ctx_dir).digest_of(["."])
    ctx = BuildContext.open(ctx_dir, stat_cache=StatCache(db))
    assert ctx.digest_of(["."]) == expected
    assert "stat cache" in caplog.text
