"""The test fixtures, proven against the real registry, skopeo and umoci."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.images import (
    MEDIA_MANIFEST,
    BuiltImage,
    make_busybox_oci_layout,
    pull_with_skopeo,
    push_with_skopeo,
    random_layers_image,
)
from tests.fixtures.registry import Registry, RepoNamer
from tests.fixtures.tokenserver import TokenServer, libtrust_key_id

ACCEPT = {"Accept": MEDIA_MANIFEST}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    for part in rest.split('",'):
        key, _, value = part.strip().partition("=")
        params[key] = value.strip('"')
    return scheme, params


def get_token(ts: TokenServer, scopes: list[str], auth: tuple[str, str] | None) -> str:
    resp = httpx.get(ts.realm, params={"service": ts.service, "scope": scopes}, auth=auth)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_digest(location: str, data: bytes) -> str:
    """Add ?digest= to an upload URL, keeping its own query (httpx's params= would replace it)."""
    return location + ("&" if "?" in location else "?") + "digest=" + sha256(data)


def upload_blob(
    base_url: str, repo: str, data: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    """Monolithic POST + PUT upload; returns the PUT response."""
    with httpx.Client(base_url=base_url, headers=headers or {}) as client:
        start = client.post(f"/v2/{repo}/blobs/uploads/")
        if start.status_code != 202:
            return start
        return client.put(with_digest(start.headers["Location"], data), content=data)


# ---- images -------------------------------------------------------------------------------


def test_busybox_layout_is_deterministic_and_unpacks_with_umoci(tmp_path: Path) -> None:
    first = make_busybox_oci_layout(tmp_path / "a")
    second = make_busybox_oci_layout(tmp_path / "b")
    assert first.manifest.digest == second.manifest.digest
    for blob in (first.manifest, first.config, *first.layers):
        assert sha256(first.blob_path(blob.digest).read_bytes()) == blob.digest
    args = ["umoci", "unpack", "--image", f"{first.layout}:latest", str(tmp_path / "bundle")]
    if os.geteuid() != 0:
        args.insert(2, "--rootless")
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    rootfs = tmp_path / "bundle" / "rootfs"
    assert os.access(rootfs / "bin" / "busybox", os.X_OK)
    assert os.readlink(rootfs / "bin" / "sh") == "/bin/busybox"


def test_random_layers_image_has_distinct_sized_layers(tmp_path: Path) -> None:
    img = random_layers_image(tmp_path / "l", n_layers=3, layer_size=50_000, seed=1)
    other = random_layers_image(tmp_path / "m", n_layers=1, layer_size=50_000, seed=2)
    assert len({d.digest for d in img.layers}) == 3
    assert other.layers[0].digest not in {d.digest for d in img.layers}
    assert all(d.size > 50_000 for d in img.layers)  # random bytes do not compress
    assert json.loads(img.config_bytes)["rootfs"]["diff_ids"] == list(img.diff_ids)


# ---- plain registry -----------------------------------------------------------------------


def test_plain_registry_push_with_skopeo_and_get_manifest(
    registry: Registry, fresh_repo: RepoNamer, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, registry, f"{repo}:v1")
    resp = httpx.get(f"{registry.url}/v2/{repo}/manifests/v1", headers=ACCEPT)
    assert resp.status_code == 200
    assert resp.headers["Docker-Content-Digest"] == busybox_image.manifest.digest
    assert resp.content == busybox_image.manifest_bytes
    layer = busybox_image.layers[0]
    blob = httpx.get(f"{registry.url}/v2/{repo}/blobs/{layer.digest}")
    assert sha256(blob.content) == layer.digest
    pull_with_skopeo(registry, f"{repo}:v1", tmp_path / "pulled")
    assert (tmp_path / "pulled" / "blobs" / "sha256" / layer.digest.split(":")[1]).exists()


def test_fresh_repo_names_are_unique_and_valid(fresh_repo: RepoNamer) -> None:
    names = {fresh_repo(), fresh_repo(), fresh_repo("Source Repo")}
    assert len(names) == 3
    for name in names:
        assert name == name.lower() and " " not in name and name.startswith("t/")


def test_registry_is_stopped_by_pid(tmp_path: Path) -> None:
    reg = Registry.plain(tmp_path).start()
    pid, url = reg.pid, reg.url
    assert pid is not None and httpx.get(f"{url}/v2/").status_code == 200
    reg.stop()
    assert reg.pid is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_config_overrides_deliver_push_notifications(tmp_path: Path, busybox_image: BuiltImage) -> None:
    events: list[dict[str, Any]] = []
    received = threading.Event()

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            events.extend(json.loads(body)["events"])
            received.set()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint: dict[str, Any] = {"name": "t", "url": f"http://127.0.0.1:{sink.server_address[1]}/events"}
    endpoint |= {"timeout": "2s", "threshold": 1, "backoff": "100ms"}
    try:
        with Registry.plain(tmp_path, config_overrides={"notifications": {"endpoints": [endpoint]}}) as reg:
            push_with_skopeo(busybox_image.layout, reg, "notify/me:v1")
            assert received.wait(timeout=60)
    finally:
        sink.shutdown()
        sink.server_close()
    assert any(e["action"] == "push" and e["target"]["repository"] == "notify/me" for e in events)


# ---- htpasswd -----------------------------------------------------------------------------


def test_htpasswd_registry_requires_credentials(
    auth_registry: Registry, fresh_repo: RepoNamer, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    anonymous = httpx.get(f"{auth_registry.url}/v2/")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")
    assert auth_registry.credentials is not None
    user, password = auth_registry.credentials
    assert httpx.get(f"{auth_registry.url}/v2/", auth=(user, password + "x")).status_code == 401
    assert httpx.get(f"{auth_registry.url}/v2/", auth=(user, password)).status_code == 200
    assert httpx.get(f"{auth_registry.url}/v2/", headers=auth_registry.basic_auth_header()).status_code == 200

    repo = fresh_repo()
    with pytest.raises(RuntimeError):
        push_with_skopeo(busybox_image.layout, auth_registry, f"{repo}:v1")
    config = auth_registry.write_docker_config(tmp_path / "docker")
    stored = json.loads(config.read_text())["auths"][auth_registry.host]["auth"]
    assert base64.b64decode(stored).decode() == f"{user}:{password}"
    subprocess.run(
        [
            *("skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", f"--dest-authfile={config}"),
            *(f"oci:{busybox_image.layout}:latest", f"docker://{auth_registry.host}/{repo}:v1"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    resp = httpx.get(f"{auth_registry.url}/v2/{repo}/manifests/v1", headers=ACCEPT, auth=(user, password))
    assert resp.headers["Docker-Content-Digest"] == busybox_image.manifest.digest


def test_docker_config_merges_entries(auth_registry: Registry, tmp_path: Path) -> None:
    auth_registry.write_docker_config(tmp_path)
    path = auth_registry.write_docker_config(tmp_path, host="127.0.0.1:1")
    assert set(json.loads(path.read_text())["auths"]) == {auth_registry.host, "127.0.0.1:1"}


# ---- token auth ---------------------------------------------------------------------------


def test_token_key_id_is_libtrust_format(token_registry: Registry) -> None:
    ts = token_registry.token_server
    assert ts is not None
    kid = libtrust_key_id(ts.key.private_key.public_key())
    groups = kid.split(":")
    assert len(groups) == 12 and all(len(g) == 4 for g in groups)


def test_token_registry_challenge_and_scoped_tokens(token_registry: Registry, fresh_repo: RepoNamer) -> None:
    ts = token_registry.token_server
    assert ts is not None and token_registry.credentials is not None
    url = token_registry.url
    anonymous = httpx.get(f"{url}/v2/")
    assert anonymous.status_code == 401
    scheme, params = parse_challenge(anonymous.headers["WWW-Authenticate"])
    assert scheme == "Bearer" and params["realm"] == ts.realm and params["service"] == ts.service

    repo, other = fresh_repo(), fresh_repo()
    issued_before = ts.issued
    push_token = get_token(ts, [f"repository:{repo}:pull,push"], token_registry.credentials)
    assert ts.issued == issued_before + 1
    assert httpx.get(f"{url}/v2/", headers=bearer(push_token)).status_code == 200
    assert upload_blob(url, repo, b"hello", bearer(push_token)).status_code == 201
    assert (
        httpx.get(f"{url}/v2/{repo}/blobs/{sha256(b'hello')}", headers=bearer(push_token)).content == b"hello"
    )

    # The registry, not the token server, refuses a token for another repository or action.
    wrong_repo = upload_blob(url, other, b"hello", bearer(push_token))
    assert wrong_repo.status_code == 401
    assert 'error="insufficient_scope"' in wrong_repo.headers["WWW-Authenticate"]
    pull_token = get_token(ts, [f"repository:{repo}:pull"], token_registry.credentials)
    assert upload_blob(url, repo, b"again", bearer(pull_token)).status_code == 401
    assert (
        httpx.get(f"{url}/v2/{repo}/blobs/{sha256(b'hello')}", headers=bearer(pull_token)).status_code == 200
    )


def test_token_server_rejects_bad_credentials_and_forged_tokens(token_registry: Registry) -> None:
    ts = token_registry.token_server
    assert ts is not None and token_registry.credentials is not None
    user = token_registry.credentials[0]
    resp = httpx.get(
        ts.realm, params={"service": ts.service, "scope": "repository:a:pull"}, auth=(user, "nope")
    )
    assert resp.status_code == 401 and "token" not in resp.text
    wrong_audience = ts.make_token([("repository", "a", ["pull"])], audience="someone-else")
    assert httpx.get(f"{token_registry.url}/v2/", headers=bearer(wrong_audience)).status_code == 401
    wrong_issuer = ts.make_token([], issuer="mallory")
    assert httpx.get(f"{token_registry.url}/v2/", headers=bearer(wrong_issuer)).status_code == 401
    foreign = TokenServer(Path("/nonexistent"), service=ts.service, issuer=ts.issuer).make_token([])
    assert httpx.get(f"{token_registry.url}/v2/", headers=bearer(foreign)).status_code == 401


def test_token_expiry_is_enforced_by_registry(token_registry: Registry) -> None:
    ts = token_registry.token_server
    assert ts is not None and token_registry.credentials is not None
    with ts.configured(expires_in=1):
        resp = httpx.get(ts.realm, params={"service": ts.service}, auth=token_registry.credentials)
        assert resp.json()["expires_in"] == 1
    time.sleep(2.5)  # the token is now past its lifetime; the registry must say so
    assert httpx.get(f"{token_registry.url}/v2/", headers=bearer(resp.json()["token"])).status_code == 401
    assert ts.expires_in == 300  # restored


def test_token_anonymous_pull_pattern_and_readonly_user(
    token_registry: Registry, fresh_repo: RepoNamer, busybox_image: BuiltImage
) -> None:
    ts = token_registry.token_server
    assert ts is not None and token_registry.credentials is not None
    public = fresh_repo("public")
    push_with_skopeo(busybox_image.layout, token_registry, f"{public}:v1", token_registry.credentials)
    manifest_url = f"{token_registry.url}/v2/{public}/manifests/v1"
    denied = get_token(ts, [f"repository:{public}:pull"], None)
    assert httpx.get(manifest_url, headers={**ACCEPT, **bearer(denied)}).status_code == 401
    with ts.configured(anonymous_pull="t/*-public"):
        allowed = get_token(ts, [f"repository:{public}:pull,push"], None)
    assert httpx.get(manifest_url, headers={**ACCEPT, **bearer(allowed)}).status_code == 200
    assert upload_blob(token_registry.url, public, b"x", bearer(allowed)).status_code == 401

    ts.add_user("reader", "reader-pw", readonly=True)
    reader = get_token(ts, [f"repository:{public}:pull,push"], ("reader", "reader-pw"))
    assert httpx.get(manifest_url, headers={**ACCEPT, **bearer(reader)}).status_code == 200
    assert upload_blob(token_registry.url, public, b"x", bearer(reader)).status_code == 401
    assert ts.requests[-1].granted == (("repository", public, ("pull",)),)


def test_token_server_injected_failure(token_registry: Registry) -> None:
    ts = token_registry.token_server
    assert ts is not None
    ts.fail(times=1, status=503)
    assert httpx.get(ts.realm, auth=token_registry.credentials).status_code == 503
    assert httpx.get(ts.realm, auth=token_registry.credentials).status_code == 200


# ---- TLS ----------------------------------------------------------------------------------


def test_tls_registry_is_trusted_only_with_its_ca(
    tls_registry: Registry, fresh_repo: RepoNamer, busybox_image: BuiltImage
) -> None:
    ctx = tls_registry.ssl_context()
    assert tls_registry.url.startswith("https://") and ctx is not None
    assert httpx.get(f"{tls_registry.url}/v2/", verify=ctx).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_registry.url}/v2/", verify=ssl.create_default_context())
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, tls_registry, f"{repo}:v1")  # verified via cert_dir
    resp = httpx.get(f"{tls_registry.url}/v2/{repo}/manifests/v1", headers=ACCEPT, verify=ctx)
    assert resp.headers["Docker-Content-Digest"] == busybox_image.manifest.digest


# ---- fault proxy --------------------------------------------------------------------------


@pytest.fixture
def pushed(registry: Registry, fresh_repo: RepoNamer, tmp_path: Path) -> Iterator[tuple[str, BuiltImage]]:
    """A repository holding a 200 kB single-layer image, pushed directly (not via a proxy)."""
    repo = fresh_repo()
    img = random_layers_image(tmp_path / "img", 1, 200_000, seed=zlib.crc32(repo.encode()))
    push_with_skopeo(img.layout, registry, f"{repo}:latest")
    yield repo, img


def test_proxy_passthrough_with_skopeo_logs_and_rewrites_location(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, fault_proxy, f"{repo}:v1")
    assert fault_proxy.requests("PUT", rf"/v2/{repo}/manifests/v1$")[0].status == 201
    assert fault_proxy.requests("HEAD", r"/blobs/sha256:")  # skopeo checks before uploading
    fault_proxy.clear_log()
    push_with_skopeo(busybox_image.layout, fault_proxy, f"{repo}:v2")
    assert not fault_proxy.requests("PATCH") and not fault_proxy.requests("POST")  # all blobs existed
    pull_with_skopeo(fault_proxy, f"{repo}:v1", tmp_path / "pulled")
    start = httpx.post(f"{fault_proxy.url}/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202 and start.headers["Location"].startswith(fault_proxy.url + "/v2/")


def test_proxy_keeps_client_connections_alive_and_forwards_chunked_bodies(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer
) -> None:
    repo, data = fresh_repo(), os.urandom(300_000)

    def body() -> Iterator[bytes]:
        yield data[:100_000]
        yield data[100_000:]

    with httpx.Client(base_url=fault_proxy.url) as client:
        start = client.post(f"/v2/{repo}/blobs/uploads/")
        patched = client.patch(start.headers["Location"], content=body())  # no length: chunked
        assert patched.status_code == 202 and patched.headers["Range"] == f"0-{len(data) - 1}"
        done = client.put(with_digest(patched.headers["Location"], data))
        assert done.status_code == 201
        assert client.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data
    assert fault_proxy.requests("PATCH")[0].headers["transfer-encoding"] == "chunked"
    assert len({e.connection for e in fault_proxy.requests()}) == 1


def test_proxy_fail_returns_status_for_k_requests(fault_proxy: FaultProxy) -> None:
    fault = fault_proxy.fail(r"^/v2/$", method="GET", status=503, retry_after=7, times=2)
    with httpx.Client(base_url=fault_proxy.url) as client:
        first, second, third = (client.get("/v2/") for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 200)
    assert first.headers["Retry-After"] == "7" and first.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert fault.hits == 2 and fault.remaining == 0
    assert [e.fault for e in fault_proxy.requests("GET")] == ["fail", "fail", None]


def test_proxy_drop_response_cuts_blob_body(fault_proxy: FaultProxy, pushed: tuple[str, BuiltImage]) -> None:
    repo, img = pushed
    layer = img.layers[0]
    fault_proxy.drop_response(r"/blobs/", method="GET", after_bytes=1000)
    url = f"{fault_proxy.url}/v2/{repo}/blobs/{layer.digest}"
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url)
    cut = fault_proxy.requests("GET")[0]
    assert (cut.fault, cut.status, cut.response_bytes) == ("drop_response", 200, 1000)
    assert sha256(httpx.get(url).content) == layer.digest  # disarmed after one


def test_proxy_drop_response_without_headers_after_upstream_processed(
    fault_proxy: FaultProxy, registry: Registry, fresh_repo: RepoNamer
) -> None:
    repo = fresh_repo()
    fault_proxy.drop_response(r"/blobs/uploads/.*digest=", method="PUT", send_headers=False)
    with pytest.raises(httpx.RemoteProtocolError):
        upload_blob(fault_proxy.url, repo, b"committed")
    assert httpx.head(f"{registry.url}/v2/{repo}/blobs/{sha256(b'committed')}").status_code == 200
    assert fault_proxy.requests("PUT")[0].status is None


def test_proxy_corrupt_response_flips_one_byte(
    fault_proxy: FaultProxy, pushed: tuple[str, BuiltImage]
) -> None:
    repo, img = pushed
    layer = img.layers[0]
    good = img.blob_path(layer.digest).read_bytes()
    fault_proxy.corrupt_response(r"/blobs/sha256:", method="GET", offset=70_000)
    bad = httpx.get(f"{fault_proxy.url}/v2/{repo}/blobs/{layer.digest}")
    assert bad.status_code == 200 and len(bad.content) == len(good) == int(bad.headers["Content-Length"])
    assert [i for i in range(len(good)) if good[i] != bad.content[i]] == [70_000]


def test_proxy_drop_request_cuts_upload_and_leaves_session_intact(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer
) -> None:
    repo, data = fresh_repo(), os.urandom(100_000)
    fault_proxy.drop_request(r"/blobs/uploads/", method="PATCH", after_bytes=10_000)
    with httpx.Client(base_url=fault_proxy.url) as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        with pytest.raises(httpx.TransportError):
            client.patch(location, content=data)
        # Nothing was forwarded, so the session is still at offset 0: a full PATCH then PUT
        # commits exactly `data` (a forwarded prefix would make the digest check fail).
        patched = client.patch(location, content=data)
        assert patched.status_code == 202
        done = client.put(with_digest(patched.headers["Location"], data))
    assert done.status_code == 201
    dropped = fault_proxy.requests("PATCH")[0]
    assert (dropped.fault, dropped.status, dropped.request_bytes) == ("drop_request", None, 10_000)


def test_proxy_drop_request_forward_partial_reaches_registry(
    fault_proxy: FaultProxy, fresh_repo: RepoNamer
) -> None:
    repo = fresh_repo()
    fault_proxy.drop_request(r"/blobs/uploads/", method="PATCH", after_bytes=1000, forward_partial=True)
    with httpx.Client(base_url=fault_proxy.url) as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        with pytest.raises(httpx.TransportError):
            client.patch(location, content=os.urandom(10_000))
        # The prefix reached distribution 2.8, which then no longer resumes this session (its
        # offset moved under the client): the client must restart. Without forwarding, the
        # session would stay valid (204) forever and this wait would time out.
        deadline = time.monotonic() + 60
        while (status := client.get(location).status_code) == 204 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 404


def test_proxy_in_front_of_token_registry(
    fault_proxy_factory: Callable[[Registry], FaultProxy],
    token_registry: Registry,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
) -> None:
    proxy = fault_proxy_factory(token_registry)
    proxy.fail(r"/manifests/", method="PUT", status=500, times=1)
    repo = fresh_repo()
    # skopeo's push fails on the injected 500, then succeeds once the fault is used up.
    with pytest.raises(RuntimeError):
        push_with_skopeo(busybox_image.layout, proxy, f"{repo}:v1", token_registry.credentials)
    push_with_skopeo(busybox_image.layout, proxy, f"{repo}:v1", token_registry.credentials)
    assert [e.status for e in proxy.requests("PUT", "/manifests/")] == [500, 201]
