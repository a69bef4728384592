"""The image the transfer benchmark moves, written as an OCI layout without kiln, then imported.

``build_image`` writes ``n_layers`` gzip layers, each one file of seeded pseudo-random bytes
(incompressible, so each blob is about ``layer_size``; the same seed gives the same digests).
The tar comes from the test fixtures' deterministic writer; gzip is isal's, because zlib would
spend longer compressing 200 MiB of noise than the transfers take.

``import_into_store`` puts the layout's image into a kiln store under a name, through the
store's own verified ingest, as a kiln user would have it after a build or a pull.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from isal import igzip
from tests.fixtures.images import build_layer_tar, oci_architecture

from kiln.oci import mediatypes as mt
from kiln.oci.digest import Digest
from kiln.oci.models import Descriptor
from kiln.oci.store import Store

REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class BenchImage:
    layout: Path
    tag: str
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers, self.manifest)

    @property
    def total_size(self) -> int:
        return sum(b.size for b in self.blobs)

    def blob_path(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return self.layout / "blobs" / algorithm / hex_digest


def _write_blob(layout: Path, media_type: str, data: bytes) -> Blob:
    digest = Digest.of(data)
    path = layout / "blobs" / digest.algorithm / digest.hex
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return Blob(media_type, str(digest), len(data))


def build_image(
    directory: Path, n_layers: int, layer_size: int, *, seed: int = 0, tag: str = "bench"
) -> BenchImage:
    """An OCI layout at ``directory`` whose index names one image ``tag`` of ``n_layers`` layers."""
    layout = Path(directory)
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    rng = random.Random(seed)
    layers: list[Blob] = []
    diff_ids: list[str] = []
    for i in range(n_layers):
        tar = build_layer_tar({f"layer{i}.bin": rng.randbytes(layer_size)})
        diff_ids.append(str(Digest.of(tar)))
        layers.append(_write_blob(layout, mt.OCI_LAYER_GZIP, igzip.compress(tar, mtime=0)))
    config_doc = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": oci_architecture(),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "kiln bench"} for _ in diff_ids],
    }
    config = _write_blob(
        layout, mt.OCI_CONFIG, json.dumps(config_doc, sort_keys=True, separators=(",", ":")).encode()
    )
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [blob.to_json() for blob in layers],
    }
    manifest = _write_blob(
        layout, mt.OCI_MANIFEST, json.dumps(manifest_doc, sort_keys=True, separators=(",", ":")).encode()
    )
    index = {"schemaVersion": 2, "manifests": [{**manifest.to_json(), "annotations": {REF_NAME: tag}}]}
    (layout / "index.json").write_text(json.dumps(index, indent=2))
    return BenchImage(layout, tag, manifest, config, tuple(layers))


def import_into_store(image: BenchImage, store_path: Path, name: str) -> Store:
    """Ingest every blob of ``image`` (digest-verified) into the store at ``store_path``; tag it ``name``."""
    store = Store(store_path)
    with store.lock_shared():
        for blob in image.blobs:
            with open(image.blob_path(blob.digest), "rb") as f:
                store.ingest(f, expected=Digest(blob.digest), expected_size=blob.size)
        store.tag(
            name,
            Descriptor(
                media_type=image.manifest.media_type, digest=image.manifest.digest, size=image.manifest.size
            ),
        )
    return store
