"""Manifest, index and config models: both formats, unknown fields kept, clear errors."""

from __future__ import annotations

import json

import pytest

from kiln.errors import ManifestError
from kiln.oci import mediatypes as mt
from kiln.oci.canonical import canonical_json
from kiln.oci.digest import Digest
from kiln.oci.models import Index, Manifest, Platform, parse_config, parse_manifest_or_index

D = "sha256:" + "a" * 64


def test_docker_manifest_roundtrip_keeps_unknown_fields() -> None:
    raw = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": D, "size": 7, "x-vendor": {"k": 1}},
        "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP, "digest": D, "size": 3}],
        "x-extra": "kept",
    }
    parsed = parse_manifest_or_index(json.dumps(raw).encode())
    assert isinstance(parsed, Manifest)
    assert parsed.media_type == mt.DOCKER_MANIFEST
    assert json.loads(parsed.to_json()) == raw


def test_oci_index_and_platform_selection() -> None:
    raw = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {"mediaType": mt.OCI_MANIFEST, "digest": D, "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": mt.OCI_MANIFEST, "digest": D, "size": 2, "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    parsed = parse_manifest_or_index(json.dumps(raw).encode())
    assert isinstance(parsed, Index)
    want = Platform.parse("linux/arm64")
    picked = [m for m in parsed.manifests if m.platform and m.platform.matches(want)]
    assert [m.size for m in picked] == [1]


def test_index_detected_without_media_type() -> None:
    parsed = parse_manifest_or_index(b'{"schemaVersion":2,"manifests":[]}')
    assert isinstance(parsed, Index)


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == b'{"a":[1,{"c":3,"d":2}],"b":1}'


@pytest.mark.parametrize(
    ("data", "msg"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:zz","size":1}}', "config.digest"),
        (b'{"schemaVersion":1,"fsLayers":[]}', "schema 1"),
        (b'{"schemaVersion":2,"mediaType":"text/plain","config":{}}', "unsupported media type"),
        (b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"' + D.encode() + b'","size":-1}}', "size"),
    ],
)
def test_bad_manifests_give_one_clear_error(data: bytes, msg: str) -> None:
    with pytest.raises(ManifestError, match=msg) as info:
        parse_manifest_or_index(data)
    assert "\n" not in str(info.value)


def test_config_keeps_docker_only_fields() -> None:
    raw = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Healthcheck": {"Test": ["CMD", "true"], "Interval": 5}, "Shell": ["/bin/sh", "-c"], "OnBuild": ["RUN x"], "Env": ["A=1", "B=x=y"]},
        "rootfs": {"type": "layers", "diff_ids": []},
        "container_config": {"kept": True},
    }
    cfg = parse_config(json.dumps(raw).encode())
    assert cfg.config.env_dict() == {"A": "1", "B": "x=y"}
    assert cfg.config.healthcheck is not None and cfg.config.healthcheck.test == ["CMD", "true"]
    assert json.loads(cfg.to_json()) == raw


def test_digest_validation() -> None:
    assert Digest.of(b"").hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    with pytest.raises(ManifestError):
        Digest("md5:abc")
    with pytest.raises(ManifestError):
        Digest("sha256:ABC")


def test_platform_parse() -> None:
    assert str(Platform.parse("linux/arm64/v8")) == "linux/arm64/v8"
    with pytest.raises(ManifestError):
        Platform.parse("linux")
