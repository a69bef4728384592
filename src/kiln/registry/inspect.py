"""``kiln inspect`` of an image in a registry: manifest (and index) plus config, as JSON-ready data."""

from __future__ import annotations

import json
import threading
from typing import Any

from kiln.errors import ManifestError
from kiln.oci import mediatypes as mt
from kiln.oci.models import Index, Manifest, Platform, parse_manifest_or_index
from kiln.registry.blobs import RemoteSource
from kiln.registry.client import Session
from kiln.registry.options import RegistryOptions
from kiln.registry.pull import select_platform
from kiln.registry.reference import Reference

#: Configs larger than this are not read into memory for display.
MAX_CONFIG_SIZE = 32 << 20


def inspect_remote(ref: Reference, options: RegistryOptions, want: Platform | None = None) -> dict[str, Any]:
    """{"Name", "Source", "Digest", "MediaType", ["Index"], "Manifest", "Config"} for ``ref``.

    For an index, "Index" is the index itself and "Manifest"/"Config" are those of ``want``
    (linux/amd64 by default); "Digest" is then the platform manifest's digest.
    """
    what = str(ref)
    with Session(options) as session:
        client = session.client(ref)
        raw, media_type, digest = client.get_manifest(ref.identifier, what)
        out: dict[str, Any] = {
            "Name": what,
            "Source": "registry",
            "Digest": str(digest),
            "MediaType": media_type,
        }
        parsed = parse_manifest_or_index(raw, media_type, what=what)
        if isinstance(parsed, Index):
            out["IndexDigest"] = str(digest)
            out["Index"] = json.loads(raw)
            entry = select_platform(parsed, want or Platform(), what)
            raw, media_type, digest = client.get_manifest(entry.digest, f"{ref.name}@{entry.digest}")
            parsed = parse_manifest_or_index(raw, media_type, what=what)
            out["Digest"], out["MediaType"] = str(digest), media_type
        if not isinstance(parsed, Manifest):
            raise ManifestError(f"{what}: nested index is not supported by inspect")
        out["Manifest"] = json.loads(raw)
        config = parsed.config
        if config.media_type in mt.CONFIG_TYPES and config.size <= MAX_CONFIG_SIZE:
            source = RemoteSource(client, config.dgst, config.size, f"{what}: config {config.digest}")
            try:
                data = source.read(0, config.size, threading.Event())
                source.verify()
            finally:
                source.close()
            out["Config"] = json.loads(data)
        return out
