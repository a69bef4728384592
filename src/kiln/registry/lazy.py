"""Blobs that are not in the store yet but whose registry location is known.

A build that starts from a registry image, or that hits the remote cache, needs the layer
blobs only when something reads them: unpacking a snapshot, exporting a tarball, pushing to a
registry that cannot mount them. Until then kiln keeps just the manifest and config, and the
blob-sources record (written by every pull, push and metadata fetch) says where each layer
lives. ``ensure_local`` fetches, digest-verified, exactly the blobs a caller is about to read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from kiln.errors import BlobUnknownError
from kiln.oci.digest import Digest
from kiln.oci.models import Descriptor, Index, Manifest, Platform, parse_manifest_or_index
from kiln.oci.store import Store
from kiln.registry.blobs import download_blob
from kiln.registry.blobsources import BlobSources, split_source
from kiln.registry.client import RegistryClient, Session
from kiln.registry.options import RegistryOptions
from kiln.registry.parallel import run_all
from kiln.registry.progress import NullProgress, ProgressSink
from kiln.registry.pull import DEFAULT_PLATFORM, INDEX_ANNOTATION, select_platform
from kiln.registry.reference import Reference


def ensure_local(
    store: Store,
    blobs: Iterable[Descriptor],
    options: RegistryOptions | None = None,
    progress: ProgressSink | None = None,
) -> int:
    """Download the blobs among ``blobs`` that the store lacks, from their recorded sources."""
    options = options or RegistryOptions()
    sink = progress or NullProgress()
    missing: dict[str, Descriptor] = {}
    for desc in blobs:
        if not store.has_blob(desc.dgst):
            missing.setdefault(desc.digest, desc)
    if not missing:
        return 0
    sources = BlobSources(store)
    by_repo: dict[str, list[Descriptor]] = {}
    for digest, desc in missing.items():
        known = sources.sources(digest)
        if not known:
            raise BlobUnknownError(f"blob {digest} is neither in the store nor at a known registry; pull its image again")
        by_repo.setdefault(known[0], []).append(desc)
    with Session(options) as session:
        for repo, descs in by_repo.items():
            registry, repository = split_source(repo)
            ref = Reference(registry=registry, repository=repository, tag="latest", digest=None)
            client = session.client(ref)

            def task(desc: Descriptor, client: RegistryClient = client, what: str = repo) -> Callable[[threading.Event], str]:
                return lambda abort: download_blob(client, store, desc, label="layer", what=what, progress=sink, abort=abort)

            run_all([task(d) for d in descs], options.concurrency)
    return len(missing)


def fetch_metadata(
    ref: Reference, store: Store, *, platform: Platform | None = None, options: RegistryOptions | None = None
) -> Descriptor:
    """Store an image's manifest and config, not its layers, and record where the layers are.

    Nothing is tagged: a tag promises a complete image. The caller keeps the descriptor, which
    names the index a platform's manifest was chosen from as ``pull`` does (``INDEX_ANNOTATION``).
    """
    options = options or RegistryOptions()
    want = platform or DEFAULT_PLATFORM
    what = str(ref)
    annotations: dict[str, str] | None = None
    with Session(options) as session:
        client = session.client(ref)
        raw, media_type, digest = client.get_manifest(ref.identifier, what)
        parsed = parse_manifest_or_index(raw, media_type, what=what)
        if isinstance(parsed, Index):
            annotations = {INDEX_ANNOTATION: str(digest)}
            entry = select_platform(parsed, want, what)
            raw, media_type, digest = client.get_manifest(entry.digest, f"{ref.name}@{entry.digest}")
            parsed = parse_manifest_or_index(raw, media_type, what=what)
        if not isinstance(parsed, Manifest):
            raise BlobUnknownError(f"{what}: expected an image manifest")
        with store.lock_shared():
            download_blob(client, store, parsed.config, label="config", what=what, progress=NullProgress(), abort=threading.Event())
            store.write_blob(raw, expected=digest)
    BlobSources(store).record([digest, parsed.config.digest, *(d.digest for d in parsed.layers)], ref.name)
    return Descriptor(media_type=media_type, digest=Digest(digest), size=len(raw), annotations=annotations)


def ensure_pushable(
    store: Store, blobs: Iterable[Descriptor], dest: Reference, options: RegistryOptions | None = None, progress: ProgressSink | None = None
) -> int:
    """Fetch the blobs a push to ``dest`` would have to read: those missing from the store and
    not mountable, i.e. recorded only at other registries."""
    sources = BlobSources(store)
    need = [
        desc
        for desc in blobs
        if not store.has_blob(desc.dgst)
        and not any(split_source(src)[0] == dest.registry for src in sources.sources(desc.digest))
    ]
    return ensure_local(store, need, options, progress)
