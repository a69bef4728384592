"""Push: local store → registry, manifests byte-identical to the stored ones.

Each blob is first checked with HEAD (skipped when present), then mounted from another
repository of the same registry when the store's blob-sources record knows one, else
uploaded. Child manifests of an index go before the index; a manifest goes up by digest and
then by tag, with its own media type as Content-Type and the exact stored bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kiln.errors import DigestMismatchError, ManifestError, ReferenceError_, UsageError
from kiln.oci import mediatypes as mt
from kiln.oci.digest import Digest
from kiln.oci.models import Descriptor, Index, Manifest, manifest_media_type, parse_manifest_or_index
from kiln.oci.store import Store
from kiln.registry import progress as pg
from kiln.registry.blobs import StoreSource, upload_blob
from kiln.registry.blobsources import BlobSources, mount_candidate
from kiln.registry.client import RegistryClient, Session
from kiln.registry.options import RegistryOptions
from kiln.registry.parallel import run_all
from kiln.registry.progress import NullProgress, ProgressSink
from kiln.registry.pull import blob_labels
from kiln.registry.reference import Reference

#: At most this many other repositories are asked for mounts in one push (each widens the token).
MAX_MOUNT_REPOS = 8


def _local_descriptor(store: Store, src: str) -> Descriptor:
    """``src`` as a store name (as typed or normalized) or a manifest digest."""
    candidates = [src]
    try:
        candidates.append(str(Reference.parse(src)))
    except ReferenceError_:
        pass
    names = dict(store.list_refs())
    for name in candidates:
        if name in names:
            return names[name]
    return store.resolve(src)


def _read_verified(store: Store, digest: Digest, what: str) -> bytes:
    data = store.read_blob(digest)
    if Digest.of(data) != digest:
        raise DigestMismatchError(f"{what}: stored manifest {digest} does not match its digest")
    return data


class _Plan:
    """Manifests to put (children before parents) and the blobs they need, without duplicates."""

    def __init__(self) -> None:
        self.manifests: list[tuple[Descriptor, bytes]] = []
        self.blobs: dict[str, tuple[Descriptor, str]] = {}

    def add(self, store: Store, desc: Descriptor, what: str) -> None:
        if any(d.digest == desc.digest for d, _ in self.manifests):
            return
        if not store.has_blob(desc.dgst):
            raise ManifestError(
                f"{what}: manifest {desc.digest} is not in the store (an index pulled for one platform "
                "keeps only that platform; push the platform image instead)"
            )
        raw = _read_verified(store, desc.dgst, what)
        parsed = parse_manifest_or_index(raw, desc.media_type, what=f"{what}: manifest {desc.digest}")
        if isinstance(parsed, Index):
            for child in parsed.manifests:
                if child.media_type in mt.MANIFEST_TYPES or child.media_type in mt.INDEX_TYPES:
                    self.add(store, child, what)
        else:
            assert isinstance(parsed, Manifest)
            for blob, label in blob_labels(parsed):
                self.blobs.setdefault(blob.digest, (blob, label))
        media_type = desc.media_type or manifest_media_type(parsed)
        self.manifests.append((Descriptor(media_type=media_type, digest=desc.digest, size=len(raw)), raw))


def push(
    store: Store,
    src: str,
    dest: Reference,
    *,
    options: RegistryOptions | None = None,
    progress: ProgressSink | None = None,
) -> Descriptor:
    """Push the store's image ``src`` (a name or manifest digest) to ``dest``; returns its descriptor."""
    options = options or RegistryOptions()
    sink = progress or NullProgress()
    what = str(dest)
    top = _local_descriptor(store, src)
    if dest.digest is not None and dest.digest != top.digest:
        raise UsageError(f"cannot push {src} ({top.digest}) to {dest}: the digests differ")
    plan = _Plan()
    with store.lock_shared():
        plan.add(store, top, what)
        top_desc, top_raw = plan.manifests[-1]
        sources = BlobSources(store)
        mounts: dict[str, str] = {}
        for digest in plan.blobs:
            repo = mount_candidate(sources.sources(digest), dest.registry, dest.repository)
            if repo is not None and (repo in mounts.values() or len(set(mounts.values())) < MAX_MOUNT_REPOS):
                mounts[digest] = repo
        with Session(options) as session:
            client = session.client(dest, push=True, mount_from=set(mounts.values()))

            def task(desc: Descriptor, label: str) -> Callable[[threading.Event], str]:
                def run(abort: threading.Event) -> str:
                    source = StoreSource(store, desc.dgst, desc.size, f"{what}: {label} {desc.digest}")
                    try:
                        return upload_blob(
                            client,
                            desc,
                            source,
                            label=label,
                            what=what,
                            progress=sink,
                            abort=abort,
                            mount_from=mounts.get(desc.digest),
                        )
                    finally:
                        source.close()

                return run

            run_all([task(d, label) for d, label in plan.blobs.values()], options.concurrency)
            for desc, raw in plan.manifests:
                put_manifest(client, desc, raw, sink, what=f"{dest.name}@{desc.digest}")
            if dest.tag:
                client.put_manifest(dest.tag, top_raw, top_desc.media_type, what)
    sources.record([*plan.blobs, *(d.digest for d, _ in plan.manifests)], dest.name)
    return Descriptor(media_type=top_desc.media_type, digest=top_desc.digest, size=top_desc.size)


def put_manifest(
    client: RegistryClient, desc: Descriptor, raw: bytes, sink: ProgressSink, *, what: str
) -> None:
    """PUT a manifest by digest unless the registry already has exactly it."""
    sink.start(desc.digest, "manifest", desc.size)
    existing = client.head_manifest(desc.digest, what)
    if existing is not None and existing.digest == desc.digest:
        sink.done(desc.digest, pg.EXISTS)
        return
    client.put_manifest(desc.digest, raw, desc.media_type, what)
    sink.advance(desc.digest, desc.size)
    sink.done(desc.digest, pg.PUSHED)
