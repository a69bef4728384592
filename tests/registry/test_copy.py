"""Registry-to-registry copy: streaming, mounts, indexes, byte-identical manifests; and TLS."""

from __future__ import annotations

import dataclasses
import json

import httpx
import pytest

from kiln.errors import RegistryError
from kiln.oci import mediatypes as mt
from kiln.oci.models import Platform
from kiln.registry.inspect import fetch_config, inspect_remote
from kiln.registry.options import RegistryOptions
from kiln.registry.transfer import copy, fetch_manifest
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.images import BuiltImage, push_with_skopeo
from tests.fixtures.registry import Registry, RepoNamer, free_port
from tests.registry.conftest import (
    MultiImage,
    Recorder,
    push_index_with_skopeo,
    ref,
    skopeo,
    skopeo_raw_manifest,
)


def test_copy_within_a_registry_mounts_every_blob(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer, busybox_image: BuiltImage, opts: RegistryOptions
) -> None:
    src, dest = fresh_repo("src"), fresh_repo("dest")
    push_with_skopeo(busybox_image.layout, fault_proxy, f"{src}:1")
    fault_proxy.clear_log()
    rec = Recorder()
    desc = copy(
        ref(fault_proxy.host, f"{src}:1"), ref(fault_proxy.host, f"{dest}:2"), options=opts, progress=rec
    )
    assert desc.digest == busybox_image.manifest.digest
    assert fault_proxy.requests("GET", "/blobs/") == []  # nothing streamed
    assert len(fault_proxy.requests("POST", "mount=")) == 1 + len(busybox_image.layers)
    assert {rec.status[b.digest] for b in (busybox_image.config, *busybox_image.layers)} == {"mounted"}
    assert skopeo_raw_manifest(fault_proxy.host, f"{dest}:2") == busybox_image.manifest_bytes


def test_retag_in_place_moves_no_blob(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer, busybox_image: BuiltImage, opts: RegistryOptions
) -> None:
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, fault_proxy, f"{repo}:1")
    fault_proxy.clear_log()
    copy(ref(fault_proxy.host, f"{repo}:1"), ref(fault_proxy.host, f"{repo}:stable"), options=opts)
    assert fault_proxy.requests("POST") == [] and fault_proxy.requests("GET", "/blobs/") == []
    assert [p.path.rsplit("/", 1)[-1] for p in fault_proxy.requests("PUT")] == ["stable"]


def test_copy_index_with_all_platforms_by_default(
    registry: Registry,
    auth_registry: Registry,
    fresh_repo: RepoNamer,
    multi_image: MultiImage,
    opts: RegistryOptions,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    creds = auth_registry.credentials
    assert creds is not None
    repo = fresh_repo()
    push_index_with_skopeo(multi_image, registry.host, f"{repo}:m")
    auth = tmp_path_factory.mktemp("auth") / "auth.json"
    auth_registry.write_docker_config(auth.parent)
    options = dataclasses.replace(opts, auth_file=auth.parent / "config.json")
    desc = copy(ref(registry.host, f"{repo}:m"), ref(auth_registry.host, f"{repo}:m"), options=options)
    assert (desc.digest, desc.media_type) == (multi_image.index_digest, mt.OCI_INDEX)
    assert skopeo_raw_manifest(auth_registry.host, f"{repo}:m", creds) == multi_image.index_bytes
    for img in multi_image.platforms.values():
        raw = skopeo_raw_manifest(auth_registry.host, f"{repo}@{img.manifest.digest}", creds)
        assert raw == img.manifest_bytes
    # And the copy is a complete image set for an independent reader of every platform.
    out = tmp_path_factory.mktemp("judge") / "layout"
    skopeo(
        "copy",
        "--all",
        "--src-tls-verify=false",
        f"--src-creds={creds[0]}:{creds[1]}",
        f"docker://{auth_registry.host}/{repo}:m",
        f"oci:{out}:m",
    )
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == multi_image.index_digest


def test_copy_one_platform(
    registry: Registry, fresh_repo: RepoNamer, multi_image: MultiImage, opts: RegistryOptions
) -> None:
    repo, dest = fresh_repo(), fresh_repo("arm")
    push_index_with_skopeo(multi_image, registry.host, f"{repo}:m")
    arm = multi_image.platforms["linux/arm64/v8"]
    desc = copy(
        ref(registry.host, f"{repo}:m"),
        ref(registry.host, f"{dest}:arm"),
        options=opts,
        platform=Platform.parse("linux/arm64"),
    )
    assert desc.digest == arm.manifest.digest
    raw, media_type, digest = fetch_manifest(ref(registry.host, f"{dest}:arm"), opts)
    assert (raw, media_type, digest) == (arm.manifest_bytes, mt.OCI_MANIFEST, arm.manifest.digest)
    amd = multi_image.platforms["linux/amd64"]
    assert httpx.head(f"{registry.url}/v2/{dest}/blobs/{amd.layers[0].digest}").status_code == 404


def test_inspect_remote_index(
    registry: Registry, fresh_repo: RepoNamer, multi_image: MultiImage, opts: RegistryOptions
) -> None:
    repo = fresh_repo()
    push_index_with_skopeo(multi_image, registry.host, f"{repo}:m")
    out = inspect_remote(ref(registry.host, f"{repo}:m"), opts, Platform.parse("linux/arm64/v8"))
    arm = multi_image.platforms["linux/arm64/v8"]
    assert out["IndexDigest"] == multi_image.index_digest
    assert out["Digest"] == arm.manifest.digest
    assert out["Manifest"] == json.loads(arm.manifest_bytes)
    assert out["Config"] == json.loads(arm.config_bytes)
    config = fetch_config(ref(registry.host, f"{repo}:m"), opts)  # linux/amd64 by default
    amd = multi_image.platforms["linux/amd64"]
    assert config.rootfs.diff_ids == list(amd.diff_ids)


# ---- TLS ---------------------------------------------------------------------------------------


def test_tls_registry_with_ca_file(
    tls_registry: Registry,
    registry: Registry,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    opts: RegistryOptions,
) -> None:
    assert tls_registry.ca_file is not None
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, registry, f"{repo}:1")
    tls = dataclasses.replace(opts, loopback_plain_http=False, ca_file=tls_registry.ca_file)
    # Plain source, HTTPS destination: the scheme is chosen per host.
    plain_src = dataclasses.replace(tls, insecure_registries=frozenset({registry.host}))
    desc = copy(ref(registry.host, f"{repo}:1"), ref(tls_registry.host, f"{repo}:1"), options=plain_src)
    raw, _, digest = fetch_manifest(ref(tls_registry.host, f"{repo}:1"), tls)
    assert digest == desc.digest and raw == busybox_image.manifest_bytes

    untrusted = dataclasses.replace(opts, loopback_plain_http=False)
    with pytest.raises(RegistryError, match="CERTIFICATE_VERIFY_FAILED") as err:
        fetch_manifest(ref(tls_registry.host, f"{repo}:1"), untrusted)
    assert str(err.value).startswith(f"{tls_registry.host}/{repo}:1: ")


def test_unreachable_registry_is_one_clear_line(opts: RegistryOptions) -> None:
    port = free_port()  # nothing listens there
    r = ref(f"127.0.0.1:{port}", "nothing/here:1")
    with pytest.raises(RegistryError) as err:
        fetch_manifest(r, dataclasses.replace(opts, max_retries=1))
    assert str(err.value).startswith(f"{r}: ConnectError")
    assert "\n" not in str(err.value)
