"""Unpacked layers, kept in the store and reused across builds, keyed by ChainID.

``<store>/kiln/snapshots/<chainid-hex>/`` holds one layer's files in overlay format (see
overlay.py), so a stack of them is the image's root filesystem without copying anything. A
snapshot appears by an atomic rename once complete; a per-chain lock stops two concurrent
builds from unpacking the same layer twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from kiln.build.image import Layer, chain_ids
from kiln.oci.apply import apply_layer
from kiln.oci.digest import Digest
from kiln.oci.store import Store
from kiln.registry.lazy import ensure_local
from kiln.registry.options import RegistryOptions

#: Makes sure the blobs of some layers are in the store (a lazily pulled base fetches them here).
BlobFetcher = Callable[[list[Layer]], object]


def fetch_from_sources(store: Store, options: RegistryOptions | None = None) -> BlobFetcher:
    return lambda layers: ensure_local(store, [layer.descriptor for layer in layers], options)


class Snapshots:
    def __init__(self, store: Store, fetch: BlobFetcher | None = None) -> None:
        self.store = store
        self._fetch = fetch or fetch_from_sources(store)
        self.root = store.state_dir / "snapshots"
        self.scratch = store.state_dir / "scratch"
        self.root.mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(parents=True, exist_ok=True)

    def path(self, chain_id: str) -> Path:
        return self.root / Digest(chain_id).hex

    def has(self, chain_id: str) -> bool:
        return self.path(chain_id).is_dir()

    @contextlib.contextmanager
    def _lock(self, chain_id: str) -> Iterator[None]:
        fd = os.open(self.root / f".{Digest(chain_id).hex}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def ensure(self, layers: list[Layer]) -> list[Path]:
        """Snapshot directories for ``layers`` (bottom first), unpacking the missing ones."""
        paths = []
        missing = [layer for layer, chain in zip(layers, chain_ids(layers), strict=True) if not self.has(chain)]
        if missing:
            self._fetch(missing)
        for layer, chain in zip(layers, chain_ids(layers), strict=True):
            target = self.path(chain)
            if not target.is_dir():
                with self._lock(chain):
                    if not target.is_dir():
                        self._unpack(layer, target)
            paths.append(target)
        return paths

    def _unpack(self, layer: Layer, target: Path) -> None:
        tmp = Path(tempfile.mkdtemp(dir=self.scratch, prefix="unpack-"))
        try:
            with self.store.open_blob(Digest(layer.digest)) as blob:
                apply_layer(blob, tmp, layer_name=layer.digest, whiteouts="overlay")
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def empty_lower(self) -> Path:
        """An empty bottom layer for overlays of images with no layers (scratch)."""
        path = self.scratch / "empty-lower"
        path.mkdir(exist_ok=True)
        return path

    def new_upper(self) -> tuple[Path, Path]:
        """A fresh (upper, work) pair for one step, in the same filesystem as the snapshots."""
        base = Path(tempfile.mkdtemp(dir=self.scratch, prefix="step-"))
        (base / "upper").mkdir()
        (base / "work").mkdir()
        return base / "upper", base / "work"

    def adopt(self, upper: Path, chain_id: str) -> Path:
        """Keep a step's upper directory as the snapshot of its layer (it is already in overlay format)."""
        target = self.path(chain_id)
        with self._lock(chain_id):
            if target.is_dir():
                discard(upper.parent)
            else:
                os.replace(upper, target)
                discard(upper.parent)
        return target

    def remove_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)


def discard(path: Path) -> None:
    """Remove a step's scratch directory (overlay's work dir may hold a mode-000 dir)."""
    if not path.exists():
        return
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            with contextlib.suppress(OSError, NotImplementedError):  # a symlink to a directory: no lchmod on Linux
                os.chmod(os.path.join(dirpath, d), 0o700, follow_symlinks=False)
    shutil.rmtree(path, ignore_errors=True)
