"""Pull: registry → local store, every byte digest-verified before it enters the store.

What a pull stores and tags:

* a single-platform manifest: its config and layers, the manifest's raw bytes, and the tag
  ``str(ref)`` → the manifest;
* an index (manifest list): the manifest of the wanted platform (``linux/amd64`` unless told)
  with its blobs, *and* the index's raw bytes; the tag points at the platform manifest (so
  ``resolve`` always yields a runnable image) and carries the annotation
  ``dev.kiln.image.index`` = the index digest, so ``inspect`` can show where it came from.
  Other platforms' manifests are not fetched.

Blobs already in the store are skipped; the rest download in parallel. The tag is written
last, under the store's shared lock, so a failed pull leaves no tag and no partial blob.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kiln.errors import ImageNotFoundError, ManifestError
from kiln.oci import mediatypes as mt
from kiln.oci.digest import Digest
from kiln.oci.models import Descriptor, Index, Manifest, Platform, parse_manifest_or_index
from kiln.oci.store import Store
from kiln.registry.blobs import download_blob
from kiln.registry.blobsources import BlobSources
from kiln.registry.client import Session
from kiln.registry.options import RegistryOptions
from kiln.registry.parallel import run_all
from kiln.registry.progress import NullProgress, ProgressSink
from kiln.registry.reference import Reference

#: Annotation on a pulled tag naming the index the platform manifest was chosen from.
INDEX_ANNOTATION = "dev.kiln.image.index"
DEFAULT_PLATFORM = Platform(os="linux", architecture="amd64")


def named_digest(desc: Descriptor) -> str:
    """The digest the pulled reference pointed at: the index's when ``desc`` is a platform chosen
    from one, which is what a registry reports for the tag (HEAD, push notifications)."""
    return (desc.annotations or {}).get(INDEX_ANNOTATION) or desc.digest


def select_platform(index: Index, want: Platform, what: str) -> Descriptor:
    """The index entry for ``want``: exact variant first, then an entry without a variant."""
    entries = [
        m for m in index.manifests if m.media_type in mt.MANIFEST_TYPES or m.media_type in mt.INDEX_TYPES
    ]
    matching = [m for m in entries if m.platform is not None and m.platform.matches(want)]
    if want.variant:
        exact = [m for m in matching if m.platform is not None and m.platform.variant == want.variant]
        matching = exact or matching
    if matching:
        return matching[0]
    if len(entries) == 1 and entries[0].platform is None:
        return entries[0]
    have = sorted({str(m.platform) for m in entries if m.platform is not None})
    raise ImageNotFoundError(
        f"{what}: no manifest for platform {want} (the index has: {', '.join(have) or 'none'})"
    )


def blob_labels(manifest: Manifest) -> list[tuple[Descriptor, str]]:
    n = len(manifest.layers)
    return [(manifest.config, "config"), *((d, f"layer {i}/{n}") for i, d in enumerate(manifest.layers, 1))]


def pull(
    ref: Reference,
    store: Store,
    *,
    platform: Platform | None = None,
    options: RegistryOptions | None = None,
    progress: ProgressSink | None = None,
) -> Descriptor:
    """Pull ``ref`` into ``store`` and tag it ``str(ref)``; returns the tagged manifest descriptor."""
    options = options or RegistryOptions()
    sink = progress or NullProgress()
    want = platform or DEFAULT_PLATFORM
    what = str(ref)
    with Session(options) as session:
        client = session.client(ref)
        raw, media_type, digest = client.get_manifest(ref.identifier, what)
        index_raw: bytes | None = None
        index_digest: Digest | None = None
        chosen_platform: Platform | None = None
        if media_type in mt.INDEX_TYPES:
            index = parse_manifest_or_index(raw, media_type, what=what)
            assert isinstance(index, Index)
            entry = select_platform(index, want, what)
            index_raw, index_digest, chosen_platform = raw, digest, entry.platform
            child_what = f"{ref.name}@{entry.digest}"
            raw, media_type, digest = client.get_manifest(entry.digest, child_what)
            if media_type not in mt.MANIFEST_TYPES:
                raise ManifestError(f"{child_what}: expected an image manifest for {want}, got {media_type}")
        parsed = parse_manifest_or_index(raw, media_type, what=what)
        if not isinstance(parsed, Manifest):
            raise ManifestError(f"{what}: expected an image manifest, got an index")

        def task(desc: Descriptor, label: str) -> Callable[[threading.Event], str]:
            return lambda abort: download_blob(
                client, store, desc, label=label, what=what, progress=sink, abort=abort
            )

        with store.lock_shared():
            unique: dict[str, tuple[Descriptor, str]] = {}
            for d, label in blob_labels(parsed):
                unique.setdefault(d.digest, (d, label))
            run_all([task(d, label) for d, label in unique.values()], options.concurrency)
            store.write_blob(raw, expected=digest)
            annotations = None
            if index_raw is not None and index_digest is not None:
                store.write_blob(index_raw, expected=index_digest)
                annotations = {INDEX_ANNOTATION: str(index_digest)}
            desc = Descriptor(
                media_type=media_type,
                digest=digest,
                size=len(raw),
                platform=chosen_platform,
                annotations=annotations,
            )
            store.tag(str(ref), desc)
    pulled = [parsed.config.digest, *(d.digest for d in parsed.layers), digest]
    if index_digest is not None:
        pulled.append(index_digest)
    BlobSources(store).record(pulled, ref.name)
    return desc


def fetch_manifest(ref: Reference, options: RegistryOptions | None = None) -> tuple[bytes, str, Digest]:
    """The raw manifest or index ``ref`` names, its media type and its verified digest."""
    with Session(options or RegistryOptions()) as session:
        return session.client(ref).get_manifest(ref.identifier, str(ref))


def head_manifest(ref: Reference, options: RegistryOptions | None = None) -> Descriptor | None:
    """The descriptor of what ``ref`` names now (HEAD, cheap), or None when the registry lacks it."""
    with Session(options or RegistryOptions()) as session:
        return session.client(ref).head_manifest(ref.identifier, str(ref))
