"""Typed models of OCI/Docker manifests, indexes, descriptors and image configs.

Every model keeps fields it does not know (``extra="allow"``), so reading and writing back
loses nothing. Byte-identical re-push does not rely on this: the store keeps the raw bytes.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kiln.errors import ManifestError
from kiln.oci import mediatypes as mt
from kiln.oci.canonical import canonical_json
from kiln.oci.digest import Digest, is_digest


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())


class Platform(_Model):
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    os_version: str | None = Field(default=None, alias="os.version")
    os_features: list[str] | None = Field(default=None, alias="os.features")

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


class Descriptor(_Model):
    media_type: str = Field(alias="mediaType")
    digest: str
    size: int
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")
    data: str | None = None

    @field_validator("digest")
    @classmethod
    def _valid_digest(cls, v: str) -> str:
        if not is_digest(v):
            raise ValueError(f"invalid digest {v!r}")
        return v

    @field_validator("size")
    @classmethod
    def _valid_size(cls, v: int) -> int:
        if v < 0:
            raise ValueError("size must not be negative")
        return v

    @property
    def dgst(self) -> Digest:
        return Digest(self.digest)

    @classmethod
    def for_bytes(cls, media_type: str, data: bytes, **kw: Any) -> Descriptor:
        return cls(media_type=media_type, digest=Digest.of(data), size=len(data), **kw)


class Manifest(_Model):
    schema_version: int = Field(2, alias="schemaVersion")
    media_type: str | None = Field(default=mt.OCI_MANIFEST, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    config: Descriptor
    layers: list[Descriptor] = Field(default_factory=list)
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class Index(_Model):
    schema_version: int = Field(2, alias="schemaVersion")
    media_type: str | None = Field(default=mt.OCI_INDEX, alias="mediaType")
    manifests: list[Descriptor] = Field(default_factory=list)
    annotations: dict[str, str] | None = None


class HealthConfig(_Model):
    test: list[str] | None = Field(default=None, alias="Test")
    interval: int | None = Field(default=None, alias="Interval")
    timeout: int | None = Field(default=None, alias="Timeout")
    start_period: int | None = Field(default=None, alias="StartPeriod")
    start_interval: int | None = Field(default=None, alias="StartInterval")
    retries: int | None = Field(default=None, alias="Retries")


class ContainerConfig(_Model):
    user: str | None = Field(default=None, alias="User")
    exposed_ports: dict[str, dict[str, Any]] | None = Field(default=None, alias="ExposedPorts")
    env: list[str] | None = Field(default=None, alias="Env")
    entrypoint: list[str] | None = Field(default=None, alias="Entrypoint")
    cmd: list[str] | None = Field(default=None, alias="Cmd")
    volumes: dict[str, dict[str, Any]] | None = Field(default=None, alias="Volumes")
    working_dir: str | None = Field(default=None, alias="WorkingDir")
    labels: dict[str, str] | None = Field(default=None, alias="Labels")
    stop_signal: str | None = Field(default=None, alias="StopSignal")
    args_escaped: bool | None = Field(default=None, alias="ArgsEscaped")
    # Docker-only fields; the OCI format drops them (buildah does the same).
    healthcheck: HealthConfig | None = Field(default=None, alias="Healthcheck")
    shell: list[str] | None = Field(default=None, alias="Shell")
    on_build: list[str] | None = Field(default=None, alias="OnBuild")

    def env_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.env or []:
            k, _, v = item.partition("=")
            out[k] = v
        return out


class RootFS(_Model):
    type: str = "layers"
    diff_ids: list[str] = Field(default_factory=list)


class History(_Model):
    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool | None = None


class ImageConfig(_Model):
    created: str | None = None
    author: str | None = None
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    config: ContainerConfig = Field(default_factory=ContainerConfig)
    rootfs: RootFS = Field(default_factory=RootFS)
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


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"field {loc}: {err['msg']}"


def parse_manifest_or_index(data: bytes, media_type: str | None = None, what: str = "manifest") -> Manifest | Index:
    """Parse a manifest or index, choosing by the embedded or announced media type."""
    obj = _load(data, what)
    kind = obj.get("mediaType") or media_type
    if kind == "application/vnd.docker.distribution.manifest.v1+json" or obj.get("schemaVersion") == 1:
        raise ManifestError(f"{what}: Docker schema 1 manifests are not supported")
    is_index = kind in mt.INDEX_TYPES or (kind is None and "manifests" in obj)
    try:
        if is_index:
            return Index.model_validate(obj)
        if kind is not None and kind not in mt.MANIFEST_TYPES:
            raise ManifestError(f"{what}: unsupported media type {kind!r}")
        return Manifest.model_validate(obj)
    except ValidationError as e:
        raise ManifestError(f"{what}: {_first_error(e)}") from None


def parse_config(data: bytes, what: str = "config") -> ImageConfig:
    obj = _load(data, what)
    try:
        return ImageConfig.model_validate(obj)
    except ValidationError as e:
        raise ManifestError(f"{what}: {_first_error(e)}") from None


def manifest_media_type(m: Manifest | Index) -> str:
    if m.media_type:
        return m.media_type
    return mt.OCI_INDEX if isinstance(m, Index) else mt.OCI_MANIFEST
