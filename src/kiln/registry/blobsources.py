"""Where blobs in the local store came from, so a push can mount instead of upload.

``<store>/kiln/blob-sources.json`` maps a blob digest to the repositories (``registry/repo``,
most recent first) known to hold it: where it was pulled from and where it was pushed to. A push
to the same registry asks to mount the blob from one of them (``POST ...?mount=&from=``); if the
registry no longer has it there, the mount falls back to an upload, so a stale entry costs one
request and is never wrong.

The file is a cache: losing it only loses mounts. It is replaced atomically under its own flock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator

from kiln.oci.digest import Digest, is_digest
from kiln.oci.store import Store, atomic_write

#: Repositories remembered per blob; more would only widen the token scope of a push.
MAX_SOURCES = 4


class BlobSources:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.state_dir / "blob-sources.json"
        self._lock_path = store.state_dir / "blob-sources.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, list[str]]:
        try:
            obj = json.loads(self.path.read_bytes())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        if not isinstance(obj, dict):
            return {}
        return {
            k: [r for r in v if isinstance(r, str)]
            for k, v in obj.items()
            if isinstance(v, list) and is_digest(k)
        }

    def sources(self, digest: str) -> list[str]:
        """Repositories (``registry/repo``) known to hold ``digest``, most recent first."""
        return list(self._read().get(digest, []))

    def record(self, digests: Iterable[str], repository: str) -> None:
        """Remember that ``repository`` (``registry/repo``) holds every blob in ``digests``."""
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return
        with self._locked():
            table = self._read()
            for d in wanted:
                table[d] = [repository, *[r for r in table.get(d, []) if r != repository]][:MAX_SOURCES]
            # Blobs may be recorded before they are stored (lazily pulled layers): that is the
            # point of the record. Forgetting happens at prune time (``retain_stored``).
            atomic_write(self.path, json.dumps(table, sort_keys=True, indent=0).encode())

    def retain_stored(self) -> None:
        """After a prune: forget blobs the store no longer holds, so the file does not grow forever."""
        with self._locked():
            table = {d: repos for d, repos in self._read().items() if self.store.has_blob(Digest(d))}
            atomic_write(self.path, json.dumps(table, sort_keys=True, indent=0).encode())


def split_source(source: str) -> tuple[str, str]:
    """``registry/repo/path`` → (registry, repo/path)."""
    registry, _, repository = source.partition("/")
    return registry, repository


def mount_candidate(sources: list[str], registry: str, repository: str) -> str | None:
    """The first recorded repository on ``registry`` other than ``repository``, if any."""
    for s in sources:
        reg, repo = split_source(s)
        if reg == registry and repo and repo != repository:
            return repo
    return None
