"""Images as the executor sees them: a list of layers plus a config, read from and written to the store."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.errors import ManifestError
from kiln.oci import mediatypes as mt
from kiln.oci.digest import Digest
from kiln.oci.models import Descriptor, ImageConfig, Index, Manifest, Platform, parse_config
from kiln.oci.store import Store


@dataclass(frozen=True)
class Layer:
    """One layer: its blob (compressed) and its DiffID (uncompressed)."""

    digest: str
    diff_id: str
    size: int
    media_type: str

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(media_type=self.media_type, digest=self.digest, size=self.size)


@dataclass
class Image:
    layers: list[Layer] = field(default_factory=list)
    config: ImageConfig = field(default_factory=ImageConfig)
    manifest_digest: str | None = None

    def copy(self) -> Image:
        return Image(list(self.layers), self.config.clone(), self.manifest_digest)


def load_image(store: Store, desc: Descriptor, platform: Platform | None = None, what: str = "image") -> Image:
    """Read an image (resolving an index to the platform's manifest) from the store."""
    parsed = store.load_manifest(desc)
    if isinstance(parsed, Index):
        want = platform or Platform()
        chosen = next((m for m in parsed.manifests if m.platform is not None and m.platform.matches(want)), None)
        if chosen is None and len(parsed.manifests) == 1:
            chosen = parsed.manifests[0]
        if chosen is None:
            raise ManifestError(f"{what}: no manifest for platform {want}")
        desc = chosen
        parsed = store.load_manifest(desc)
    assert isinstance(parsed, Manifest)
    config = parse_config(store.read_blob(parsed.config.dgst), what=f"{what}: config")
    diff_ids = config.rootfs.diff_ids
    if len(diff_ids) != len(parsed.layers):
        raise ManifestError(f"{what}: {len(parsed.layers)} layers but {len(diff_ids)} diff_ids in the config")
    layers = [Layer(d.digest, diff, d.size, d.media_type) for d, diff in zip(parsed.layers, diff_ids, strict=True)]
    return Image(layers, config, desc.digest)


def chain_ids(layers: list[Layer]) -> list[Digest]:
    """OCI image-spec config.md ChainID of each layer prefix."""
    out: list[Digest] = []
    for layer in layers:
        out.append(Digest(layer.diff_id) if not out else Digest.of(f"{out[-1]} {layer.diff_id}".encode()))
    return out


def write_image(store: Store, image: Image, fmt: str = "oci", annotations: dict[str, str] | None = None) -> Descriptor:
    """Store the config and manifest of ``image`` and return the manifest's descriptor."""
    config = image.config.clone()
    config.rootfs.type = "layers"
    config.rootfs.diff_ids = [layer.diff_id for layer in image.layers]
    docker = fmt == "docker"
    config_desc = store.write_json_blob(mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG, config.to_dict())
    layers = [layer_for_format(layer, docker) for layer in image.layers]
    manifest = Manifest(
        media_type=mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST,
        config=config_desc,
        layers=layers,
        annotations=annotations or None,
    )
    return store.write_json_blob(manifest.media_type or mt.OCI_MANIFEST, manifest.to_dict())


def layer_for_format(layer: Layer, docker: bool) -> Descriptor:
    media = layer.media_type
    if docker and media == mt.OCI_LAYER_GZIP:
        media = mt.DOCKER_LAYER_GZIP
    elif not docker and media == mt.DOCKER_LAYER_GZIP:
        media = mt.OCI_LAYER_GZIP
    return Descriptor(media_type=media, digest=layer.digest, size=layer.size)
