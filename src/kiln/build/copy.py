"""COPY and ADD: one layer written straight from the sources, and the digest that caches it.

The rules are BuildKit's (dockerfile2llb + fsutil copy), with Docker's classic builder where
BuildKit is silent or lenient:

- a relative destination is relative to the WORKDIR; `.`, `` and a trailing `/` (or `/.`)
  make it a directory. More than one selected source (after wildcards) needs that trailing
  slash, as the classic builder demands.
- a directory source copies its contents; a file goes into the destination if it is a
  directory (by syntax, or in the image), else becomes the destination. The destination is
  looked up in the image with symlinks followed inside it, so `COPY x /bin/` lands in
  /usr/bin when /bin links there.
- directories the copy creates are 0755, owned by the --chown owner or root (BuildKit's
  MkdirAll); existing ones keep their metadata; the mtime of created directories and inline
  files is SOURCE_DATE_EPOCH, or 0 so the layer is reproducible.
- without --chown, files from the context belong to 0:0, files from a stage or image keep
  their owners. Modes and mtimes are kept; --chmod applies to every copied file and
  directory (never to symlinks, never to the destination directory itself).
- ADD extracts local tar archives (any of plain, gzip, bzip2, xz, zstd, by content) into
  the destination, keeping the archive's owners; URLs are downloaded, not extracted.
- --link: the layer must not depend on what the image already holds (BuildKit rebases it
  onto any parent), so the destination rootfs is not consulted at all: no symlink
  following, no "is it a directory" probe, created parents are plain 0755 directories.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.build.chmod import Chmod, parse_chmod
from kiln.build.context import BuildContext
from kiln.build.copy_archive import archive_compression, plan_archive
from kiln.build.copy_patterns import PatternError, filters
from kiln.build.copy_plan import CopyError, DestPlan, Planned
from kiln.build.copy_select import SourceItem, SourceNode, expand_parents_source, expand_source, walk_item
from kiln.build.fetch_url import UrlFetcher
from kiln.build.ignore import IgnoreMatcher
from kiln.build.plan import CopyStep
from kiln.build.rootpath import SymlinkLoopError, clean_path
from kiln.build.source_tree import DIGEST_VERSION, SourceReadError, SourceTree, join
from kiln.build.users import resolve_chown
from kiln.errors import KilnError
from kiln.oci.digest import Digest
from kiln.oci.layer import EntryType, TarEntry, encode_name
from kiln.oci.layer_writer import LayerWriter

__all__ = ["CopyError", "CopyResult", "copy_cache_digest", "write_copy_layer"]


@dataclass(frozen=True)
class CopyResult:
    files: int  # non-directory entries written
    bytes: int  # file content bytes written


def instruction(step: CopyStep) -> str:
    if step.urls or step.extract_archives or step.checksum or step.created_by.lstrip().startswith("ADD"):
        return "ADD"
    return "COPY"


def _where(step: CopyStep) -> str:
    return f"line {step.line}: " if step.line else ""


def destination(step: CopyStep) -> tuple[str, bool]:
    """(absolute cleaned destination, whether its spelling makes it a directory)."""
    dest = step.dest
    full = dest if dest.startswith("/") else f"{step.workdir.rstrip('/')}/{dest}"
    is_dir = dest in ("", ".") or dest.endswith(("/", "/."))
    return "/" + clean_path(full), is_dir


@contextlib.contextmanager
def _reported(step: CopyStep) -> Iterator[None]:
    """Low-level failures (unreadable files, symlink loops, bad patterns) as one-line errors
    naming the instruction and its line."""
    try:
        yield
    except (SymlinkLoopError, SourceReadError, PatternError) as e:
        raise CopyError(f"{_where(step)}{instruction(step)} failed: {e}") from None
    except OSError as e:
        raise CopyError(f"{_where(step)}{instruction(step)} failed: {e.filename or ''}: {e.strerror}") from None


def _tree(src_root: Path, context: BuildContext | None) -> SourceTree:
    return context if context is not None else SourceTree(src_root)


def _items(step: CopyStep, tree: SourceTree, excludes: IgnoreMatcher | None) -> list[SourceItem]:
    what = instruction(step)
    items: list[SourceItem] = []
    for index, spec in enumerate(step.sources):
        if step.parents:
            items += expand_parents_source(tree, spec, index=index, what=what, line=step.line)
        else:
            items += expand_source(tree, spec, index=index, what=what, line=step.line, excludes=excludes)
    return items


# -- cache key ---------------------------------------------------------------------------------


def copy_cache_digest(
    step: CopyStep, src_root: Path, context: BuildContext | None, *, fetcher: UrlFetcher | None = None
) -> Digest:
    """Digest of exactly what `step` selects: for each selected entry its path, type, mode,
    owner (as it will be in the image without --chown), link target, xattrs and content hash,
    never its mtime. Context files are hashed through the stat cache. URLs count by their
    --checksum when given (no download), else by their downloaded content."""
    tree = _tree(src_root, context)
    h = hashlib.sha256(DIGEST_VERSION + b"copy\n")
    with _reported(step):
        excludes = filters(step.excludes, "--exclude")
        for item in _items(step, tree, excludes):
            h.update(f"item\0{item.index}\0{item.rel}\0{item.name}\n".encode("utf-8", "surrogateescape"))
            nodes = sorted(walk_item(tree, item, excludes=excludes), key=lambda n: encode_name(n.rel))
            for node in nodes:
                h.update(tree.record(node.rel, node.src, node.st))
    tree.flush()
    with contextlib.ExitStack() as stack:
        for url in step.urls:
            if step.checksum:
                h.update(f"url\0{url}\0{step.checksum}\n".encode())
                continue
            if fetcher is None:
                fetcher = stack.enter_context(UrlFetcher())
            got = fetcher.fetch(url, what=f"{_where(step)}{instruction(step)}")
            h.update(f"url\0{url}\0{got.sha256}\0{got.mtime}\n".encode())
    for inline in step.inline:
        sha = hashlib.sha256(inline.content.encode("utf-8", "surrogateescape")).hexdigest()
        h.update(f"inline\0{inline.name}\0{sha}\n".encode("utf-8", "surrogateescape"))
    return Digest("sha256:" + h.hexdigest())


# -- the layer -----------------------------------------------------------------------------------


def _node_entry(
    tree: SourceTree, node: SourceNode, owner: tuple[int, int] | None, chmod: Chmod | None, index: int
) -> Planned | None:
    st = node.st
    kind = stat.S_IFMT(st.st_mode)
    uid, gid = owner if owner is not None else tree.owner(st)
    mode = stat.S_IMODE(st.st_mode)
    entry = TarEntry(node.rel, EntryType.FILE, 0, mode, uid, gid, int(st.st_mtime))
    if kind == stat.S_IFSOCK:
        return None  # a tar cannot hold a socket (and Docker's copy skips them too)
    if kind == stat.S_IFLNK:
        entry.type, entry.mode, entry.linkname = EntryType.SYMLINK, 0o777, tree.readlink(node.src)
        return Planned(entry)
    entry.xattrs = tree.xattrs(node.src)
    if chmod is not None:
        entry.mode = chmod.apply(mode, kind == stat.S_IFDIR)
    if kind == stat.S_IFREG:
        entry.size = st.st_size
        key = (index, st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        return Planned(entry, path=tree.host(node.src), link_key=key)
    if kind == stat.S_IFDIR:
        entry.type = EntryType.DIR
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        entry.type = EntryType.CHAR if kind == stat.S_IFCHR else EntryType.BLOCK
        entry.devmajor, entry.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        entry.type = EntryType.FIFO
    return Planned(entry)


def plan_copy(
    step: CopyStep,
    tree: SourceTree,
    dest_rootfs: Path | None,
    *,
    stack: contextlib.ExitStack,
    fetcher: UrlFetcher,
    created_mtime: int,
    user_rootfs: Path | None = None,
    tmp_dir: Path | None = None,
) -> DestPlan:
    """Every entry of the layer `step` produces (archive members stay open on `stack`)."""
    what, where = instruction(step), _where(step)
    try:
        chmod = parse_chmod(step.chmod) if step.chmod else None
        owner = resolve_chown(dest_rootfs or user_rootfs, step.chown) if step.chown else None
    except KilnError as e:
        raise CopyError(f"{where}{what} failed: {e}") from None
    rootfs = None if step.link else dest_rootfs
    plan = DestPlan(rootfs, created_owner=owner or (0, 0), created_mtime=created_mtime, what=what, line=step.line)
    dest_path, dir_syntax = destination(step)
    dest = plan.resolve_dest(dest_path)

    excludes = filters(step.excludes, "--exclude")
    items = _items(step, tree, excludes)
    count = len(items) + len(step.urls) + len(step.inline)
    if count > 1 and not dir_syntax and not step.parents:
        raise plan.fail(
            f"When using {what} with more than one source file, the destination must be a directory and end with a /"
        )
    if dir_syntax or step.parents:
        plan.ensure_dir(dest)
    into_dir = dir_syntax or step.parents or plan.is_dir(dest) or not dest

    for item in items:
        if item.is_dir:
            plan.ensure_dir(dest)
            for node in walk_item(tree, item, excludes=excludes):
                if node.rel:
                    planned = _node_entry(tree, node, owner, chmod, item.index)
                    if planned is not None:
                        plan.put(join(dest, node.rel), planned)
            continue
        if step.extract_archives and stat.S_ISREG(item.st.st_mode):
            compression = archive_compression(tree.host(item.real))
            if compression is not None:
                plan_archive(plan, dest, tree.host(item.real), compression, stack=stack, tmp_dir=tmp_dir)
                continue
        planned = _node_entry(tree, SourceNode(item.name, item.real, item.st), owner, chmod, item.index)
        if planned is not None:
            plan.put(join(dest, item.name) if into_dir else dest, planned)

    uid, gid = owner or (0, 0)
    for url in step.urls:
        got = fetcher.fetch(url, step.checksum, what=f"{where}{what}")
        mode = chmod.apply(0o600, False) if chmod else 0o600
        mtime = got.mtime if got.mtime is not None else created_mtime
        entry = TarEntry(got.filename, EntryType.FILE, got.size, mode, uid, gid, mtime)
        plan.put(join(dest, got.filename) if into_dir else dest, Planned(entry, path=got.path))
    for inline in step.inline:
        data = inline.content.encode("utf-8", "surrogateescape")
        mode = chmod.apply(0o644, False) if chmod else 0o644
        entry = TarEntry(inline.name, EntryType.FILE, len(data), mode, uid, gid, created_mtime)
        plan.put(join(dest, clean_path(inline.name)) if into_dir else dest, Planned(entry, data=data))
    return plan


def write_copy_layer(
    step: CopyStep,
    src_root: Path,
    dest_rootfs: Path | None,
    writer: LayerWriter,
    *,
    context: BuildContext | None = None,
    source_date_epoch: int | None = None,
    user_rootfs: Path | None = None,
    fetcher: UrlFetcher | None = None,
    tmp_dir: Path | None = None,
) -> CopyResult:
    """Write the one layer of a COPY/ADD into `writer`, sorted, parents first.

    `src_root` is the context directory (then `context` is its BuildContext) or the rootfs of
    a stage or image; `dest_rootfs` is the image before this step, read-only (None for
    --link or scratch: nothing is probed). `user_rootfs` resolves --chown names when
    `dest_rootfs` is None. Downloads and checks finish before the first entry is written.
    """
    tree = _tree(src_root, context)
    files = nbytes = 0
    with contextlib.ExitStack() as stack, _reported(step):
        if fetcher is None:
            fetcher = stack.enter_context(UrlFetcher(tmp_dir))
        created = source_date_epoch if source_date_epoch is not None else 0
        plan = plan_copy(
            step, tree, dest_rootfs, stack=stack, fetcher=fetcher, created_mtime=created,
            user_rootfs=user_rootfs, tmp_dir=tmp_dir,
        )
        for planned in plan.sorted_entries():
            entry = planned.entry
            if entry.type is EntryType.FILE and entry.size:
                try:
                    f = planned.open()
                except OSError as e:
                    raise CopyError(f"{_where(step)}{instruction(step)} failed: cannot read {entry.name}: {e.strerror}") from None
                with f:
                    writer.add_entry(entry, f)
                nbytes += entry.size
            else:
                writer.add_entry(entry)
            if entry.type is not EntryType.DIR:
                files += 1
    return CopyResult(files, nbytes)
