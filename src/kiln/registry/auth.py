"""Registry authentication: anonymous, Basic, and the Bearer token flow.

A registry says how it wants to be addressed in the ``WWW-Authenticate`` header of a 401 (kiln
learns it by pinging ``/v2/`` once per registry). For Bearer, kiln asks the realm for a token
covering the operation's scopes (``repository:<name>:pull,push``, plus ``repository:<from>:pull``
for cross-repository mounts), with Basic credentials or an identity token (OAuth2 refresh-token
grant), and caches it per (registry, service, scopes) until shortly before ``expires_in``. A 401
on a request drops the cached token and gets a new one, once.

Tokens and passwords are held in objects whose repr hides them and never enter a message.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx

from kiln.errors import AuthError
from kiln.registry.challenge import Challenge, parse_all
from kiln.registry.credentials import Credential
from kiln.registry.options import RegistryOptions
from kiln.registry.transport import describe_transport_error, send

log = logging.getLogger(__name__)

#: Token lifetime when the server does not say (the token spec's default).
DEFAULT_EXPIRES_IN = 60
CLIENT_ID = "kiln"

CredentialSource = Callable[[str, str], Credential | None]


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions)}"


@dataclass
class _Token:
    value: str = field(repr=False)
    expires_at: float  # time.monotonic()

    def fresh(self) -> bool:
        return time.monotonic() < self.expires_at


def basic_header(cred: Credential) -> str:
    raw = f"{cred.username}:{cred.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _pick(challenges: list[Challenge]) -> Challenge | None:
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return None


class Authenticator:
    """Auth state for one operation, shared by its threads. Registries are keyed by API host."""

    def __init__(self, http: httpx.Client, options: RegistryOptions, credentials: CredentialSource) -> None:
        self._http = http
        self._options = options
        self._credentials = credentials
        self._lock = threading.RLock()
        self._challenges: dict[str, Challenge | None] = {}
        self._creds: dict[tuple[str, str], Credential | None] = {}
        self._tokens: dict[tuple[str, str, frozenset[str]], _Token] = {}

    # -- challenges ---------------------------------------------------------------------------

    def knows(self, registry: str) -> bool:
        with self._lock:
            return registry in self._challenges

    def learn(self, registry: str, response: httpx.Response | None) -> None:
        """Record what a registry asked for: a 401's challenge, or anonymous access (None)."""
        challenge = None
        if response is not None and response.status_code == 401:
            challenge = _pick(parse_all(response.headers.get_list("www-authenticate")))
            if challenge is None:
                raise AuthError(f"{registry}: 401 without a Basic or Bearer challenge")
        with self._lock:
            self._challenges[registry] = challenge

    def invalidate(self, registry: str, scopes: Iterable[str]) -> None:
        key_scopes = frozenset(scopes)
        with self._lock:
            for key in [k for k in self._tokens if k[0] == registry and k[2] == key_scopes]:
                del self._tokens[key]

    # -- headers ------------------------------------------------------------------------------

    def credential(self, registry: str, repository: str, name: str) -> Credential | None:
        """Credentials for ``name`` (the registry as written in references) and ``repository``."""
        with self._lock:
            key = (name, repository)
            if key not in self._creds:
                self._creds[key] = self._credentials(name, repository)
            return self._creds[key]

    def header(
        self, registry: str, name: str, repository: str, scopes: frozenset[str], what: str
    ) -> str | None:
        """The Authorization header value for a request, or None for anonymous access."""
        with self._lock:
            challenge = self._challenges.get(registry)
        if challenge is None:
            return None
        cred = self.credential(registry, repository, name)
        if challenge.scheme == "basic":
            if cred is None or not cred.has_basic:
                raise AuthError(f"{what}: {name} requires a login and no credentials were found for it")
            return basic_header(cred)
        return "Bearer " + self._token(registry, challenge, cred, scopes, what)

    # -- bearer tokens ------------------------------------------------------------------------

    def _token(
        self, registry: str, challenge: Challenge, cred: Credential | None, scopes: frozenset[str], what: str
    ) -> str:
        service = challenge.service or ""
        key = (registry, service, scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.fresh():
                return cached.value
            token = self._fetch_token(challenge, cred, sorted(scopes | set(challenge.scopes)), what)
            self._tokens[key] = token
            return token.value

    def _fetch_token(
        self, challenge: Challenge, cred: Credential | None, scopes: list[str], what: str
    ) -> _Token:
        realm = challenge.realm
        if not realm:
            raise AuthError(f"{what}: Bearer challenge without a realm")
        try:
            realm_url = httpx.URL(realm)
        except httpx.InvalidURL:
            raise AuthError(f"{what}: Bearer challenge with an invalid realm") from None
        if realm_url.scheme not in ("http", "https"):
            raise AuthError(f"{what}: Bearer realm must be an http(s) URL")
        service = challenge.service
        started = time.monotonic()
        log.debug("requesting token from %s for %s", realm_url.host, " ".join(scopes))

        def build() -> httpx.Request:
            if cred is not None and cred.identity_token:
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": cred.identity_token,
                    "client_id": CLIENT_ID,
                    "scope": " ".join(scopes),
                }
                if service:
                    form["service"] = service
                return self._http.build_request("POST", realm_url, data=form)
            params: list[tuple[str, str | int | float | bool | None]] = []
            if service:
                params.append(("service", service))
            params.extend(("scope", s) for s in scopes)
            params.append(("client_id", CLIENT_ID))
            headers = {}
            if cred is not None and cred.has_basic:
                params.append(("account", cred.username))
                headers["Authorization"] = basic_header(cred)
            return self._http.build_request("GET", realm_url, params=params, headers=headers)

        where = f"{what}: token server {realm_url.host}"
        try:
            resp = send(self._http, build, options=self._options, what=where)
        except AuthError:
            raise
        except Exception as e:  # RegistryError already; anything else would be a bug in httpx use
            raise AuthError(f"{where}: {describe_transport_error(e)}") from None
        try:
            if resp.status_code in (401, 403):
                who = "without credentials" if cred is None else "with the stored credentials"
                raise AuthError(f"{where} refused access {who} (HTTP {resp.status_code})")
            if not resp.is_success:
                raise AuthError(f"{where}: HTTP {resp.status_code}")
            try:
                body = json.loads(resp.read())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise AuthError(f"{where}: answer is not JSON") from None
        finally:
            resp.close()
        if not isinstance(body, dict):
            raise AuthError(f"{where}: answer is not a JSON object")
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError(f"{where}: answer has no token")
        expires_in = body.get("expires_in")
        lifetime = (
            float(expires_in)
            if isinstance(expires_in, int | float) and expires_in > 0
            else DEFAULT_EXPIRES_IN
        )
        # Renew a little early so a token does not expire between our check and the server's.
        margin = min(10.0, lifetime / 10)
        return _Token(value=value, expires_at=started + lifetime - margin)
