"""kiln's local image store: an OCI image layout directory.

Layout (OCI image-spec image-layout.md):
    oci-layout, index.json, blobs/sha256/<hex>
kiln's private state lives under ``kiln/`` beside them (locks, temp files, caches), which
layout readers such as skopeo and umoci ignore.

Crash safety: a blob becomes visible only by an atomic rename after its digest was verified
and its bytes fsynced; index.json is replaced the same way. So at any instant the layout
holds only complete, verified blobs, and every tag points at a manifest that was stored
before the tag was written. A crash can leave at most an orphan temp file or an
unreferenced blob, which `prune` removes.

Concurrency: blob writers hold a shared lock on ``kiln/gc.lock`` while they write and
tag; ``prune`` holds it exclusively, so it never deletes a blob a running build is about
to reference. index.json read-modify-write is serialised by ``kiln/index.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from kiln.errors import BlobUnknownError, ImageNotFoundError, ManifestError, StoreError
from kiln.oci import mediatypes as mt
from kiln.oci.canonical import canonical_json
from kiln.oci.digest import BLOCK_SIZE, Digest, VerifyingHasher
from kiln.oci.models import Descriptor, Index, Manifest, parse_manifest_or_index

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = b'{"imageLayoutVersion":"1.0.0"}'


def default_store_path() -> Path:
    """$KILN_STORE, else $XDG_DATA_HOME/kiln, else ~/.local/share/kiln."""
    if env := os.environ.get("KILN_STORE"):
        return Path(env)
    if xdg := os.environ.get("XDG_DATA_HOME"):
        return Path(xdg) / "kiln"
    return Path.home() / ".local" / "share" / "kiln"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write a file so that readers see either the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _flock(path: Path, kind: int) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, kind)
        yield
    finally:
        os.close(fd)


class BlobWriter:
    """Streams one blob into the store; it appears only once complete and verified."""

    def __init__(self, store: Store, expected: Digest | None, expected_size: int | None) -> None:
        self._store = store
        self._hasher = VerifyingHasher(expected, what=f"blob {expected}" if expected else "blob")
        self._expected_size = expected_size
        store.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="blob-", suffix=".tmp")
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb")
        self.digest: Digest | None = None
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hasher.update(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self._hasher.size

    def commit(self) -> Digest:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            digest = self._hasher.verify(self._expected_size)
            final = self._store.blob_path(digest)
            if final.exists():
                self._tmp.unlink()
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(self._tmp, 0o644)
                os.replace(self._tmp, final)
                _fsync_dir(final.parent)
        except BaseException:
            self.abort()
            raise
        self.digest, self.size = digest, self._hasher.size
        return digest

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            self.commit()
        else:
            self.abort()


@dataclass
class PruneResult:
    removed_blobs: int = 0
    freed_bytes: int = 0
    removed_temp: int = 0
    kept_blobs: int = 0
    removed: list[str] = field(default_factory=list)


class Store:
    """An OCI image layout used as kiln's local image store."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.state_dir = self.root / "kiln"
        self.tmp_dir = self.state_dir / "tmp"
        self._init_layout()

    @classmethod
    def default(cls) -> Store:
        return cls(default_store_path())

    def _init_layout(self) -> None:
        try:
            (self.blobs_dir / "sha256").mkdir(parents=True, exist_ok=True)
            self.state_dir.mkdir(exist_ok=True)
            layout = self.root / "oci-layout"
            if not layout.exists():
                atomic_write(layout, LAYOUT_VERSION)
            if not (self.root / "index.json").exists():
                atomic_write(self.root / "index.json", Index().to_json())
        except OSError as e:
            raise StoreError(f"store {self.root}: cannot initialise: {e.strerror}") from None

    # -- locks ---------------------------------------------------------------

    def lock_shared(self) -> contextlib.AbstractContextManager[None]:
        """Held by anything that writes blobs it is about to reference."""
        return _flock(self.state_dir / "gc.lock", fcntl.LOCK_SH)

    def lock_exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Held by prune: no writer is between writing a blob and referencing it."""
        return _flock(self.state_dir / "gc.lock", fcntl.LOCK_EX)

    def _index_lock(self) -> contextlib.AbstractContextManager[None]:
        return _flock(self.state_dir / "index.lock", fcntl.LOCK_EX)

    # -- blobs ---------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        d = Digest(digest)
        return self.blobs_dir / d.algorithm / d.hex

    def has_blob(self, digest: Digest) -> bool:
        return self.blob_path(digest).is_file()

    def blob_size(self, digest: Digest) -> int:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobUnknownError(f"blob {digest} is not in the store {self.root}") from None

    def open_blob(self, digest: Digest) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise BlobUnknownError(f"blob {digest} is not in the store {self.root}") from None

    def read_blob(self, digest: Digest) -> bytes:
        with self.open_blob(digest) as f:
            return f.read()

    def blob_writer(self, expected: Digest | None = None, expected_size: int | None = None) -> BlobWriter:
        return BlobWriter(self, expected, expected_size)

    def write_blob(self, data: bytes, expected: Digest | None = None) -> Digest:
        digest = Digest.of(data)
        if expected is not None and digest != expected:
            from kiln.errors import DigestMismatchError

            raise DigestMismatchError(f"blob: digest mismatch: expected {expected}, got {digest}")
        if self.has_blob(digest):
            return digest
        with self.blob_writer(digest, len(data)) as w:
            w.write(data)
        return digest

    def ingest(self, stream: BinaryIO, expected: Digest | None = None, expected_size: int | None = None) -> Digest:
        with self.blob_writer(expected, expected_size) as w:
            while chunk := stream.read(BLOCK_SIZE):
                w.write(chunk)
        assert w.digest is not None
        return w.digest

    def write_json_blob(self, media_type: str, obj: object) -> Descriptor:
        data = canonical_json(obj)
        return Descriptor(media_type=media_type, digest=self.write_blob(data), size=len(data))

    # -- references ----------------------------------------------------------

    def _read_index(self) -> Index:
        data = (self.root / "index.json").read_bytes()
        parsed = parse_manifest_or_index(data, mt.OCI_INDEX, what=f"{self.root}/index.json")
        if not isinstance(parsed, Index):
            raise StoreError(f"{self.root}/index.json is not an image index")
        return parsed

    def _write_index(self, index: Index) -> None:
        atomic_write(self.root / "index.json", index.to_json())

    def tag(self, ref: str, desc: Descriptor) -> None:
        if not self.has_blob(desc.dgst):
            raise StoreError(f"cannot tag {ref}: manifest {desc.digest} is not in the store")
        entry = desc.clone()
        entry.annotations = {**(entry.annotations or {}), REF_NAME: ref}
        with self._index_lock():
            index = self._read_index()
            index.manifests = [m for m in index.manifests if (m.annotations or {}).get(REF_NAME) != ref]
            index.manifests.append(entry)
            index.manifests.sort(key=lambda m: (m.annotations or {}).get(REF_NAME, ""))
            self._write_index(index)

    def untag(self, ref: str) -> Descriptor:
        with self._index_lock():
            index = self._read_index()
            keep, gone = [], None
            for m in index.manifests:
                if (m.annotations or {}).get(REF_NAME) == ref:
                    gone = m
                else:
                    keep.append(m)
            if gone is None:
                raise ImageNotFoundError(f"{ref}: no such image in the store")
            index.manifests = keep
            self._write_index(index)
        return gone

    def list_refs(self) -> list[tuple[str, Descriptor]]:
        out = []
        for m in self._read_index().manifests:
            name = (m.annotations or {}).get(REF_NAME)
            if name:
                plain = m.clone()
                rest = {k: v for k, v in (plain.annotations or {}).items() if k != REF_NAME}
                plain.annotations = rest or None
                out.append((name, plain))
        return out

    def resolve(self, ref: str) -> Descriptor:
        """A tag, or a manifest digest (full, or a unique hex prefix of 12+ chars) in the store."""
        for name, desc in self.list_refs():
            if name == ref:
                return desc
        if ref.startswith("sha256:") or (len(ref) >= 12 and all(c in "0123456789abcdef" for c in ref)):
            hexpart = ref.removeprefix("sha256:")
            for _, desc in self.list_refs():
                if desc.dgst.hex.startswith(hexpart):
                    return desc
            if len(hexpart) == 64 and self.has_blob(Digest("sha256:" + hexpart)):
                return self.descriptor_for_manifest(Digest("sha256:" + hexpart))
        raise ImageNotFoundError(f"{ref}: no such image in the store")

    def descriptor_for_manifest(self, digest: Digest) -> Descriptor:
        data = self.read_blob(digest)
        parsed = parse_manifest_or_index(data, what=f"manifest {digest}")
        media = parsed.media_type or (mt.OCI_INDEX if isinstance(parsed, Index) else mt.OCI_MANIFEST)
        return Descriptor(media_type=media, digest=digest, size=len(data))

    def load_manifest(self, desc: Descriptor) -> Manifest | Index:
        return parse_manifest_or_index(self.read_blob(desc.dgst), desc.media_type, what=f"manifest {desc.digest}")

    # -- garbage collection --------------------------------------------------

    def reachable(self, roots: Iterable[Descriptor]) -> set[str]:
        """Digests of every blob reachable from the roots through manifests and indexes."""
        seen: set[str] = set()
        stack = list(roots)
        while stack:
            desc = stack.pop()
            if desc.digest in seen:
                continue
            seen.add(desc.digest)
            if desc.media_type in mt.MANIFEST_TYPES or desc.media_type in mt.INDEX_TYPES:
                if not self.has_blob(desc.dgst):
                    continue
                try:
                    parsed = self.load_manifest(desc)
                except ManifestError:
                    continue
                if isinstance(parsed, Index):
                    stack.extend(parsed.manifests)
                else:
                    stack.append(parsed.config)
                    stack.extend(parsed.layers)
                    if parsed.subject is not None:
                        stack.append(parsed.subject)
        return seen

    def prune(self, extra_roots: Iterable[Descriptor] = ()) -> PruneResult:
        """Delete blobs no tag (nor an extra root, such as a cache record) reaches, and stale temp files."""
        result = PruneResult()
        with self.lock_exclusive():
            roots = [d for _, d in self.list_refs()] + list(extra_roots)
            keep = self.reachable(roots)
            for algo_dir in self.blobs_dir.iterdir():
                if not algo_dir.is_dir():
                    continue
                for blob in algo_dir.iterdir():
                    digest = f"{algo_dir.name}:{blob.name}"
                    if digest in keep:
                        result.kept_blobs += 1
                        continue
                    size = blob.stat().st_size
                    blob.unlink()
                    result.removed_blobs += 1
                    result.freed_bytes += size
                    result.removed.append(digest)
            if self.tmp_dir.exists():
                for tmp in self.tmp_dir.iterdir():
                    if tmp.is_file():
                        tmp.unlink()
                        result.removed_temp += 1
        return result

    def check(self) -> list[str]:
        """Problems in the layout: missing or corrupt blobs reachable from a tag."""
        problems = []
        for name, desc in self.list_refs():
            for digest in sorted(self.reachable([desc])):
                d = Digest(digest)
                if not self.has_blob(d):
                    problems.append(f"{name}: blob {digest} is missing")
                    continue
                with self.open_blob(d) as f:
                    got, _ = Digest.of_stream(f)
                if got != d:
                    problems.append(f"{name}: blob {digest} is corrupt (hashes to {got})")
        return problems

