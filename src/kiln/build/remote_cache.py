"""The registry cache: ``--cache-from REF`` / ``--cache-to REF``.

One cache manifest per reference, not one per step. It is an OCI image manifest whose config
blob (media type ``application/vnd.kiln.build.cache.v1+json``) maps every step key of the build
to its result (the layer descriptor with its DiffID, and the image config after the step), and
whose layers are those result layers. Why one manifest:

- a fresh build pod learns every step result with two small requests (manifest, config), instead
  of one lookup per step;
- the tag moves atomically, so a reader never sees half of a cache export;
- the registry's garbage collector keeps the layers alive because the manifest references them,
  and pushing them is an ordinary push (HEAD skips, cross-repository mounts).

Hits never download layers: the executor appends the layer descriptor and records where the
blob lives; the snapshotter or the final push fetches it only if something reads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from kiln.build.cache import CacheRecord
from kiln.build.image import Layer
from kiln.errors import KilnError
from kiln.oci import mediatypes as mt
from kiln.oci.canonical import canonical_json
from kiln.oci.models import Descriptor, ImageConfig, Manifest, parse_manifest_or_index
from kiln.oci.store import Store
from kiln.registry.blobsources import BlobSources
from kiln.registry.lazy import ensure_local, ensure_pushable
from kiln.registry.options import RegistryOptions
from kiln.registry.pull import fetch_manifest
from kiln.registry.push import push
from kiln.registry.reference import Reference

CACHE_CONFIG_TYPE = "application/vnd.kiln.build.cache.v1+json"


class RemoteCache:
    def __init__(self, store: Store, cache_from: tuple[str, ...], cache_to: str | None, options: RegistryOptions) -> None:
        self.store = store
        self.options = options
        self.cache_to = Reference.parse(cache_to) if cache_to else None
        self._from = [Reference.parse(r) for r in cache_from]
        self._records: dict[str, dict[str, object]] = {}
        self._export: dict[str, dict[str, object]] = {}
        self.notes: list[str] = []

    def load(self) -> None:
        for ref in self._from:
            try:
                raw, media_type, _ = fetch_manifest(ref, self.options)
            except KilnError as e:
                self.notes.append(f"cache {ref}: not used ({e.message})")
                continue
            manifest = parse_manifest_or_index(raw, media_type, what=f"cache {ref}")
            if not isinstance(manifest, Manifest) or manifest.config.media_type != CACHE_CONFIG_TYPE:
                self.notes.append(f"cache {ref}: not a kiln cache manifest; ignored")
                continue
            BlobSources(self.store).record([manifest.config.digest, *(d.digest for d in manifest.layers)], ref.name)
            with self.store.lock_shared():
                ensure_local(self.store, [manifest.config], self.options)
            records = json.loads(self.store.read_blob(manifest.config.dgst)).get("records", {})
            for key, record in records.items():
                self._records.setdefault(key, record)
            self.notes.append(f"cache {ref}: {len(records)} step results")

    def get(self, key: str) -> CacheRecord | None:
        raw = self._records.get(key)
        if raw is None:
            return None
        layer = Layer(**raw["layer"]) if raw.get("layer") else None  # type: ignore[arg-type]
        return CacheRecord(layer, ImageConfig.from_dict(raw["config"]), 0.0)

    def add(self, key: str, layer: Layer | None, config: ImageConfig) -> None:
        if self.cache_to is not None:
            self._export[key] = {"layer": asdict(layer) if layer else None, "config": config.to_dict()}

    def export(self) -> Descriptor | None:
        """Push this build's step results to ``--cache-to``; returns the cache manifest."""
        if self.cache_to is None or not self._export:
            return None
        layers: dict[str, Descriptor] = {}
        for record in self._export.values():
            if record["layer"]:
                layer = Layer(**record["layer"])  # type: ignore[arg-type]
                layers.setdefault(layer.digest, layer.descriptor)
        config = self.store.write_json_blob(CACHE_CONFIG_TYPE, {"records": self._export})
        manifest = Manifest(media_type=mt.OCI_MANIFEST, config=config, layers=list(layers.values()))
        data = canonical_json(manifest.to_dict())
        desc = Descriptor(media_type=mt.OCI_MANIFEST, digest=self.store.write_blob(data), size=len(data))
        ensure_pushable(self.store, list(layers.values()), self.cache_to, self.options)
        return push(self.store, desc.digest, self.cache_to, options=self.options)
