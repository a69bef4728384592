"""Identity tokens (``identitytoken`` in config.json, ``<token>`` from a helper): the OAuth2
refresh-token grant, POSTed to the realm, against a registry that verifies the tokens it yields.

The shared token server only speaks the GET flow, so this module runs its own registry with a
token server that also answers the POST grant (same signing key, same policy).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs

import pytest

from kiln.errors import AuthError
from kiln.oci.store import Store
from kiln.registry.options import RegistryOptions
from kiln.registry.transfer import pull
from tests.fixtures import tokenserver
from tests.fixtures.images import BuiltImage, push_with_skopeo
from tests.fixtures.registry import Registry, RepoNamer
from tests.registry.conftest import ref


class _OAuthHandler(tokenserver._Handler):
    def do_POST(self) -> None:
        owner = cast(OAuthTokenServer, cast(tokenserver._HTTPServer, self.server).owner)
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode())
        scopes = [s for raw in form.get("scope", []) for s in raw.split()]
        owner.posts.append({k: v[0] for k, v in form.items() if k != "refresh_token"})
        user = owner.refresh_tokens.get(form.get("refresh_token", [""])[0])
        if form.get("grant_type") != ["refresh_token"] or user is None:
            self._send_json(401, {"error": "invalid_grant"})
            return
        token = owner.make_token(owner.grant(user, scopes), subject=user)
        self._send_json(
            200, {"access_token": token, "expires_in": owner.expires_in, "scope": " ".join(scopes)}
        )


@dataclass
class OAuthTokenServer(tokenserver.TokenServer):
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # refresh token -> user
    posts: list[dict[str, str]] = field(default_factory=list)

    def start(self) -> OAuthTokenServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_file.write_bytes(self.key.cert_pem)
        server = tokenserver._HTTPServer(("127.0.0.1", 0), _OAuthHandler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self


@pytest.fixture(scope="module")
def oauth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, OAuthTokenServer]]:
    workdir = tmp_path_factory.mktemp("registry-oauth")
    ts = OAuthTokenServer(workdir / "token").start()
    try:
        with Registry.token(workdir, token_server=ts) as reg:
            yield reg, ts
    finally:
        ts.stop()


def test_identity_token_uses_the_refresh_token_grant(
    oauth_registry: tuple[Registry, OAuthTokenServer],
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    store: Store,
    opts: RegistryOptions,
    tmp_path: Path,
) -> None:
    reg, ts = oauth_registry
    assert reg.credentials is not None
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, reg, f"{repo}:1", reg.credentials)
    refresh = "refresh-" + secrets.token_hex(8)
    ts.refresh_tokens[refresh] = reg.credentials[0]
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {reg.host: {"identitytoken": refresh}}}))
    gets_before = len(ts.requests)
    desc = pull(ref(reg.host, f"{repo}:1"), store, options=RegistryOptions(auth_file=auth, backoff_base=0.05))
    assert desc.digest == busybox_image.manifest.digest
    assert ts.posts[-1] == {
        "grant_type": "refresh_token",
        "client_id": "kiln",
        "scope": f"repository:{repo}:pull",
        "service": ts.service,
    }
    assert len(ts.requests) == gets_before  # no GET token request: the POST grant was used

    auth.write_text(json.dumps({"auths": {reg.host: {"identitytoken": "revoked-" + refresh}}}))
    with pytest.raises(AuthError) as err:
        pull(ref(reg.host, f"{repo}:1"), store, options=RegistryOptions(auth_file=auth, backoff_base=0.05))
    assert "refused" in str(err.value) and refresh not in str(err.value)
