"""The local step cache: step key -> (layer, resulting config), kept in the store.

A key is a chain: sha256 over the parent step's key (the base image digest at the root),
the step's normalised form (the plan step minus its line number), and any inputs the plan
does not carry (COPY's content digest, the resolved user). Secrets never enter a key: plans
carry secret ids only.

Records are small JSON files under ``<store>/kiln/cache/`` written atomically; the layers they
name are ordinary store blobs, kept alive by ``cache_roots`` during prune.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kiln.build.image import Layer
from kiln.build.plan import Step
from kiln.oci.canonical import canonical_json
from kiln.oci.digest import Digest
from kiln.oci.models import Descriptor, ImageConfig
from kiln.oci.store import Store, atomic_write

#: Bump when the meaning of a key or a record changes, so old records are never misread.
CACHE_VERSION = "kiln-cache-v1"


def step_key(parent: str, step: Step, **inputs: Any) -> str:
    normal = asdict(step)
    normal.pop("line", None)
    payload = {"v": CACHE_VERSION, "parent": parent, "step": normal, "inputs": inputs}
    return Digest.of(canonical_json(payload))


@dataclass(frozen=True)
class CacheRecord:
    layer: Layer | None
    config: ImageConfig
    created: float


class StepCache:
    def __init__(self, store: Store, *, ttl_seconds: float | None = None) -> None:
        self.store = store
        self.dir = cache_dir(store)
        self.ttl = ttl_seconds

    def _path(self, key: str) -> Path:
        return self.dir / Digest(key).hex

    def get(self, key: str) -> CacheRecord | None:
        try:
            raw = json.loads(self._path(key).read_bytes())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if self.ttl is not None and time.time() - raw["created"] > self.ttl:
            return None
        layer = Layer(**raw["layer"]) if raw.get("layer") else None
        if layer is not None and not self.store.has_blob(Digest(layer.digest)):
            return None  # pruned from under us: a miss, not an error
        return CacheRecord(layer, ImageConfig.from_dict(raw["config"]), raw["created"])

    def put(self, key: str, layer: Layer | None, config: ImageConfig) -> None:
        record = {"layer": asdict(layer) if layer else None, "config": config.to_dict(), "created": time.time()}
        atomic_write(self._path(key), canonical_json(record))


def cache_dir(store: Store) -> Path:
    return store.state_dir / "cache"


def cache_roots(store: Store) -> Iterator[Descriptor]:
    """Layers that cache records reference: prune must keep them."""
    d = cache_dir(store)
    if not d.is_dir():
        return
    for path in d.iterdir():
        try:
            raw = json.loads(path.read_bytes())
        except (OSError, json.JSONDecodeError):
            continue
        if raw.get("layer"):
            yield Layer(**raw["layer"]).descriptor


def clear_cache(store: Store, older_than: float | None = None) -> int:
    d = cache_dir(store)
    if not d.is_dir():
        return 0
    if older_than is None:
        n = sum(1 for _ in d.iterdir())
        shutil.rmtree(d)
        return n
    n = 0
    now = time.time()
    for path in d.iterdir():
        try:
            if now - json.loads(path.read_bytes())["created"] > older_than:
                path.unlink()
                n += 1
        except (OSError, json.JSONDecodeError, KeyError):
            path.unlink(missing_ok=True)
    return n
