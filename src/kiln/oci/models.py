"""Typed models of OCI/Docker manifests, indexes, descriptors and image configs.

Every model keeps fields it does not know (in ``extras``), so reading and writing back loses
nothing. Byte-identical re-push does not rely on this: the store keeps the raw bytes.

These are plain dataclasses with a small codec (kiln.oci.modelcodec) rather than pydantic
models: they are on the start-up path of every command, and pydantic's import and model
building cost about 70 ms there, a tenth of a whole registry copy. Validation matches what the
formats need: types, required fields, digests and sizes, with the field's path in the error.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Self

from kiln.errors import ManifestError
from kiln.oci import mediatypes as mt
from kiln.oci.canonical import canonical_json
from kiln.oci.digest import Digest, is_digest
from kiln.oci.modelcodec import Invalid, alias, decode, encode


@dataclass(kw_only=True)
class _Model:
    extras: dict[str, Any] = field(default_factory=dict, repr=False)  # unknown fields, kept as read

    @classmethod
    def from_dict(cls, obj: Any) -> Self:
        """Validate ``obj`` (JSON as parsed); raises :class:`Invalid` naming the field."""
        return decode(cls, obj)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, by the formats' field names; fields that are None are left out."""
        return encode(self)

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    def clone(self) -> Self:
        """A deep copy: changing it leaves this one as it was."""
        return copy.deepcopy(self)


@dataclass(kw_only=True)
class Platform(_Model):
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    os_version: str | None = alias("os.version", None)
    os_features: list[str] | None = alias("os.features", None)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`os/arch[/variant]`, as in `--platform linux/arm64/v8`."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ManifestError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, other: Platform) -> bool:
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return not (self.variant and other.variant and self.variant != other.variant)


@dataclass(kw_only=True)
class Descriptor(_Model):
    media_type: str = alias("mediaType")
    digest: str
    size: int
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    artifact_type: str | None = alias("artifactType", None)
    data: str | None = None

    def __post_init__(self) -> None:
        if not is_digest(self.digest):
            raise Invalid(("digest",), f"invalid digest {self.digest!r}")
        if self.size < 0:
            raise Invalid(("size",), "size must not be negative")

    @property
    def dgst(self) -> Digest:
        return Digest(self.digest)

    @classmethod
    def for_bytes(cls, media_type: str, data: bytes, **kw: Any) -> Descriptor:
        return cls(media_type=media_type, digest=Digest.of(data), size=len(data), **kw)


@dataclass(kw_only=True)
class Manifest(_Model):
    schema_version: int = alias("schemaVersion", 2)
    media_type: str | None = alias("mediaType", mt.OCI_MANIFEST)
    artifact_type: str | None = alias("artifactType", None)
    config: Descriptor
    layers: list[Descriptor] = field(default_factory=list)
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


@dataclass(kw_only=True)
class Index(_Model):
    schema_version: int = alias("schemaVersion", 2)
    media_type: str | None = alias("mediaType", mt.OCI_INDEX)
    manifests: list[Descriptor] = field(default_factory=list)
    annotations: dict[str, str] | None = None


@dataclass(kw_only=True)
class HealthConfig(_Model):
    test: list[str] | None = alias("Test", None)
    interval: int | None = alias("Interval", None)
    timeout: int | None = alias("Timeout", None)
    start_period: int | None = alias("StartPeriod", None)
    start_interval: int | None = alias("StartInterval", None)
    retries: int | None = alias("Retries", None)


@dataclass(kw_only=True)
class ContainerConfig(_Model):
    user: str | None = alias("User", None)
    exposed_ports: dict[str, dict[str, Any]] | None = alias("ExposedPorts", None)
    env: list[str] | None = alias("Env", None)
    entrypoint: list[str] | None = alias("Entrypoint", None)
    cmd: list[str] | None = alias("Cmd", None)
    volumes: dict[str, dict[str, Any]] | None = alias("Volumes", None)
    working_dir: str | None = alias("WorkingDir", None)
    labels: dict[str, str] | None = alias("Labels", None)
    stop_signal: str | None = alias("StopSignal", None)
    args_escaped: bool | None = alias("ArgsEscaped", None)
    # Docker-only fields; the OCI format drops them (buildah does the same).
    healthcheck: HealthConfig | None = alias("Healthcheck", None)
    shell: list[str] | None = alias("Shell", None)
    on_build: list[str] | None = alias("OnBuild", None)

    def env_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.env or []:
            k, _, v = item.partition("=")
            out[k] = v
        return out


@dataclass(kw_only=True)
class RootFS(_Model):
    type: str = "layers"
    diff_ids: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class History(_Model):
    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool | None = None


@dataclass(kw_only=True)
class ImageConfig(_Model):
    created: str | None = None
    author: str | None = None
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    config: ContainerConfig = field(default_factory=ContainerConfig)
    rootfs: RootFS = field(default_factory=RootFS)
    history: list[History] | None = None

    @property
    def platform(self) -> Platform:
        return Platform(os=self.os, architecture=self.architecture, variant=self.variant)


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{what}: not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{what}: expected a JSON object")
    return obj


def parse_manifest_or_index(data: bytes, media_type: str | None = None, what: str = "manifest") -> Manifest | Index:
    """Parse a manifest or index, choosing by the embedded or announced media type."""
    obj = _load(data, what)
    kind = obj.get("mediaType") or media_type
    if kind == "application/vnd.docker.distribution.manifest.v1+json" or obj.get("schemaVersion") == 1:
        raise ManifestError(f"{what}: Docker schema 1 manifests are not supported")
    is_index = kind in mt.INDEX_TYPES or (kind is None and "manifests" in obj)
    try:
        if is_index:
            return Index.from_dict(obj)
        if kind is not None and kind not in mt.MANIFEST_TYPES:
            raise ManifestError(f"{what}: unsupported media type {kind!r}")
        return Manifest.from_dict(obj)
    except Invalid as e:
        raise ManifestError(f"{what}: {e}") from None


def parse_config(data: bytes, what: str = "config") -> ImageConfig:
    obj = _load(data, what)
    try:
        return ImageConfig.from_dict(obj)
    except Invalid as e:
        raise ManifestError(f"{what}: {e}") from None


def manifest_media_type(m: Manifest | Index) -> str:
    if m.media_type:
        return m.media_type
    return mt.OCI_INDEX if isinstance(m, Index) else mt.OCI_MANIFEST
