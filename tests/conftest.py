"""Shared pytest fixtures: real registries, a fault proxy, test images.

Usage (all registries are real `docker-registry` processes on 127.0.0.1, started lazily once per
session and stopped by PID at the end; use `fresh_repo()` so tests never share a repository):

    def test_push(registry, fresh_repo, busybox_image):
        repo = fresh_repo()                                   # "t/test-push-1a2b3c4d"
        push_with_skopeo(busybox_image.layout, registry, f"{repo}:v1")
        httpx.get(f"{registry.url}/v2/{repo}/manifests/v1", headers=...)

    def test_auth(auth_registry):          # htpasswd Basic: auth_registry.credentials == (user, pw)
    def test_token(token_registry):        # Bearer: token_registry.token_server (realm, issued, ...)
    def test_https(tls_registry):          # HTTPS, trust tls_registry.ca_file / cert_dir
    def test_retry(fault_proxy):           # proxy in front of `registry`: fault_proxy.fail(...)
    def test_x(fault_proxy_factory, auth_registry):
        proxy = fault_proxy_factory(auth_registry)          # proxy in front of any registry

Registries are shared by the whole session: do not delete other tests' repositories, and restore
token server settings (`with token_registry.token_server.configured(expires_in=2): ...`).
The rootless fixtures of tests/fixtures/rootless.py are re-exported here when that module exists.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.images import BuiltImage, make_busybox_oci_layout
from tests.fixtures.registry import Registry, RepoNamer

try:
    from tests.fixtures.rootless import *  # type: ignore[import-not-found,unused-ignore]  # noqa: F403
except ModuleNotFoundError as exc:  # only "the module is not written yet" is tolerated
    if exc.name != "tests.fixtures.rootless":
        raise


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Plain HTTP registry, no auth."""
    with Registry.plain(tmp_path_factory.mktemp("registry-plain")) as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """HTTP registry with htpasswd (Basic) auth; `credentials` is (username, password)."""
    with Registry.htpasswd(tmp_path_factory.mktemp("registry-htpasswd")) as reg:
        yield reg


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """HTTP registry with Bearer token auth backed by `token_registry.token_server`."""
    with Registry.token(tmp_path_factory.mktemp("registry-token")) as reg:
        yield reg


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """HTTPS registry (no auth) whose certificate is signed by the CA in `ca_file`."""
    with Registry.plain(tmp_path_factory.mktemp("registry-tls"), tls=True) as reg:
        yield reg


@pytest.fixture
def fault_proxy_factory() -> Iterator[Callable[[Registry], FaultProxy]]:
    """Start a FaultProxy in front of a given registry; all are stopped after the test."""
    proxies: list[FaultProxy] = []

    def start(upstream: Registry) -> FaultProxy:
        proxy = FaultProxy(upstream.url, ca_file=upstream.ca_file).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def fault_proxy(registry: Registry, fault_proxy_factory: Callable[[Registry], FaultProxy]) -> FaultProxy:
    """A FaultProxy in front of the plain `registry`, fresh for each test (no faults, empty log)."""
    return fault_proxy_factory(registry)


@pytest.fixture
def fresh_repo(request: pytest.FixtureRequest) -> RepoNamer:
    """Call it to get a repository name no other test uses: fresh_repo() or fresh_repo("src")."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-") or "test"
    counter = itertools.count()

    def make(suffix: str = "") -> str:
        tail = re.sub(r"[^a-z0-9]+", "-", suffix.lower()).strip("-")
        name = f"t/{base}-{uuid.uuid4().hex[:8]}{next(counter)}"
        return f"{name}-{tail}" if tail else name

    return make


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """A read-only OCI layout (tag "latest") with one busybox-static layer; do not modify it."""
    return make_busybox_oci_layout(tmp_path_factory.mktemp("busybox-layout"))
