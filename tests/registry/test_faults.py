"""Retries, resumes and verification under injected faults (fault proxy in front of the registry)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import httpx
import pytest

from kiln.errors import DigestMismatchError, RegistryError
from kiln.oci.digest import Digest
from kiln.oci.store import Store
from kiln.registry import transport
from kiln.registry.blobsources import BlobSources
from kiln.registry.options import RegistryOptions
from kiln.registry.transfer import copy, pull, push
from tests.fixtures.faultproxy import FaultProxy, LoggedRequest
from tests.fixtures.images import BuiltImage, push_with_skopeo, random_layers_image
from tests.fixtures.registry import Registry, RepoNamer
from tests.registry.conftest import ref, skopeo_digest, skopeo_raw_manifest

LAYER_SIZE = 600_000


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """One ~600 kB incompressible layer: big enough to cut mid-stream and to chunk."""
    return random_layers_image(tmp_path_factory.mktemp("big"), 1, LAYER_SIZE, seed=21)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records every backoff sleep (and still sleeps), to see that Retry-After was honoured."""
    seen: list[float] = []
    real = transport.time.sleep

    def sleep(seconds: float) -> None:
        seen.append(seconds)
        real(seconds)

    monkeypatch.setattr(transport.time, "sleep", sleep)
    return seen


def seeded(proxy: FaultProxy, repo: RepoNamer, image: BuiltImage) -> str:
    name = repo()
    push_with_skopeo(image.layout, proxy, f"{name}:1")
    proxy.clear_log()
    return name


def layer_path(image: BuiltImage) -> str:
    return f"/blobs/{image.layers[0].digest}"


# ---- pull --------------------------------------------------------------------------------------


def test_pull_resumes_a_dropped_blob_with_range(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer, big_image: BuiltImage, store: Store, opts: RegistryOptions
) -> None:
    repo = seeded(fault_proxy, fresh_repo, big_image)
    fault_proxy.drop_response(layer_path(big_image), method="GET", after_bytes=200_000)
    desc = pull(ref(fault_proxy.host, f"{repo}:1"), store, options=opts)
    assert desc.digest == big_image.manifest.digest
    gets = fault_proxy.requests("GET", layer_path(big_image))
    assert [g.fault for g in gets] == ["drop_response", None]
    assert gets[1].headers.get("range") == "bytes=200000-"
    assert gets[1].status == 206
    assert (
        store.read_blob(Digest(big_image.layers[0].digest))
        == big_image.blob_path(big_image.layers[0].digest).read_bytes()
    )


def test_pull_retries_500_and_honours_retry_after(
    fault_proxy: FaultProxy,
    fresh_repo: RepoNamer,
    big_image: BuiltImage,
    store: Store,
    opts: RegistryOptions,
    sleeps: list[float],
) -> None:
    repo = seeded(fault_proxy, fresh_repo, big_image)
    fault_proxy.fail("/manifests/", method="GET", status=429, retry_after=1)
    fault_proxy.fail(layer_path(big_image), method="GET", status=500, times=2)
    desc = pull(ref(fault_proxy.host, f"{repo}:1"), store, options=opts)
    assert desc.digest == big_image.manifest.digest
    assert [r.status for r in fault_proxy.requests("GET", "/manifests/")] == [429, 200]
    assert [r.status for r in fault_proxy.requests("GET", layer_path(big_image))] == [500, 500, 200]
    assert 1.0 in sleeps  # the Retry-After, not a backoff guess
    assert all(s <= opts.backoff_max for s in sleeps if s != 1.0)


def test_pull_gives_up_after_bounded_retries(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer, big_image: BuiltImage, store: Store, opts: RegistryOptions
) -> None:
    repo = seeded(fault_proxy, fresh_repo, big_image)
    fault_proxy.fail(layer_path(big_image), method="GET", status=503, times=100)
    r = ref(fault_proxy.host, f"{repo}:1")
    with pytest.raises(RegistryError) as err:
        pull(r, store, options=opts)
    assert str(err.value).startswith(f"{r}: ")
    assert "UNAVAILABLE" in str(err.value)
    assert len(fault_proxy.requests("GET", layer_path(big_image))) == opts.max_retries + 1
    assert store.list_refs() == []


def test_corrupted_blob_is_refused_and_nothing_is_stored(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer, big_image: BuiltImage, store: Store, opts: RegistryOptions
) -> None:
    repo = seeded(fault_proxy, fresh_repo, big_image)
    fault_proxy.corrupt_response(layer_path(big_image), method="GET", offset=12345)
    r = ref(fault_proxy.host, f"{repo}:1")
    layer = Digest(big_image.layers[0].digest)
    with pytest.raises(DigestMismatchError) as err:
        pull(r, store, options=opts)
    message = str(err.value)
    assert str(r) in message and layer in message and "\n" not in message
    assert not store.has_blob(layer)
    assert not store.has_blob(Digest(big_image.manifest.digest))
    assert store.list_refs() == []
    assert list(store.tmp_dir.iterdir()) == []


def test_corrupted_manifest_by_digest_is_refused(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer, big_image: BuiltImage, store: Store, opts: RegistryOptions
) -> None:
    repo = seeded(fault_proxy, fresh_repo, big_image)
    fault_proxy.corrupt_response("/manifests/", method="GET", offset=20)
    with pytest.raises(DigestMismatchError, match="manifest"):
        pull(ref(fault_proxy.host, f"{repo}@{big_image.manifest.digest}"), store, options=opts)
    assert store.list_refs() == []


# ---- push --------------------------------------------------------------------------------------


def _stored(
    proxy: FaultProxy, repo: RepoNamer, image: BuiltImage, store: Store, opts: RegistryOptions
) -> str:
    name = seeded(proxy, repo, image)
    pull(ref(proxy.host, f"{name}:1"), store, options=opts)
    BlobSources(store).path.unlink()  # no mount sources: the pushes below must upload
    proxy.clear_log()
    return f"{proxy.host}/{name}:1"


class ArmAfter:
    """A progress sink that arms a proxy fault once `digest` has `after` bytes uploaded, so the
    fault hits a chunk in the middle of the blob (faults cannot tell chunks apart by URL)."""

    def __init__(self, digest: str, after: int, arm: Callable[[], object]) -> None:
        self.digest, self.after, self.arm = digest, after, arm
        self.moved = 0
        self.armed = False
        self.final: dict[str, str] = {}

    def start(self, id: str, label: str, total: int | None) -> None:
        pass

    def advance(self, id: str, n: int) -> None:
        if id != self.digest:
            return
        self.moved += n
        if not self.armed and self.moved >= self.after:
            self.armed = True
            self.arm()

    def done(self, id: str, status: str) -> None:
        self.final[id] = status


CHUNK = 128 * 1024


def _uploads(proxy: FaultProxy) -> tuple[list[LoggedRequest], list[LoggedRequest], list[LoggedRequest]]:
    log = proxy.log
    posts = [e for e in log if e.method == "POST" and "/blobs/uploads/" in e.path]
    checks = [e for e in log if e.method == "GET" and "/blobs/uploads/" in e.path]
    patches = [e for e in log if e.method == "PATCH"]
    return posts, checks, patches


def test_dropped_patch_resumes_at_the_registry_offset(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer, big_image: BuiltImage, store: Store, opts: RegistryOptions
) -> None:
    local = _stored(fault_proxy, fresh_repo, big_image, store, opts)
    layer = big_image.layers[0]
    # After two chunks went through, the third is cut after 1000 bytes and never reaches the
    # registry, which therefore still holds exactly two chunks and says so.
    sink = ArmAfter(
        layer.digest,
        2 * CHUNK,
        lambda: fault_proxy.drop_request("/blobs/uploads/", method="PATCH", after_bytes=1000),
    )
    dest = fresh_repo("dest")
    pushed = push(
        store,
        local,
        ref(fault_proxy.host, f"{dest}:1"),
        options=dataclasses.replace(opts, chunk_size=CHUNK),
        progress=sink,
    )
    posts, checks, patches = _uploads(fault_proxy)
    assert len(posts) == 2  # config and layer: the layer's upload was not restarted
    assert [c.status for c in checks] == [204]
    ranges = [p.headers.get("content-range") for p in patches]
    assert ranges[:4] == [
        f"0-{CHUNK - 1}",
        f"{CHUNK}-{2 * CHUNK - 1}",
        f"{2 * CHUNK}-{3 * CHUNK - 1}",
        f"{2 * CHUNK}-{3 * CHUNK - 1}",
    ]
    assert patches[2].fault == "drop_request" and patches[3].status == 202
    assert sink.final[layer.digest] == "pushed"
    assert skopeo_raw_manifest(fault_proxy.host, f"{dest}:1") == big_image.manifest_bytes
    assert skopeo_digest(fault_proxy.host, f"{dest}@{pushed.digest}") == pushed.digest


def test_partially_received_patch_restarts_the_upload(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer, big_image: BuiltImage, store: Store, opts: RegistryOptions
) -> None:
    local = _stored(fault_proxy, fresh_repo, big_image, store, opts)
    layer = big_image.layers[0]
    # This time 1000 bytes of the chunk do reach the registry; distribution then invalidates the
    # upload (its state token no longer matches), so kiln must start the blob over.
    sink = ArmAfter(
        layer.digest,
        CHUNK,
        lambda: fault_proxy.drop_request(
            "/blobs/uploads/", method="PATCH", after_bytes=1000, forward_partial=True
        ),
    )
    dest = fresh_repo("dest")
    pushed = push(
        store,
        local,
        ref(fault_proxy.host, f"{dest}:1"),
        options=dataclasses.replace(opts, chunk_size=CHUNK),
        progress=sink,
    )
    posts, checks, patches = _uploads(fault_proxy)
    assert patches[1].fault == "drop_request"
    assert checks, "kiln asked the registry where the upload stands"
    if checks[0].status == 404:
        # distribution took the partial bytes and invalidated the upload: the blob starts over
        assert len(posts) == 3  # config, layer, layer again
        assert patches[2].headers.get("content-range") == f"0-{CHUNK - 1}"
    else:
        # the registry had not taken any of the partial chunk yet: the upload goes on where it stood
        assert len(posts) == 2
        assert patches[2].headers.get("content-range") == f"{CHUNK}-{2 * CHUNK - 1}"
    assert skopeo_digest(fault_proxy.host, f"{dest}:1") == pushed.digest == big_image.manifest.digest
    layout_blob = skopeo_blob(fault_proxy, dest, layer.digest)
    assert layout_blob == big_image.blob_path(layer.digest).read_bytes()


def test_dropped_monolithic_put_is_retried(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer, big_image: BuiltImage, store: Store, opts: RegistryOptions
) -> None:
    local = _stored(fault_proxy, fresh_repo, big_image, store, opts)
    fault_proxy.drop_request(r"/blobs/uploads/.*digest=", method="PUT", after_bytes=5000)
    dest = fresh_repo("dest")
    pushed = push(store, local, ref(fault_proxy.host, f"{dest}:1"), options=opts)
    puts = [e for e in fault_proxy.log if e.method == "PUT" and "/blobs/uploads/" in e.path]
    assert puts[0].fault == "drop_request" and len(puts) == 3  # the dropped one, its retry, the other blob
    assert skopeo_digest(fault_proxy.host, f"{dest}:1") == pushed.digest


# ---- copy --------------------------------------------------------------------------------------


def test_copy_resumes_a_dropped_source_stream(
    fault_proxy: FaultProxy,
    registry: Registry,
    fresh_repo: RepoNamer,
    big_image: BuiltImage,
    opts: RegistryOptions,
) -> None:
    repo = seeded(fault_proxy, fresh_repo, big_image)
    fault_proxy.drop_response(layer_path(big_image), method="GET", after_bytes=100_000)
    dest = fresh_repo("dest")
    # Different registry names (proxy vs registry): no mount, the bytes really stream through kiln.
    desc = copy(ref(fault_proxy.host, f"{repo}:1"), ref(registry.host, f"{dest}:1"), options=opts)
    gets = fault_proxy.requests("GET", layer_path(big_image))
    assert [g.fault for g in gets] == ["drop_response", None]
    assert gets[1].headers.get("range") == "bytes=100000-"
    assert skopeo_digest(registry.host, f"{dest}:1") == desc.digest == big_image.manifest.digest


def test_copy_refuses_a_corrupted_source_blob(
    fault_proxy: FaultProxy,
    registry: Registry,
    fresh_repo: RepoNamer,
    big_image: BuiltImage,
    opts: RegistryOptions,
) -> None:
    repo = seeded(fault_proxy, fresh_repo, big_image)
    fault_proxy.corrupt_response(layer_path(big_image), method="GET", offset=7)
    dest = fresh_repo("dest")
    with pytest.raises(DigestMismatchError, match=big_image.layers[0].digest):
        copy(ref(fault_proxy.host, f"{repo}:1"), ref(registry.host, f"{dest}:1"), options=opts)
    r = httpx.head(f"{registry.url}/v2/{dest}/blobs/{big_image.layers[0].digest}")
    assert r.status_code == 404
    r = httpx.head(f"{registry.url}/v2/{dest}/manifests/1")
    assert r.status_code == 404


def skopeo_blob(proxy: FaultProxy, repo: str, digest: str) -> bytes:
    r = httpx.get(f"{proxy.url}/v2/{repo}/blobs/{digest}", follow_redirects=True)
    r.raise_for_status()
    assert Digest.of(r.content) == digest
    return r.content
