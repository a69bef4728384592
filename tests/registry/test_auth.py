"""Basic (htpasswd) and Bearer (token server) registries: credentials, scopes, refresh, no leaks."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.errors import AuthError
from kiln.oci.store import Store
from kiln.registry.client import Session
from kiln.registry.options import RegistryOptions
from kiln.registry.transfer import copy, pull, push
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.images import BuiltImage, push_with_skopeo
from tests.fixtures.registry import Registry, RepoNamer
from tests.registry.conftest import ref, skopeo_digest, with_auth_file


def secrets_absent(text: str, user: str, *passwords: str) -> None:
    """No password, no Basic credential (base64 of user:password) and nothing JWT-like in `text`."""
    for pw in passwords:
        assert pw not in text, "a password leaked"
        assert base64.b64encode(f"{user}:{pw}".encode()).decode() not in text, "a Basic credential leaked"
    assert "eyJ" not in text, "something that looks like a JWT leaked"


# ---- htpasswd (Basic) -------------------------------------------------------------------------


def test_basic_auth_pull_push(
    auth_registry: Registry,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    store: Store,
    opts: RegistryOptions,
    tmp_path: Path,
) -> None:
    creds = auth_registry.credentials
    assert creds is not None
    repo, dest = fresh_repo(), fresh_repo("dest")
    push_with_skopeo(busybox_image.layout, auth_registry, f"{repo}:1", creds)
    options = with_auth_file(opts, tmp_path, {auth_registry.host: creds})
    desc = pull(ref(auth_registry.host, f"{repo}:1"), store, options=options)
    assert desc.digest == busybox_image.manifest.digest
    pushed = push(store, desc.digest, ref(auth_registry.host, f"{dest}:2"), options=options)
    assert skopeo_digest(auth_registry.host, f"{dest}:2", creds) == pushed.digest == desc.digest


def test_basic_auth_via_docker_config_dir(
    auth_registry: Registry,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creds = auth_registry.credentials
    assert creds is not None
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, auth_registry, f"{repo}:1", creds)
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    auth_registry.write_docker_config(tmp_path / "docker")
    options = RegistryOptions(docker_config=tmp_path / "docker", backoff_base=0.05)
    assert (
        pull(ref(auth_registry.host, f"{repo}:1"), store, options=options).digest
        == busybox_image.manifest.digest
    )


def test_basic_auth_failures_are_clear_and_leak_nothing(
    auth_registry: Registry,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    store: Store,
    opts: RegistryOptions,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    creds = auth_registry.credentials
    assert creds is not None
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, auth_registry, f"{repo}:1", creds)
    r = ref(auth_registry.host, f"{repo}:1")
    with pytest.raises(AuthError, match="no credentials were found"):
        pull(r, store, options=opts)
    wrong_password = "wrong-" + creds[1]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthError) as err:
        pull(
            r, store, options=with_auth_file(opts, tmp_path, {auth_registry.host: (creds[0], wrong_password)})
        )
    message = str(err.value)
    assert message.startswith(f"{r}: UNAUTHORIZED")
    assert "\n" not in message
    secrets_absent(message + repr(err.value) + caplog.text, creds[0], wrong_password, creds[1])
    assert store.list_refs() == []


# ---- token (Bearer) ---------------------------------------------------------------------------


@pytest.fixture
def token_proxy(
    token_registry: Registry, fault_proxy_factory: Callable[[Registry], FaultProxy]
) -> FaultProxy:
    return fault_proxy_factory(token_registry)


def test_token_pull_push_and_mount_scopes(
    token_registry: Registry,
    token_proxy: FaultProxy,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    store: Store,
    opts: RegistryOptions,
    tmp_path: Path,
) -> None:
    creds = token_registry.credentials
    ts = token_registry.token_server
    assert creds is not None and ts is not None
    src, dest = fresh_repo("src"), fresh_repo("dest")
    push_with_skopeo(busybox_image.layout, token_registry, f"{src}:1", creds)
    options = with_auth_file(opts, tmp_path, {token_proxy.host: creds})
    before = len(ts.requests)
    pull(ref(token_proxy.host, f"{src}:1"), store, options=options)
    pull_requests = ts.requests[before:]
    assert [r.scopes for r in pull_requests] == [(f"repository:{src}:pull",)]
    assert pull_requests[0].user == creds[0]

    before = len(ts.requests)
    token_proxy.clear_log()
    pushed = push(store, f"{token_proxy.host}/{src}:1", ref(token_proxy.host, f"{dest}:1"), options=options)
    [push_request] = ts.requests[before:]
    assert set(push_request.scopes) == {f"repository:{dest}:pull,push", f"repository:{src}:pull"}
    mounts = token_proxy.requests("POST", "mount=")
    assert mounts and all(m.status == 201 for m in mounts)
    assert skopeo_digest(token_registry.host, f"{dest}:1", creds) == pushed.digest


def test_token_anonymous_pull_and_refused_push(
    token_registry: Registry,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    store: Store,
    opts: RegistryOptions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    creds = token_registry.credentials
    ts = token_registry.token_server
    assert creds is not None and ts is not None
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, token_registry, f"{repo}:1", creds)
    with ts.configured(anonymous_pull="t/*"):
        desc = pull(ref(token_registry.host, f"{repo}:1"), store, options=opts)
        assert desc.digest == busybox_image.manifest.digest
        caplog.set_level(logging.DEBUG)
        with pytest.raises(AuthError) as err:
            push(store, desc.digest, ref(token_registry.host, f"{fresh_repo('no')}:1"), options=opts)
    assert "UNAUTHORIZED" in str(err.value)
    secrets_absent(str(err.value) + caplog.text, creds[0], creds[1])


def test_token_wrong_password(
    token_registry: Registry,
    fresh_repo: RepoNamer,
    store: Store,
    opts: RegistryOptions,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert token_registry.credentials is not None
    caplog.set_level(logging.DEBUG)
    bad = "not-the-password-xyz"
    options = with_auth_file(opts, tmp_path, {token_registry.host: (token_registry.credentials[0], bad)})
    with pytest.raises(AuthError) as err:
        pull(ref(token_registry.host, f"{fresh_repo()}:1"), store, options=options)
    assert "token server" in str(err.value) and "refused" in str(err.value)
    secrets_absent(str(err.value) + repr(err.value) + caplog.text, token_registry.credentials[0], bad)


def test_token_refreshed_once_on_401(
    token_registry: Registry,
    token_proxy: FaultProxy,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    opts: RegistryOptions,
    tmp_path: Path,
) -> None:
    creds = token_registry.credentials
    ts = token_registry.token_server
    assert creds is not None and ts is not None
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, token_registry, f"{repo}:1", creds)
    options = with_auth_file(opts, tmp_path, {token_proxy.host: creds})
    r = ref(token_proxy.host, f"{repo}:1")
    with Session(options) as session:
        client = session.client(r)
        assert client.head_manifest("1", str(r)) is not None
        issued = ts.issued
        # The registry stops accepting the cached token (revoked, or expired early): a token the
        # token server really signed, but already expired.
        stale = ts.make_token([("repository", repo, ["pull"])], expires_in=-5)
        for token in session.auth._tokens.values():
            token.value = stale
        token_proxy.clear_log()
        assert client.head_manifest("1", str(r)) is not None
        statuses = [e.status for e in token_proxy.requests("HEAD", "/manifests/")]
        assert statuses == [401, 200]
        assert ts.issued == issued + 1


def test_token_cache_and_expiry(
    token_registry: Registry,
    token_proxy: FaultProxy,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    opts: RegistryOptions,
    tmp_path: Path,
) -> None:
    creds = token_registry.credentials
    ts = token_registry.token_server
    assert creds is not None and ts is not None
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, token_registry, f"{repo}:1", creds)
    options = with_auth_file(opts, tmp_path, {token_proxy.host: creds})
    r = ref(token_proxy.host, f"{repo}:1")
    with ts.configured(expires_in=2), Session(options) as session:
        client = session.client(r)
        issued = ts.issued
        for _ in range(3):
            assert client.head_manifest("1", str(r)) is not None
        assert ts.issued == issued + 1  # cached for the same scopes
        time.sleep(2.5)
        token_proxy.clear_log()
        assert client.head_manifest("1", str(r)) is not None
        assert ts.issued == issued + 2  # renewed before use, not after a 401
        assert [e.status for e in token_proxy.requests("HEAD")] == [200]


def test_token_server_hiccup_is_retried(
    token_registry: Registry,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    store: Store,
    opts: RegistryOptions,
    tmp_path: Path,
) -> None:
    creds = token_registry.credentials
    ts = token_registry.token_server
    assert creds is not None and ts is not None
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, token_registry, f"{repo}:1", creds)
    ts.fail(2, status=503)
    options = with_auth_file(opts, tmp_path, {token_registry.host: creds})
    assert (
        pull(ref(token_registry.host, f"{repo}:1"), store, options=options).digest
        == busybox_image.manifest.digest
    )


def test_copy_between_basic_and_token_registries(
    auth_registry: Registry,
    token_registry: Registry,
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    opts: RegistryOptions,
    tmp_path: Path,
) -> None:
    a, t = auth_registry.credentials, token_registry.credentials
    assert a is not None and t is not None
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, auth_registry, f"{repo}:1", a)
    options = with_auth_file(opts, tmp_path, {auth_registry.host: a, token_registry.host: t})
    desc = copy(
        ref(auth_registry.host, f"{repo}:1"), ref(token_registry.host, f"{repo}:copied"), options=options
    )
    assert desc.digest == busybox_image.manifest.digest
    assert skopeo_digest(token_registry.host, f"{repo}:copied", t) == desc.digest
