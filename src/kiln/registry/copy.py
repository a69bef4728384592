"""Copy: registry → registry, streaming, never through the local store.

Each blob streams from a GET on the source into an upload on the destination (monolithic up to
``chunk_size``, chunked above), hashed on the way and checked before the upload is committed;
when both are on the same registry the blob is mounted instead. Manifests are copied
byte-identical, children before their index.

Multi-platform images: kiln copies the whole index with every platform by default (unlike
``skopeo copy`` without ``--all``), because a copy that silently drops platforms surprises more
than one that takes longer. ``platform=`` narrows the copy to that platform's manifest, which
is then what the destination tag names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kiln.errors import ManifestError
from kiln.oci import mediatypes as mt
from kiln.oci.digest import Digest
from kiln.oci.models import Descriptor, Index, Manifest, Platform, parse_manifest_or_index
from kiln.registry.blobs import RemoteSource, upload_blob
from kiln.registry.client import RegistryClient, Session
from kiln.registry.options import RegistryOptions
from kiln.registry.parallel import run_all
from kiln.registry.progress import NullProgress, ProgressSink
from kiln.registry.pull import blob_labels, select_platform
from kiln.registry.push import put_manifest
from kiln.registry.reference import Reference

#: Indexes nested deeper than this are refused (a loop or an abuse, not an image).
MAX_DEPTH = 4


class _Copier:
    def __init__(self, src: Reference, dest: Reference, session: Session, sink: ProgressSink) -> None:
        self.src, self.dest, self.sink = src, dest, sink
        self.options = session.options
        same = src.registry == dest.registry and src.repository != dest.repository
        self.mount_from = src.repository if same else None
        self.source = session.client(src)
        self.target = session.client(dest, push=True, mount_from=[src.repository] if same else [])
        self.manifests: list[tuple[Descriptor, bytes]] = []
        self.blobs: dict[str, tuple[Descriptor, str]] = {}

    def collect(self, raw: bytes, media_type: str, digest: Digest, depth: int = 0) -> None:
        """Walk the source's manifest tree, recording manifests (children first) and blobs."""
        what = f"{self.src.name}@{digest}"
        if depth > MAX_DEPTH:
            raise ManifestError(f"{what}: indexes nested more than {MAX_DEPTH} deep")
        parsed = parse_manifest_or_index(raw, media_type, what=what)
        if isinstance(parsed, Index):
            for child in parsed.manifests:
                if child.media_type not in mt.MANIFEST_TYPES and child.media_type not in mt.INDEX_TYPES:
                    continue
                if any(d.digest == child.digest for d, _ in self.manifests):
                    continue
                c_raw, c_type, c_digest = self.source.get_manifest(
                    child.digest, f"{self.src.name}@{child.digest}"
                )
                self.collect(c_raw, c_type, c_digest, depth + 1)
        else:
            assert isinstance(parsed, Manifest)
            for blob, label in blob_labels(parsed):
                self.blobs.setdefault(blob.digest, (blob, label))
        self.manifests.append((Descriptor(media_type=media_type, digest=digest, size=len(raw)), raw))

    def blob_task(self, desc: Descriptor, label: str) -> Callable[[threading.Event], str]:
        def run(abort: threading.Event) -> str:
            what = str(self.dest)
            stream = RemoteSource(self.source, desc.dgst, desc.size, f"{self.src}: {label} {desc.digest}")
            try:
                return upload_blob(
                    self.target,
                    desc,
                    stream,
                    label=label,
                    what=what,
                    progress=self.sink,
                    abort=abort,
                    mount_from=self.mount_from,
                )
            finally:
                stream.close()

        return run

    def run(self) -> Descriptor:
        run_all([self.blob_task(d, label) for d, label in self.blobs.values()], self.options.concurrency)
        client: RegistryClient = self.target
        for desc, raw in self.manifests:
            put_manifest(client, desc, raw, self.sink, what=f"{self.dest.name}@{desc.digest}")
        top, top_raw = self.manifests[-1]
        if self.dest.digest is not None and self.dest.digest != top.digest:
            raise ManifestError(f"{self.dest}: copied manifest is {top.digest}, not the digest named")
        if self.dest.tag:
            client.put_manifest(self.dest.tag, top_raw, top.media_type, str(self.dest))
        return top


def copy(
    src: Reference,
    dest: Reference,
    *,
    options: RegistryOptions | None = None,
    progress: ProgressSink | None = None,
    platform: Platform | None = None,
) -> Descriptor:
    """Copy ``src`` to ``dest`` (all platforms unless ``platform``); returns the top manifest's descriptor."""
    options = options or RegistryOptions()
    with Session(options) as session:
        copier = _Copier(src, dest, session, progress or NullProgress())
        raw, media_type, digest = copier.source.get_manifest(src.identifier, str(src))
        if platform is not None and media_type in mt.INDEX_TYPES:
            index = parse_manifest_or_index(raw, media_type, what=str(src))
            assert isinstance(index, Index)
            entry = select_platform(index, platform, str(src))
            raw, media_type, digest = copier.source.get_manifest(entry.digest, f"{src.name}@{entry.digest}")
        copier.collect(raw, media_type, digest)
        return copier.run()
