"""Pull, push and their judges (skopeo, umoci) against the plain registry."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import httpx
import pytest

from kiln.errors import ImageNotFoundError, RegistryError
from kiln.oci import mediatypes as mt
from kiln.oci.digest import Digest
from kiln.oci.models import Platform
from kiln.oci.store import Store
from kiln.registry.blobsources import BlobSources
from kiln.registry.options import RegistryOptions
from kiln.registry.transfer import INDEX_ANNOTATION, fetch_manifest, head_manifest, pull, push
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.images import BuiltImage, push_with_skopeo, random_layers_image
from tests.fixtures.registry import Registry, RepoNamer
from tests.registry.conftest import (
    MultiImage,
    Recorder,
    push_index_with_skopeo,
    ref,
    skopeo,
    skopeo_digest,
    skopeo_raw_manifest,
    umoci_unpack,
)


def test_pull_skopeo_image_and_push_back_byte_identical(
    registry: Registry, fresh_repo: RepoNamer, busybox_image: BuiltImage, store: Store, opts: RegistryOptions
) -> None:
    src_repo, dst_repo = fresh_repo("src"), fresh_repo("dst")
    push_with_skopeo(busybox_image.layout, registry, f"{src_repo}:v1")
    src = ref(registry.host, f"{src_repo}:v1")
    rec = Recorder()
    desc = pull(src, store, options=opts, progress=rec)

    assert desc.digest == busybox_image.manifest.digest
    assert store.resolve(str(src)).digest == desc.digest
    assert store.read_blob(desc.dgst) == busybox_image.manifest_bytes
    for blob in (busybox_image.config, *busybox_image.layers):
        assert store.has_blob(Digest(blob.digest))
        assert rec.status[blob.digest] == "pulled"
        assert rec.moved[blob.digest] == blob.size
    assert store.check() == []

    pushed = push(store, str(src), ref(registry.host, f"{dst_repo}:v2"), options=opts)
    assert pushed.digest == busybox_image.manifest.digest
    assert skopeo_raw_manifest(registry.host, f"{dst_repo}:v2") == busybox_image.manifest_bytes
    assert skopeo_digest(registry.host, f"{dst_repo}@{pushed.digest}") == pushed.digest


def test_second_pull_skips_blobs_in_store(
    fault_proxy: FaultProxy,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    store: Store,
    opts: RegistryOptions,
) -> None:
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, fault_proxy, f"{repo}:a")
    pull(ref(fault_proxy.host, f"{repo}:a"), store, options=opts)
    fault_proxy.clear_log()
    rec = Recorder()
    pull(ref(fault_proxy.host, f"{repo}:a"), store, options=opts, progress=rec)
    assert fault_proxy.requests("GET", r"/blobs/") == []
    assert set(rec.status.values()) == {"cached"}


def test_kiln_pushed_image_is_read_by_skopeo_and_unpacked_by_umoci(
    registry: Registry,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    store: Store,
    opts: RegistryOptions,
    tmp_path: Path,
) -> None:
    src_repo, dst_repo = fresh_repo("src"), fresh_repo("dst")
    push_with_skopeo(busybox_image.layout, registry, f"{src_repo}:v1")
    pull(ref(registry.host, f"{src_repo}:v1"), store, options=opts)
    # Push to a repository with no blobs yet and no mount source: every blob is uploaded.
    BlobSources(store).path.unlink()
    rec = Recorder()
    pushed = push(
        store,
        f"{registry.host}/{src_repo}:v1",
        ref(registry.host, f"{dst_repo}:judged"),
        options=opts,
        progress=rec,
    )
    assert {rec.status[b.digest] for b in (busybox_image.config, *busybox_image.layers)} == {"pushed"}

    info = json.loads(
        skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/{dst_repo}:judged").stdout
    )
    assert info["Digest"] == pushed.digest
    assert info["Layers"] == [layer.digest for layer in busybox_image.layers]
    layout = tmp_path / "judge-layout"
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{registry.host}/{dst_repo}:judged",
        f"oci:{layout}:judged",
    )
    bundle = tmp_path / "bundle"
    umoci_unpack(layout, "judged", bundle)
    assert (bundle / "rootfs/bin/busybox").is_file()
    out = subprocess.run(
        [str(bundle / "rootfs/bin/busybox"), "echo", "unpacked"], capture_output=True, check=True
    )
    assert out.stdout.strip() == b"unpacked"


def test_push_skips_existing_blobs_and_mounts_known_ones(
    fault_proxy: FaultProxy,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    store: Store,
    opts: RegistryOptions,
) -> None:
    a, b = fresh_repo("a"), fresh_repo("b")
    push_with_skopeo(busybox_image.layout, fault_proxy, f"{a}:1")
    pull(ref(fault_proxy.host, f"{a}:1"), store, options=opts)
    blobs = [busybox_image.config.digest, *(layer.digest for layer in busybox_image.layers)]
    assert BlobSources(store).sources(blobs[0]) == [f"{fault_proxy.host}/{a}"]

    fault_proxy.clear_log()
    rec = Recorder()
    push(store, f"{fault_proxy.host}/{a}:1", ref(fault_proxy.host, f"{b}:1"), options=opts, progress=rec)
    mounts = fault_proxy.requests("POST", r"mount=")
    assert len(mounts) == len(blobs)
    assert all(m.status == 201 and f"from={a.replace('/', '%2F')}" in m.path for m in mounts)
    assert fault_proxy.requests("PATCH") == [] and fault_proxy.requests("PUT", r"/blobs/uploads/") == []
    assert {rec.status[d] for d in blobs} == {"mounted"}

    fault_proxy.clear_log()
    rec = Recorder()
    push(store, f"{fault_proxy.host}/{a}:1", ref(fault_proxy.host, f"{b}:again"), options=opts, progress=rec)
    assert len(fault_proxy.requests("HEAD", r"/blobs/")) == len(blobs)
    assert fault_proxy.requests("POST") == []
    assert {rec.status[d] for d in blobs} == {"exists"}
    # The manifest was already there by digest; only the new tag was PUT.
    puts = fault_proxy.requests("PUT", r"/manifests/")
    assert [p.path.rsplit("/", 1)[-1] for p in puts] == ["again"]


def test_chunked_upload(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer, store: Store, opts: RegistryOptions, tmp_path: Path
) -> None:
    img = random_layers_image(tmp_path / "big", 1, 700_000, seed=3)
    repo = fresh_repo()
    push_with_skopeo(img.layout, fault_proxy, f"{repo}:src")
    pull(ref(fault_proxy.host, f"{repo}:src"), store, options=opts)
    BlobSources(store).path.unlink()  # no mounts: force uploads
    fault_proxy.clear_log()
    chunk = 256 * 1024
    small = dataclasses.replace(opts, chunk_size=chunk)
    dest = fresh_repo("chunked")
    pushed = push(store, f"{fault_proxy.host}/{repo}:src", ref(fault_proxy.host, f"{dest}:c"), options=small)
    layer = img.layers[0]
    patches = [r for r in fault_proxy.requests("PATCH") if r.request_bytes]
    assert len(patches) == -(-layer.size // chunk)
    assert [p.headers.get("content-range") for p in patches][:2] == [
        f"0-{chunk - 1}",
        f"{chunk}-{2 * chunk - 1}",
    ]
    assert skopeo_digest(fault_proxy.host, f"{dest}:c") == pushed.digest == img.manifest.digest
    layout = tmp_path / "judge"
    skopeo("copy", "--src-tls-verify=false", f"docker://{fault_proxy.host}/{dest}:c", f"oci:{layout}:c")
    assert (layout / "blobs/sha256" / layer.digest.split(":")[1]).read_bytes() == img.blob_path(
        layer.digest
    ).read_bytes()


def test_pull_index_picks_platform_and_keeps_index(
    registry: Registry, fresh_repo: RepoNamer, multi_image: MultiImage, store: Store, opts: RegistryOptions
) -> None:
    repo = fresh_repo()
    push_index_with_skopeo(multi_image, registry.host, f"{repo}:multi")
    r = ref(registry.host, f"{repo}:multi")
    desc = pull(r, store, options=opts)
    amd = multi_image.platforms["linux/amd64"]
    assert desc.digest == amd.manifest.digest
    assert desc.platform is not None and str(desc.platform) == "linux/amd64"
    assert desc.annotations == {INDEX_ANNOTATION: multi_image.index_digest}
    assert store.read_blob(Digest(multi_image.index_digest)) == multi_image.index_bytes
    assert not store.has_blob(Digest(multi_image.platforms["linux/arm64/v8"].layers[0].digest))

    arm = multi_image.platforms["linux/arm64/v8"]
    r_arm = ref(registry.host, f"{repo}:arm")
    skopeo(
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://{registry.host}/{repo}:multi",
        f"docker://{registry.host}/{repo}:arm",
    )
    desc_arm = pull(r_arm, store, platform=Platform.parse("linux/arm64"), options=opts)
    assert desc_arm.digest == arm.manifest.digest
    assert store.has_blob(Digest(arm.layers[0].digest))

    with pytest.raises(ImageNotFoundError, match=r"linux/s390x.*linux/amd64, linux/arm64/v8"):
        pull(r, store, platform=Platform.parse("linux/s390x"), options=opts)


def test_a_build_reports_the_digest_its_base_tag_named_also_for_an_index(
    registry: Registry, fresh_repo: RepoNamer, multi_image: MultiImage, busybox_image: BuiltImage, store: Store, opts: RegistryOptions
) -> None:
    """What a registry reports for the tag (HEAD, push notifications) is what an ImageChange
    trigger compares with: the index's digest, not the platform manifest's the build used."""
    from kiln.build.driver import BuildRequest, run_build
    from kiln.build.options import BuildOptions

    repo = fresh_repo()
    push_index_with_skopeo(multi_image, registry.host, f"{repo}:multi")
    push_with_skopeo(busybox_image.layout, registry, f"{repo}:single")
    multi, single = f"{registry.host}/{repo}:multi", f"{registry.host}/{repo}:single"
    amd = multi_image.platforms["linux/amd64"].manifest.digest

    def bases(dockerfile: str) -> dict[str, str]:
        result = run_build(BuildRequest(dockerfile, options=BuildOptions(registry=opts)), store, quiet=True)
        return result.bases

    assert bases(f"FROM {multi}\nLABEL a=b\n") == {multi: multi_image.index_digest}
    assert skopeo_digest(registry.host, f"{repo}:multi") == multi_image.index_digest
    assert store.resolve(amd).digest == amd  # while the build ran on the platform's manifest
    # stages and scratch are not images; a stage the target does not need is not resolved
    assert bases(f"FROM scratch AS empty\nFROM {multi} AS unused\nFROM {single} AS tools\nFROM tools\nLABEL a=b\n") == {single: busybox_image.manifest.digest}


def test_pull_by_digest_and_missing_image(
    registry: Registry, fresh_repo: RepoNamer, busybox_image: BuiltImage, store: Store, opts: RegistryOptions
) -> None:
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, registry, f"{repo}:d")
    by_digest = ref(registry.host, f"{repo}@{busybox_image.manifest.digest}")
    assert pull(by_digest, store, options=opts).digest == busybox_image.manifest.digest
    assert store.resolve(str(by_digest)).digest == busybox_image.manifest.digest

    missing = ref(registry.host, f"{repo}:nope")
    with pytest.raises(RegistryError) as err:
        pull(missing, store, options=opts)
    assert str(err.value) == f"{missing}: MANIFEST_UNKNOWN: manifest unknown"
    with pytest.raises(ImageNotFoundError):
        store.resolve(str(missing))


def test_fetch_and_head_manifest(
    registry: Registry, fresh_repo: RepoNamer, multi_image: MultiImage, opts: RegistryOptions
) -> None:
    repo = fresh_repo()
    push_index_with_skopeo(multi_image, registry.host, f"{repo}:m")
    raw, media_type, digest = fetch_manifest(ref(registry.host, f"{repo}:m"), opts)
    assert raw == multi_image.index_bytes
    assert media_type == mt.OCI_INDEX
    assert digest == multi_image.index_digest
    head = head_manifest(ref(registry.host, f"{repo}:m"), opts)
    assert head is not None
    assert (head.digest, head.size, head.media_type) == (digest, len(raw), mt.OCI_INDEX)
    assert head_manifest(ref(registry.host, f"{repo}:absent"), opts) is None


def test_push_by_local_digest_and_index_children_first(
    registry: Registry, fresh_repo: RepoNamer, multi_image: MultiImage, store: Store, opts: RegistryOptions
) -> None:
    # Put a whole index into the store by hand (as a build of several platforms would), then push it.
    layout = multi_image.layout
    for path in (layout / "blobs/sha256").iterdir():
        store.write_blob(path.read_bytes())
    index_desc = store.descriptor_for_manifest(Digest(multi_image.index_digest))
    store.tag("local/multi:1", index_desc)
    repo = fresh_repo()
    pushed = push(store, multi_image.index_digest, ref(registry.host, f"{repo}:all"), options=opts)
    assert pushed.digest == multi_image.index_digest
    assert skopeo_raw_manifest(registry.host, f"{repo}:all") == multi_image.index_bytes
    for img in multi_image.platforms.values():
        assert skopeo_digest(registry.host, f"{repo}@{img.manifest.digest}") == img.manifest.digest
    # Every child answers over plain HTTP too (the registry itself verified the index's references).
    r = httpx.head(
        f"{registry.url}/v2/{repo}/manifests/{multi_image.index_digest}", headers={"Accept": mt.OCI_INDEX}
    )
    assert r.status_code == 200


def test_docker_schema2_image_round_trips_byte_identical(
    registry: Registry, fresh_repo: RepoNamer, busybox_image: BuiltImage, store: Store, opts: RegistryOptions
) -> None:
    src, dest = fresh_repo("v2s2"), fresh_repo("back")
    skopeo(
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        f"oci:{busybox_image.layout}:latest",
        f"docker://{registry.host}/{src}:1",
    )
    original = skopeo_raw_manifest(registry.host, f"{src}:1")
    assert json.loads(original)["mediaType"] == mt.DOCKER_MANIFEST
    desc = pull(ref(registry.host, f"{src}:1"), store, options=opts)
    assert desc.media_type == mt.DOCKER_MANIFEST
    assert store.read_blob(desc.dgst) == original
    pushed = push(store, desc.digest, ref(registry.host, f"{dest}:1"), options=opts)
    assert skopeo_raw_manifest(registry.host, f"{dest}:1") == original
    r = httpx.get(f"{registry.url}/v2/{dest}/manifests/1", headers={"Accept": mt.DOCKER_MANIFEST})
    assert r.headers["content-type"] == mt.DOCKER_MANIFEST
    assert r.headers["docker-content-digest"] == pushed.digest == Digest.of(original)
