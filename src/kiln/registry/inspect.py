"""Reading an image in a registry without pulling its layers: for ``kiln inspect`` and for
``--dry-run`` builds that need a base image's config."""

from __future__ import annotations

import json
import threading
from typing import Any

from kiln.errors import ManifestError
from kiln.oci import mediatypes as mt
from kiln.oci.digest import Digest
from kiln.oci.models import ImageConfig, Index, Manifest, Platform, parse_config, parse_manifest_or_index
from kiln.registry.blobs import RemoteSource, read_exactly
from kiln.registry.client import RegistryClient, Session
from kiln.registry.options import RegistryOptions
from kiln.registry.pull import DEFAULT_PLATFORM, select_platform
from kiln.registry.reference import Reference

#: Configs larger than this are not read into memory.
MAX_CONFIG_SIZE = 32 << 20


class _Remote:
    """The manifest ``ref`` resolves to for a platform, plus the index it came from, if any."""

    def __init__(self, client: RegistryClient, ref: Reference, want: Platform) -> None:
        what = str(ref)
        raw, media_type, digest = client.get_manifest(ref.identifier, what)
        self.index: tuple[bytes, Digest] | None = None
        parsed = parse_manifest_or_index(raw, media_type, what=what)
        if isinstance(parsed, Index):
            self.index = (raw, digest)
            entry = select_platform(parsed, want, what)
            raw, media_type, digest = client.get_manifest(entry.digest, f"{ref.name}@{entry.digest}")
            parsed = parse_manifest_or_index(raw, media_type, what=what)
        if not isinstance(parsed, Manifest):
            raise ManifestError(f"{what}: an index inside an index is not supported here")
        self.raw, self.media_type, self.digest, self.manifest = raw, media_type, digest, parsed
        self._client, self._what = client, what

    def config_bytes(self) -> bytes:
        config = self.manifest.config
        if config.size > MAX_CONFIG_SIZE:
            raise ManifestError(f"{self._what}: config of {config.size} bytes is too large")
        source = RemoteSource(self._client, config.dgst, config.size, f"{self._what}: config {config.digest}")
        try:
            data = read_exactly(source, 0, config.size, threading.Event())
            source.verify()
        finally:
            source.close()
        return data


def inspect_remote(ref: Reference, options: RegistryOptions, want: Platform | None = None) -> dict[str, Any]:
    """{"Name", "Source", "Digest", "MediaType", ["IndexDigest", "Index"], "Manifest", "Config"}.

    For an index, "Index" is the index itself and "Manifest"/"Config" are those of ``want``
    (linux/amd64 by default); "Digest" is then the platform manifest's digest.
    """
    with Session(options) as session:
        remote = _Remote(session.client(ref), ref, want or DEFAULT_PLATFORM)
        out: dict[str, Any] = {"Name": str(ref), "Source": "registry"}
        out["Digest"], out["MediaType"] = str(remote.digest), remote.media_type
        if remote.index is not None:
            out["IndexDigest"] = str(remote.index[1])
            out["Index"] = json.loads(remote.index[0])
        out["Manifest"] = json.loads(remote.raw)
        if remote.manifest.config.media_type in mt.CONFIG_TYPES:
            out["Config"] = json.loads(remote.config_bytes())
        return out


def fetch_config(ref: Reference, options: RegistryOptions, platform: Platform | None = None) -> ImageConfig:
    """The image config ``ref`` names (for ``platform`` when it is an index), digest-verified."""
    with Session(options) as session:
        remote = _Remote(session.client(ref), ref, platform or DEFAULT_PLATFORM)
        return parse_config(remote.config_bytes(), what=f"{ref}: config")
